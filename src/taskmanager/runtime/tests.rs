//! End-to-end tests of deployments.
