//! The `jm` binary: everything is in the library; see `jobmanager::cli`.

fn main() -> std::process::ExitCode {
    jobmanager::cli::main()
}
