//! The stock Apache Flink command-line client against a real 3-replica cluster: `flink list`, `flink savepoint`,
//! `flink stop` and `flink cancel` work through a follower and through the leader, with Flink's own output, exit
//! codes and error reporting (a failed savepoint names its cause instead of timing out).
//!
//! The client is the `flink` script of PyPI's `apache-flink` package (its jars come from
//! `apache-flink-libraries`), run on the machine's Java. The test says `SKIPPED: ...` and passes when `java` is
//! not on PATH or `python3` cannot import `pyflink` with its `bin/flink`; `.ci/run` installs the packages.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, TestCluster};
use serde_json::Value;

/// Always running: a slow sequence into a blackhole, checkpointed so savepoints have state to write.
fn job(name: &str) -> String {
    format!(
        "name: {name}\nvertices:\n  - id: source\n    operators: [{{sequence: {{rate: 50}}}}, {{blackhole: {{}}}}]\n\
         checkpoints: {{interval: 500ms}}\n"
    )
}

/// A CLI command that has not answered by then is hung, not slow (one normally takes 2 to 4 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(45);

/// The pyflink package's directory (holding `bin/flink` and `lib/`), or why the test cannot run.
fn flink_home() -> Result<PathBuf, String> {
    let java = Command::new("java").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !java.is_ok_and(|s| s.success()) {
        return Err("no `java` on PATH".into());
    }
    let found = Command::new("python3")
        .args(["-c", "import os, pyflink; print(os.path.dirname(pyflink.__file__))"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("no python3: {e}"))?;
    let home = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
    if !found.status.success() || !home.join("bin/flink").is_file() {
        return Err(
            "python3 cannot import pyflink with bin/flink (pip install apache-flink apache-flink-libraries)".into()
        );
    }
    let has_dist = std::fs::read_dir(home.join("lib"))
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("flink-dist")))
        .unwrap_or(false);
    if !has_dist {
        return Err(format!("{} has no lib/flink-dist jar (pip install apache-flink-libraries)", home.display()));
    }
    Ok(home)
}

/// One finished CLI run: its exit status and everything it printed.
struct Run {
    success: bool,
    output: String,
    took: Duration,
}

/// Runs `flink <args>` against the REST endpoint `rest`, with the client's log kept in `log_dir`.
async fn flink(home: &Path, log_dir: &Path, rest: &str, args: &[&str]) -> Run {
    let mut command = Command::new(home.join("bin/flink"));
    command
        .args(args)
        .args(["-m", rest])
        // Shorter retries and timeout than the defaults (20 × 3 s, 60 s): a response the client cannot parse is
        // retried like a lost connection, and the client should give up, saying why, well before CLI_TIMEOUT.
        .args(["-Drest.retry.max-attempts=3", "-Drest.retry.delay=500ms", "-Dclient.timeout=30s"])
        .env("FLINK_CONF_DIR", home.join("conf"))
        .env("FLINK_LOG_DIR", log_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let description = format!("flink {}", args.join(" "));
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = command.spawn().unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > CLI_TIMEOUT {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                panic!("{description}: no answer within {CLI_TIMEOUT:?}\n{stdout}{stderr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("$ {description}  ({:?})\n{output}", started.elapsed());
        Run { success: out.status.success(), output, took: started.elapsed() }
    })
    .await
    .unwrap()
}

/// The path after `Savepoint completed. Path: ` in the CLI's output.
fn savepoint_path(output: &str) -> PathBuf {
    let line = output.lines().find_map(|l| l.split_once("Savepoint completed. Path: ").map(|(_, p)| p.trim()));
    let path = line.unwrap_or_else(|| panic!("no savepoint path in:\n{output}"));
    PathBuf::from(path.strip_prefix("file:").unwrap_or(path))
}

async fn wait_state(addr: &str, job_id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(addr, "GET", &format!("/jobs/{job_id}"), None).await;
        if status == 200 && body["state"] == state {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id} not {state} within 30 s: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_flink_cli_lists_savepoints_stops_and_cancels_jobs_on_any_replica() {
    let home = match flink_home() {
        Ok(home) => home,
        Err(why) => {
            eprintln!("SKIPPED: the Flink CLI test needs Java and the apache-flink package: {why}");
            return;
        }
    };
    let started = Instant::now();
    let mut cluster = TestCluster::start_with_rest(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.spawn_tm(1, 2);
    let follower = cluster.follower_of(leader);
    let rest = |id: u64| cluster.replicas.iter().find(|r| r.id == id).unwrap().http_addr.clone().unwrap();
    let (via_leader, via_follower) = (rest(leader), rest(follower));
    let dir = cluster.dir.path().to_path_buf();
    let logs = dir.join("flink-client-logs");
    std::fs::create_dir_all(&logs).unwrap();

    let mut ids = Vec::new();
    for name in ["cli-stop", "cli-cancel"] {
        let (status, body) = http(&via_leader, "POST", "/jobs", Some(&job(name))).await;
        assert_eq!(status, 202, "{body}");
        let id = body["jobid"].as_str().unwrap().to_string();
        wait_state(&via_follower, &id, "RUNNING").await;
        ids.push(id);
    }
    let (stopped, cancelled) = (ids[0].as_str(), ids[1].as_str());

    let list = flink(&home, &logs, &via_follower, &["list"]).await;
    assert!(list.success, "{}", list.output);
    for (id, name) in [(stopped, "cli-stop"), (cancelled, "cli-cancel")] {
        assert!(list.output.contains(&format!("{id} : {name} (RUNNING)")), "{}", list.output);
    }

    let target = dir.join("savepoints");
    let savepoint = flink(&home, &logs, &via_follower, &["savepoint", stopped, target.to_str().unwrap()]).await;
    assert!(savepoint.success, "{}", savepoint.output);
    let path = savepoint_path(&savepoint.output);
    assert!(path.starts_with(&target) && path.join("_metadata").is_file(), "{}", savepoint.output);

    // A savepoint that cannot be written fails with its cause, promptly, and the job keeps running.
    let not_a_dir = dir.join("not-a-directory");
    std::fs::write(&not_a_dir, b"").unwrap();
    let unwritable = not_a_dir.join("savepoints");
    let failed = flink(&home, &logs, &via_follower, &["savepoint", stopped, unwritable.to_str().unwrap()]).await;
    assert!(!failed.success, "{}", failed.output);
    assert!(failed.output.contains("SavepointFailure: "), "the cause is reported:\n{}", failed.output);
    assert!(failed.took < Duration::from_secs(20), "took {:?}", failed.took);
    let (_, job) = http(&via_follower, "GET", &format!("/jobs/{stopped}"), None).await;
    assert_eq!(job["state"], "RUNNING", "{job}");

    let stop_target = dir.join("stop-savepoints");
    let stop =
        flink(&home, &logs, &via_follower, &["stop", "--savepointPath", stop_target.to_str().unwrap(), stopped]).await;
    assert!(stop.success, "{}", stop.output);
    let path = savepoint_path(&stop.output);
    assert!(path.starts_with(&stop_target) && path.join("_metadata").is_file(), "{}", stop.output);
    wait_state(&via_leader, stopped, "FINISHED").await;

    let cancel = flink(&home, &logs, &via_leader, &["cancel", cancelled]).await;
    assert!(cancel.success, "{}", cancel.output);
    assert!(cancel.output.contains(&format!("Cancelled job {cancelled}")), "{}", cancel.output);
    wait_state(&via_follower, cancelled, "CANCELED").await;

    // Terminated jobs through the CLI, and a refusal in Flink's error shape, reported with our message.
    let all = flink(&home, &logs, &via_follower, &["list", "--all"]).await;
    assert!(all.success, "{}", all.output);
    assert!(all.output.contains(&format!("{stopped} : cli-stop (FINISHED)")), "{}", all.output);
    assert!(all.output.contains(&format!("{cancelled} : cli-cancel (CANCELED)")), "{}", all.output);
    let again = flink(&home, &logs, &via_follower, &["cancel", stopped]).await;
    assert!(!again.success, "{}", again.output);
    assert!(again.output.contains("FINISHED"), "{}", again.output);

    eprintln!("the Flink CLI test took {:?}", started.elapsed());
}
