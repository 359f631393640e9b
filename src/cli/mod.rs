//! The `jm` command line. Only this module (and `api`) knows clap.
//!
//! * `jm server`: one replica ([`server`]);
//! * `jm taskmanager`: one TaskManager ([`taskmanager`]);
//! * `jm local`: a 3-replica cluster and two TaskManagers as child processes ([`local`]);
//! * `jm job ...` and `jm cluster status`: client commands against any replicas ([`job`], [`status`]);
//! * `jm bench`: the replicated-core benchmark ([`bench`]); `jm bench-jobs`: the jobs benchmark ([`bench_jobs`]).
//!
//! Exit codes: 0 on success; 1 with one line `error: ...` on stderr when the command failed; 2 for
//! usage errors (clap).
//!
//! Help: `-h` is the short summary; `--help` (and `jm help <command>`) adds an `Examples:` section to every
//! command, kubectl-style (a `# what it does` line above each `jm ...` invocation), built by [`examples`]. A
//! test walks the whole command tree and fails for a command without one.

pub mod bench;
pub mod bench_jobs;
pub mod job;
pub mod local;
pub mod output;
pub mod server;
pub mod status;
pub mod taskmanager;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api::grpc::ClusterClient;

/// Default client API addresses: those `jm local` uses.
pub const DEFAULT_CLUSTER: &str = "127.0.0.1:6123,127.0.0.1:6124,127.0.0.1:6125";

/// jm: a highly available job manager for stream-processing jobs.
#[derive(Debug, Parser)]
#[command(name = "jm", version, about, propagate_version = true, after_long_help = examples(EXAMPLES))]
pub struct Cli {
    /// Log lines as human-readable text or as JSON objects (one per line, with span fields such as node_id,
    /// job_id and request_id), for a log pipeline.
    #[arg(long, env = "JM_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

const EXAMPLES: &str = "
  # Start 3 replicas and 2 TaskManagers on this machine, running an example job (Ctrl-C stops them)
  jm local

  # Submit a job through any replica (followers forward it to the leader)
  jm job submit docs/examples/fraud-detection.yaml

  # Who leads, and how far each replica's log is applied
  jm cluster status
";

const TASKMANAGERS_EXAMPLES: &str = "
  # The registered TaskManagers, their zones and free slots
  jm taskmanagers

  # The same for a remote cluster, as JSON
  jm taskmanagers --cluster 10.0.0.1:6123,10.0.0.2:6123 -o json
";

const COMPLETIONS_EXAMPLES: &str = "
  # Bash, for every user
  jm completions bash > /etc/bash_completion.d/jm

  # Zsh, into a directory on $fpath
  jm completions zsh > ~/.zfunc/_jm

  # Fish
  jm completions fish > ~/.config/fish/completions/jm.fish
";

/// A command's `Examples:` section for `--help` (clap's `after_long_help`; `-h` stays short), its heading styled
/// like clap's own. `text` is kubectl-style: a `# what it does` line above each invocation, indented two spaces;
/// every invocation starts with `jm` and the command's path (a test checks).
pub fn examples(text: &str) -> String {
    let heading = clap::builder::styling::Style::new().bold().underline();
    format!("{}Examples:{}\n{}", heading.render(), heading.render_reset(), text.trim_matches('\n'))
}

/// The log format chosen on the command line, read by [`init_logging`].
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one replica of the job manager.
    Server(Box<server::ServerArgs>),
    /// Run one TaskManager: task slots for the leader's JobMasters.
    Taskmanager(taskmanager::TaskManagerArgs),
    /// Start a 3-replica cluster on this machine as child processes; Ctrl-C stops it.
    Local(local::LocalArgs),
    /// Submit, list, inspect and cancel jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(status::ClusterCommand),
    /// List the registered TaskManagers and their free slots.
    #[command(after_long_help = examples(TASKMANAGERS_EXAMPLES))]
    Taskmanagers(ClientArgs),
    /// Measure replicated write throughput and latency, failover time, memory and disk use.
    Bench(bench::BenchArgs),
    /// Measure what a leader failover costs running jobs, checkpoint throughput and memory per job.
    BenchJobs(bench_jobs::BenchJobsArgs),
    /// Print a shell completion script.
    #[command(after_long_help = examples(COMPLETIONS_EXAMPLES))]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Options shared by the client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Client API addresses of any replicas, comma-separated; the first reachable one is used.
    #[arg(long, env = "JM_CLUSTER", default_value = DEFAULT_CLUSTER, value_delimiter = ',', global = true)]
    pub cluster: Vec<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    pub output: output::Format,
}

impl ClientArgs {
    /// A client of the given replicas.
    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(self.cluster.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
    }
}

/// Parses the command line, runs the command, and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Local(args) => local::run(args).await,
            Command::Taskmanager(args) => taskmanager::run(args).await,
            Command::Job(cmd) => job::run(cmd).await,
            Command::Cluster(cmd) => status::run(cmd).await,
            Command::Taskmanagers(client) => job::list_task_managers(client).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchJobs(args) => bench_jobs::run(args).await,
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "jm", &mut std::io::stdout());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    // One line: join a multi-line error chain.
    eprintln!("error: {}", message.replace('\n', " "));
    ExitCode::FAILURE
}

/// The log format of this process as `JM_LOG_FORMAT`'s value, for the processes `jm local` and the benchmarks
/// start: `jm --log-format json local` makes every replica and TaskManager log JSON too.
pub fn log_format_env() -> &'static str {
    match LOG_FORMAT.get() {
        Some(LogFormat::Json) => "json",
        _ => "text",
    }
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default level.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Json => {
            let _ = builder.json().with_current_span(true).with_span_list(true).try_init();
        }
        LogFormat::Text => {
            let _ = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every command of the tree, however deep, has examples that run it (the CLI test checks the rendered help).
    #[test]
    fn every_command_has_examples() {
        fn walk(command: &clap::Command, path: &str, seen: &mut usize) {
            let help = command.get_after_long_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.starts_with("Examples:\n"), "`{path}` has no examples in its --help");
            assert!(help.contains(&format!("\n  {path} ")) || help.contains(&format!("\n  {path}\n")), "{help}");
            *seen += 1;
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), seen);
            }
        }
        let mut seen = 0;
        walk(&Cli::command(), "jm", &mut seen);
        assert!(seen >= 20, "{seen} commands");
    }
}
