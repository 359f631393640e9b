//! The small storage trait under the Raft log and snapshots, with a sled engine and an in-memory engine.
//!
//! Everything the replica keeps on disk lives in one ordered key space, so that a purge (record the new
//! purge point, delete the entries up to it) or a snapshot install is one atomic batch:
//!
//! * `log/<index as 8 big-endian bytes>`: one encoded Raft entry per index;
//! * `meta/vote`, `meta/committed`, `meta/purged`, `meta/format`: small records;
//! * `snap/meta`, `snap/data`: the newest snapshot of the state machine.
//!
//! Invariants: [`Engine::write`] applies a batch atomically (all or nothing, also across a crash);
//! [`Engine::flush`] returns only once everything written before it is durable. Writes before a flush may
//! or may not survive a crash, so callers that promise durability (the log store's append callback, the
//! vote) flush first.
//!
//! Caveat: sled grows on disk and in memory over long runs (it is why openraft dropped its sled store);
//! it is kept behind this trait so it can be replaced, and `jm bench` measures the data dir's size before
//! and after compaction.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

/// Errors of the storage engine. Every one of them is non-deterministic: a replica that hits one must
/// stop rather than diverge from its peers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed to read or write.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// Bytes on disk could not be decoded: the data dir is corrupted or from an incompatible version.
    #[error("corrupted data in the data dir ({what}): {reason}")]
    Corrupted {
        /// What was being decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The data dir cannot be opened.
    #[error("cannot open data dir {path}: {reason}")]
    Open {
        /// The directory.
        path: String,
        /// Why it failed.
        reason: String,
    },
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One change in a write batch: `Some(value)` sets the key, `None` removes it.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// An ordered key-value store with atomic batches and an explicit durability point.
pub trait Engine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies the changes atomically.
    fn write(&self, batch: Vec<Change>) -> Result<(), StoreError>;
    /// Returns the pairs whose key is in the range, in key order.
    fn scan(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Pair>, StoreError>;
    /// Returns the keys in the range, in key order (values are not copied).
    fn scan_keys(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Returns the last pair whose key is in the range.
    fn last_in(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Option<Pair>, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes the engine occupies on disk (0 for memory).
    fn size_on_disk(&self) -> u64;
}

/// sled, the engine of a real replica.
pub struct SledEngine {
    db: sled::Db,
}

impl SledEngine {
    /// Opens (or creates) the engine in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: dir.display().to_string(), reason };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        // No periodic background flush: every durability promise is an explicit flush by the disk writer,
        // and a second flusher would only compete with it for sled's I/O threads.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self { db })
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn write(&self, batch: Vec<Change>) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(io)
    }

    fn scan(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Pair>, StoreError> {
        self.db.range::<Vec<u8>, _>((from, to)).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)).collect()
    }

    fn scan_keys(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        self.db.range::<Vec<u8>, _>((from, to)).map(|r| r.map(|(k, _)| k.to_vec()).map_err(io)).collect()
    }

    fn last_in(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Option<Pair>, StoreError> {
        match self.db.range::<Vec<u8>, _>((from, to)).next_back() {
            None => Ok(None),
            Some(r) => r.map(|(k, v)| Some((k.to_vec(), v.to_vec()))).map_err(io),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// An in-memory engine for tests and simulations. `flush` is a no-op: nothing survives the process.
#[derive(Default)]
pub struct MemoryEngine {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryEngine {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned lock means a panic mid-write elsewhere; the map itself is still consistent
        // because every write is applied under the lock in one go.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }

    fn write(&self, batch: Vec<Change>) -> Result<(), StoreError> {
        let mut map = self.map();
        for (k, v) in batch {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn scan(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Pair>, StoreError> {
        Ok(self.map().range((from, to)).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn scan_keys(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.map().range((from, to)).map(|(k, _)| k.clone()).collect())
    }

    fn last_in(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Option<Pair>, StoreError> {
        Ok(self.map().range((from, to)).next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens the sled engine in `dir` again after a drop, waiting for sled's threads to release the file lock.
    pub(crate) fn reopen_sled(dir: &Path) -> SledEngine {
        let mut reopened = SledEngine::open(dir);
        for _ in 0..50 {
            if reopened.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            reopened = SledEngine::open(dir);
        }
        reopened.expect("sled reopens")
    }

    fn exercise(engine: &dyn Engine) {
        engine.write(vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), Some(b"2".to_vec()))]).unwrap();
        engine.write(vec![(b"c".to_vec(), Some(b"3".to_vec())), (b"a".to_vec(), None)]).unwrap();
        engine.flush().unwrap();
        assert_eq!(engine.get(b"a").unwrap(), None);
        assert_eq!(engine.get(b"b").unwrap(), Some(b"2".to_vec()));
        let all = engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
        assert_eq!(all, vec![(b"b".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
        let keys = engine.scan_keys(Bound::Included(b"b".to_vec()), Bound::Excluded(b"c".to_vec())).unwrap();
        assert_eq!(keys, vec![b"b".to_vec()]);
        let last = engine.last_in(Bound::Unbounded, Bound::Excluded(b"c".to_vec())).unwrap();
        assert_eq!(last, Some((b"b".to_vec(), b"2".to_vec())));
    }

    #[test]
    fn memory_engine_behaves_like_an_ordered_map() {
        exercise(&MemoryEngine::default());
    }

    #[test]
    fn sled_engine_behaves_like_an_ordered_map_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            exercise(&engine);
        }
        assert_eq!(reopen_sled(dir.path()).get(b"c").unwrap(), Some(b"3".to_vec()));
    }
}
