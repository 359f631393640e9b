//! The web dashboard, rendered by headless Chromium against a real 3-replica cluster running a real job.
//! Runs when Debian's `chromium` is installed (it is skipped, saying so, otherwise); screenshots of the main pages
//! are kept under `target/dashboard-screenshots/` as test artefacts.
//!
//! Besides `--dump-dom` snapshots, the test drives one Chromium through the DevTools protocol: it clicks the job
//! page's "Savepoint" button, accepts the `confirm()` dialog, and waits until the page shows the completed
//! savepoint's path, which the REST API must then list; and it types into the jobs filter and checks that the 2 s
//! refresh leaves the input, its focus and its cursor alone.

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{http, TestCluster};
use serde_json::{json, Value};

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

fn headless(browser: &Path) -> Command {
    let mut command = Command::new(browser);
    command.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]);
    command
}

/// The page's DOM after its scripts ran.
fn dom(browser: &Path, url: &str) -> String {
    let out = headless(browser).arg("--dump-dom").arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot_file(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.png"))
}

fn screenshot(browser: &Path, url: &str, name: &str, size: &str) {
    let file = screenshot_file(name);
    let arg = format!("--screenshot={}", file.display());
    let status = headless(browser)
        .args([&format!("--window-size={size}"), &arg])
        .arg(url)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success() && file.exists(), "no screenshot of {url}");
}

/// A headless Chromium with its own profile directory, killed on drop.
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One target (the browser, or a page) of a headless Chromium, driven through the DevTools protocol over a
/// WebSocket.
struct DevTools {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    events: VecDeque<Value>,
    replies: HashMap<u64, Value>,
    /// The browser of a page session, stopped with it.
    _chromium: Option<Chromium>,
}

impl DevTools {
    fn launch(browser: &Path, window: &str) -> DevTools {
        // The port is chosen by Chromium (0) and written to DevToolsActivePort in the profile directory.
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-port=0"])
            .arg(format!("--window-size={window}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (port, browser_path) = loop {
            let text = std::fs::read_to_string(profile.path().join("DevToolsActivePort")).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(Ok(port)), Some(path)) = (lines.next().map(|l| l.trim().parse::<u16>()), lines.next()) {
                break (port, path.trim().to_string());
            }
            assert!(Instant::now() < deadline, "chromium wrote no DevToolsActivePort");
            std::thread::sleep(Duration::from_millis(50));
        };
        // The page it opened, from the browser's target list.
        let chromium = Chromium { child, _profile: profile };
        let mut browser = DevTools::connect(port, &browser_path);
        let page = loop {
            let targets = browser.call("Target.getTargets", json!({}));
            let page = targets["targetInfos"].as_array().into_iter().flatten().find(|t| t["type"] == "page");
            if let Some(id) = page.and_then(|t| t["targetId"].as_str()) {
                break id.to_string();
            }
            assert!(Instant::now() < deadline, "chromium lists no page: {targets}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut tools = DevTools::connect(port, &format!("/devtools/page/{page}"));
        tools._chromium = Some(chromium);
        tools.call("Page.enable", json!({}));
        tools.call("Runtime.enable", json!({}));
        tools
    }

    fn connect(port: u16, path: &str) -> DevTools {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream).unwrap();
        // Reads time out, so that a silent browser fails the test instead of hanging it.
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        DevTools { ws, next_id: 0, events: VecDeque::new(), replies: HashMap::new(), _chromium: None }
    }

    /// Sends a command; its reply is read by `reply`.
    fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let message = json!({"id": self.next_id, "method": method, "params": params});
        self.ws.send(tungstenite::Message::text(message.to_string())).unwrap();
        self.next_id
    }

    /// The next message from the browser, reply or event.
    fn read(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(text)) => return serde_json::from_str(text.as_str()).unwrap(),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    assert!(Instant::now() < deadline, "chromium did not send {waiting_for} in time");
                }
                Err(e) => panic!("DevTools connection failed while waiting for {waiting_for}: {e}"),
            }
        }
    }

    /// The result of command `id`, keeping the events that come first.
    fn reply(&mut self, id: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let message = match self.replies.remove(&id) {
                Some(message) => message,
                None => self.read(deadline, &format!("the reply to command {id}")),
            };
            if message.get("method").is_some() {
                self.events.push_back(message);
            } else if message["id"] == id {
                assert!(message.get("error").is_none(), "DevTools command {id} failed: {message}");
                return message["result"].clone();
            } else if let Some(other) = message["id"].as_u64() {
                self.replies.insert(other, message);
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        self.reply(id)
    }

    /// The parameters of the next `method` event.
    fn event(&mut self, method: &str, timeout: Duration) -> Value {
        if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(at).unwrap()["params"].clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let message = self.read(deadline, method);
            if message["method"] == method {
                return message["params"].clone();
            } else if message.get("method").is_some() {
                self.events.push_back(message);
            } else if let Some(id) = message["id"].as_u64() {
                self.replies.insert(id, message);
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        assert!(result.get("exceptionDetails").is_none(), "{expression} threw: {result}");
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; returns its value.
    fn wait_for(&mut self, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            if !matches!(value, Value::Null | Value::Bool(false)) && value != json!(0) && value != json!("") {
                return value;
            }
            assert!(Instant::now() < deadline, "the page never satisfied {expression}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// A PNG of the viewport, kept as `name` beside the other screenshots.
    fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(screenshot_file(name), png).unwrap();
    }
}

/// What the DevTools session saw on the job page.
struct Seen {
    savepoint_path: String,
    running_subtasks: u64,
}

/// Takes a savepoint the way a person would: the job page's "Savepoint" button, "OK" in the confirm dialog, then
/// the page polls the trigger until it completes and shows the path. Also checks that the jobs filter survives the
/// page's 2 s refresh while being typed into.
fn savepoint_through_the_page(browser: &Path, base: &str, job_id: &str) -> Seen {
    let mut page = DevTools::launch(browser, "1280,1400");
    page.navigate(&format!("{base}#/jobs/{job_id}"));
    // Both vertices' subtasks (parallelism 1 each) are listed as RUNNING, with live rates.
    let running = page.wait_for(
        "document.querySelectorAll('#subtasks tr[data-status=RUNNING]').length >= 2 \
         && document.querySelectorAll('#subtasks tr[data-status=RUNNING]').length",
        Duration::from_secs(15),
    );
    page.wait_for("!!document.querySelector('button[data-action=savepoint]')", Duration::from_secs(10));
    let click = page.send(
        "Runtime.evaluate",
        json!({"expression": "document.querySelector('button[data-action=savepoint]').click()"}),
    );
    let dialog = page.event("Page.javascriptDialogOpening", Duration::from_secs(10));
    assert_eq!(dialog["type"], "confirm", "{dialog}");
    assert!(dialog["message"].as_str().unwrap().contains(job_id), "{dialog}");
    page.call("Page.handleJavaScriptDialog", json!({"accept": true}));
    page.reply(click);
    let outcome = page.wait_for(
        "['COMPLETED', 'FAILED'].includes(document.querySelector('[data-savepoint]')?.dataset.savepoint) \
         && document.querySelector('[data-savepoint]').dataset.savepoint",
        Duration::from_secs(30),
    );
    let notice = page.eval("document.querySelector('[data-savepoint]').textContent");
    assert_eq!(outcome, "COMPLETED", "the savepoint failed: {notice}");
    let savepoint_path =
        page.eval("document.getElementById('savepoint-path').textContent").as_str().unwrap().to_string();
    // The result stays through a refresh.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(page.eval("document.getElementById('savepoint-path')?.textContent"), json!(savepoint_path));
    page.eval("window.scrollTo(0, 0)");
    page.screenshot("job-subtasks");

    // The jobs filter: typed into (real key input), it keeps its text, focus and cursor across refreshes.
    page.navigate(&format!("{base}#/jobs"));
    page.wait_for("document.querySelectorAll('tr[data-job]').length", Duration::from_secs(10));
    page.eval("document.getElementById('job-filter').focus()");
    page.call("Input.insertText", json!({"text": "dashb"}));
    let before = page.eval("document.body.dataset.renderCount");
    page.wait_for(&format!("document.body.dataset.renderCount !== {before}"), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(2200)); // a poll at least
    let state = page.eval(
        "({value: document.getElementById('job-filter').value, focused: document.activeElement.id, \
          cursor: document.getElementById('job-filter').selectionStart, rows: document.querySelectorAll('tr[data-job]').length})",
    );
    assert_eq!(state, json!({"value": "dashb", "focused": "job-filter", "cursor": 5, "rows": 1}), "{state}");
    page.call("Input.insertText", json!({"text": "zzz"}));
    page.wait_for(
        "document.querySelector('tbody[data-slot=rows]').textContent.includes('No job matches')",
        Duration::from_secs(5),
    );

    // The cluster page shows the replicas' zones and the replicated history of leader changes.
    page.eval("location.hash = '#/cluster'");
    let changes = page.wait_for(
        "document.querySelector('table[aria-label^=\"Leader changes\"]')?.tBodies[0].rows.length",
        Duration::from_secs(10),
    );
    assert!(changes.as_u64().unwrap() >= 1);
    let zones = page.eval("document.querySelector('table[aria-label=Replicas]').textContent");
    assert!(zones.as_str().unwrap().contains("zone-a"), "{zones}");
    page.screenshot("cluster-leader-changes");
    Seen { savepoint_path, running_subtasks: running.as_u64().unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_a_running_job() {
    let mut cluster = TestCluster::start_with_rest(3, &["--zone", "zone-a"]);
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
    assert!(cluster_page.contains("<th>Zone</th>"), "{cluster_page}");
    let jobs_page = dom(&browser, &format!("{base}#/jobs"));
    for needle in ["id=\"job-filter\"", "id=\"job-state\"", "RUNNING 1", "1 job, newest first", "dashboard-demo"] {
        assert!(jobs_page.contains(needle), "jobs page lacks {needle:?}: {jobs_page}");
    }
    for (page, name, size) in [
        ("", "overview", "1280,900"),
        (&*format!("#/jobs/{job_id}"), "job", "1280,900"),
        ("#/cluster", "cluster", "1280,900"),
        ("#/jobs", "jobs-narrow", "400,800"),
    ] {
        screenshot(&browser, &format!("{base}{page}"), name, size);
    }

    // An action end to end in a real browser: the savepoint button, its confirm dialog, its progress and result.
    let seen = tokio::task::spawn_blocking({
        let (browser, base, job_id) = (browser.clone(), base.clone(), job_id.clone());
        move || savepoint_through_the_page(&browser, &base, &job_id)
    })
    .await
    .unwrap();
    assert_eq!(seen.running_subtasks, 2);
    let (_, checkpoints) = http(&addr, "GET", &format!("/jobs/{job_id}/checkpoints"), None).await;
    assert_eq!(checkpoints["latest"]["savepoint"]["external_path"], json!(seen.savepoint_path), "{checkpoints}");
    let (_, job) = http(&addr, "GET", &format!("/jobs/{job_id}"), None).await;
    assert_eq!(job["state"], "RUNNING", "a savepoint does not stop the job: {job}");
}
