//! A TaskManager's own HTTP endpoint (`jm taskmanager --http-listen`): `GET /metrics` in Prometheus' text format
//! (slots, protocol counters, and per subtask records in/out and busy time), and `GET /` with what runs there as
//! JSON. The cluster's REST API lives on the replicas; this serves only what the TaskManager alone knows first-hand.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::metrics;
use crate::taskmanager::TaskManager;

/// The TaskManager's routes.
pub fn router(tm: Arc<TaskManager>) -> Router {
    Router::new()
        .route("/metrics", get(prometheus))
        .route("/", get(overview))
        .fallback(|| async { super::RestError::NotFound("a TaskManager serves only / and /metrics".into()) })
        .with_state(tm)
}

/// Serves the TaskManager's endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    tm: Arc<TaskManager>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(tm)).with_graceful_shutdown(shutdown).await
}

async fn prometheus(State(tm): State<Arc<TaskManager>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render_task_manager(&tm))
}

async fn overview(State(tm): State<Arc<TaskManager>>) -> impl IntoResponse {
    Json(overview_json(&tm))
}

/// What `GET /` answers: the TaskManager's id, address, slots and zone, and every deployment it runs with its fencing
/// token and subtasks (also read directly by the deterministic simulation, which has no HTTP).
pub fn overview_json(tm: &TaskManager) -> serde_json::Value {
    let config = tm.config();
    let deployments: Vec<_> = tm
        .reports()
        .into_iter()
        .map(|r| {
            json!({
                "job-id": r.job_id,
                "attempt": r.attempt,
                "fencing-token": {"term": r.token.term, "epoch": r.token.epoch},
                "subtasks": r.subtasks.iter().map(|s| json!({
                    "vertex": s.vertex, "subtask": s.subtask, "status": s.state.as_flink_str(),
                    "records-in": s.records_in, "records-out": s.records_out, "busy-ms": s.busy_ms,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": tm.id(),
        "address": config.advertise,
        "slots": config.slots,
        "zone": config.zone,
        "deployments": deployments,
    })
}
