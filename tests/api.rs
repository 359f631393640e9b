//! The client API against a real 3-replica cluster: bad input gets a clear, typed error; submits are
//! idempotent; reads are linearizable through any replica, or explicitly stale.

mod common;

use std::time::Duration;

use common::{submit, TestCluster};
use jobmanager::api::grpc::pb;
use tonic::Code;

const ELECTION: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_validates_input_and_serves_any_replica() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(ELECTION).await;
    let follower = cluster.follower_of(leader);
    let other = *cluster.live().iter().find(|id| **id != leader && **id != follower).unwrap();
    let mut via_follower = cluster.connect(follower).await;

    // A malformed spec names the offending field; nothing is written.
    let bad = via_follower
        .submit_job(pb::SubmitJobRequest { spec: b"parallelism: 2\n".to_vec(), idempotency_key: "k".into() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("name"), "{}", bad.message());
    let bad = via_follower
        .submit_job(pb::SubmitJobRequest {
            spec: format!("{}checkpoints: {{retained: 0}}\n", common::minimal_spec("a")).into_bytes(),
            idempotency_key: "k".into(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("checkpoints.retained"), "{}", bad.message());
    let no_key = via_follower
        .submit_job(pb::SubmitJobRequest {
            spec: common::minimal_spec("a").into_bytes(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_key.code(), Code::InvalidArgument);
    assert!(no_key.message().contains("idempotency_key"));

    // Oversized: a spec over the spec limit but under the transport limit, and one over both.
    let big = format!("name: big\npad: \"{}\"\n", "x".repeat(1_100_000)).into_bytes();
    let err =
        via_follower.submit_job(pb::SubmitJobRequest { spec: big, idempotency_key: "k".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most"), "{}", err.message());
    let huge = vec![b'x'; 3 * 1024 * 1024];
    let err =
        via_follower.submit_job(pb::SubmitJobRequest { spec: huge, idempotency_key: "k".into() }).await.unwrap_err();
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{err:?}");

    // Unknown and malformed ids.
    let unknown = "0123456789abcdef0123456789abcdef".to_string();
    let err = via_follower.get_job(pb::GetJobRequest { job_id: unknown.clone(), consistency: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = via_follower.cancel_job(pb::CancelJobRequest { job_id: unknown }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = via_follower.get_job(pb::GetJobRequest { job_id: "nope".into(), consistency: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("32 lowercase hex"));

    // Idempotent submit: the same key through two replicas creates one job.
    let first = submit(&mut via_follower, "once", "the-key").await.unwrap();
    let mut via_other = cluster.connect(other).await;
    let second = submit(&mut via_other, "once", "the-key").await.unwrap();
    assert!(first.created && !second.created);
    assert_eq!(first.job_id, second.job_id);

    // A linearizable read through another follower sees the write at once.
    let job = via_other
        .get_job(pb::GetJobRequest {
            job_id: first.job_id.clone(),
            consistency: pb::ReadConsistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let read = job.read.unwrap();
    assert_eq!(read.served_by, other);
    assert!(read.read_index >= first.write.unwrap().log_index);
    assert_eq!(job.job.unwrap().status, "CREATED");

    // A stale read says how stale it may be.
    let stale = via_other
        .list_jobs(pb::ListJobsRequest { consistency: pb::ReadConsistency::Stale as i32 })
        .await
        .unwrap()
        .into_inner();
    let read = stale.read.unwrap();
    assert_eq!(read.consistency, pb::ReadConsistency::Stale as i32);
    assert!(read.ms_since_leader_contact.is_some());

    // Cancel is idempotent and the job keeps its terminal status.
    for _ in 0..2 {
        let reply = via_other.cancel_job(pb::CancelJobRequest { job_id: first.job_id.clone() }).await.unwrap();
        assert_eq!(reply.into_inner().status, "CANCELED");
    }

    // Metadata: written through one replica, read linearizably through another.
    via_follower
        .put_job_metadata(pb::PutJobMetadataRequest {
            job_id: first.job_id.clone(),
            key: "owner".into(),
            value: b"team-a".to_vec(),
        })
        .await
        .unwrap();
    let value = via_other
        .get_job_metadata(pb::GetJobMetadataRequest {
            job_id: first.job_id.clone(),
            key: "owner".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .value;
    assert_eq!(value.as_deref(), Some(&b"team-a"[..]));
    let too_big = via_follower
        .put_job_metadata(pb::PutJobMetadataRequest {
            job_id: first.job_id.clone(),
            key: "k".into(),
            value: vec![0; 70_000],
        })
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_demand_snapshots_and_purges_the_log() {
    let cluster = TestCluster::start(3, &["--keep-below-snapshot", "5"]);
    let leader = cluster.wait_leader(ELECTION).await;
    let mut c = cluster.connect(leader).await;
    for i in 0..40 {
        submit(&mut c, &format!("j{i}"), &format!("k{i}")).await.unwrap();
    }
    let reply = c.compact(pb::CompactRequest {}).await.unwrap().into_inner();
    assert_eq!(reply.served_by, leader);
    assert!(reply.snapshot_index >= 40, "{reply:?}");
    assert!(reply.purged_index + 5 >= reply.snapshot_index, "{reply:?}");
    // The state is intact after compaction.
    assert_eq!(cluster.jobs_on(leader).await.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_batched_into_shared_log_entries_each_with_its_own_outcome() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(ELECTION).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = cluster.connect(leader).await;
        tasks.push(tokio::spawn(async move {
            // Every fourth write is invalid for the state machine (a metadata key on an unknown job):
            // it must fail alone, not take its batch down.
            if i % 4 == 0 {
                let r = c
                    .put_job_metadata(pb::PutJobMetadataRequest {
                        job_id: format!("{i:032x}"),
                        key: "k".into(),
                        value: vec![1],
                    })
                    .await;
                return Err(r.unwrap_err().code());
            }
            let reply = submit(&mut c, &format!("job-{i}"), &format!("key-{i}")).await.unwrap();
            Ok((reply.job_id, reply.write.unwrap().log_index))
        }));
    }
    let mut indexes = std::collections::BTreeMap::<u64, usize>::new();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok((id, index)) => {
                ids.insert(id);
                *indexes.entry(index).or_default() += 1;
            }
            Err(code) => assert_eq!(code, Code::NotFound),
        }
    }
    assert_eq!(ids.len(), 48, "every valid submit created its own job");
    assert!(indexes.values().any(|n| *n > 1), "no two writes shared a log entry: {indexes:?}");
    assert_eq!(cluster.jobs_on(leader).await.len(), 48);
}
