//! [`LossyEngine`]: an [`Engine`] wrapper that loses every write not yet flushed when the process dies, for tests.
//!
//! A real disk keeps unsynced writes in the page cache, where a process crash does not reach them; only a power
//! loss or a kernel crash does, and then only some of them. This wrapper makes the worst case the only case: writes
//! since the last [`Engine::flush`] live in an in-memory overlay, and only a flush hands them to the base engine (as
//! one atomic batch) and flushes it. A SIGKILL, or [`LossyEngine::drop_unsynced`] in-process, throws the overlay
//! away, so a replica comes back with exactly what it had flushed. `jm server --storage-mode lose-unsynced` runs a
//! replica on it (over sled), and the chaos suite's `--lose-unsynced` uses that; a simulation can put it over a
//! [`MemoryEngine`](super::storage::MemoryEngine) that outlives a simulated crash.
//!
//! Invariants (those of [`Engine`], plus):
//! * reads (`get`, `scan`, `scan_keys`, `last_in`) see the overlay over the base: an overlay value wins, an overlay
//!   removal (a tombstone) hides the base's value, and scans merge both in key order;
//! * a batch lands in the overlay atomically (readers see all of it or none), and a flush moves the whole overlay
//!   to the base in one atomic batch, so the base only ever holds a state that was current at some flush: after a
//!   crash the engine is a prefix of its history, never a mix;
//! * after [`LossyEngine::drop_unsynced`] the engine reads exactly as its base does.
//!
//! Caveats: unsafe for production by design. The overlay grows without bound between flushes (the disk writer
//! flushes at every durability point, so in practice it holds one group of writes). Reads take the overlay's lock,
//! and writes wait for a flush's hand-over to the base (not for the base's own fsync).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::storage::{Change, Engine, Pair, StoreError};

/// Writes since the last flush: `Some(value)` sets, `None` removes (a tombstone over the base).
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// An engine that keeps writes in memory until they are flushed; see the module docs.
pub struct LossyEngine {
    base: Arc<dyn Engine>,
    overlay: Mutex<Overlay>,
}

impl LossyEngine {
    /// Wraps `base`; nothing is unsynced yet.
    pub fn new(base: Arc<dyn Engine>) -> Self {
        Self { base, overlay: Mutex::new(BTreeMap::new()) }
    }

    /// The engine under the overlay: what survives a crash.
    pub fn base(&self) -> &Arc<dyn Engine> {
        &self.base
    }

    /// Keys written (set or removed) since the last flush.
    pub fn unsynced_keys(&self) -> usize {
        self.overlay().len()
    }

    /// Throws away every write since the last flush, as a crash would; returns how many keys were lost.
    pub fn drop_unsynced(&self) -> usize {
        std::mem::take(&mut *self.overlay()).len()
    }

    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        // Every change to the overlay is made in one go under the lock, so it is consistent even after a panic.
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `(from, to)` contains no key at all (a `BTreeMap` panics on such ranges when they are inverted).
fn is_empty_range(from: &Bound<Vec<u8>>, to: &Bound<Vec<u8>>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b))
        | (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
        _ => false,
    }
}

/// Merges a base scan with the overlay's entries in the same range, both in key order; the overlay wins.
fn merge<T>(
    base: Vec<(Vec<u8>, T)>,
    overlay: &Overlay,
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
    pick: impl Fn(&Vec<u8>) -> T,
) -> Vec<(Vec<u8>, T)> {
    let mut out = Vec::with_capacity(base.len());
    let mut over = overlay.range((from, to)).peekable();
    for (key, value) in base {
        while let Some((k, v)) = over.next_if(|(k, _)| **k < key) {
            if let Some(v) = v {
                out.push((k.clone(), pick(v)));
            }
        }
        match over.next_if(|(k, _)| **k == key) {
            Some((_, Some(v))) => out.push((key, pick(v))),
            Some((_, None)) => {}
            None => out.push((key, value)),
        }
    }
    out.extend(over.filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), pick(v)))));
    out
}

impl Engine for LossyEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let overlay = self.overlay();
        match overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.base.get(key),
        }
    }

    fn write(&self, batch: Vec<Change>) -> Result<(), StoreError> {
        let mut overlay = self.overlay();
        for (key, value) in batch {
            overlay.insert(key, value);
        }
        Ok(())
    }

    fn scan(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Pair>, StoreError> {
        if is_empty_range(&from, &to) {
            return Ok(Vec::new());
        }
        let overlay = self.overlay();
        let base = self.base.scan(from.clone(), to.clone())?;
        Ok(merge(base, &overlay, from, to, Vec::clone))
    }

    fn scan_keys(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        if is_empty_range(&from, &to) {
            return Ok(Vec::new());
        }
        let overlay = self.overlay();
        let base = self.base.scan_keys(from.clone(), to.clone())?.into_iter().map(|k| (k, ())).collect();
        Ok(merge(base, &overlay, from, to, |_| ()).into_iter().map(|(k, ())| k).collect())
    }

    fn last_in(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Option<Pair>, StoreError> {
        let overlay = self.overlay();
        let mut to = to;
        // Walk down from the top of the range: the higher of the base's and the overlay's last keys decides,
        // unless it is a tombstone, which hides it and moves the top below it.
        loop {
            if is_empty_range(&from, &to) {
                return Ok(None);
            }
            let base = self.base.last_in(from.clone(), to.clone())?;
            let over = overlay.range((from.clone(), to.clone())).next_back();
            match (base, over) {
                (None, None) => return Ok(None),
                (Some(b), None) => return Ok(Some(b)),
                (Some(b), Some((k, _))) if b.0 > *k => return Ok(Some(b)),
                (_, Some((k, Some(v)))) => return Ok(Some((k.clone(), v.clone()))),
                (_, Some((k, None))) => to = Bound::Excluded(k.clone()),
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        {
            let mut overlay = self.overlay();
            if !overlay.is_empty() {
                let batch: Vec<Change> = std::mem::take(&mut *overlay).into_iter().collect();
                // On failure the writes stay unsynced; the disk writer stops the replica on the error anyway.
                if let Err(e) = self.base.write(batch.clone()) {
                    overlay.extend(batch);
                    return Err(e);
                }
            }
        }
        self.base.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.base.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::raft::storage::{MemoryEngine, SledEngine};

    fn set(k: &str, v: &str) -> Change {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    fn del(k: &str) -> Change {
        (k.as_bytes().to_vec(), None)
    }

    fn keys(pairs: Vec<Pair>) -> Vec<String> {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v)))
            .collect()
    }

    #[test]
    fn unsynced_writes_are_visible_but_only_a_flush_reaches_the_base_and_a_crash_drops_them() {
        let base = Arc::new(MemoryEngine::default());
        let engine = LossyEngine::new(base.clone());
        engine.write(vec![set("a", "1"), set("b", "2"), set("c", "3")]).unwrap();
        engine.flush().unwrap();
        engine.write(vec![del("b"), set("c", "33"), set("d", "4")]).unwrap();
        assert_eq!(keys(engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap()), ["a=1", "c=33", "d=4"]);
        assert_eq!(keys(base.scan(Bound::Unbounded, Bound::Unbounded).unwrap()), ["a=1", "b=2", "c=3"]);
        assert_eq!(engine.get(b"b").unwrap(), None);
        assert_eq!(engine.unsynced_keys(), 3);
        // The crash: back to what was flushed.
        assert_eq!(engine.drop_unsynced(), 3);
        assert_eq!(keys(engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap()), ["a=1", "b=2", "c=3"]);
        engine.write(vec![del("a"), set("e", "5")]).unwrap();
        engine.flush().unwrap();
        assert_eq!(engine.drop_unsynced(), 0);
        assert_eq!(keys(base.scan(Bound::Unbounded, Bound::Unbounded).unwrap()), ["b=2", "c=3", "e=5"]);
    }

    #[test]
    fn last_in_skips_keys_the_overlay_removed_and_sees_keys_it_added() {
        let engine = LossyEngine::new(Arc::new(MemoryEngine::default()));
        engine.write(vec![set("a", "1"), set("b", "2"), set("c", "3")]).unwrap();
        engine.flush().unwrap();
        engine.write(vec![del("c"), del("b")]).unwrap();
        assert_eq!(engine.last_in(Bound::Unbounded, Bound::Unbounded).unwrap(), Some((b"a".to_vec(), b"1".to_vec())));
        engine.write(vec![set("bb", "x"), del("a")]).unwrap();
        assert_eq!(engine.last_in(Bound::Unbounded, Bound::Unbounded).unwrap(), Some((b"bb".to_vec(), b"x".to_vec())));
        assert_eq!(engine.last_in(Bound::Unbounded, Bound::Excluded(b"bb".to_vec())).unwrap(), None);
        assert_eq!(engine.scan_keys(Bound::Excluded(b"b".to_vec()), Bound::Excluded(b"b".to_vec())).unwrap().len(), 0);
    }

    #[test]
    fn a_lossy_sled_replica_keeps_only_what_it_flushed_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = LossyEngine::new(Arc::new(SledEngine::open(dir.path()).unwrap()));
            engine.write(vec![set("flushed", "1")]).unwrap();
            engine.flush().unwrap();
            engine.write(vec![set("unsynced", "2"), del("flushed")]).unwrap();
        }
        let engine = LossyEngine::new(Arc::new(crate::raft::storage::tests::reopen_sled(dir.path())));
        assert_eq!(keys(engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap()), ["flushed=1"]);
    }

    /// One step against both engines.
    #[derive(Debug, Clone)]
    enum Step {
        Write(Vec<(u8, Option<u8>)>),
        Flush,
        Crash,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => prop::collection::vec((0u8..16, prop::option::of(any::<u8>())), 1..5).prop_map(Step::Write),
            2 => Just(Step::Flush),
            1 => Just(Step::Crash),
        ]
    }

    fn bound() -> impl Strategy<Value = Bound<u8>> {
        prop_oneof![Just(Bound::Unbounded), (0u8..17).prop_map(Bound::Included), (0u8..17).prop_map(Bound::Excluded)]
    }

    fn key(k: u8) -> Vec<u8> {
        vec![b'k', k]
    }

    fn to_key(b: Bound<u8>) -> Bound<Vec<u8>> {
        b.map(key)
    }

    proptest! {
        /// Reads of the lossy engine equal those of a memory engine that sees the same writes, where a crash
        /// rolls the model back to its state at the last flush.
        #[test]
        fn reads_match_a_model_that_forgets_everything_since_the_last_flush(
            steps in prop::collection::vec(step(), 1..40),
            ranges in prop::collection::vec((bound(), bound()), 4),
        ) {
            let engine = LossyEngine::new(Arc::new(MemoryEngine::default()));
            let mut model = MemoryEngine::default();
            let mut synced: Vec<Pair> = Vec::new();
            for s in steps {
                match s {
                    Step::Write(changes) => {
                        let batch: Vec<Change> = changes.into_iter().map(|(k, v)| (key(k), v.map(|v| vec![v]))).collect();
                        engine.write(batch.clone()).unwrap();
                        model.write(batch).unwrap();
                    }
                    Step::Flush => {
                        engine.flush().unwrap();
                        synced = model.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
                    }
                    Step::Crash => {
                        engine.drop_unsynced();
                        model = MemoryEngine::default();
                        model.write(synced.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect()).unwrap();
                    }
                }
                for k in 0..16 {
                    prop_assert_eq!(engine.get(&key(k)).unwrap(), model.get(&key(k)).unwrap());
                }
                for (from, to) in &ranges {
                    let (from, to) = (to_key(*from), to_key(*to));
                    if is_empty_range(&from, &to) {
                        prop_assert!(engine.scan(from.clone(), to.clone()).unwrap().is_empty());
                        prop_assert_eq!(engine.last_in(from, to).unwrap(), None);
                        continue;
                    }
                    prop_assert_eq!(engine.scan(from.clone(), to.clone()).unwrap(), model.scan(from.clone(), to.clone()).unwrap());
                    prop_assert_eq!(engine.scan_keys(from.clone(), to.clone()).unwrap(), model.scan_keys(from.clone(), to.clone()).unwrap());
                    prop_assert_eq!(engine.last_in(from.clone(), to.clone()).unwrap(), model.last_in(from, to).unwrap());
                }
            }
        }
    }
}
