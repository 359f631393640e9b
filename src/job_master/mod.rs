//! JobMasters: one per running job, on the leader only.

pub mod restart;
