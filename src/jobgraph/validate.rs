//! Semantic validation of a parsed spec and resolution of its defaults into a [`JobGraph`](super::JobGraph).
//!
//! Owns every rule about meaning: name and id formats, parallelism bounds, where sources, sinks, `key_by` and keyed
//! aggregates may stand in a chain, edge endpoints, cycles, partitioning, checkpoint and restart settings. The
//! checks run in document order (name, parallelism, vertices, edges, checkpoints, restart strategy, savepoint) and
//! the first failure is returned, as a [`SpecError`] naming the field by path and saying how to fix it.
//!
//! Invariants of the graph built here, relied on by every component:
//! - vertices are in topological order, every edge going from a lower to a higher index; among vertices that are
//!   ready at the same time the spec's order is kept, so the order is stable under unrelated edits;
//! - `edges[k]` is the spec's `edges[k]` (same index, so error paths and graph indexes agree), with its
//!   partitioning resolved: `hash` into a vertex that starts with `key_by`, otherwise `forward` when both sides
//!   have the same parallelism and `rebalance` when not;
//! - a vertex without inputs starts with a source, a vertex without outputs ends with a sink, and nothing else
//!   holds a source or sink; `key_by` only ever opens a vertex that has inputs, and keyed aggregates only follow it.
//!
//! Caveat: expressions (`map`, `filter`) are only checked to be non-empty; their syntax belongs to the runtime's
//! expression evaluator.

use std::collections::{BTreeSet, HashMap};

use super::{
    AggregateOperator, CheckpointSpec, Edge, JobGraph, JobSpec, OperatorSpec, Partitioning, RestartStrategySpec,
    SpecError, Vertex, VertexSpec, WindowOperator, MAX_NAME_BYTES, MAX_VERTEX_ID_BYTES, MIN_CHECKPOINT_INTERVAL_MS,
    UPPER_MAX_PARALLELISM,
};
use crate::raft::command::MAX_RETAINED_CHECKPOINTS;

/// Validates `spec` and resolves it into a graph.
pub(super) fn build_graph(spec: JobSpec) -> Result<JobGraph, SpecError> {
    check_name(&spec.name)?;
    check_job_parallelism(&spec)?;
    check_vertex_ids(&spec.vertices)?;
    let parallelisms = resolve_parallelisms(&spec)?;
    let endpoints = resolve_endpoints(&spec)?;
    let order = topological_order(&spec, &endpoints)?;
    for (index, vertex) in spec.vertices.iter().enumerate() {
        let wiring = Wiring::of(index, &endpoints);
        check_chain(index, vertex, &wiring)?;
    }
    let partitionings = resolve_partitionings(&spec, &endpoints, &parallelisms)?;
    check_checkpoints(&spec.checkpoints)?;
    if let Some(strategy) = &spec.restart_strategy {
        check_restart_strategy(strategy)?;
    }
    if let Some(savepoint) = &spec.savepoint {
        require_non_blank("savepoint.path", &savepoint.path, "the savepoint's directory")?;
    }
    let canonical_json = serde_json::to_string(&spec)
        .map_err(|e| SpecError::new(super::parse::DOCUMENT, format!("cannot be written as JSON: {e}")))?;
    let (vertices, edges) = assemble(&spec, &order, &endpoints, &parallelisms, &partitionings);
    Ok(JobGraph { spec, vertices, edges, canonical_json })
}

/// Weakly connected components: each a sorted list of vertex indexes, ordered by their first vertex.
pub(super) fn components(graph: &JobGraph) -> Vec<Vec<usize>> {
    let mut component_of: Vec<Option<usize>> = vec![None; graph.vertices.len()];
    let mut components: Vec<Vec<usize>> = Vec::new();
    for start in 0..graph.vertices.len() {
        if component_of[start].is_some() {
            continue;
        }
        let id = components.len();
        let mut members = vec![start];
        let mut stack = vec![start];
        component_of[start] = Some(id);
        while let Some(vertex) = stack.pop() {
            for neighbour in neighbours(graph, vertex) {
                if component_of[neighbour].is_none() {
                    component_of[neighbour] = Some(id);
                    members.push(neighbour);
                    stack.push(neighbour);
                }
            }
        }
        members.sort_unstable();
        components.push(members);
    }
    // Scanning starts in index order, so each component's first vertex is smaller than any later one's.
    components
}

/// Vertices joined to `vertex` by an edge in either direction.
fn neighbours(graph: &JobGraph, vertex: usize) -> impl Iterator<Item = usize> + '_ {
    let v = &graph.vertices[vertex];
    let upstream = v.inputs.iter().map(|&e| graph.edges[e].from);
    let downstream = v.outputs.iter().map(|&e| graph.edges[e].to);
    upstream.chain(downstream)
}

// -- Job-level settings.

fn check_name(name: &str) -> Result<(), SpecError> {
    if name.trim().is_empty() {
        return Err(SpecError::new("name", "is empty; give the job a name"));
    }
    if name.len() > MAX_NAME_BYTES {
        let reason = format!("is {} bytes long; at most {MAX_NAME_BYTES} bytes", name.len());
        return Err(SpecError::new("name", reason));
    }
    Ok(())
}

fn check_job_parallelism(spec: &JobSpec) -> Result<(), SpecError> {
    check_max_parallelism("max_parallelism", spec.max_parallelism)?;
    check_parallelism("parallelism", spec.parallelism, spec.max_parallelism, "max_parallelism")
}

fn check_max_parallelism(field: &str, value: u32) -> Result<(), SpecError> {
    if !(1..=UPPER_MAX_PARALLELISM).contains(&value) {
        let reason = format!("is {value}; must be between 1 and {UPPER_MAX_PARALLELISM}");
        return Err(SpecError::new(field, reason));
    }
    Ok(())
}

/// Checks `1 <= value <= max`, where `max` came from the field `max_field`.
fn check_parallelism(field: &str, value: u32, max: u32, max_field: &str) -> Result<(), SpecError> {
    if value == 0 {
        return Err(SpecError::new(field, "is 0; must be at least 1"));
    }
    if value > max {
        let reason = format!("is {value}, above the max parallelism {max} (`{max_field}`); raise `{max_field}` or lower this");
        return Err(SpecError::new(field, reason));
    }
    Ok(())
}

// -- Vertices.

fn check_vertex_ids(vertices: &[VertexSpec]) -> Result<(), SpecError> {
    if vertices.is_empty() {
        return Err(SpecError::new("vertices", "is empty; a job needs at least one vertex"));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, vertex) in vertices.iter().enumerate() {
        let field = format!("vertices[{index}].id");
        check_vertex_id(&field, &vertex.id)?;
        if let Some(first) = seen.insert(&vertex.id, index) {
            let reason = format!("`{}` is also the id of vertices[{first}]; vertex ids must be unique", vertex.id);
            return Err(SpecError::new(field, reason));
        }
    }
    Ok(())
}

fn check_vertex_id(field: &str, id: &str) -> Result<(), SpecError> {
    if id.is_empty() || id.len() > MAX_VERTEX_ID_BYTES {
        let reason = format!("is {} bytes long; must be 1 to {MAX_VERTEX_ID_BYTES} bytes", id.len());
        return Err(SpecError::new(field, reason));
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        let reason = format!("`{id}` contains {bad:?}; use only letters, digits, `-` and `_`");
        return Err(SpecError::new(field, reason));
    }
    Ok(())
}

/// A vertex's parallelism and max parallelism after defaults.
#[derive(Debug, Clone, Copy)]
struct Parallelism {
    parallelism: u32,
    max_parallelism: u32,
}

/// Each vertex's parallelism and max parallelism, taking the job's where the vertex sets none, checked.
fn resolve_parallelisms(spec: &JobSpec) -> Result<Vec<Parallelism>, SpecError> {
    let mut resolved = Vec::with_capacity(spec.vertices.len());
    for (index, vertex) in spec.vertices.iter().enumerate() {
        let max_field = match vertex.max_parallelism {
            Some(_) => format!("vertices[{index}].max_parallelism"),
            None => "max_parallelism".to_string(),
        };
        let max_parallelism = vertex.max_parallelism.unwrap_or(spec.max_parallelism);
        check_max_parallelism(&max_field, max_parallelism)?;
        let parallelism = match vertex.parallelism {
            Some(own) => {
                check_parallelism(&format!("vertices[{index}].parallelism"), own, max_parallelism, &max_field)?;
                own
            }
            // The job's parallelism is within the job's max parallelism, but maybe not within the vertex's own.
            None if spec.parallelism > max_parallelism => {
                let reason = format!(
                    "is {max_parallelism}, below the parallelism {} the vertex inherits from the job's \
                     `parallelism`; raise it or set `vertices[{index}].parallelism`",
                    spec.parallelism
                );
                return Err(SpecError::new(max_field, reason));
            }
            None => spec.parallelism,
        };
        resolved.push(Parallelism { parallelism, max_parallelism });
    }
    Ok(resolved)
}

// -- Edges and cycles.

/// An edge's endpoints as indexes into the spec's vertices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Endpoints {
    from: usize,
    to: usize,
}

/// Resolves every edge's vertex ids; refuses unknown ids, self-loops and duplicate edges.
fn resolve_endpoints(spec: &JobSpec) -> Result<Vec<Endpoints>, SpecError> {
    let index_of: HashMap<&str, usize> = spec.vertices.iter().enumerate().map(|(i, v)| (v.id.as_str(), i)).collect();
    let known = || spec.vertices.iter().map(|v| format!("`{}`", v.id)).collect::<Vec<_>>().join(", ");
    let lookup = |field: String, id: &str| {
        index_of.get(id).copied().ok_or_else(|| {
            SpecError::new(field, format!("names no vertex (`{id}`); the vertices are {}", known()))
        })
    };
    let mut endpoints: Vec<Endpoints> = Vec::with_capacity(spec.edges.len());
    for (index, edge) in spec.edges.iter().enumerate() {
        let from = lookup(format!("edges[{index}].from"), &edge.from)?;
        let to = lookup(format!("edges[{index}].to"), &edge.to)?;
        if from == to {
            let reason = format!("goes from `{}` to itself; an edge must join two different vertices", edge.from);
            return Err(SpecError::new(format!("edges[{index}]"), reason));
        }
        let this = Endpoints { from, to };
        if let Some(first) = endpoints.iter().position(|e| *e == this) {
            let reason = format!("repeats edges[{first}] (`{}` -> `{}`); remove one of them", edge.from, edge.to);
            return Err(SpecError::new(format!("edges[{index}]"), reason));
        }
        endpoints.push(this);
    }
    Ok(endpoints)
}

/// The spec's vertex indexes in topological order, keeping spec order among vertices ready together (Kahn's
/// algorithm with the ready set ordered by index). Refuses a cycle.
fn topological_order(spec: &JobSpec, endpoints: &[Endpoints]) -> Result<Vec<usize>, SpecError> {
    let count = spec.vertices.len();
    let mut pending_inputs = vec![0usize; count];
    for edge in endpoints {
        pending_inputs[edge.to] += 1;
    }
    let mut ready: BTreeSet<usize> = (0..count).filter(|&v| pending_inputs[v] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(vertex) = ready.pop_first() {
        order.push(vertex);
        for edge in endpoints.iter().filter(|e| e.from == vertex) {
            pending_inputs[edge.to] -= 1;
            if pending_inputs[edge.to] == 0 {
                ready.insert(edge.to);
            }
        }
    }
    if order.len() < count {
        let stuck: Vec<bool> = (0..count).map(|v| pending_inputs[v] > 0).collect();
        return Err(cycle_error(spec, endpoints, &stuck));
    }
    Ok(order)
}

/// Describes one cycle among the `stuck` vertices (those Kahn's algorithm could not order): every stuck vertex has
/// a stuck predecessor, so walking predecessors from any of them must revisit one.
fn cycle_error(spec: &JobSpec, endpoints: &[Endpoints], stuck: &[bool]) -> SpecError {
    let start = stuck.iter().position(|&s| s).expect("a cycle leaves at least one vertex stuck");
    // Walk backwards along edges into stuck vertices, recording the edge taken, until a vertex repeats.
    let mut walked: Vec<usize> = Vec::new();
    let mut visited_at: HashMap<usize, usize> = HashMap::new();
    let mut vertex = start;
    while !visited_at.contains_key(&vertex) {
        visited_at.insert(vertex, walked.len());
        let edge = (0..endpoints.len())
            .find(|&e| endpoints[e].to == vertex && stuck[endpoints[e].from])
            .expect("a stuck vertex has a stuck predecessor");
        walked.push(edge);
        vertex = endpoints[edge].from;
    }
    let mut cycle: Vec<usize> = walked[visited_at[&vertex]..].to_vec();
    cycle.reverse(); // now in the direction of the edges
    // Report the cycle as closed by its last-written edge, starting where that edge points.
    let closing = (0..cycle.len()).max_by_key(|&i| cycle[i]).expect("a cycle has edges");
    let length = cycle.len();
    cycle.rotate_left((closing + 1) % length);
    let id = |v: usize| spec.vertices[v].id.as_str();
    let mut path = vec![id(endpoints[cycle[0]].from)];
    path.extend(cycle.iter().map(|&e| id(endpoints[e].to)));
    let edges: Vec<String> = cycle.iter().map(|e| format!("edges[{e}]")).collect();
    let reason = format!(
        "creates a cycle {} (through {}); a job graph must be acyclic, remove one of these edges",
        path.join(" -> "),
        edges.join(", ")
    );
    SpecError::new(format!("edges[{}]", cycle[cycle.len() - 1]), reason)
}

// -- Operator chains.

/// A vertex's edges, by spec edge index.
struct Wiring {
    inputs: Vec<usize>,
    outputs: Vec<usize>,
}

impl Wiring {
    fn of(vertex: usize, endpoints: &[Endpoints]) -> Self {
        let edges_where = |pick: fn(&Endpoints) -> usize| {
            endpoints.iter().enumerate().filter(|(_, e)| pick(e) == vertex).map(|(i, _)| i).collect()
        };
        Self { inputs: edges_where(|e| e.to), outputs: edges_where(|e| e.from) }
    }
}

fn check_chain(index: usize, vertex: &VertexSpec, wiring: &Wiring) -> Result<(), SpecError> {
    let Some(first) = vertex.operators.first() else {
        let reason = "is empty; a vertex needs at least one operator";
        return Err(SpecError::new(format!("vertices[{index}].operators"), reason));
    };
    let last_position = vertex.operators.len() - 1;
    for (position, operator) in vertex.operators.iter().enumerate() {
        let field = format!("vertices[{index}].operators[{position}]");
        check_placement(&field, &vertex.id, operator, position, last_position, wiring)?;
        if operator.is_keyed() && !matches!(first, OperatorSpec::KeyBy(_)) {
            let reason = format!(
                "`{}` keeps keyed state, so vertex `{}` must start with `key_by`; add `key_by` as its first \
                 operator (in a vertex with an input edge)",
                operator.name(),
                vertex.id
            );
            return Err(SpecError::new(field, reason));
        }
        check_settings(&field, operator, key_field(first))?;
    }
    check_chain_ends(index, vertex, wiring)
}

fn key_field(first: &OperatorSpec) -> Option<&str> {
    match first {
        OperatorSpec::KeyBy(key_by) => Some(&key_by.field),
        _ => None,
    }
}

/// Sources only first and without inputs, sinks only last and without outputs, `key_by` only first with inputs.
fn check_placement(
    field: &str,
    vertex_id: &str,
    operator: &OperatorSpec,
    position: usize,
    last_position: usize,
    wiring: &Wiring,
) -> Result<(), SpecError> {
    let name = operator.name();
    let refuse = |reason: String| Err(SpecError::new(field, reason));
    if operator.is_source() && position != 0 {
        return refuse(format!("`{name}` is a source and may only be the first operator of a vertex"));
    }
    if operator.is_source() && !wiring.inputs.is_empty() {
        return refuse(format!(
            "`{name}` is a source, but vertex `{vertex_id}` has an input edge (edges[{}]); a source vertex cannot \
             have inputs",
            wiring.inputs[0]
        ));
    }
    if operator.is_sink() && position != last_position {
        return refuse(format!("`{name}` is a sink and may only be the last operator of a vertex"));
    }
    if operator.is_sink() && !wiring.outputs.is_empty() {
        return refuse(format!(
            "`{name}` is a sink, but vertex `{vertex_id}` has an output edge (edges[{}]); a sink vertex cannot \
             have outputs",
            wiring.outputs[0]
        ));
    }
    if matches!(operator, OperatorSpec::KeyBy(_)) && position != 0 {
        return refuse(
            "`key_by` may only be the first operator of a vertex; end this vertex here and start a new one with \
             `key_by`, joined to it by an edge"
                .to_string(),
        );
    }
    Ok(())
}

/// A vertex without inputs must start with a source (which also keeps `key_by` out of such a vertex), and a vertex
/// without outputs must end with a sink.
fn check_chain_ends(index: usize, vertex: &VertexSpec, wiring: &Wiring) -> Result<(), SpecError> {
    let last_position = vertex.operators.len() - 1;
    let (first, last) = (&vertex.operators[0], &vertex.operators[last_position]);
    if wiring.inputs.is_empty() && matches!(first, OperatorSpec::KeyBy(_)) {
        let reason = format!(
            "is `key_by`, but vertex `{}` has no input edges; `key_by` must open a vertex fed by an edge (which \
             it hash-partitions), so move it into a new vertex after the source",
            vertex.id
        );
        return Err(SpecError::new(format!("vertices[{index}].operators[0]"), reason));
    }
    if wiring.inputs.is_empty() && !first.is_source() {
        let reason = format!(
            "is `{}`, but vertex `{}` has no input edges, so it must start with a source (`sequence` or `files`); \
             add a source or an edge into `{}`",
            first.name(),
            vertex.id,
            vertex.id
        );
        return Err(SpecError::new(format!("vertices[{index}].operators[0]"), reason));
    }
    if wiring.outputs.is_empty() && !last.is_sink() {
        let reason = format!(
            "is `{}`, but vertex `{}` has no output edges, so its last operator must be a sink (`file`, `log` or \
             `blackhole`); add a sink or an edge out of `{}`",
            last.name(),
            vertex.id,
            vertex.id
        );
        return Err(SpecError::new(format!("vertices[{index}].operators[{last_position}]"), reason));
    }
    Ok(())
}

/// Checks one operator's own settings; `key` is the vertex's key field, if it starts with `key_by`.
fn check_settings(field: &str, operator: &OperatorSpec, key: Option<&str>) -> Result<(), SpecError> {
    let at = |name: &str| format!("{field}.{}.{name}", operator.name());
    match operator {
        OperatorSpec::Sequence(sequence) => {
            if let Some(to) = sequence.to.filter(|&to| to <= sequence.from) {
                let reason = format!("is {to}, not above `from` ({}); `to` is exclusive", sequence.from);
                return Err(SpecError::new(at("to"), reason));
            }
            if let Some(rate) = sequence.rate.filter(|rate| !(rate.is_finite() && *rate > 0.0)) {
                let reason = format!("is {rate}; must be a positive number of records per second (or leave it out)");
                return Err(SpecError::new(at("rate"), reason));
            }
        }
        OperatorSpec::Files(files) => require_non_blank(&at("path"), &files.path, "the directory to read")?,
        OperatorSpec::Map(map) => check_map_fields(&at("fields"), &map.fields)?,
        OperatorSpec::Filter(filter) => require_non_blank(&at("expr"), &filter.expr, "a boolean expression")?,
        OperatorSpec::KeyBy(key_by) => require_non_blank(&at("field"), &key_by.field, "the key field's name")?,
        OperatorSpec::Count(aggregate) => check_aggregate(&at(""), "count", aggregate, false, key)?,
        OperatorSpec::Sum(aggregate) | OperatorSpec::Min(aggregate) | OperatorSpec::Max(aggregate) => {
            check_aggregate(&at(""), operator.name(), aggregate, true, key)?
        }
        OperatorSpec::Window(window) => check_window(&at(""), window, key)?,
        OperatorSpec::File(file) => require_non_blank(&at("path"), &file.path, "the output directory")?,
        OperatorSpec::Log(_) | OperatorSpec::Blackhole(_) => {}
    }
    Ok(())
}

fn check_map_fields(field: &str, fields: &std::collections::BTreeMap<String, String>) -> Result<(), SpecError> {
    if fields.is_empty() {
        let reason = "is empty; give at least one `name: expression`, e.g. `k: \"seq % 10\"`";
        return Err(SpecError::new(field, reason));
    }
    for (name, expression) in fields {
        if name.trim().is_empty() {
            return Err(SpecError::new(field, "has an empty field name; name every field"));
        }
        require_non_blank(&format!("{field}.{name}"), expression, "an expression")?;
    }
    Ok(())
}

/// `prefix` ends with a dot: `vertices[0].operators[2].sum.`.
fn check_aggregate(
    prefix: &str,
    name: &str,
    aggregate: &AggregateOperator,
    needs_field: bool,
    key: Option<&str>,
) -> Result<(), SpecError> {
    check_aggregate_field(prefix, name, aggregate.field.as_deref(), needs_field)?;
    check_output(prefix, aggregate.output.as_deref(), key, &[])
}

fn check_aggregate_field(prefix: &str, name: &str, field: Option<&str>, needs_field: bool) -> Result<(), SpecError> {
    match (field, needs_field) {
        (None, true) => {
            let reason = format!("is missing; `{name}` needs the numeric field to aggregate, e.g. `field: amount`");
            Err(SpecError::new(format!("{prefix}field"), reason))
        }
        (Some(_), false) => {
            let reason = format!("is not allowed; `{name}` counts records and reads no field, so remove it");
            Err(SpecError::new(format!("{prefix}field"), reason))
        }
        (Some(field), true) => require_non_blank(&format!("{prefix}field"), field, "the numeric field's name"),
        (None, false) => Ok(()),
    }
}

/// An output name, when given, must be non-empty and must not overwrite the key or another emitted field.
fn check_output(prefix: &str, output: Option<&str>, key: Option<&str>, reserved: &[&str]) -> Result<(), SpecError> {
    let Some(output) = output else { return Ok(()) };
    let field = format!("{prefix}output");
    require_non_blank(&field, output, "the output field's name")?;
    if Some(output) == key || reserved.contains(&output) {
        let reason = format!("`{output}` would overwrite a field the operator emits itself; choose another name");
        return Err(SpecError::new(field, reason));
    }
    Ok(())
}

fn check_window(prefix: &str, window: &WindowOperator, key: Option<&str>) -> Result<(), SpecError> {
    if window.size.0 == 0 {
        return Err(SpecError::new(format!("{prefix}size"), "is 0; a window must be longer than 0 ms, e.g. `10s`"));
    }
    require_non_blank(&format!("{prefix}time_field"), &window.time_field, "the event-time field's name")?;
    let needs_field = window.aggregate != super::WindowAggregate::Count;
    check_aggregate_field(prefix, window.aggregate.name(), window.field.as_deref(), needs_field)?;
    check_output(prefix, window.output.as_deref(), key, &["window_start", "window_end"])
}

fn require_non_blank(field: &str, value: &str, what: &str) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(SpecError::new(field, format!("is empty; give {what}")));
    }
    Ok(())
}

// -- Partitioning.

/// Each edge's partitioning: as written if it fits the two sides, else the default.
fn resolve_partitionings(
    spec: &JobSpec,
    endpoints: &[Endpoints],
    parallelisms: &[Parallelism],
) -> Result<Vec<Partitioning>, SpecError> {
    let mut resolved = Vec::with_capacity(endpoints.len());
    for (index, (edge, ends)) in spec.edges.iter().zip(endpoints).enumerate() {
        let field = format!("edges[{index}].partitioning");
        let downstream_keyed = matches!(spec.vertices[ends.to].operators.first(), Some(OperatorSpec::KeyBy(_)));
        let (upstream, downstream) = (parallelisms[ends.from].parallelism, parallelisms[ends.to].parallelism);
        let partitioning = match edge.partitioning {
            None if downstream_keyed => Partitioning::Hash,
            None if upstream == downstream => Partitioning::Forward,
            None => Partitioning::Rebalance,
            Some(Partitioning::Hash) if !downstream_keyed => {
                let reason = format!(
                    "is `hash`, but hash partitioning needs the downstream vertex to start with key_by, and `{}` \
                     starts with `{}`; start it with `key_by` or use `rebalance` or `forward`",
                    edge.to,
                    first_operator_name(&spec.vertices[ends.to])
                );
                return Err(SpecError::new(field, reason));
            }
            Some(other) if downstream_keyed && other != Partitioning::Hash => {
                let reason = format!(
                    "is `{}`, but `{}` starts with `key_by`, so its inputs must be `hash` partitioned by the key; \
                     use `hash` or leave `partitioning` out",
                    partitioning_name(other),
                    edge.to
                );
                return Err(SpecError::new(field, reason));
            }
            Some(Partitioning::Forward) if upstream != downstream => {
                let reason = format!(
                    "is `forward`, which needs equal parallelism on both sides, but `{}` has {upstream} and `{}` has \
                     {downstream}; use `rebalance` or make them equal",
                    edge.from, edge.to
                );
                return Err(SpecError::new(field, reason));
            }
            Some(explicit) => explicit,
        };
        resolved.push(partitioning);
    }
    Ok(resolved)
}

fn first_operator_name(vertex: &VertexSpec) -> &'static str {
    vertex.operators.first().map_or("nothing", OperatorSpec::name)
}

fn partitioning_name(partitioning: Partitioning) -> &'static str {
    match partitioning {
        Partitioning::Forward => "forward",
        Partitioning::Hash => "hash",
        Partitioning::Rebalance => "rebalance",
    }
}

// -- Checkpoints, restarts.

fn check_checkpoints(checkpoints: &CheckpointSpec) -> Result<(), SpecError> {
    if let Some(interval) = checkpoints.interval.filter(|i| i.0 < MIN_CHECKPOINT_INTERVAL_MS) {
        let reason = format!(
            "is {interval}; must be at least {MIN_CHECKPOINT_INTERVAL_MS}ms (leave it out to disable checkpointing)"
        );
        return Err(SpecError::new("checkpoints.interval", reason));
    }
    if checkpoints.timeout.0 < MIN_CHECKPOINT_INTERVAL_MS {
        let reason = format!("is {}; must be at least {MIN_CHECKPOINT_INTERVAL_MS}ms", checkpoints.timeout);
        return Err(SpecError::new("checkpoints.timeout", reason));
    }
    if !(1..=MAX_RETAINED_CHECKPOINTS).contains(&checkpoints.retained) {
        let reason = format!("is {}; must be between 1 and {MAX_RETAINED_CHECKPOINTS}", checkpoints.retained);
        return Err(SpecError::new("checkpoints.retained", reason));
    }
    if let Some(dir) = &checkpoints.dir {
        require_non_blank("checkpoints.dir", dir, "a directory, or leave `dir` out to use the cluster's")?;
    }
    Ok(())
}

fn check_restart_strategy(strategy: &RestartStrategySpec) -> Result<(), SpecError> {
    let refuse = |name: &str, reason: String| Err(SpecError::new(format!("restart_strategy.{name}"), reason));
    match *strategy {
        RestartStrategySpec::None | RestartStrategySpec::FixedDelay { .. } => Ok(()),
        RestartStrategySpec::FailureRate { max_failures_per_interval, failure_rate_interval, .. } => {
            if max_failures_per_interval == 0 {
                return refuse("max_failures_per_interval", "is 0; must be at least 1".to_string());
            }
            if failure_rate_interval.0 == 0 {
                return refuse("failure_rate_interval", "is 0ms; must be longer than 0, e.g. `1min`".to_string());
            }
            Ok(())
        }
        RestartStrategySpec::ExponentialDelay { initial_backoff, max_backoff, backoff_multiplier, jitter_factor, .. } => {
            if initial_backoff > max_backoff {
                return refuse(
                    "max_backoff",
                    format!("is {max_backoff}, below `initial_backoff` ({initial_backoff}); raise it or lower that"),
                );
            }
            if !(backoff_multiplier.is_finite() && backoff_multiplier >= 1.0) {
                return refuse("backoff_multiplier", format!("is {backoff_multiplier}; must be a number of at least 1.0"));
            }
            if !(0.0..=1.0).contains(&jitter_factor) {
                return refuse("jitter_factor", format!("is {jitter_factor}; must be between 0.0 and 1.0"));
            }
            Ok(())
        }
    }
}

// -- Assembly.

/// Builds the graph's vertices (in topological order) and edges (in spec order, endpoints remapped).
fn assemble(
    spec: &JobSpec,
    order: &[usize],
    endpoints: &[Endpoints],
    parallelisms: &[Parallelism],
    partitionings: &[Partitioning],
) -> (Vec<Vertex>, Vec<Edge>) {
    let mut position = vec![0usize; order.len()];
    for (new, &old) in order.iter().enumerate() {
        position[old] = new;
    }
    let edges: Vec<Edge> = endpoints
        .iter()
        .zip(partitionings)
        .map(|(e, &partitioning)| Edge { from: position[e.from], to: position[e.to], partitioning })
        .collect();
    let vertices = order
        .iter()
        .map(|&old| {
            let wiring = Wiring::of(old, endpoints);
            let vertex = &spec.vertices[old];
            Vertex {
                id: vertex.id.clone(),
                parallelism: parallelisms[old].parallelism,
                max_parallelism: parallelisms[old].max_parallelism,
                operators: vertex.operators.clone(),
                inputs: wiring.inputs,
                outputs: wiring.outputs,
            }
        })
        .collect();
    (vertices, edges)
}
