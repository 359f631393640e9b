//! `jepsen`: runs the chaos suite against a jobmanager cluster it deploys itself (`run`), or checks a recorded run
//! again (`check`). Exit status: 0 when no checker found the history invalid, 1 when one did, 2 when the run itself
//! could not be carried out.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use jepsen::nemesis::{parse_faults, Schedule};
use jepsen::run::{Mode, RunOptions};

#[derive(Debug, Parser)]
#[command(name = "jepsen", about = "Jepsen's method against jobmanager: clients, nemesis, history, checkers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deploy a cluster, run clients and faults, heal, read back, check, and write a report directory.
    #[command(after_long_help = "Examples:
  # The CI smoke run: 2 minutes of leader kills and partitions on 3 local replicas
  jepsen run --time 120 --nemesis smoke

  # Every fault, 5 replicas, 10 minutes
  jepsen run --time 600 --nemesis all --replicas 5

  # The same in Docker containers (root; JM_BIN a statically linked jm; jepsen/run --mode docker builds one)
  jepsen run --time 600 --nemesis all --replicas 5 --mode docker

  # Crashes around fsyncs and checkpoint commits on storage that loses unflushed writes (a failpoint build of jm)
  JM_BIN=target/failpoints/debug/jm jepsen run --time 120 --nemesis crash,kill-leader --lose-unsynced")]
    Run {
        /// Seconds of workload and faults (the heal and final reads come after).
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Replicas: 3 or 5.
        #[arg(long, default_value_t = 3)]
        replicas: u64,
        /// TaskManagers.
        #[arg(long, default_value_t = 2)]
        task_managers: u64,
        /// Faults: `all`, `smoke`, `crash`, `none`, or a comma-separated list (kill-leader, kill-random,
        /// pause-leader, partition-leader, partition-halves, partition-ring, partition-one-way, delay, loss,
        /// restart-all, kill-taskmanager, churn-taskmanagers; and, with a jm built with `--features failpoints`,
        /// crash-before-fsync, crash-after-fsync, crash-after-checkpoint-commit, which `crash` selects and `all`
        /// does not).
        #[arg(long, default_value = "smoke")]
        nemesis: String,
        /// Seconds of quiet between faults (randomized ±50%).
        #[arg(long, default_value_t = 4.0)]
        interval: f64,
        /// Seconds a fault is held (randomized ±50%).
        #[arg(long, default_value_t = 3.0)]
        hold: f64,
        /// Concurrent client processes.
        #[arg(long, default_value_t = 6)]
        concurrency: usize,
        /// Deployment: `local` (processes on 127.0.0.1 with proxied links) or `docker` (containers on a private
        /// network, faults through docker kill/pause and iptables/tc in the containers; needs root and a static jm).
        #[arg(long, default_value = "local")]
        mode: String,
        /// Report directory (default: jepsen/store/<timestamp>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Random seed (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Run the replicas in the test-only storage mode that loses every unflushed write when a process dies
        /// (`jm server --storage-mode lose-unsynced`), so kills and crash faults lose all they can.
        #[arg(long)]
        lose_unsynced: bool,
    },
    /// Check a recorded run's history and logs again.
    #[command(after_long_help = "Examples:
  jepsen check jepsen/store/20261125T101500")]
    Check {
        /// The report directory of a run.
        dir: PathBuf,
    },
}

fn main() {
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(real_main()),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn real_main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            time,
            replicas,
            task_managers,
            nemesis,
            interval,
            hold,
            concurrency,
            mode,
            dir,
            seed,
            lose_unsynced,
        } => {
            let mode = match mode.as_str() {
                "local" => Mode::Local,
                "docker" => Mode::Docker { prefix: jepsen::docker::run_prefix() },
                other => {
                    eprintln!("error: --mode {other} is unknown; use `local` or `docker`");
                    return 2;
                }
            };
            if replicas != 3 && replicas != 5 {
                eprintln!("error: --replicas must be 3 or 5");
                return 2;
            }
            let faults = match parse_faults(&nemesis) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: --nemesis: {e}");
                    return 2;
                }
            };
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            });
            let dir = dir.unwrap_or_else(default_dir);
            let options = RunOptions {
                time: Duration::from_secs(time),
                replicas,
                task_managers,
                concurrency,
                faults,
                schedule: Schedule {
                    interval: Duration::from_secs_f64(interval.max(0.1)),
                    hold: Duration::from_secs_f64(hold.max(0.1)),
                },
                dir: dir.clone(),
                seed,
                mode: mode.clone(),
                lose_unsynced,
            };
            let storage = if lose_unsynced { ", storage lose-unsynced" } else { "" };
            println!(
                "jepsen: {time} s, {replicas} replicas, nemesis {nemesis}{storage}, seed {seed}, report {}",
                dir.display()
            );
            let outcome = tokio::select! {
                outcome = jepsen::run::run(&options) => outcome,
                signal = interrupted() => {
                    if let Mode::Docker { prefix } = &mode {
                        jepsen::docker::abort_run(prefix, &dir);
                    }
                    eprintln!("error: interrupted by {signal}; the run's containers and processes are removed");
                    return 130;
                }
            };
            match outcome {
                Ok(outcome) => report(&outcome.dir, &outcome.history, &outcome.logs),
                Err(e) => {
                    eprintln!("error: the run failed: {e:#}");
                    2
                }
            }
        }
        Command::Check { dir } => {
            let history = match jepsen::history::read_jsonl(&dir.join("history.jsonl")) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", dir.join("history.jsonl").display());
                    return 2;
                }
            };
            let logs = read_logs(&dir);
            report(&dir, &history, &logs)
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM; returns its name.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn default_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("store").join(format!("run-{secs}"))
}

/// The logs of a run directory: `node-N/server.log` and `tm-N/taskmanager.log`.
fn read_logs(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut logs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return logs };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        for file in ["server.log", "taskmanager.log"] {
            if let Ok(text) = std::fs::read_to_string(entry.path().join(file)) {
                logs.push((name.clone(), text));
            }
        }
    }
    logs.sort();
    logs
}

fn report(dir: &std::path::Path, history: &[jepsen::history::Op], logs: &[(String, String)]) -> i32 {
    let verdicts = jepsen::check::check_all(history, logs);
    let summary = match jepsen::check::write_verdicts(dir, &verdicts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot write the verdicts: {e}");
            return 2;
        }
    };
    if let Err(e) = jepsen::report::write(dir, history, &verdicts) {
        eprintln!("warning: cannot write the report: {e}");
    }
    let ops = history.iter().filter(|o| o.is_invoke() && o.f != "nemesis").count();
    let faults = history.iter().filter(|o| o.is_invoke() && o.f == "nemesis" && o.value == "start").count();
    print!("{summary}");
    println!("{ops} operations, {faults} faults; report in {}", dir.display());
    if verdicts.iter().any(|v| v.is_invalid()) {
        1
    } else {
        0
    }
}
