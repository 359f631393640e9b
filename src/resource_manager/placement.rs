//! Slot placement.
