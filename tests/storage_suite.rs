//! openraft's storage conformance suite against the job manager's log store and state machine, on both
//! engines and on the test-only lossy wrapper (over sled, with no memory budget, so log reads go through its
//! overlay and the base). It checks the contract openraft relies on: log state after append, truncate and purge;
//! vote persistence; applied state and membership; snapshot transfer between two stores.

use std::sync::Arc;

use jobmanager::raft::{
    open_stores, LogStore, LossyEngine, MemoryEngine, SledEngine, StateMachineStore, TypeConfig,
    DEFAULT_LOG_CACHE_BYTES,
};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError<u64>> {
        let (log, sm) =
            open_stores(Arc::new(MemoryEngine::default()), DEFAULT_LOG_CACHE_BYTES).expect("open memory stores");
        Ok(((), log, sm))
    }
}

/// With no memory budget, so committed entries are read back from sled.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = SledEngine::open(dir.path()).expect("open sled");
        let (log, sm) = open_stores(Arc::new(engine), 0).expect("open sled stores");
        Ok((dir, log, sm))
    }
}

/// The lose-unsynced storage mode: sled under the overlay of unflushed writes.
struct LossyBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for LossyBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = LossyEngine::new(Arc::new(SledEngine::open(dir.path()).expect("open sled")));
        let (log, sm) = open_stores(Arc::new(engine), 0).expect("open lossy stores");
        Ok((dir, log, sm))
    }
}

#[test]
fn lossy_engine_passes_openraft_storage_suite() {
    Suite::test_all(LossyBuilder).expect("suite");
}

#[test]
fn memory_engine_passes_openraft_storage_suite() {
    Suite::test_all(MemoryBuilder).expect("suite");
}

#[test]
fn sled_engine_passes_openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("suite");
}
