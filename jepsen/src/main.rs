//! `jepsen`: runs the chaos suite against a jobmanager cluster it deploys itself, or checks a recorded history.

fn main() {
    eprintln!("jepsen: not wired yet");
}
