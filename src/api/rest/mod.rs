//! The REST API: Apache Flink's REST paths, status codes and JSON field names, on every replica.
//!
//! Every route is served under `/` and under `/v1/`, like Flink's. Flink's own Java client (the `flink` CLI) reads
//! these answers strictly, so fields it requires are present even where they say nothing about us. Handlers are thin: they call the
//! [`Dispatcher`] (which forwards writes to the leader and reads at the requested consistency) and shape its answer
//! into Flink's JSON ([`flink`]). Errors take Flink's shape, `{"errors": ["..."]}`, with the status code mapped in
//! one place ([`error`]).
//!
//! Reads are linearizable: a client reading after its write through another replica sees it. During an election a
//! request waits (bounded by the write timeout) for the new leader instead of failing.
//!
//! `GET /metrics` serves Prometheus' text exposition ([`metrics`]); `GET /` the web dashboard, one embedded page of
//! plain HTML and JavaScript that polls this API every 2 s (cluster, jobs, job detail with operator graph,
//! checkpoint chart, status timeline and exceptions, TaskManagers, and submit/cancel/savepoint/stop with
//! confirmation).
//!
//! Every request runs in a `request{node_id, request_id, method, path}` span and [`request_id::scope`]:
//! the id is the client's `x-request-id` header if it is sane (printable ASCII without spaces, at most 64
//! characters), else a fresh 16-hex-digit one, and the response echoes it in `x-request-id`. A write that reaches a
//! follower is forwarded to the leader with the id, and the leader logs it in a span with the same `request_id`, so
//! `grep '"request_id":"ID"'` over the replicas' JSON logs follows the request. One line per request at completion,
//! with status and latency: at info for writes and for client errors, at warn for server errors (5xx), and at debug
//! for successful reads (`GET`), which the dashboard, Prometheus and the Flink UI poll every few seconds
//! (`RUST_LOG=info,jobmanager::api=debug` shows them).
//!
//! What exists here so far: cluster and job overviews, job details, status, configuration, exceptions and
//! checkpoints, TaskManagers, cancel, savepoints, stop-with-savepoint, savepoint disposal and submission (a spec as
//! JSON or YAML), plus our own `/cluster`. Per-subtask state, records and throughput (`/jobs/:id/vertices/:vid`, and
//! the vertex figures of `/jobs/:id`) come from the leader's live view of the TaskManagers' heartbeats: a follower
//! asks the leader for it. When no leader can be asked, `/jobs/:id` still answers from the replicated state, without
//! figures.

mod error;
mod flink;
mod java;
pub mod metrics;
pub mod taskmanager;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument;

pub use error::RestError;

use crate::cluster::{request_id, Consistency};
use crate::dispatcher::Dispatcher;

/// The largest request body accepted (a 1 MiB job spec plus some room).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

type Reply = Result<Response, RestError>;

/// The replica's settings as `(key, value)` pairs, for `GET /jobmanager/config`.
pub type Settings = Arc<Vec<(String, String)>>;

/// The REST API's routes, under `/` and `/v1/`.
pub fn router(dispatcher: Dispatcher, settings: Settings) -> Router {
    let node_id = dispatcher.node().id;
    let routes = Router::new()
        .route("/config", get(config))
        .route("/overview", get(overview))
        .route("/jobs", get(jobs).post(submit))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{job_id}", get(job).patch(cancel))
        .route("/jobs/{job_id}/status", get(job_status))
        .route("/jobs/{job_id}/vertices/{vertex_id}", get(vertex))
        .route("/jobs/{job_id}/config", get(job_config))
        .route("/jobs/{job_id}/exceptions", get(job_exceptions))
        .route("/jobs/{job_id}/checkpoints", get(job_checkpoints))
        .route("/jobs/{job_id}/checkpoints/config", get(job_checkpoint_config))
        .route("/jobs/{job_id}/checkpoints/details/{checkpoint_id}", get(checkpoint_details))
        .route("/jobs/{job_id}/savepoints", post(trigger_savepoint))
        .route("/jobs/{job_id}/savepoints/{trigger_id}", get(savepoint_status))
        .route("/jobs/{job_id}/stop", post(stop))
        .route("/savepoint-disposal", post(dispose_savepoint))
        .route("/savepoint-disposal/{trigger_id}", get(savepoint_disposal_status))
        .route("/taskmanagers", get(task_managers))
        .route("/taskmanagers/{tm_id}", get(task_manager))
        .route("/cluster", get(cluster))
        .route("/jobmanager/config", get(jobmanager_config))
        .route("/jobmanager/metrics", get(jobmanager_metrics))
        .route("/openapi.json", get(openapi))
        .layer(axum::Extension(settings))
        .with_state(Arc::new(dispatcher.clone()));
    let metrics =
        Router::new().route("/metrics", get(prometheus)).route("/", get(dashboard)).with_state(Arc::new(dispatcher));
    Router::new()
        .nest("/v1", routes.clone())
        .merge(routes)
        .merge(metrics)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(node_id, trace_request))
}

/// Runs a request in its span and id scope, logs its completion and echoes its id (see the module docs).
async fn trace_request(State(node_id): State<u64>, request: Request, next: Next) -> Response {
    let supplied = request.headers().get(request_id::HEADER).and_then(|v| v.to_str().ok());
    let id = request_id::from_client(supplied);
    let method = request.method().clone();
    let path = request.uri().path_and_query().map_or_else(|| request.uri().path(), |p| p.as_str()).to_string();
    let span = tracing::info_span!("request", node_id, request_id = %id, method = %method, path = %path);
    let read = method == Method::GET || method == Method::HEAD;
    let started = std::time::Instant::now();
    let served = async move {
        let response = next.run(request).await;
        let (status, latency_ms) = (response.status().as_u16(), request_id::latency_ms(started));
        if response.status().is_server_error() {
            tracing::warn!(status, latency_ms, "request failed");
        } else if read && !response.status().is_client_error() {
            tracing::debug!(status, latency_ms, "request finished");
        } else {
            tracing::info!(status, latency_ms, "request finished");
        }
        response
    };
    let mut response = request_id::scope(id.clone(), served).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    response
}

/// Serves the REST API on `listener` until `shutdown` resolves.
pub async fn serve(
    dispatcher: Dispatcher,
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(dispatcher, settings)).with_graceful_shutdown(shutdown).await
}

type Api = State<Arc<Dispatcher>>;

async fn not_found() -> RestError {
    RestError::NotFound("no such REST path; GET /openapi.json lists them".into())
}

fn ok(value: Value) -> Reply {
    Ok(Json(value).into_response())
}

fn accepted(value: Value) -> Reply {
    Ok((StatusCode::ACCEPTED, Json(value)).into_response())
}

async fn config(State(d): Api) -> Reply {
    ok(flink::config(d.node()))
}

async fn overview(State(d): Api) -> Reply {
    let (jobs, _) = d.list(Consistency::Linearizable, |j| j.status).await?;
    let (tms, _) = d.task_managers(Consistency::Linearizable).await?;
    ok(flink::overview(&jobs, &tms))
}

async fn jobs(State(d): Api) -> Reply {
    let (jobs, _) =
        d.list(Consistency::Linearizable, |j| json!({"id": j.id, "status": j.status.as_flink_str()})).await?;
    ok(json!({ "jobs": jobs }))
}

async fn jobs_overview(State(d): Api) -> Reply {
    let now = d.node().clock().now_ms();
    let (jobs, _) = d.list(Consistency::Linearizable, |j| flink::job_overview(j, now)).await?;
    ok(json!({ "jobs": jobs }))
}

async fn job(State(d): Api, Path(job_id): Path<String>) -> Reply {
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    let runtime = live_view(&d, &job).await;
    ok(flink::job_details(&job, runtime.as_ref(), d.node().clock().now_ms()))
}

/// The leader's live view of a job with tasks, or `None` (a job without a deployment, or no leader reachable now:
/// the page then shows what the replicated state says, rather than failing).
async fn live_view(d: &Dispatcher, job: &crate::raft::state::Job) -> Option<crate::leader::runtime::JobRuntime> {
    if job.status.is_terminal() || job.deployment.is_none() {
        return None;
    }
    match d.job_runtime_unchecked(&job.id).await {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            tracing::debug!(job_id = %job.id, error = %e, "no live view of the job's tasks");
            None
        }
    }
}

async fn vertex(State(d): Api, Path((job_id, vertex_id)): Path<(String, String)>) -> Reply {
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    let runtime = live_view(&d, &job).await;
    let (tms, _) = d.task_managers(Consistency::Stale).await?;
    let now = d.node().clock().now_ms();
    match flink::vertex_details(&job, &vertex_id, runtime.as_ref(), &tms, now) {
        Some(details) => ok(details),
        None => Err(RestError::NotFound(format!("job {job_id} has no vertex {vertex_id:?}"))),
    }
}

async fn job_status(State(d): Api, Path(job_id): Path<String>) -> Reply {
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    ok(json!({ "status": job.status.as_flink_str() }))
}

async fn job_config(State(d): Api, Path(job_id): Path<String>) -> Reply {
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    ok(flink::job_config(&job))
}

async fn job_exceptions(State(d): Api, Path(job_id): Path<String>) -> Reply {
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    ok(flink::job_exceptions(&job))
}

async fn job_checkpoints(State(d): Api, Path(job_id): Path<String>) -> Reply {
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    ok(flink::job_checkpoints(&job))
}

async fn job_checkpoint_config(State(d): Api, Path(job_id): Path<String>) -> Reply {
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    ok(flink::checkpoint_config(&job))
}

async fn checkpoint_details(State(d): Api, Path((job_id, checkpoint_id)): Path<(String, String)>) -> Reply {
    let id: u64 = checkpoint_id
        .parse()
        .map_err(|_| RestError::BadRequest(format!("checkpoint id {checkpoint_id:?} is not a number")))?;
    let (job, _) = d.get(&job_id, Consistency::Linearizable).await?;
    match flink::checkpoint_details(&job, id) {
        Some(details) => ok(details),
        None => Err(RestError::NotFound(format!(
            "job {job_id} retains no checkpoint {id} (retained: {:?})",
            job.checkpoints.iter().map(|c| c.id).collect::<Vec<_>>()
        ))),
    }
}

/// `PATCH /jobs/:jobid?mode=cancel`.
#[derive(Debug, Deserialize)]
struct CancelQuery {
    mode: Option<String>,
}

async fn cancel(State(d): Api, Path(job_id): Path<String>, Query(query): Query<CancelQuery>) -> Reply {
    match query.mode.as_deref() {
        None | Some("cancel") => {}
        Some(other) => {
            return Err(RestError::BadRequest(format!(
                "mode {other:?} is not supported; use mode=cancel, or POST /jobs/{job_id}/stop to stop with a savepoint"
            )))
        }
    }
    d.cancel(&job_id).await?;
    accepted(json!({}))
}

/// Body of `POST /jobs/:jobid/savepoints` (Flink's names).
#[derive(Debug, Default, Deserialize)]
struct SavepointBody {
    #[serde(rename = "target-directory")]
    target_directory: Option<String>,
    #[serde(rename = "cancel-job", default)]
    cancel_job: bool,
    #[serde(rename = "triggerId")]
    trigger_id: Option<String>,
}

async fn trigger_savepoint(State(d): Api, Path(job_id): Path<String>, body: Bytes) -> Reply {
    let body: SavepointBody = parse_body(&body)?;
    // Flink's cancel-job takes a savepoint, then cancels; stopping with a savepoint ends the same way for the user.
    let (request_id, _) = d.trigger_savepoint(&job_id, body.target_directory, body.cancel_job, body.trigger_id).await?;
    accepted(json!({ "request-id": request_id }))
}

/// Body of `POST /jobs/:jobid/stop` (Flink's names).
#[derive(Debug, Default, Deserialize)]
struct StopBody {
    #[serde(rename = "targetDirectory")]
    target_directory: Option<String>,
    #[serde(default)]
    drain: bool,
    #[serde(rename = "triggerId")]
    trigger_id: Option<String>,
}

async fn stop(State(d): Api, Path(job_id): Path<String>, body: Bytes) -> Reply {
    let body: StopBody = parse_body(&body)?;
    if body.drain {
        return Err(RestError::BadRequest(
            "drain is not supported: sources are not drained to the end of their input; stop without drain".into(),
        ));
    }
    let (request_id, _) = d.trigger_savepoint(&job_id, body.target_directory, true, body.trigger_id).await?;
    accepted(json!({ "request-id": request_id }))
}

async fn savepoint_status(State(d): Api, Path((job_id, trigger_id)): Path<(String, String)>) -> Reply {
    let (request, _) = d.get_savepoint(&job_id, &trigger_id, Consistency::Linearizable).await?;
    ok(flink::savepoint_status(&request))
}

/// Body of `POST /savepoint-disposal` (Flink's name).
#[derive(Debug, Default, Deserialize)]
struct DisposalBody {
    #[serde(rename = "savepoint-path", default)]
    savepoint_path: String,
}

async fn dispose_savepoint(State(d): Api, body: Bytes) -> Reply {
    let body: DisposalBody = parse_body(&body)?;
    let (request_id, _) = d.dispose_savepoint(&body.savepoint_path).await?;
    ok(json!({ "request-id": request_id }))
}

async fn savepoint_disposal_status(State(d): Api, Path(trigger_id): Path<String>) -> Reply {
    let (disposal, _) = d.get_savepoint_disposal(&trigger_id, Consistency::Linearizable).await?;
    ok(flink::savepoint_disposal_status(&disposal))
}

async fn submit(State(d): Api, body: Bytes) -> Reply {
    // Retries of the same body are not recognised here (REST has no idempotency key yet): each POST is a new job.
    let key = crate::dispatcher::new_job_id();
    let submitted = d.submit(&body, &key).await?;
    accepted(json!({ "jobid": submitted.job_id }))
}

async fn task_managers(State(d): Api) -> Reply {
    let (tms, _) = d.task_managers(Consistency::Linearizable).await?;
    let now = d.node().clock().now_ms();
    ok(json!({ "taskmanagers": tms.iter().map(|(tm, free)| flink::task_manager(tm, *free, now)).collect::<Vec<_>>() }))
}

async fn task_manager(State(d): Api, Path(tm_id): Path<String>) -> Reply {
    let (tms, _) = d.task_managers(Consistency::Linearizable).await?;
    let now = d.node().clock().now_ms();
    match tms.iter().find(|(tm, _)| tm.id == tm_id) {
        Some((tm, free)) => ok(flink::task_manager(tm, *free, now)),
        None => Err(RestError::NotFound(format!("TaskManager {tm_id} is not registered"))),
    }
}

async fn jobmanager_config(axum::Extension(settings): axum::Extension<Settings>) -> Reply {
    ok(json!(settings.iter().map(|(key, value)| json!({"key": key, "value": value})).collect::<Vec<_>>()))
}

/// `GET /jobmanager/metrics[?get=a,b]`: Flink's metric listing over this replica's Prometheus samples.
#[derive(Debug, Deserialize)]
struct MetricsQuery {
    get: Option<String>,
}

async fn jobmanager_metrics(State(d): Api, Query(query): Query<MetricsQuery>) -> Reply {
    let samples = metrics::samples(&metrics::render(d.node()));
    match query.get {
        None => ok(json!(samples.iter().map(|(id, _)| json!({"id": id})).collect::<Vec<_>>())),
        Some(wanted) => {
            let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
            let found: Vec<Value> = samples
                .iter()
                .filter(|(id, _)| wanted.contains(&id.as_str()))
                .map(|(id, value)| json!({"id": id, "value": value.to_string()}))
                .collect();
            ok(json!(found))
        }
    }
}

/// The web dashboard: one page of plain HTML, CSS and JavaScript over this API, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], DASHBOARD).into_response()
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI description of this API.
const OPENAPI: &str = include_str!("openapi.json");

async fn prometheus(State(d): Api) -> Response {
    let body = metrics::render(d.node());
    ([(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

async fn cluster(State(d): Api) -> Reply {
    let node = d.node();
    let statuses = node.cluster_status().await;
    let changes = node.state().read(|s| s.cluster.leader_changes.clone());
    ok(flink::cluster(node, &statuses, &changes))
}

/// Parses an optional JSON body: empty means all defaults.
fn parse_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| RestError::BadRequest(format!("invalid JSON body: {e}")))
}
