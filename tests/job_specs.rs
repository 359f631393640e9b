//! The job specs shipped in `docs/examples/` all parse, and the error messages quoted in `docs/jobs.md` are the
//! ones the parser really gives.

use std::path::PathBuf;

use jobmanager::jobgraph::{self, JobGraph, OperatorSpec, Partitioning};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/examples")
}

fn example(name: &str) -> JobGraph {
    let bytes = std::fs::read(examples_dir().join(name)).expect("example exists");
    jobgraph::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_example_parses_and_round_trips() {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("docs/examples exists")
        .map(|entry| entry.expect("readable").file_name().into_string().expect("UTF-8 name"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        let graph = example(name);
        let rebuilt = JobGraph::from_canonical_json(&graph.canonical_json).expect("canonical JSON parses");
        assert_eq!(rebuilt, graph, "{name}");
    }
}

#[test]
fn sequence_count_writes_where_jm_local_expects() {
    let graph = example("sequence-count.yaml");
    assert!(graph.checkpointing_enabled());
    assert_eq!(graph.edges[0].partitioning, Partitioning::Hash);
    let sink = graph.vertex("counter").and_then(|v| v.operators.last());
    assert!(matches!(sink, Some(OperatorSpec::File(f)) if f.path == "/tmp/jm-example-output"), "{sink:?}");
}

#[test]
fn fraud_detection_windows_by_account() {
    let graph = example("fraud-detection.yaml");
    assert_eq!(graph.key_field(1), Some("account"));
    assert!(matches!(graph.vertices[1].operators[1], OperatorSpec::Window(_)));
}

#[test]
fn files_wordcount_is_json_and_keyed() {
    let graph = example("files-wordcount.json");
    assert!(matches!(graph.vertices[0].operators[0], OperatorSpec::Files(_)));
    assert_eq!(graph.key_field(1), Some("word"));
}

#[test]
fn blackhole_bench_is_one_unbounded_vertex() {
    let graph = example("blackhole-bench.yaml");
    assert_eq!(graph.vertices.len(), 1);
    assert!(matches!(&graph.vertices[0].operators[0], OperatorSpec::Sequence(s) if s.to.is_none() && s.rate.is_none()));
}

/// Each spec quoted in `docs/jobs.md` ("Errors") with the exact message printed for it.
#[test]
fn documented_error_messages_are_real() {
    let cases = [
        (
            "name: j\nvertices:\n  - id: a\n    operators:\n      - sequence: {}\n      - mapp: {fields: {k: seq}}\n      - log\n",
            "vertices[0].operators[1]: unknown operator `mapp`; expected one of sequence, files, map, filter, key_by, \
             count, sum, min, max, window, file, log, blackhole (at line 6 column 9)",
        ),
        (
            "name: j\nvertices:\n  - id: a\n    operators: [sequence: {}, log]\ncheckpoints:\n  intervall: 1s\n",
            "checkpoints.intervall: unknown field `intervall`, expected one of `interval`, `timeout`, `min_pause`, \
             `tolerable_failed`, `retained`, `dir`; check the spelling (see docs/jobs.md) (at line 6 column 3)",
        ),
        (
            "name: j\nvertices:\n  - id: a\n    parallelism: two\n    operators: [sequence: {}, log]\n",
            "vertices[0].parallelism: invalid type: string \"two\", expected u32 (at line 4 column 18)",
        ),
        (
            "name: j\nvertices:\n  - id: a\n    operators: [sequence: {}, map: {fields: {k: seq}}]\n",
            "vertices[0].operators[1]: is `map`, but vertex `a` has no output edges, so its last operator must be a \
             sink (`file`, `log` or `blackhole`); add a sink or an edge out of `a`",
        ),
        (
            "name: j\nvertices:\n  - id: a\n    operators: [sequence: {}]\n  - id: b\n    parallelism: 4\n    \
             operators: [log]\nedges:\n  - {from: a, to: b, partitioning: forward}\n",
            "edges[0].partitioning: is `forward`, which needs equal parallelism on both sides, but `a` has 1 and `b` \
             has 4; use `rebalance` or make them equal",
        ),
        (
            "name: j\nvertices:\n  - {id: a, operators: [sequence: {}]}\n  - {id: b, operators: [map: {fields: {x: \
             \"1\"}}]}\n  - {id: c, operators: [log]}\nedges:\n  - {from: a, to: b}\n  - {from: b, to: c}\n  - \
             {from: c, to: b}\n",
            "edges[2]: creates a cycle b -> c -> b (through edges[1], edges[2]); a job graph must be acyclic, remove \
             one of these edges",
        ),
        (
            "name: j\nvertices:\n  - id: a\n    operators: [sequence: {}, log]\ncheckpoints: {interval: 5 parsecs}\n",
            "checkpoints.interval: unknown unit `parsecs` in `5 parsecs`; use ms, s, min, h or d (at line 5 column 25)",
        ),
        (
            "name: j\nvertices:\n  - id: a\n    operators: [sequence: {}, log]\nrestart_strategy: {type: \
             exponential-delay, backoff_multiplier: 0.5}\n",
            "restart_strategy.backoff_multiplier: is 0.5; must be a number of at least 1.0",
        ),
    ];
    for (spec, expected) in cases {
        let error = jobgraph::parse(spec.as_bytes()).expect_err(expected);
        assert_eq!(error.to_string(), expected);
    }
}
