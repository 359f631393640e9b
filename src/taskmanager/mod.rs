//! The TaskManager process.

pub mod runtime;
