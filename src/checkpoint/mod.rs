//! Checkpoints: the coordinator's bookkeeping and the checkpoint storage layout.
