//! The crash faults' side of the harness: probing whether the replicas' `jm` has failpoints, and arming or disarming
//! one on a replica, through the test-only admin RPC (`proto/admin.proto`) on the replica's client API address.
//!
//! A crash fault arms its failpoint with `1*return` (crash at the next pass), waits up to the hold for the process
//! to die, and otherwise disarms it, so a failpoint that did not fire (no flush, no checkpoint in the window) does
//! not fire later, outside the fault's window in the history. A replica restarted after the crash comes back
//! disarmed.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use jobmanager::api::grpc::admin_pb::admin_client::AdminClient;
use jobmanager::api::grpc::admin_pb::{ListFailpointsRequest, SetFailpointRequest};
use tonic::transport::{Channel, Endpoint};

/// How long an admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The action crash faults arm: crash the first time the failpoint is passed.
pub const CRASH_ONCE: &str = "1*return";

async fn connect(api: &str) -> Result<AdminClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{api}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| anyhow!("cannot reach {api}: {e}"))?;
    Ok(AdminClient::new(channel))
}

/// Fails with a message saying how to build one when the replica at `api` has no failpoints (or no admin service).
pub async fn require_failpoints(api: &str) -> Result<()> {
    let reply = connect(api).await?.list_failpoints(ListFailpointsRequest {}).await;
    let how = "build one with `cargo build --features failpoints --target-dir target/failpoints` and set \
               JM_BIN=target/failpoints/debug/jm (or run `jepsen/run`, which does it for crash faults)";
    match reply {
        Ok(r) if r.get_ref().compiled => Ok(()),
        Ok(_) => bail!("the crash faults need a jm built with the `failpoints` feature; {how}"),
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            bail!("this jm has no admin service (too old for the crash faults); {how}")
        }
        Err(s) => bail!("cannot ask {api} for its failpoints: {}", s.message()),
    }
}

/// Arms (or with `off` disarms) failpoint `name` on the replica at `api`.
pub async fn set(api: &str, name: &str, action: &str) -> Result<()> {
    let request = SetFailpointRequest { name: name.to_string(), action: action.to_string() };
    connect(api).await?.set_failpoint(request).await.map_err(|s| anyhow!("{}: {}", s.code(), s.message()))?;
    Ok(())
}

/// Arms failpoint `name` on the replica at `api` to crash it at the next pass ([`CRASH_ONCE`]). A replica writes on
/// its own too (a leader's JobMasters record status changes without any client), so it can die at the failpoint
/// before its reply leaves the process: a reply lost once connected counts as armed, and the caller's hold finds
/// out whether the replica died (else it disarms the failpoint).
pub async fn arm_crash(api: &str, name: &str) -> Result<()> {
    let request = SetFailpointRequest { name: name.to_string(), action: CRASH_ONCE.to_string() };
    match connect(api).await?.set_failpoint(request).await {
        Ok(_) => Ok(()),
        Err(s) if matches!(s.code(), tonic::Code::Unknown | tonic::Code::Unavailable) => {
            tracing::info!(api, failpoint = name, status = %s, "no reply to the arming; taken as armed");
            Ok(())
        }
        Err(s) => Err(anyhow!("{}: {}", s.code(), s.message())),
    }
}
