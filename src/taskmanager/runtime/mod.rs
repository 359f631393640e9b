//! The task runtime.
