//! `jm cluster status|members|compact`.

use anyhow::Result;
use serde_json::json;

use super::output::{print_json, table, Format};
use super::ClientArgs;
use crate::api::grpc::pb;

const EXAMPLES: &str = "
  # Leader, term, and each replica's log, commit and applied index
  jm cluster status

  # The replicas of a remote cluster and who leads
  jm cluster members --cluster 10.0.0.1:6123
";

const STATUS_EXAMPLES: &str = "
  # The cluster `jm local` started
  jm cluster status

  # A remote cluster, as JSON
  jm cluster status --cluster 10.0.0.1:6123,10.0.0.2:6123 -o json
";

const MEMBERS_EXAMPLES: &str = "
  # Replica ids, their peer and client addresses, and who leads
  jm cluster members --cluster 10.0.0.1:6123
";

const COMPACT_EXAMPLES: &str = "
  # Snapshot replica 2's state now and compact its log
  jm cluster compact --cluster 10.0.0.2:6123
";

/// Cluster commands.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = super::examples(EXAMPLES))]
pub enum ClusterCommand {
    /// Members, leader, term, and each replica's log, commit and applied index.
    #[command(after_long_help = super::examples(STATUS_EXAMPLES))]
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The replicas: id, addresses, and who leads.
    #[command(after_long_help = super::examples(MEMBERS_EXAMPLES))]
    Members {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Snapshot one replica's state now and compact its log (the replica the first --cluster address
    /// reaches).
    #[command(after_long_help = super::examples(COMPACT_EXAMPLES))]
    Compact {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs a cluster command.
pub async fn run(cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Status { client } => status(client).await,
        ClusterCommand::Compact { client } => compact(client).await,
        ClusterCommand::Members { client } => members(client).await,
    }
}

async fn members(client: ClientArgs) -> Result<()> {
    let reply =
        client.client().call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await?;
    match client.output {
        Format::Json => print_json(&json!({
            "leader": reply.leader,
            "term": reply.term,
            "members": reply.replicas.iter().map(|r| json!({
                "id": r.node_id, "raft_addr": r.raft_addr, "api_addr": r.api_addr, "reachable": r.reachable,
                "leader": Some(r.node_id) == reply.leader,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let rows: Vec<Vec<String>> = reply
                .replicas
                .iter()
                .map(|r| {
                    let role = if Some(r.node_id) == reply.leader { "leader" } else { "" };
                    let reach = if r.reachable { "yes" } else { "no" };
                    vec![r.node_id.to_string(), r.api_addr.clone(), r.raft_addr.clone(), reach.into(), role.into()]
                })
                .collect();
            println!("{}", table(&["ID", "API", "RAFT", "REACHABLE", "ROLE"], &rows));
        }
    }
    Ok(())
}

async fn compact(client: ClientArgs) -> Result<()> {
    let reply = client.client().call(|mut c| async move { c.compact(pb::CompactRequest {}).await }).await?;
    match client.output {
        Format::Json => print_json(&json!({
            "served_by": reply.served_by, "snapshot_index": reply.snapshot_index, "purged_index": reply.purged_index,
        })),
        Format::Table => println!(
            "Replica {} snapshotted up to index {} and purged its log up to index {}.",
            reply.served_by, reply.snapshot_index, reply.purged_index
        ),
    }
    Ok(())
}

async fn status(client: ClientArgs) -> Result<()> {
    let reply =
        client.client().call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await?;
    match client.output {
        Format::Json => print_json(&json!({
            "served_by": reply.served_by, "leader": reply.leader, "term": reply.term,
            "replicas": reply.replicas.iter().map(|r| json!({
                "node_id": r.node_id, "raft_addr": r.raft_addr, "api_addr": r.api_addr, "reachable": r.reachable,
                "error": if r.error.is_empty() { None } else { Some(&r.error) },
                "state": r.state, "term": r.term, "leader": r.leader, "last_log_index": r.last_log_index,
                "committed_index": r.committed_index, "applied_index": r.applied_index,
                "snapshot_index": r.snapshot_index, "purged_index": r.purged_index,
                "leader_services_active": r.leader_services_active, "leader_activations": r.leader_activations,
                "data_dir_bytes": r.data_dir_bytes,
                "ms_since_leader_contact": r.ms_since_leader_contact,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let leader = reply.leader.map_or("none".to_string(), |l| l.to_string());
            println!("Leader: {leader}   Term: {}   (answered by replica {})", reply.term, reply.served_by);
            let rows: Vec<Vec<String>> = reply
                .replicas
                .iter()
                .map(|r| {
                    if !r.reachable {
                        return vec![
                            r.node_id.to_string(),
                            r.api_addr.clone(),
                            "UNREACHABLE".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            r.error.clone(),
                        ];
                    }
                    vec![
                        r.node_id.to_string(),
                        r.api_addr.clone(),
                        r.state.clone(),
                        r.term.to_string(),
                        r.last_log_index.to_string(),
                        r.committed_index.to_string(),
                        r.applied_index.to_string(),
                        r.ms_since_leader_contact.map_or("-".into(), |ms| format!("{ms} ms")),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(
                    &["ID", "API ADDRESS", "STATE", "TERM", "LAST LOG", "COMMITTED", "APPLIED", "LEADER CONTACT"],
                    &rows
                )
            );
        }
    }
    Ok(())
}
