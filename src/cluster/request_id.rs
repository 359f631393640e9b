//! Request ids: one id per client request, in the log lines of every replica that works on it.
//!
//! The API layer takes a request's id from its `x-request-id` header (REST) or metadata key (gRPC) when the
//! client sent a usable one ([`is_valid`]), or makes one ([`generate`]); it runs the handler inside [`scope`] and a
//! `request` span carrying `request_id`, and echoes the id in the reply's `x-request-id`.
//!
//! Across replicas: the cluster layer reads the id back with [`current`] where it calls another replica. The peer
//! transport sends it as `x-request-id` metadata beside the call's payload, not inside it (the payloads are bincode,
//! which cannot gain a field without breaking replicas of other versions), and the receiving replica serves the
//! call inside [`scope`] and a `request{node_id, request_id}` span of its own ([`peer_span`]). So a write sent to a
//! follower logs the same `request_id` on the follower and on the leader that commits it; a linearizable read's
//! read-index call to the leader carries it too.
//!
//! Following one request (JSON logs, `--log-format json`): `grep -h '"request_id":"ID"' */server.log`; text logs:
//! `grep -h 'request_id=ID' */server.log`.
//!
//! The id lives in a tokio task-local: a task spawned while serving a request does not inherit it (nor the span).

use std::future::Future;
use std::time::Instant;

use crate::raft::NodeId;

/// The header (REST) and metadata key (gRPC, peer calls) carrying the id.
pub const HEADER: &str = "x-request-id";

/// The longest id accepted from a client.
pub const MAX_LEN: usize = 64;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `future` with `id` as the current request id.
pub async fn scope<F: Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// The id of the request the current task is serving, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// True if a client-supplied id can be used as it is: 1 to [`MAX_LEN`] printable ASCII characters, no spaces
/// (so it greps, fits a header and cannot forge log lines).
pub fn is_valid(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A fresh id: 16 lowercase hex characters.
pub fn generate() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The id a request runs under: the client's if [`is_valid`], else a fresh one.
pub fn from_client(supplied: Option<&str>) -> String {
    match supplied {
        Some(id) if is_valid(id) => id.to_string(),
        _ => generate(),
    }
}

/// Milliseconds since `started`, to 0.1 ms, for a log line's `latency_ms`.
pub fn latency_ms(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

/// The span a replica serves another replica's call in, on behalf of the [`current`] request (if any).
pub fn peer_span(node_id: NodeId) -> tracing::Span {
    match current() {
        Some(request_id) => tracing::info_span!("request", node_id, request_id = %request_id),
        None => tracing::info_span!("request", node_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        assert_eq!(from_client(Some("trace-me-42")), "trace-me-42");
        let long = "x".repeat(MAX_LEN);
        assert_eq!(from_client(Some(&long)), long);
        for bad in
            [String::new(), "x".repeat(MAX_LEN + 1), "a b".into(), "a\nb".into(), "é".into(), "a\u{1b}[31m".into()]
        {
            let id = from_client(Some(&bad));
            assert_ne!(id, bad);
            assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(from_client(None), from_client(None));
    }

    #[tokio::test]
    async fn the_id_is_current_inside_its_scope_only() {
        assert_eq!(current(), None);
        let inside = scope("r-1".into(), async {
            tokio::task::yield_now().await;
            current()
        })
        .await;
        assert_eq!(inside.as_deref(), Some("r-1"));
        assert_eq!(current(), None);
    }
}
