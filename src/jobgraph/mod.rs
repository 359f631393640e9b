//! The job graph: a job spec (YAML or JSON, see `docs/jobs.md`) parsed, validated and resolved into the form every
//! component works with.
//!
//! [`parse`] is the only way in. It refuses a document that is too large, malformed, has unknown keys, a cycle, an
//! operator in the wrong place, a bad parallelism or a missing field, with a [`SpecError`] naming the offending field
//! by its path (e.g. `vertices[1].operators[0].sum.field`). What comes out is a [`JobGraph`]: every default filled
//! in (parallelism, max parallelism, edge partitioning), vertices in topological order, and the spec's canonical
//! JSON, which is what the replicated log stores. [`JobGraph::from_canonical_json`] rebuilds the graph from that JSON
//! on the JobMaster and the TaskManagers; it re-runs the validation, so a graph is valid wherever it is used.

mod parse;
pub mod spec;
mod validate;

pub use spec::*;

/// Largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Longest job name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest vertex id, in bytes.
pub const MAX_VERTEX_ID_BYTES: usize = 64;
/// Shortest checkpoint interval and timeout accepted, in milliseconds (as Flink's minimum interval).
pub const MIN_CHECKPOINT_INTERVAL_MS: u64 = 10;

/// Why a spec was refused: the offending field, by path, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Path of the offending field, e.g. `checkpoints.interval` or `vertices[0].parallelism`; `<document>` for the
    /// document as a whole.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl SpecError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// A validated job graph with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct JobGraph {
    /// The spec as written (defaults not filled in), for display.
    pub spec: JobSpec,
    /// The vertices in topological order (every edge goes from a lower to a higher index).
    pub vertices: Vec<Vertex>,
    /// The edges, with vertex indexes into `vertices` and resolved partitioning.
    pub edges: Vec<Edge>,
    /// The spec as canonical (compact, key-sorted) JSON: what the replicated log stores.
    pub canonical_json: String,
}

/// A vertex with its defaults resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Vertex {
    /// The vertex id from the spec.
    pub id: String,
    /// Number of subtasks.
    pub parallelism: u32,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// The operator chain.
    pub operators: Vec<OperatorSpec>,
    /// Indexes into [`JobGraph::edges`] of the edges into this vertex.
    pub inputs: Vec<usize>,
    /// Indexes into [`JobGraph::edges`] of the edges out of this vertex.
    pub outputs: Vec<usize>,
}

/// An edge with its partitioning resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// Index of the upstream vertex in [`JobGraph::vertices`].
    pub from: usize,
    /// Index of the downstream vertex.
    pub to: usize,
    /// How records are routed.
    pub partitioning: Partitioning,
}

/// Parses and validates a spec given as YAML or JSON (JSON when the first non-blank character is `{`).
pub fn parse(bytes: &[u8]) -> Result<JobGraph, SpecError> {
    let spec = parse::parse_document(bytes)?;
    validate::build_graph(spec)
}

impl JobGraph {
    /// Rebuilds a graph from the canonical JSON stored in the replicated log.
    pub fn from_canonical_json(json: &str) -> Result<Self, SpecError> {
        parse(json.as_bytes())
    }

    /// The vertex with this id.
    pub fn vertex(&self, id: &str) -> Option<&Vertex> {
        self.vertices.iter().find(|v| v.id == id)
    }

    /// Total number of subtasks over all vertices.
    pub fn subtask_count(&self) -> u32 {
        self.vertices.iter().map(|v| v.parallelism).sum()
    }

    /// Slots the job needs with slot sharing (one subtask of each vertex per slot): its highest parallelism.
    pub fn slots_needed(&self) -> u32 {
        self.vertices.iter().map(|v| v.parallelism).max().unwrap_or(0)
    }

    /// The weakly connected components of the graph, each a sorted list of vertex indexes, ordered by their first
    /// vertex. Records only flow within a component.
    pub fn components(&self) -> Vec<Vec<usize>> {
        validate::components(self)
    }

    /// The key field of a vertex that starts with `key_by`, if it does.
    pub fn key_field(&self, vertex: usize) -> Option<&str> {
        match self.vertices.get(vertex)?.operators.first()? {
            OperatorSpec::KeyBy(k) => Some(&k.field),
            _ => None,
        }
    }

    /// Whether checkpointing is enabled (an interval is set).
    pub fn checkpointing_enabled(&self) -> bool {
        self.spec.checkpoints.interval.is_some()
    }

    /// The restart strategy in force: the spec's, or Flink's default (fixed-delay when checkpointing, none otherwise).
    pub fn restart_strategy(&self) -> RestartStrategySpec {
        match &self.spec.restart_strategy {
            Some(strategy) => strategy.clone(),
            None if self.checkpointing_enabled() => {
                RestartStrategySpec::FixedDelay { attempts: i32::MAX as u32, delay: DurationMs(1000) }
            }
            None => RestartStrategySpec::None,
        }
    }
}
