//! The `jm` command line as a person uses it: real binaries, exit codes, one-line errors, tables and
//! JSON; `--help` with examples for every command; `jm local`; a replica refusing a corrupted data dir.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{jm, TestCluster};

fn run(args: &[&str], cluster: &str) -> Output {
    Command::new(jm()).args(args).env("JM_CLUSTER", cluster).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A failed command exits 1 with exactly one line on stderr, starting with `error:`.
fn assert_one_line_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "stdout: {} stderr: {}", stdout(o), stderr(o));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err:?} should mention {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_cluster_commands_work_against_any_replica() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = cluster.follower_of(leader);
    // Only a follower and a dead address are given: the CLI skips the dead one.
    let addrs = format!("127.0.0.1:1,{}", cluster.addr(follower));
    let spec = cluster.dir.path().join("job.yaml");
    let text = format!("{}checkpoints:\n  retained: 2\n", common::minimal_spec("clicks-per-minute"));
    std::fs::write(&spec, text).unwrap();

    let out = run(&["job", "submit", spec.to_str().unwrap(), "-o", "json"], &addrs);
    assert!(out.status.success(), "{}", stderr(&out));
    let submitted: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let job_id = submitted["job_id"].as_str().unwrap().to_string();
    assert_eq!(submitted["served_by"], leader);
    assert_eq!(submitted["received_by"], follower);

    let out = run(&["job", "list"], &addrs);
    assert!(stdout(&out).contains(&job_id) && stdout(&out).contains("clicks-per-minute"), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("JOB ID"));

    let out = run(&["job", "get", &job_id, "--output", "json"], &addrs);
    let job: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(job["status"], "CREATED");
    assert_eq!(job["max_retained_checkpoints"], 2);
    assert_eq!(job["spec"]["name"], "clicks-per-minute");

    let out = run(&["job", "cancel", &job_id], &addrs);
    assert!(stdout(&out).contains("CANCELED"), "{}", stdout(&out));
    let out = run(&["job", "wait", &job_id, "--state", "CANCELED", "--timeout", "10"], &addrs);
    assert!(out.status.success() && stdout(&out).contains("is CANCELED"), "{}{}", stdout(&out), stderr(&out));
    let out = run(&["job", "wait", &job_id, "--state", "RUNNING", "--timeout", "10"], &addrs);
    assert_one_line_error(&out, "ended CANCELED instead of reaching RUNNING");

    // A savepoint directory (anything holding `_metadata`) disposed of through a follower; then nothing is there.
    let savepoint = cluster.dir.path().join("savepoints").join("savepoint-000000-1");
    std::fs::create_dir_all(&savepoint).unwrap();
    std::fs::write(savepoint.join("_metadata"), b"{}").unwrap();
    let out = run(&["job", "dispose-savepoint", savepoint.to_str().unwrap(), "-o", "json"], &addrs);
    assert!(out.status.success(), "{}", stderr(&out));
    let disposed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(disposed["status"], "COMPLETED", "{disposed}");
    assert!(!savepoint.exists());
    let out = run(&["job", "dispose-savepoint", savepoint.to_str().unwrap()], &addrs);
    assert_one_line_error(&out, &format!("no savepoint or checkpoint at {}", savepoint.display()));

    let out = run(&["cluster", "members", "-o", "json"], &addrs);
    let members: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(members["leader"], leader);
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    let out = run(&["completions", "bash"], &addrs);
    assert!(out.status.success() && stdout(&out).contains("complete -F"), "{}", stderr(&out));

    let out = run(&["cluster", "status", "-o", "json"], &addrs);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["leader"], leader);
    assert_eq!(status["replicas"].as_array().unwrap().len(), 3);
    let out = run(&["cluster", "status"], &addrs);
    assert!(stdout(&out).contains("Leader") && stdout(&out).contains("Follower"), "{}", stdout(&out));

    let out = run(&["cluster", "compact", "-o", "json"], &addrs);
    let compacted: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(compacted["served_by"], follower);
    assert!(compacted["snapshot_index"].as_u64().unwrap() >= 3, "{compacted}");

    // Errors: one clear line and exit code 1.
    assert_one_line_error(&run(&["job", "get", "0123456789abcdef0123456789abcdef"], &addrs), "not found");
    assert_one_line_error(&run(&["job", "get", "not-an-id"], &addrs), "32 lowercase hex");
    assert_one_line_error(&run(&["job", "submit", "/nonexistent/job.yaml"], &addrs), "cannot read");
    std::fs::write(&spec, "parallelism: 4\n").unwrap();
    assert_one_line_error(&run(&["job", "submit", spec.to_str().unwrap()], &addrs), "name");
    assert_one_line_error(&run(&["job", "list"], "127.0.0.1:1,127.0.0.1:2"), "no replica reachable");
    // Usage errors are clap's: exit code 2.
    assert_eq!(run(&["job", "frobnicate"], &addrs).status.code(), Some(2));
}

/// A replica that cannot start logs, then ends with one `error:` line and exit code 1.
fn assert_server_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    let err = stderr(o);
    let last = err.trim_end().lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: ") && last.contains(needle), "{last:?} should mention {needle:?}");
}

#[test]
fn a_replica_refuses_a_data_dir_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let peers = "1=127.0.0.1:1/127.0.0.1:2";
    // A data dir written by an incompatible version.
    let data = dir.path().join("future");
    {
        use jobmanager::raft::Engine;
        let engine = jobmanager::raft::SledEngine::open(&data.join("raft")).unwrap();
        engine.write(vec![(b"meta/format".to_vec(), Some(vec![9]))]).unwrap();
        engine.flush().unwrap();
    }
    let out = Command::new(jm())
        .args(["server", "--id", "1", "--peers", peers, "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_server_error(&out, "version");
    // A data dir that is not a directory.
    let data = dir.path().join("file");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("raft"), b"garbage").unwrap();
    let out = Command::new(jm())
        .args(["server", "--id", "1", "--peers", peers, "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_server_error(&out, "cannot open data dir");
    // A node id missing from the peers.
    let out = Command::new(jm())
        .args(["server", "--id", "4", "--peers", peers, "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_server_error(&out, "not in the peer list");

    // A --peer-via naming this replica or a stranger.
    for via in ["1=127.0.0.1:9", "7=127.0.0.1:9", "2"] {
        let out = Command::new(jm())
            .args(["server", "--id", "1", "--peers", peers, "--peer-via", via, "--data-dir", data.to_str().unwrap()])
            .output()
            .unwrap();
        assert_server_error(&out, "--peer-via");
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jm_local_runs_a_cluster_reports_a_dead_replica_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("local");
    let log = std::fs::File::create(dir.path().join("local.out")).unwrap();
    let mut local = Command::new(jm())
        .args(["local", "--base-port", "0", "--data-dir", data.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let output = || std::fs::read_to_string(dir.path().join("local.out")).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !output().contains("Leader: replica") {
        assert!(std::time::Instant::now() < deadline, "jm local never became ready: {}", output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    let all = file["processes"].as_array().unwrap().clone();
    let all_pids: Vec<u32> = all.iter().map(|p| p["pid"].as_u64().unwrap() as u32).collect();
    let procs: Vec<serde_json::Value> = all.iter().filter(|p| p["role"] == "replica").cloned().collect();
    assert_eq!(procs.len(), 3);
    assert_eq!(all.iter().filter(|p| p["role"] == "taskmanager").count(), 2);
    let pids: Vec<u32> = procs.iter().map(|p| p["pid"].as_u64().unwrap() as u32).collect();
    assert!(all.iter().all(|p| p["grpc_addr"].as_str().unwrap().starts_with("127.0.0.1:")));

    // The cluster works: the printed commands' target answers, and the example job runs on the TaskManagers.
    let addrs: Vec<&str> = procs.iter().map(|p| p["grpc_addr"].as_str().unwrap()).collect();
    let status = run(&["cluster", "status", "-o", "json"], &addrs.join(","));
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(output().contains("Example job"), "{}", output());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = run(&["job", "list", "-o", "json"], &addrs.join(","));
        let jobs: serde_json::Value = serde_json::from_str(&stdout(&jobs)).unwrap();
        if jobs["jobs"].as_array().unwrap().iter().any(|j| j["name"] == "sequence-count" && j["status"] == "RUNNING") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the example job is not running: {jobs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each TaskManager serves its metrics, including the example job's subtasks.
    for tm in all.iter().filter(|p| p["role"] == "taskmanager") {
        let addr = tm["http_addr"].as_str().expect("a TaskManager's metrics address in cluster.json");
        assert!(output().contains(&format!("metrics http://{addr}/metrics")), "{}", output());
        // The TaskManager may still be starting its endpoint: retry briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let reply = loop {
            match common::try_http_exchange(addr, "GET", "/metrics", &[], None).await {
                Ok(reply) if reply.status == 200 => break reply,
                other => assert!(std::time::Instant::now() < deadline, "no metrics from {addr}: {:?}", other.err()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(reply.body.contains("# TYPE jm_taskmanager_slots gauge"), "{}", reply.body);
    }

    // A replica that dies is reported, not restarted.
    // SAFETY: SIGKILL to a child of the process under test.
    unsafe { libc::kill(pids[1] as libc::pid_t, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !output().contains("not restarting") {
        assert!(std::time::Instant::now() < deadline, "dead replica not reported: {}", output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM stops everything.
    // SAFETY: SIGTERM to the process under test.
    unsafe { libc::kill(local.id() as libc::pid_t, libc::SIGTERM) };
    let status = local.wait().unwrap();
    assert!(status.success(), "{}", output());
    tokio::time::sleep(Duration::from_millis(200)).await;
    for pid in all_pids {
        assert!(!alive(pid), "pid {pid} outlived jm local");
    }
}

#[test]
fn logs_are_json_objects_with_log_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(jm())
        .args(["--log-format", "json", "taskmanager", "--cluster", "127.0.0.1:1", "--data-dir"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    let first = text.lines().next().unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first:?}"));
    assert_eq!(line["fields"]["message"], "starting TaskManager", "{line}");
    assert!(line["fields"]["tm_id"].as_str().unwrap().starts_with("tm-"), "{line}");
}

/// Runs `jm ARGS` with no cluster or log settings from the environment and returns stdout, asserting success.
fn help_text(args: &[&str]) -> String {
    let o = Command::new(jm()).args(args).env_remove("JM_CLUSTER").env_remove("JM_LOG_FORMAT").output().unwrap();
    assert!(o.status.success(), "jm {args:?} failed: {}", stderr(&o));
    stdout(&o)
}

/// The subcommands a help text lists under `Commands:`, without clap's own `help`.
fn listed_subcommands(help: &str) -> Vec<String> {
    let mut lines = help.lines().skip_while(|l| l.trim_end() != "Commands:").skip(1);
    let mut names = Vec::new();
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        // `  name  description`; a description wrapped onto its own line is indented further.
        if let Some(entry) = line.strip_prefix("  ").filter(|e| !e.starts_with(' ')) {
            let name = entry.split_whitespace().next().unwrap().to_string();
            if name != "help" {
                names.push(name);
            }
        }
    }
    names
}

/// Checks the `Examples:` section of `jm PATH --help`: kubectl-style `# comment` lines, each followed by one or more
/// invocations (1 to 3 in all) that start with `jm PATH`, a trailing `\` continuing one onto the next line.
fn assert_examples(path: &[String], help: &str) {
    let command = format!("jm {}", path.join(" "));
    let command = command.trim_end();
    let section = help.split_once("\nExamples:\n").map(|(_, s)| s);
    let section = section.unwrap_or_else(|| panic!("`{command} --help` has no Examples: section:\n{help}"));
    let (mut invocations, mut after_comment, mut continued) = (0, false, false);
    for line in section.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.starts_with("  "), "`{command} --help`: example line {line:?} is not indented");
        let text = line.trim();
        if continued {
            continued = text.ends_with('\\');
            continue;
        }
        if text.starts_with("# ") {
            assert!(!after_comment, "`{command} --help`: comment {text:?} follows a comment without an example");
            after_comment = true;
            continue;
        }
        let runs_it = text == command || text.starts_with(&format!("{command} "));
        assert!(runs_it, "`{command} --help`: example {text:?} does not start with `{command}`");
        assert!(after_comment || invocations > 0, "`{command} --help`: example {text:?} has no comment above it");
        after_comment = false;
        continued = text.ends_with('\\');
        invocations += 1;
    }
    assert!(!after_comment && !continued, "`{command} --help`: the examples end with a comment or a `\\`");
    assert!((1..=3).contains(&invocations), "`{command} --help` shows {invocations} invocations, not 1 to 3");
}

#[test]
fn every_command_has_examples_in_its_long_help_and_a_short_help_without() {
    // Walk the command tree as a user sees it: the subcommands `jm PATH --help` lists, recursively.
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = Vec::new();
    while let Some(path) = pending.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let long = help_text(&[&args[..], &["--help"]].concat());
        assert_examples(&path, &long);
        // `jm help PATH` is the same long help.
        assert_eq!(help_text(&[&["help"], &args[..]].concat()), long, "`jm help {}`", path.join(" "));
        let short = help_text(&[&args[..], &["-h"]].concat());
        assert!(!short.contains("Examples:"), "`jm {} -h` should stay short:\n{short}", path.join(" "));
        for name in listed_subcommands(&long) {
            pending.push(path.iter().cloned().chain([name]).collect());
        }
        seen.push(path.join(" "));
    }
    // The walk found the tree (the help format did not change under the parser).
    for command in
        ["", "server", "local", "taskmanager", "job", "job submit", "job stop", "cluster status", "completions"]
    {
        assert!(seen.iter().any(|s| s == command), "the walk missed `jm {command}`: {seen:?}");
    }
    assert!(seen.len() >= 20, "{seen:?}");
}
