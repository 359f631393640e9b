//! Crashes at the worst moments, on real `jm server` processes: a replica killed by its own failpoint just before
//! or just after a disk flush (a build with `--features failpoints`: `cargo test --features failpoints --test
//! failpoints`), and replicas SIGKILLed in the storage mode that loses every unflushed write. In every case each
//! acknowledged write must still be on every replica afterwards. Without the feature, the admin RPC must say how to
//! get one.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{submit, TestCluster};
use jobmanager::api::grpc::admin_pb::admin_client::AdminClient;
use jobmanager::api::grpc::admin_pb::{ListFailpointsRequest, SetFailpointRequest};
use jobmanager::api::grpc::pb::job_manager_client::JobManagerClient;
use tonic::transport::Channel;

const ELECTION: Duration = Duration::from_secs(15);

async fn admin(cluster: &TestCluster, id: u64) -> AdminClient<Channel> {
    AdminClient::connect(format!("http://{}", cluster.addr(id))).await.unwrap()
}

/// Submits job `name` (idempotency key = name) through any live replica until one acknowledges it; returns its id
/// and log index. A write whose first attempts died with a replica is retried with the same key, so it lands once.
async fn submit_until_acked(cluster: &TestCluster, name: &str) -> (String, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for id in cluster.live() {
            let connect = JobManagerClient::connect(format!("http://{}", cluster.addr(id)));
            let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(2), connect).await else { continue };
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), submit(&mut client, name, name)).await {
                return (reply.job_id, reply.write.map_or(0, |w| w.log_index));
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no replica acknowledged {name} within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every acknowledged job is on every live replica, read from that replica's own state.
async fn assert_everywhere(cluster: &TestCluster, acked: &BTreeSet<String>, last_index: u64) {
    for id in cluster.live() {
        cluster.wait_applied(id, last_index, Duration::from_secs(30)).await;
        let held: BTreeSet<String> = cluster.jobs_on(id).await.into_iter().collect();
        let missing: Vec<_> = acked.difference(&held).collect();
        assert!(missing.is_empty(), "replica {id} lacks acknowledged jobs {missing:?}");
    }
}

/// SIGKILLs every replica at once and restarts them all on their data dirs.
fn restart_all(cluster: &mut TestCluster) {
    let ids: Vec<u64> = cluster.live();
    for id in &ids {
        cluster.kill(*id);
    }
    for id in ids {
        cluster.spawn(id);
    }
}

/// In the lose-unsynced mode a SIGKILL loses everything a replica had not flushed, and a restart of the whole
/// cluster at once leaves only what was flushed anywhere. Every acknowledged write must survive that: the leader
/// acknowledges an entry only once a majority flushed it. (A disk writer that ran durability callbacks before the
/// flush, or a log store that acknowledged appends before asking for one, fails this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kills_that_lose_every_unflushed_write() {
    let mut cluster = TestCluster::start(3, &["--storage-mode", "lose-unsynced"]);
    let leader = cluster.wait_leader(ELECTION).await;
    assert!(cluster.log(leader).contains("lose-unsynced"), "the replicas do not run in the lossy mode");
    let mut acked = BTreeSet::new();
    let mut last_index = 0;
    for round in 0..3 {
        for i in 0..10 {
            let (job, index) = submit_until_acked(&cluster, &format!("lossy-{round}-{i}")).await;
            acked.insert(job);
            last_index = last_index.max(index);
        }
        if round == 1 {
            // The leader alone, right after its last acknowledgement.
            let leader = cluster.wait_leader(ELECTION).await;
            cluster.kill(leader);
            cluster.wait_leader(ELECTION).await;
            cluster.spawn(leader);
        } else {
            restart_all(&mut cluster);
        }
        cluster.wait_leader(ELECTION).await;
    }
    assert_everywhere(&cluster, &acked, last_index).await;
}

#[cfg(not(feature = "failpoints"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_without_failpoints_says_so_and_how_to_build_one() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_leader(ELECTION).await;
    let mut client = admin(&cluster, 1).await;
    let list = client.list_failpoints(ListFailpointsRequest {}).await.unwrap().into_inner();
    assert!(!list.compiled);
    assert!(list.known.contains(&"disk-before-fsync".to_string()), "{:?}", list.known);
    let request = SetFailpointRequest { name: "disk-before-fsync".into(), action: "return".into() };
    let refused = client.set_failpoint(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("cargo build --features failpoints"), "{}", refused.message());
}

#[cfg(feature = "failpoints")]
mod with_failpoints {
    use super::*;

    /// Waits until replica `id` exits by itself; returns its exit code and reaps it (so it can be spawned again).
    async fn wait_exit(cluster: &mut TestCluster, id: u64) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = cluster.replicas.iter_mut().find(|r| r.id == id).unwrap();
            if let Some(status) = r.child.as_mut().unwrap().try_wait().unwrap() {
                r.child = None;
                return status.code();
            }
            assert!(tokio::time::Instant::now() < deadline, "replica {id} did not crash at its failpoint");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Arms `failpoint` with `1*return` on replica `id`, which is to die at it. The replica's own background writes
    /// (a leader's JobMasters record status changes and "waiting for slots" without any client) can make it die
    /// there before its reply leaves the process: a lost reply is accepted, and the caller checks the exit and the
    /// log line that say it died at this failpoint.
    async fn arm_to_crash(cluster: &TestCluster, id: u64, failpoint: &str) {
        let request = SetFailpointRequest { name: failpoint.into(), action: "1*return".into() };
        if let Err(status) = admin(cluster, id).await.set_failpoint(request).await {
            let lost_reply = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable);
            assert!(lost_reply, "arming {failpoint} on replica {id} was refused: {status}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_failpoints_and_bad_actions_are_refused_with_the_known_ones() {
        let cluster = TestCluster::start(1, &[]);
        cluster.wait_leader(ELECTION).await;
        let mut client = admin(&cluster, 1).await;
        let list = client.list_failpoints(ListFailpointsRequest {}).await.unwrap().into_inner();
        assert!(list.compiled && list.armed.is_empty(), "{list:?}");
        let unknown = SetFailpointRequest { name: "disk-before-sync".into(), action: "return".into() };
        let refused = client.set_failpoint(unknown).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("checkpoint-after-commit"), "{}", refused.message());
        let bad = SetFailpointRequest { name: "disk-after-fsync".into(), action: "3*crash".into() };
        assert_eq!(client.set_failpoint(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        let ok = SetFailpointRequest { name: "disk-after-fsync".into(), action: "50%sleep(1)".into() };
        let armed = client.set_failpoint(ok).await.unwrap().into_inner().armed;
        assert_eq!(armed.len(), 1);
        assert_eq!((armed[0].name.as_str(), armed[0].action.as_str()), ("disk-after-fsync", "50%sleep(1)"));
    }

    /// The leader crashes just before a flush, then (another leader) just after one, each time with writes in
    /// flight; restarted, the replicas hold every acknowledged write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_crashing_just_before_or_after_an_fsync_loses_no_acknowledged_write() {
        let mut cluster = TestCluster::start(3, &[]);
        let mut acked = BTreeSet::new();
        let mut last_index = 0;
        let mut n = 0;
        let mut crashed = Vec::new();
        for failpoint in ["disk-before-fsync", "disk-after-fsync"] {
            let leader = cluster.wait_leader(ELECTION).await;
            for _ in 0..5 {
                let (job, index) = submit_until_acked(&cluster, &format!("fp-{n}")).await;
                n += 1;
                acked.insert(job);
                last_index = last_index.max(index);
            }
            arm_to_crash(&cluster, leader, failpoint).await;
            // The next write makes the leader flush, and die there; it is acknowledged by the next leader.
            for _ in 0..5 {
                let (job, index) = submit_until_acked(&cluster, &format!("fp-{n}")).await;
                n += 1;
                acked.insert(job);
                last_index = last_index.max(index);
            }
            assert_eq!(wait_exit(&mut cluster, leader).await, Some(86), "the leader did not die at {failpoint}");
            assert!(cluster.log(leader).contains(&format!("failpoint {failpoint} fired")), "{}", cluster.log(leader));
            assert_ne!(cluster.wait_leader(ELECTION).await, leader);
            cluster.spawn(leader);
            crashed.push(leader);
        }
        // Restarted, the crashed replicas are disarmed, and they catch up on everything acknowledged.
        cluster.wait_leader(ELECTION).await;
        for id in crashed {
            let list = admin(&cluster, id).await.list_failpoints(ListFailpointsRequest {}).await.unwrap().into_inner();
            assert!(list.compiled && list.armed.is_empty(), "{list:?}");
        }
        assert_everywhere(&cluster, &acked, last_index).await;
    }

    /// Every flush delayed by 200 ms on every replica, on lossy storage, and the whole cluster SIGKILLed the moment a
    /// write is acknowledged: the write must survive, because nothing is acknowledged before a majority flushed it.
    /// (A disk writer that ran its durability callbacks before the flush would lose these writes: they would still
    /// be in the overlays when the kills come.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_acknowledged_while_flushes_are_slow_survives_killing_every_replica_at_once() {
        // Elections outlast a slow vote flush.
        let flags = ["--storage-mode", "lose-unsynced", "--failpoint", "disk-before-fsync=sleep(200)"];
        let timing = ["--heartbeat-ms", "300", "--election-min-ms", "1500", "--election-max-ms", "2500"];
        let mut cluster = TestCluster::start(3, &[&flags[..], &timing[..]].concat());
        let mut acked = BTreeSet::new();
        let mut last_index = 0;
        for i in 0..3 {
            cluster.wait_leader(ELECTION).await;
            let (job, index) = submit_until_acked(&cluster, &format!("slow-flush-{i}")).await;
            restart_all(&mut cluster);
            acked.insert(job);
            last_index = last_index.max(index);
        }
        cluster.wait_leader(ELECTION).await;
        assert_everywhere(&cluster, &acked, last_index).await;
    }

    /// The crash after a flush, combined with the lossy storage: the whole cluster restarted right after that
    /// crash keeps every acknowledged write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_an_fsync_then_a_full_restart_on_lossy_storage_keeps_acknowledged_writes() {
        let mut cluster = TestCluster::start(3, &["--storage-mode", "lose-unsynced"]);
        let leader = cluster.wait_leader(ELECTION).await;
        let follower = cluster.follower_of(leader);
        let mut acked = BTreeSet::new();
        let mut last_index = 0;
        arm_to_crash(&cluster, follower, "disk-after-fsync").await;
        for i in 0..10 {
            let (job, index) = submit_until_acked(&cluster, &format!("lossy-fp-{i}")).await;
            acked.insert(job);
            last_index = last_index.max(index);
        }
        assert_eq!(wait_exit(&mut cluster, follower).await, Some(86));
        restart_all(&mut cluster);
        cluster.spawn(follower);
        cluster.wait_leader(ELECTION).await;
        assert_everywhere(&cluster, &acked, last_index).await;
    }
}
