//! `jm server`: one replica.
//!
//! Configuration comes from flags, each with an environment-variable fallback, over an optional TOML
//! file (`--config`); a flag or variable beats the file, the file beats the default. The file uses the
//! flags' names with underscores:
//!
//! ```toml
//! id = 1
//! data_dir = "/var/lib/jm"
//! peers = "1=10.0.0.1:7123/10.0.0.1:6123,2=10.0.0.2:7123/10.0.0.2:6123,3=10.0.0.3:7123/10.0.0.3:6123"
//! heartbeat_ms = 100
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tracing::Instrument;

use crate::api::grpc::runtime::GrpcRuntimeSource;
use crate::api::grpc::taskmanager::GrpcTaskExecutorGateway;
use crate::api::grpc::{self, GrpcTransport};
use crate::api::rest;
use crate::cluster::{Compaction, NodeConfig, ReplicaNode, SystemClock, Timing};
use crate::dispatcher::Dispatcher;
use crate::job_master::JobMasterConfig;
use crate::leader::{LeaderConfig, LeaderServices};
use crate::raft::{Engine, LossyEngine, Node, NodeId, SledEngine};
use crate::resource_manager::placement::PlacementPolicy;
use crate::resource_manager::RmConfig;

const EXAMPLES: &str = "
  # Replica 1 of 3 (the same with --id 2 and --id 3 on the other hosts)
  jm server --id 1 --data-dir /var/lib/jm \\
    --peers 1=10.0.0.1:7123/10.0.0.1:6123,2=10.0.0.2:7123/10.0.0.2:6123,3=10.0.0.3:7123/10.0.0.3:6123

  # Settings from a TOML file, serving the REST API and the dashboard on port 8081
  jm server --config /etc/jm/jm.toml --http-listen 0.0.0.0:8081

  # JSON log lines for a log pipeline; requests carry a request_id across replicas
  jm server --config /etc/jm/jm.toml --log-format json
";

/// Flags of `jm server`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_long_help = super::examples(EXAMPLES))]
pub struct ServerArgs {
    /// A TOML file with any of the settings below.
    #[arg(long, env = "JM_CONFIG")]
    pub config: Option<PathBuf>,
    /// This replica's id (a key of --peers).
    #[arg(long, env = "JM_NODE_ID")]
    pub id: Option<NodeId>,
    /// The initial members: `ID=RAFT_ADDR/API_ADDR,...`, the same on every replica.
    #[arg(long, env = "JM_PEERS")]
    pub peers: Option<String>,
    /// Where to keep the log and snapshots.
    #[arg(long, env = "JM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address of the peer (Raft) service; defaults to this replica's address in --peers.
    #[arg(long, env = "JM_RAFT_LISTEN")]
    pub raft_listen: Option<String>,
    /// Listen address of the client API; defaults to this replica's address in --peers.
    #[arg(long, env = "JM_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Leader heartbeat interval.
    #[arg(long, env = "JM_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout.
    #[arg(long, env = "JM_ELECTION_MIN_MS")]
    pub election_min_ms: Option<u64>,
    /// Maximum election timeout.
    #[arg(long, env = "JM_ELECTION_MAX_MS")]
    pub election_max_ms: Option<u64>,
    /// Leader lease: a leader that has not heard from a quorum for this long stops acting as leader
    /// (default and maximum: the maximum election timeout).
    #[arg(long, env = "JM_LEADER_LEASE_MS")]
    pub leader_lease_ms: Option<u64>,
    /// How long a write may wait for a leader and a commit.
    #[arg(long, env = "JM_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Build a snapshot (and compact the log) every this many entries.
    #[arg(long, env = "JM_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Entries kept in the log below the newest snapshot.
    #[arg(long, env = "JM_KEEP_BELOW_SNAPSHOT")]
    pub keep_below_snapshot: Option<u64>,
    /// Memory for log entries kept decoded in memory, in MiB (older ones are read from disk).
    #[arg(long, env = "JM_LOG_CACHE_MIB")]
    pub log_cache_mib: Option<usize>,
    /// Checkpoint storage directory, shared with every TaskManager (Flink's state.checkpoints.dir). Default:
    /// `<data-dir>/checkpoints`, which only works when TaskManagers run on the same machine.
    #[arg(long, env = "JM_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Default savepoint directory (Flink's state.savepoints.dir). Default: `<checkpoint-dir>/savepoints`.
    #[arg(long, env = "JM_SAVEPOINT_DIR")]
    pub savepoint_dir: Option<PathBuf>,
    /// A TaskManager silent for this long is declared dead and its slots released.
    #[arg(long, env = "JM_TM_HEARTBEAT_TIMEOUT_MS")]
    pub tm_heartbeat_timeout_ms: Option<u64>,
    /// Where jobs' slots go: `spread` (across TaskManagers and zones) or `pack` (fill one TaskManager first).
    #[arg(long, env = "JM_PLACEMENT")]
    pub placement: Option<String>,
    /// How long a job waits for enough free slots before that counts as a failure.
    #[arg(long, env = "JM_SLOT_REQUEST_TIMEOUT_MS")]
    pub slot_request_timeout_ms: Option<u64>,
    /// Where to serve the REST API (Flink's paths, like Flink's port 8081); off when not given.
    #[arg(long, env = "JM_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// The failure domain (availability zone) this replica runs in, shown by `/cluster` and the dashboard.
    #[arg(long, env = "JM_ZONE")]
    pub zone: Option<String>,
    /// Dial some peers at other addresses than the ones in --peers: `ID=ADDR,...` (a proxy or NAT in between;
    /// the chaos suite puts its fault-injecting proxies here).
    #[arg(long, env = "JM_PEER_VIA")]
    pub peer_via: Option<String>,
    /// TEST ONLY, UNSAFE: `durable` (the default) or `lose-unsynced`, which keeps every write in memory until its
    /// flush, so a crash loses all that was not flushed (the chaos suite's `--lose-unsynced`; never in production).
    #[arg(long, env = "JM_STORAGE_MODE")]
    pub storage_mode: Option<String>,
    /// TEST ONLY: arm a failpoint at startup, `NAME=ACTION` (repeatable), e.g. `disk-after-fsync=1*return`; needs
    /// a binary built with `--features failpoints`.
    #[arg(long = "failpoint", value_name = "NAME=ACTION")]
    pub failpoints: Vec<String>,
}

/// How the replica's storage treats writes not yet flushed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageMode {
    /// sled as it is: what the disk writer flushed survives a crash, and usually more.
    #[default]
    Durable,
    /// Test only: a [`LossyEngine`] over sled; a crash loses everything not flushed.
    LoseUnsynced,
}

impl std::str::FromStr for StorageMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "durable" => Ok(Self::Durable),
            "lose-unsynced" => Ok(Self::LoseUnsynced),
            other => Err(format!("unknown storage mode {other:?}; known: durable, lose-unsynced (test only)")),
        }
    }
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<NodeId>,
    peers: Option<String>,
    data_dir: Option<PathBuf>,
    raft_listen: Option<String>,
    api_listen: Option<String>,
    heartbeat_ms: Option<u64>,
    election_min_ms: Option<u64>,
    election_max_ms: Option<u64>,
    leader_lease_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    snapshot_every: Option<u64>,
    keep_below_snapshot: Option<u64>,
    log_cache_mib: Option<usize>,
    checkpoint_dir: Option<PathBuf>,
    savepoint_dir: Option<PathBuf>,
    tm_heartbeat_timeout_ms: Option<u64>,
    placement: Option<String>,
    slot_request_timeout_ms: Option<u64>,
    http_listen: Option<String>,
    zone: Option<String>,
    peer_via: Option<String>,
}

/// Parses `ID=RAFT_ADDR/API_ADDR,...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, Node>> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part.split_once('=').ok_or_else(|| anyhow!("peer {part:?} is not ID=RAFT_ADDR/API_ADDR"))?;
        let id: NodeId = id.trim().parse().map_err(|_| anyhow!("peer id {id:?} is not a number"))?;
        let (raft, api) = addrs.split_once('/').ok_or_else(|| anyhow!("peer {part:?} is not ID=RAFT_ADDR/API_ADDR"))?;
        let node = Node { raft_addr: raft.trim().to_string(), api_addr: api.trim().to_string() };
        if node.raft_addr.is_empty() || node.api_addr.is_empty() {
            bail!("peer {part:?} has an empty address");
        }
        if peers.insert(id, node).is_some() {
            bail!("peer id {id} appears twice");
        }
    }
    if peers.is_empty() {
        bail!("no peers given: pass --peers ID=RAFT_ADDR/API_ADDR,... (or JM_PEERS)");
    }
    Ok(peers)
}

fn read_file_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// The resolved configuration and the listen addresses.
pub struct Resolved {
    /// The node configuration.
    pub node: NodeConfig,
    /// Settings of the leader-only services.
    pub leader: LeaderConfig,
    /// Where the peer service listens.
    pub raft_listen: String,
    /// Where the client API listens.
    pub api_listen: String,
    /// Where the REST API listens, if anywhere.
    pub http_listen: Option<String>,
    /// Peers dialed at another address than their advertised one.
    pub peer_via: HashMap<NodeId, String>,
    /// How the storage treats unflushed writes (test-only modes are flag-only, never from the file).
    pub storage_mode: StorageMode,
    /// Failpoints to arm at startup, `NAME=ACTION`.
    pub failpoints: Vec<String>,
}

/// Merges flags, environment and file into a configuration.
pub fn resolve(args: ServerArgs) -> Result<Resolved> {
    let file = match &args.config {
        Some(path) => read_file_config(path)?,
        None => FileConfig::default(),
    };
    let id = args.id.or(file.id).ok_or_else(|| anyhow!("no node id: pass --id (or JM_NODE_ID)"))?;
    let peers = parse_peers(
        &args.peers.or(file.peers).ok_or_else(|| anyhow!("no peers: pass --peers ID=RAFT_ADDR/API_ADDR,..."))?,
    )?;
    let data_dir = args.data_dir.or(file.data_dir).ok_or_else(|| anyhow!("no data dir: pass --data-dir"))?;
    let own = peers.get(&id).cloned().ok_or_else(|| anyhow!("node id {id} is not in the peer list"))?;
    let ms = Duration::from_millis;
    let d = Timing::default();
    let election_max = args.election_max_ms.or(file.election_max_ms).map_or(d.election_max, ms);
    let timing = Timing {
        heartbeat: args.heartbeat_ms.or(file.heartbeat_ms).map_or(d.heartbeat, ms),
        election_min: args.election_min_ms.or(file.election_min_ms).map_or(d.election_min, ms),
        election_max,
        write_timeout: args.write_timeout_ms.or(file.write_timeout_ms).map_or(d.write_timeout, ms),
        leader_lease: args.leader_lease_ms.or(file.leader_lease_ms).map_or(election_max, ms),
    };
    let c = Compaction::default();
    let compaction = Compaction {
        snapshot_every: args.snapshot_every.or(file.snapshot_every).unwrap_or(c.snapshot_every),
        keep_below_snapshot: args.keep_below_snapshot.or(file.keep_below_snapshot).unwrap_or(c.keep_below_snapshot),
        snapshot_chunk_bytes: c.snapshot_chunk_bytes,
        log_cache_bytes: args.log_cache_mib.or(file.log_cache_mib).map_or(c.log_cache_bytes, |m| m * 1024 * 1024),
    };
    let checkpoint_dir = args.checkpoint_dir.or(file.checkpoint_dir).unwrap_or_else(|| data_dir.join("checkpoints"));
    let savepoint_dir = args.savepoint_dir.or(file.savepoint_dir).unwrap_or_else(|| checkpoint_dir.join("savepoints"));
    let placement: PlacementPolicy = match args.placement.or(file.placement) {
        Some(text) => text.parse().map_err(|e| anyhow!("--placement: {e}"))?,
        None => PlacementPolicy::default(),
    };
    let leader = LeaderConfig {
        rm: RmConfig {
            heartbeat_timeout: args
                .tm_heartbeat_timeout_ms
                .or(file.tm_heartbeat_timeout_ms)
                .map_or(Duration::from_secs(5), ms),
            placement,
        },
        job_master: JobMasterConfig {
            checkpoint_dir: absolute(checkpoint_dir)?,
            savepoint_dir: absolute(savepoint_dir)?,
            rpc_timeout: Duration::from_secs(5),
            slot_request_timeout: args
                .slot_request_timeout_ms
                .or(file.slot_request_timeout_ms)
                .map_or(Duration::from_secs(300), ms),
            deployment_grace: Duration::from_secs(3),
        },
    };
    let zone = args.zone.or(file.zone).map(|z| z.trim().to_string()).filter(|z| !z.is_empty());
    let peer_via = match args.peer_via.or(file.peer_via) {
        Some(text) => parse_peer_via(&text, &peers, id)?,
        None => HashMap::new(),
    };
    let storage_mode = match &args.storage_mode {
        Some(text) => text.parse().map_err(|e| anyhow!("--storage-mode: {e}"))?,
        None => StorageMode::default(),
    };
    let node = NodeConfig { id, data_dir, peers, timing, compaction, zone };
    node.validate().map_err(|e| anyhow!(e))?;
    Ok(Resolved {
        node,
        leader,
        raft_listen: args.raft_listen.or(file.raft_listen).unwrap_or(own.raft_addr),
        api_listen: args.api_listen.or(file.api_listen).unwrap_or(own.api_addr),
        http_listen: args.http_listen.or(file.http_listen),
        peer_via,
        storage_mode,
        failpoints: args.failpoints,
    })
}

/// Parses `ID=ADDR,...` for `--peer-via`; every id must be a peer other than this replica.
fn parse_peer_via(text: &str, peers: &BTreeMap<NodeId, Node>, own: NodeId) -> Result<HashMap<NodeId, String>> {
    let mut via = HashMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| anyhow!("--peer-via {part:?} is not ID=ADDR"))?;
        let id: NodeId = id.trim().parse().map_err(|_| anyhow!("--peer-via: peer id {id:?} is not a number"))?;
        if id == own || !peers.contains_key(&id) {
            bail!("--peer-via: {id} is not another replica in --peers");
        }
        if addr.trim().is_empty() || via.insert(id, addr.trim().to_string()).is_some() {
            bail!("--peer-via: peer {id} has an empty or repeated address");
        }
    }
    Ok(via)
}

/// Runs a replica until SIGTERM or Ctrl-C.
/// `path` made absolute against the working directory: the JobMasters hand it to TaskManagers, which may run
/// elsewhere.
fn absolute(path: PathBuf) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path);
    }
    Ok(std::env::current_dir().context("cannot read the working directory")?.join(path))
}

pub async fn run(args: ServerArgs) -> Result<()> {
    super::init_logging("info,openraft=warn");
    let resolved = resolve(args)?;
    let span = tracing::info_span!("replica", node_id = resolved.node.id);
    run_replica(resolved).instrument(span).await
}

async fn run_replica(resolved: Resolved) -> Result<()> {
    let config = resolved.node;
    let leader_config = resolved.leader;
    tracing::info!(id = config.id, data_dir = %config.data_dir.display(), raft = %resolved.raft_listen,
        api = %resolved.api_listen, "starting replica");
    for spec in &resolved.failpoints {
        crate::failpoint::configure_spec(spec).map_err(|e| anyhow!("--failpoint {spec}: {e}"))?;
    }
    let raft_listener = grpc::bind(&resolved.raft_listen).await.map_err(|e| anyhow!(e))?;
    let api_listener = grpc::bind(&resolved.api_listen).await.map_err(|e| anyhow!(e))?;
    let sled: Arc<dyn Engine> = Arc::new(SledEngine::open(&config.data_dir.join("raft"))?);
    let engine: Arc<dyn Engine> = match resolved.storage_mode {
        StorageMode::Durable => sled,
        StorageMode::LoseUnsynced => {
            tracing::warn!("--storage-mode lose-unsynced: a crash loses every unflushed write (test only)");
            Arc::new(LossyEngine::new(sled))
        }
    };
    let node = ReplicaNode::start(
        config,
        engine,
        Arc::new(GrpcTransport::new().with_dial_via(resolved.peer_via.clone())),
        Arc::new(SystemClock),
    )
    .await
    .context("replica failed to start")?;
    let gateway = Arc::new(GrpcTaskExecutorGateway::new());
    let services = LeaderServices::start(node.clone(), leader_config.clone(), gateway);
    let runtime = Arc::new(GrpcRuntimeSource::new(services.clone()));
    let dispatcher = Dispatcher::new(node.clone()).with_runtime(runtime);
    if let Some(http) = &resolved.http_listen {
        let listener = grpc::bind(http).await.map_err(|e| anyhow!(e))?;
        tracing::info!(http = %http, "serving the REST API");
        let settings = Arc::new(settings_list(node.config(), &leader_config, http));
        let rest_dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            if let Err(e) = rest::serve(rest_dispatcher, settings, listener, shutdown_signal()).await {
                tracing::error!(error = %e, "REST API failed");
            }
        });
    }
    let raft_incoming = grpc::incoming(raft_listener);
    grpc::serve(dispatcher, Arc::new(services), raft_incoming, grpc::incoming(api_listener), shutdown_signal())
        .await
        .context("gRPC server failed")?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
/// The replica's effective settings, for `GET /jobmanager/config`.
fn settings_list(node: &NodeConfig, leader: &LeaderConfig, http: &str) -> Vec<(String, String)> {
    let peers: Vec<String> = node.peers.iter().map(|(id, n)| format!("{id}={}/{}", n.raft_addr, n.api_addr)).collect();
    let ms = |d: Duration| d.as_millis().to_string();
    vec![
        ("jobmanager.node-id".into(), node.id.to_string()),
        ("jobmanager.peers".into(), peers.join(",")),
        ("jobmanager.data-dir".into(), node.data_dir.display().to_string()),
        ("jobmanager.zone".into(), node.zone.clone().unwrap_or_default()),
        ("rest.address".into(), http.to_string()),
        ("raft.heartbeat-ms".into(), ms(node.timing.heartbeat)),
        ("raft.election-min-ms".into(), ms(node.timing.election_min)),
        ("raft.election-max-ms".into(), ms(node.timing.election_max)),
        ("raft.leader-lease-ms".into(), ms(node.timing.leader_lease)),
        ("raft.write-timeout-ms".into(), ms(node.timing.write_timeout)),
        ("raft.snapshot-every".into(), node.compaction.snapshot_every.to_string()),
        ("state.checkpoints.dir".into(), leader.job_master.checkpoint_dir.display().to_string()),
        ("state.savepoints.dir".into(), leader.job_master.savepoint_dir.display().to_string()),
        ("heartbeat.timeout".into(), ms(leader.rm.heartbeat_timeout)),
        ("slot.request.timeout".into(), ms(leader.job_master.slot_request_timeout)),
        ("cluster.placement".into(), leader.rm.placement.to_string()),
    ]
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_say_why() {
        let p = parse_peers("1=a:1/a:2, 2=b:1/b:2").unwrap();
        assert_eq!(p[&2], Node { raft_addr: "b:1".into(), api_addr: "b:2".into() });
        assert!(parse_peers("1=a:1").unwrap_err().to_string().contains("ID=RAFT_ADDR/API_ADDR"));
        assert!(parse_peers("x=a/b").unwrap_err().to_string().contains("not a number"));
        assert!(parse_peers("1=a/b,1=c/d").unwrap_err().to_string().contains("twice"));
        assert!(parse_peers("").is_err());
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jm.toml");
        std::fs::write(&path, "id = 2\npeers = \"1=a:1/a:2,2=b:1/b:2\"\ndata_dir = \"/tmp/x\"\nheartbeat_ms = 60\nelection_max_ms = 700\n").unwrap();
        let args = ServerArgs { config: Some(path.clone()), election_max_ms: Some(800), ..Default::default() };
        let r = resolve(args).unwrap();
        assert_eq!(r.node.id, 2);
        assert_eq!(r.node.timing.heartbeat, Duration::from_millis(60));
        assert_eq!(r.node.timing.election_max, Duration::from_millis(800));
        assert_eq!(r.node.timing.leader_lease, Duration::from_millis(800));
        assert_eq!(r.api_listen, "b:2");
        assert_eq!(r.storage_mode, StorageMode::Durable);
        let lossy =
            ServerArgs { config: Some(path.clone()), storage_mode: Some("lose-unsynced".into()), ..Default::default() };
        assert_eq!(resolve(lossy).unwrap().storage_mode, StorageMode::LoseUnsynced);
        let bad = ServerArgs { config: Some(path.clone()), storage_mode: Some("fast".into()), ..Default::default() };
        assert!(format!("{:#}", resolve(bad).err().unwrap()).contains("lose-unsynced"));
        std::fs::write(&path, "idd = 2\n").unwrap();
        let err = resolve(ServerArgs { config: Some(path), ..Default::default() }).err().unwrap();
        assert!(format!("{err:#}").contains("unknown field"));
    }
}
