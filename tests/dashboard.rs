//! The web dashboard, rendered by headless Chromium against a real 3-replica cluster running a real job.
//! Runs when Debian's `chromium` is installed (it is skipped, saying so, otherwise); screenshots of the main pages
//! are kept under `target/dashboard-screenshots/` as test artefacts.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{http, TestCluster};

const JOB: &str = r#"
name: dashboard-demo
vertices:
  - id: source
    operators: [{sequence: {rate: 50}}, {map: {fields: {key: "seq % 4"}}}]
  - id: count
    operators: [{key_by: {field: key}}, {count: {}}, {blackhole: {}}]
edges: [{from: source, to: count}]
checkpoints: {interval: 500ms, retained: 5}
"#;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        let found = Command::new("which").arg(name).output().ok()?;
        found.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()))
    })
}

fn headless(browser: &PathBuf) -> Command {
    let mut command = Command::new(browser);
    command.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]);
    command
}

/// The page's DOM after its scripts ran.
fn dom(browser: &PathBuf, url: &str) -> String {
    let out = headless(browser).arg("--dump-dom").arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(browser: &PathBuf, url: &str, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.png"));
    let arg = format!("--screenshot={}", file.display());
    let status = headless(browser).args(["--window-size=1280,900", &arg]).arg(url).status().unwrap();
    assert!(status.success() && file.exists(), "no screenshot of {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_a_running_job() {
    let mut cluster = TestCluster::start_with_rest(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.spawn_tm(1, 2);
    let addr = cluster.replicas.iter().find(|r| r.id != leader).unwrap().http_addr.clone().unwrap();

    // The page itself is served by every replica, without a browser.
    let (status, page) = common::http_text(&addr, "GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>jobmanager</title>") && page.contains("/jobs/overview"), "{page}");

    let (_, submitted) = http(&addr, "POST", "/jobs", Some(JOB)).await;
    let job_id = submitted["jobid"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, checkpoints) = http(&addr, "GET", &format!("/jobs/{job_id}/checkpoints"), None).await;
        if checkpoints["counts"]["completed"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never checkpointed: {checkpoints}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no chromium installed (apt-get install chromium); the dashboard was not rendered");
        return;
    };
    let base = format!("http://{addr}/");
    let overview = dom(&browser, &base);
    assert!(overview.contains("dashboard-demo") && overview.contains("RUNNING"), "overview: {overview}");
    assert!(overview.contains(&format!("replica {leader}")), "the leader is shown");
    let job_page = dom(&browser, &format!("{base}#/jobs/{job_id}"));
    for needle in ["Operator graph", "key_by -&gt; count -&gt; blackhole", "Checkpoints", "<svg", "Stop with savepoint"]
    {
        assert!(job_page.contains(needle), "job page lacks {needle:?}: {job_page}");
    }
    let cluster_page = dom(&browser, &format!("{base}#/cluster"));
    assert_eq!(cluster_page.matches("class=\"badge leader\"").count(), 1, "{cluster_page}");
    for (page, name) in [("", "overview"), (&*format!("#/jobs/{job_id}"), "job"), ("#/cluster", "cluster")] {
        screenshot(&browser, &format!("{base}{page}"), name);
    }
}
