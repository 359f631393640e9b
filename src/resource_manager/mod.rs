//! The ResourceManager: TaskManager liveness and the slot pool, on the leader only.

pub mod placement;
