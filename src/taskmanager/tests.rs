//! Tests of the TaskManager's command handling (fencing, deploy, reconcile) without a network.
