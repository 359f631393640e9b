//! `jm taskmanager`: one TaskManager process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::api::grpc::taskmanager::{serve_task_executor, GrpcJobManagerGateway};
use crate::api::grpc::{self};
use crate::api::rest;
use crate::raft::command::MAX_SLOTS_PER_TASK_MANAGER;
use crate::taskmanager::{load_or_create_id, TaskManager, TaskManagerConfig};

const EXAMPLES: &str = "
  # 4 slots, serving the leader on port 6200 of 10.0.0.5, in zone eu-1a
  jm taskmanager --cluster 10.0.0.1:6123,10.0.0.2:6123,10.0.0.3:6123 --slots 4 \\
    --data-dir /var/lib/jm-tm --listen 0.0.0.0:6200 --advertise 10.0.0.5:6200 --zone eu-1a

  # One more TaskManager for the cluster `jm local` started
  jm taskmanager --data-dir /tmp/jm-tm-3 --slots 8
";

/// `jm taskmanager` options.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = super::examples(EXAMPLES))]
pub struct TaskManagerArgs {
    /// Client API addresses of the replicas, comma-separated (any subset that includes a live replica works).
    #[arg(long, env = "JM_CLUSTER", default_value = super::DEFAULT_CLUSTER, value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// Task slots offered: how many subtask slices (one subtask of each vertex of a job) run at once.
    #[arg(long, env = "JM_SLOTS", default_value_t = 4)]
    pub slots: u32,
    /// Directory for the TaskManager's id (kept across restarts).
    #[arg(long, env = "JM_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to serve the leader's commands on.
    #[arg(long, env = "JM_TM_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Address the replicas reach this TaskManager at; default: the listen address.
    #[arg(long, env = "JM_TM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Failure domain (availability zone) for spreading jobs.
    #[arg(long, env = "JM_ZONE")]
    pub zone: Option<String>,
    /// Address to serve `/metrics` (Prometheus) and `/` (what runs here, JSON) on; none by default.
    #[arg(long, env = "JM_TM_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Time between heartbeats to the leader.
    #[arg(long, env = "JM_TM_HEARTBEAT_MS", default_value_t = 500)]
    pub heartbeat_ms: u64,
}

/// Runs a TaskManager until SIGTERM or Ctrl-C.
pub async fn run(args: TaskManagerArgs) -> Result<()> {
    super::init_logging("info");
    if args.slots == 0 || args.slots > MAX_SLOTS_PER_TASK_MANAGER {
        bail!("--slots must be from 1 to {MAX_SLOTS_PER_TASK_MANAGER}, got {}", args.slots);
    }
    let cluster: Vec<String> = args.cluster.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if cluster.is_empty() {
        bail!("no replicas given: pass --cluster HOST:PORT,...");
    }
    let tm_id = load_or_create_id(&args.data_dir)
        .with_context(|| format!("cannot use data dir {}", args.data_dir.display()))?;
    let listener = grpc::bind(&args.listen).await.map_err(|e| anyhow!(e))?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    let advertise = args.advertise.unwrap_or_else(|| bound.to_string());
    tracing::info!(%tm_id, listen = %bound, %advertise, slots = args.slots, "starting TaskManager");
    let config = TaskManagerConfig {
        tm_id,
        cluster,
        advertise,
        slots: args.slots,
        zone: args.zone,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(10)),
        rpc_timeout: Duration::from_secs(2),
    };
    let tm = TaskManager::start(config, Arc::new(GrpcJobManagerGateway::new()));
    if let Some(http) = &args.http_listen {
        let listener = grpc::bind(http).await.map_err(|e| anyhow!(e))?;
        let bound = listener.local_addr().context("cannot read the bound HTTP address")?;
        tracing::info!(http = %bound, "serving /metrics");
        let tm = tm.clone();
        tokio::spawn(async move {
            if let Err(e) = rest::taskmanager::serve(tm, listener, super::server::shutdown_signal()).await {
                tracing::error!(error = %e, "TaskManager HTTP endpoint failed");
            }
        });
    }
    serve_task_executor(Arc::new(tm), listener, super::server::shutdown_signal())
        .await
        .context("gRPC server failed")?;
    tracing::info!("TaskManager shutting down");
    Ok(())
}
