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
//! Expressions (`map`, `filter`) are compiled with the runtime's evaluator, so a syntax error is refused here;
//! errors that depend on the data (a missing field, a type mismatch) can only show when a record is evaluated.

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
        let reason =
            format!("is {value}, above the max parallelism {max} (`{max_field}`); raise `{max_field}` or lower this");
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
        index_of
            .get(id)
            .copied()
            .ok_or_else(|| SpecError::new(field, format!("names no vertex (`{id}`); the vertices are {}", known())))
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
    // Settings paths run through the operator's name: `vertices[0].operators[2].sum.field`.
    let prefix = format!("{field}.{}.", operator.name());
    let at = |name: &str| format!("{prefix}{name}");
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
        OperatorSpec::Filter(filter) => {
            require_non_blank(&at("expr"), &filter.expr, "a boolean expression")?;
            check_expression(&at("expr"), &filter.expr)?
        }
        OperatorSpec::KeyBy(key_by) => require_non_blank(&at("field"), &key_by.field, "the key field's name")?,
        OperatorSpec::Count(aggregate) => check_aggregate(&prefix, "count", aggregate, false, key)?,
        OperatorSpec::Sum(aggregate) | OperatorSpec::Min(aggregate) | OperatorSpec::Max(aggregate) => {
            check_aggregate(&prefix, operator.name(), aggregate, true, key)?
        }
        OperatorSpec::Window(window) => check_window(&prefix, window, key)?,
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
        check_expression(&format!("{field}.{name}"), expression)?;
    }
    Ok(())
}

/// Compiles an expression with the runtime's engine, so a syntax error is refused at submit, not at deploy.
fn check_expression(field: &str, expression: &str) -> Result<(), SpecError> {
    crate::taskmanager::runtime::ExprEngine::new()
        .compile(expression)
        .map(|_| ())
        .map_err(|e| SpecError::new(field, format!("is not a valid expression: {e}")))
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
        RestartStrategySpec::ExponentialDelay {
            initial_backoff,
            max_backoff,
            backoff_multiplier,
            jitter_factor,
            ..
        } => {
            if initial_backoff > max_backoff {
                return refuse(
                    "max_backoff",
                    format!("is {max_backoff}, below `initial_backoff` ({initial_backoff}); raise it or lower that"),
                );
            }
            if !(backoff_multiplier.is_finite() && backoff_multiplier >= 1.0) {
                return refuse(
                    "backoff_multiplier",
                    format!("is {backoff_multiplier}; must be a number of at least 1.0"),
                );
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

#[cfg(test)]
mod tests {
    use super::super::{parse, DurationMs, JobGraph, Partitioning, RestartStrategySpec, SpecError};

    /// A valid two-vertex keyed job; tests change one thing in it.
    const KEYED: &str = r#"
name: keyed
parallelism: 2
vertices:
  - id: source
    operators:
      - sequence: {to: 100}
      - map: {fields: {k: "seq % 10"}}
  - id: counter
    operators:
      - key_by: {field: k}
      - count: {}
      - log
edges:
  - {from: source, to: counter}
checkpoints: {interval: 1s}
"#;

    fn graph(yaml: &str) -> JobGraph {
        parse(yaml.as_bytes()).unwrap_or_else(|e| panic!("should parse: {e}"))
    }

    fn error(yaml: &str) -> SpecError {
        parse(yaml.as_bytes()).expect_err("should be refused")
    }

    /// Asserts the refusal names `field` and its reason contains `fragment`.
    fn assert_refused(yaml: &str, field: &str, fragment: &str) {
        let e = error(yaml);
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(fragment), "reason of `{field}` lacks {fragment:?}: {}", e.reason);
    }

    /// A single source-to-sink vertex with the given operators (a YAML flow list's items).
    fn single(operators: &str) -> String {
        format!("name: j\nvertices:\n  - id: a\n    operators: [{operators}]\n")
    }

    /// Two vertices `a` (source) -> `b`, with the given operators of `b` and edge settings.
    fn pair(b_operators: &str, edge_extra: &str) -> String {
        format!(
            "name: j\nvertices:\n  - id: a\n    operators: [sequence: {{}}]\n  - id: b\n    operators: [{b_operators}]\n\
             edges:\n  - {{from: a, to: b{edge_extra}}}\n"
        )
    }

    #[test]
    fn keyed_example_resolves_defaults() {
        let g = graph(KEYED);
        assert_eq!(g.vertices.len(), 2);
        assert_eq!((g.vertices[0].parallelism, g.vertices[0].max_parallelism), (2, 128));
        assert_eq!(g.edges[0].partitioning, Partitioning::Hash);
        assert_eq!((g.vertices[0].outputs.clone(), g.vertices[1].inputs.clone()), (vec![0], vec![0]));
        assert_eq!(g.key_field(1), Some("k"));
        assert_eq!(g.key_field(0), None);
        assert_eq!((g.subtask_count(), g.slots_needed()), (4, 2));
        assert!(g.checkpointing_enabled());
        assert_eq!(g.spec.checkpoints.timeout, DurationMs(600_000));
        assert_eq!(g.spec.checkpoints.retained, 1);
    }

    // -- Name and parallelism.

    #[test]
    fn blank_name_is_refused() {
        assert_refused(&KEYED.replace("name: keyed", "name: \"  \""), "name", "is empty");
    }

    #[test]
    fn long_name_is_refused() {
        let long = "x".repeat(257);
        assert_refused(&KEYED.replace("name: keyed", &format!("name: {long}")), "name", "at most 256 bytes");
        graph(&KEYED.replace("name: keyed", &format!("name: {}", "x".repeat(256))));
    }

    #[test]
    fn zero_job_parallelism_is_refused() {
        assert_refused(&KEYED.replace("parallelism: 2", "parallelism: 0"), "parallelism", "is 0; must be at least 1");
    }

    #[test]
    fn job_parallelism_above_max_is_refused() {
        let yaml = KEYED.replace("parallelism: 2", "parallelism: 200");
        assert_refused(&yaml, "parallelism", "above the max parallelism 128 (`max_parallelism`)");
    }

    #[test]
    fn job_max_parallelism_out_of_range_is_refused() {
        let yaml = KEYED.replace("parallelism: 2", "parallelism: 2\nmax_parallelism: 32769");
        assert_refused(&yaml, "max_parallelism", "must be between 1 and 32768");
        let yaml = KEYED.replace("parallelism: 2", "parallelism: 1\nmax_parallelism: 0");
        assert_refused(&yaml, "max_parallelism", "is 0; must be between 1 and 32768");
    }

    #[test]
    fn vertex_parallelism_out_of_range_is_refused() {
        let yaml = KEYED.replace("  - id: counter\n", "  - id: counter\n    parallelism: 0\n");
        assert_refused(&yaml, "vertices[1].parallelism", "is 0; must be at least 1");
        let yaml = KEYED.replace("  - id: counter\n", "  - id: counter\n    parallelism: 9\n    max_parallelism: 8\n");
        assert_refused(
            &yaml,
            "vertices[1].parallelism",
            "is 9, above the max parallelism 8 (`vertices[1].max_parallelism`)",
        );
    }

    #[test]
    fn vertex_max_parallelism_out_of_range_is_refused() {
        let yaml = KEYED.replace("  - id: counter\n", "  - id: counter\n    max_parallelism: 40000\n");
        assert_refused(&yaml, "vertices[1].max_parallelism", "must be between 1 and 32768");
    }

    #[test]
    fn inherited_parallelism_above_vertex_max_is_refused() {
        let yaml = KEYED.replace("  - id: counter\n", "  - id: counter\n    max_parallelism: 1\n");
        assert_refused(&yaml, "vertices[1].max_parallelism", "below the parallelism 2 the vertex inherits");
    }

    #[test]
    fn vertex_settings_override_job_defaults() {
        let yaml = KEYED.replace("  - id: counter\n", "  - id: counter\n    parallelism: 3\n    max_parallelism: 64\n");
        let g = graph(&yaml);
        let counter = g.vertex("counter").unwrap();
        assert_eq!((counter.parallelism, counter.max_parallelism), (3, 64));
        assert_eq!(g.slots_needed(), 3);
    }

    // -- Vertex ids.

    #[test]
    fn no_vertices_is_refused() {
        assert_refused("name: j\nvertices: []\n", "vertices", "at least one vertex");
    }

    #[test]
    fn duplicate_vertex_id_is_refused() {
        let yaml = KEYED.replace("id: counter", "id: source").replace("to: counter", "to: source");
        assert_refused(&yaml, "vertices[1].id", "`source` is also the id of vertices[0]");
    }

    #[test]
    fn bad_vertex_ids_are_refused() {
        assert_refused(&KEYED.replace("id: counter", "id: \"\""), "vertices[1].id", "must be 1 to 64 bytes");
        let long = "c".repeat(65);
        assert_refused(&KEYED.replace("id: counter", &format!("id: {long}")), "vertices[1].id", "65 bytes");
        assert_refused(&KEYED.replace("id: counter", "id: co/unter"), "vertices[1].id", "contains '/'");
        graph(&KEYED.replace("counter", "Count_er-2"));
    }

    // -- Edges.

    #[test]
    fn unknown_edge_endpoints_are_refused() {
        let yaml = KEYED.replace("from: source", "from: sourse");
        assert_refused(&yaml, "edges[0].from", "names no vertex (`sourse`); the vertices are `source`, `counter`");
        assert_refused(&KEYED.replace("to: counter", "to: x"), "edges[0].to", "names no vertex (`x`)");
    }

    #[test]
    fn self_loop_is_refused() {
        let yaml = KEYED.replace(
            "  - {from: source, to: counter}",
            "  - {from: source, to: counter}\n  - {from: counter, to: counter}",
        );
        assert_refused(&yaml, "edges[1]", "goes from `counter` to itself");
    }

    #[test]
    fn duplicate_edge_is_refused() {
        let yaml = KEYED.replace(
            "  - {from: source, to: counter}",
            "  - {from: source, to: counter}\n  - {from: source, to: counter}",
        );
        assert_refused(&yaml, "edges[1]", "repeats edges[0] (`source` -> `counter`)");
    }

    #[test]
    fn two_vertex_cycle_is_refused_naming_its_edges() {
        let yaml = "name: j\nvertices:\n  - id: a\n    operators: [map: {fields: {x: \"1\"}}]\n  - id: b\n    operators: [map: {fields: {x: \"1\"}}]\n\
                    edges:\n  - {from: a, to: b}\n  - {from: b, to: a}\n";
        assert_refused(yaml, "edges[1]", "creates a cycle a -> b -> a (through edges[0], edges[1])");
    }

    #[test]
    fn longer_cycle_behind_a_valid_prefix_is_refused() {
        let yaml = r#"
name: j
vertices:
  - {id: src, operators: [sequence: {}]}
  - {id: a, operators: [map: {fields: {x: "1"}}]}
  - {id: b, operators: [map: {fields: {x: "1"}}]}
  - {id: c, operators: [map: {fields: {x: "1"}}]}
  - {id: out, operators: [log]}
edges:
  - {from: src, to: a}
  - {from: b, to: c}
  - {from: a, to: b}
  - {from: c, to: a}
  - {from: c, to: out}
"#;
        assert_refused(yaml, "edges[3]", "creates a cycle a -> b -> c -> a (through edges[2], edges[1], edges[3])");
    }

    // -- Operator placement.

    #[test]
    fn empty_chain_is_refused() {
        assert_refused(&single(""), "vertices[0].operators", "at least one operator");
    }

    #[test]
    fn source_not_first_is_refused() {
        let yaml = single("sequence: {}, sequence: {}, log");
        assert_refused(&yaml, "vertices[0].operators[1]", "`sequence` is a source and may only be the first");
    }

    #[test]
    fn source_with_inputs_is_refused() {
        assert_refused(
            &pair("files: {path: /in}, log", ""),
            "vertices[1].operators[0]",
            "has an input edge (edges[0])",
        );
    }

    #[test]
    fn vertex_without_inputs_must_start_with_a_source() {
        let yaml = single("map: {fields: {x: \"1\"}}, log");
        assert_refused(&yaml, "vertices[0].operators[0]", "has no input edges, so it must start with a source");
    }

    #[test]
    fn sink_not_last_is_refused() {
        let yaml = single("sequence: {}, log, blackhole");
        assert_refused(&yaml, "vertices[0].operators[1]", "`log` is a sink and may only be the last");
    }

    #[test]
    fn sink_with_outputs_is_refused() {
        let yaml = pair("log", "").replace("operators: [sequence: {}]", "operators: [sequence: {}, blackhole]");
        assert_refused(&yaml, "vertices[0].operators[1]", "`blackhole` is a sink, but vertex `a` has an output edge");
    }

    #[test]
    fn vertex_without_outputs_must_end_with_a_sink() {
        let yaml = single("sequence: {}, map: {fields: {x: \"1\"}}");
        assert_refused(&yaml, "vertices[0].operators[1]", "has no output edges, so its last operator must be a sink");
    }

    #[test]
    fn key_by_not_first_is_refused() {
        let yaml = pair("map: {fields: {x: \"1\"}}, key_by: {field: x}, count, log", "");
        assert_refused(&yaml, "vertices[1].operators[1]", "`key_by` may only be the first operator");
        let yaml = single("sequence: {}, key_by: {field: seq}, count, log");
        assert_refused(&yaml, "vertices[0].operators[1]", "`key_by` may only be the first operator");
    }

    #[test]
    fn key_by_without_inputs_is_refused() {
        let yaml = single("key_by: {field: seq}, count, log");
        assert_refused(&yaml, "vertices[0].operators[0]", "`key_by` must open a vertex fed by an edge");
    }

    #[test]
    fn keyed_aggregates_need_key_by() {
        for op in ["count", "sum: {field: seq}", "min: {field: seq}", "max: {field: seq}"] {
            let yaml = single(&format!("sequence: {{}}, {op}, log"));
            assert_refused(&yaml, "vertices[0].operators[1]", "must start with `key_by`");
        }
        let window = "window: {size: 1s, time_field: t, aggregate: count}";
        let yaml = pair(&format!("map: {{fields: {{t: seq}}}}, {window}, log"), "");
        assert_refused(&yaml, "vertices[1].operators[1]", "`window` keeps keyed state");
    }

    // -- Operator settings.

    #[test]
    fn sequence_to_must_exceed_from() {
        let yaml = single("sequence: {from: 10, to: 10}, log");
        assert_refused(&yaml, "vertices[0].operators[0].sequence.to", "is 10, not above `from` (10)");
    }

    #[test]
    fn sequence_rate_must_be_positive_and_finite() {
        for rate in ["0", "-1.5", ".inf", ".nan"] {
            let yaml = single(&format!("sequence: {{rate: {rate}}}, log"));
            assert_refused(&yaml, "vertices[0].operators[0].sequence.rate", "must be a positive number");
        }
        graph(&single("sequence: {rate: 0.5}, log"));
    }

    #[test]
    fn blank_paths_are_refused() {
        assert_refused(&single("files: {path: \"\"}, log"), "vertices[0].operators[0].files.path", "is empty");
        assert_refused(&single("sequence: {}, file: {path: \" \"}"), "vertices[0].operators[1].file.path", "is empty");
    }

    #[test]
    fn map_needs_fields_and_expressions() {
        let yaml = single("sequence: {}, map: {fields: {}}, log");
        assert_refused(&yaml, "vertices[0].operators[1].map.fields", "give at least one `name: expression`");
        let yaml = single("sequence: {}, map: {fields: {k: \"\"}}, log");
        assert_refused(&yaml, "vertices[0].operators[1].map.fields.k", "is empty; give an expression");
        let yaml = single("sequence: {}, map: {fields: {\"\": seq}}, log");
        assert_refused(&yaml, "vertices[0].operators[1].map.fields", "empty field name");
    }

    #[test]
    fn expressions_with_syntax_errors_are_refused_at_submit() {
        let yaml = single("sequence: {}, filter: {expr: \"seq >\"}, log");
        assert_refused(&yaml, "vertices[0].operators[1].filter.expr", "is not a valid expression");
        let yaml = single("sequence: {}, map: {fields: {k: \"(seq % \"}}, log");
        assert_refused(&yaml, "vertices[0].operators[1].map.fields.k", "is not a valid expression");
    }

    #[test]
    fn filter_needs_an_expression() {
        let yaml = single("sequence: {}, filter: {expr: \"  \"}, log");
        assert_refused(&yaml, "vertices[0].operators[1].filter.expr", "give a boolean expression");
    }

    #[test]
    fn key_by_needs_a_field() {
        assert_refused(
            &pair("key_by: {field: \"\"}, count, log", ""),
            "vertices[1].operators[0].key_by.field",
            "is empty",
        );
    }

    #[test]
    fn count_takes_no_field() {
        let yaml = pair("key_by: {field: seq}, count: {field: seq}, log", "");
        assert_refused(&yaml, "vertices[1].operators[1].count.field", "`count` counts records and reads no field");
    }

    #[test]
    fn sum_min_max_need_a_field() {
        for op in ["sum", "min", "max"] {
            let yaml = pair(&format!("key_by: {{field: seq}}, {op}: {{}}, log"), "");
            assert_refused(&yaml, &format!("vertices[1].operators[1].{op}.field"), "is missing");
        }
    }

    #[test]
    fn output_must_not_overwrite_the_key() {
        let yaml = pair("key_by: {field: seq}, sum: {field: seq, output: seq}, log", "");
        assert_refused(&yaml, "vertices[1].operators[1].sum.output", "would overwrite");
    }

    #[test]
    fn window_settings_are_checked() {
        let window = |settings: &str| pair(&format!("key_by: {{field: seq}}, window: {{{settings}}}, log"), "");
        let prefix = "vertices[1].operators[1].window";
        assert_refused(&window("size: 0, time_field: t, aggregate: count"), &format!("{prefix}.size"), "is 0");
        assert_refused(&window("size: 1s, time_field: t, aggregate: sum"), &format!("{prefix}.field"), "is missing");
        let yaml = window("size: 1s, time_field: t, aggregate: count, field: x");
        assert_refused(&yaml, &format!("{prefix}.field"), "is not allowed");
        let yaml = window("size: 1s, time_field: \"\", aggregate: count");
        assert_refused(&yaml, &format!("{prefix}.time_field"), "is empty");
        let yaml = window("size: 1s, time_field: t, aggregate: max, field: x, output: window_end");
        assert_refused(&yaml, &format!("{prefix}.output"), "would overwrite");
        graph(&window("size: 1min, time_field: t, aggregate: max, field: x, allowed_lateness: 5s"));
    }

    // -- Partitioning.

    #[test]
    fn default_partitioning_is_forward_for_equal_parallelism() {
        let g = graph(&pair("map: {fields: {x: \"1\"}}, log", ""));
        assert_eq!(g.edges[0].partitioning, Partitioning::Forward);
    }

    #[test]
    fn default_partitioning_is_rebalance_for_unequal_parallelism() {
        let yaml = pair("map: {fields: {x: \"1\"}}, log", "").replace("  - id: b\n", "  - id: b\n    parallelism: 3\n");
        assert_eq!(graph(&yaml).edges[0].partitioning, Partitioning::Rebalance);
    }

    #[test]
    fn default_partitioning_is_hash_into_key_by() {
        assert_eq!(graph(&pair("key_by: {field: seq}, count, log", "")).edges[0].partitioning, Partitioning::Hash);
    }

    #[test]
    fn explicit_partitioning_is_kept() {
        let g = graph(&pair("map: {fields: {x: \"1\"}}, log", ", partitioning: rebalance"));
        assert_eq!(g.edges[0].partitioning, Partitioning::Rebalance);
        assert_eq!(g.spec.edges[0].partitioning, Some(Partitioning::Rebalance));
    }

    #[test]
    fn forward_needs_equal_parallelism() {
        let yaml = pair("log", ", partitioning: forward").replace("  - id: b\n", "  - id: b\n    parallelism: 4\n");
        assert_refused(
            &yaml,
            "edges[0].partitioning",
            "needs equal parallelism on both sides, but `a` has 1 and `b` has 4",
        );
    }

    #[test]
    fn hash_needs_key_by_downstream() {
        let yaml = pair("log", ", partitioning: hash");
        assert_refused(
            &yaml,
            "edges[0].partitioning",
            "hash partitioning needs the downstream vertex to start with key_by",
        );
    }

    #[test]
    fn key_by_needs_hash_upstream() {
        let yaml = pair("key_by: {field: seq}, count, log", ", partitioning: rebalance");
        assert_refused(&yaml, "edges[0].partitioning", "is `rebalance`, but `b` starts with `key_by`");
    }

    #[test]
    fn unknown_partitioning_names_the_field() {
        let yaml = pair("log", ", partitioning: broadcast");
        assert_refused(
            &yaml,
            "edges[0].partitioning",
            "unknown variant `broadcast`, expected one of `forward`, `hash`, `rebalance`",
        );
    }

    // -- Checkpoints.

    #[test]
    fn checkpoint_interval_below_minimum_is_refused() {
        let yaml = KEYED.replace("interval: 1s", "interval: 5ms");
        assert_refused(&yaml, "checkpoints.interval", "is 5ms; must be at least 10ms");
    }

    #[test]
    fn checkpoint_timeout_below_minimum_is_refused() {
        let yaml = KEYED.replace("interval: 1s", "interval: 1s, timeout: 0");
        assert_refused(&yaml, "checkpoints.timeout", "must be at least 10ms");
    }

    #[test]
    fn retained_checkpoints_out_of_range_is_refused() {
        for retained in [0, 1001] {
            let yaml = KEYED.replace("interval: 1s", &format!("interval: 1s, retained: {retained}"));
            assert_refused(&yaml, "checkpoints.retained", "must be between 1 and 1000");
        }
    }

    #[test]
    fn blank_checkpoint_dir_is_refused() {
        let yaml = KEYED.replace("interval: 1s", "interval: 1s, dir: \"\"");
        assert_refused(&yaml, "checkpoints.dir", "is empty");
    }

    #[test]
    fn checkpointing_is_disabled_without_interval() {
        let g = graph(&KEYED.replace("checkpoints: {interval: 1s}", "checkpoints: {timeout: 1min}"));
        assert!(!g.checkpointing_enabled());
        assert_eq!(g.restart_strategy(), RestartStrategySpec::None);
    }

    // -- Restart strategies.

    fn with_restart(strategy: &str) -> String {
        format!("{KEYED}restart_strategy: {{{strategy}}}\n")
    }

    #[test]
    fn default_restart_strategy_follows_checkpointing() {
        let fixed = RestartStrategySpec::FixedDelay { attempts: i32::MAX as u32, delay: DurationMs(1000) };
        assert_eq!(graph(KEYED).restart_strategy(), fixed);
    }

    #[test]
    fn restart_strategies_get_flinks_defaults() {
        let g = graph(&with_restart("type: failure-rate"));
        let expected = RestartStrategySpec::FailureRate {
            max_failures_per_interval: 1,
            failure_rate_interval: DurationMs(60_000),
            delay: DurationMs(1000),
        };
        assert_eq!(g.restart_strategy(), expected);
        let g = graph(&with_restart("type: exponential-delay"));
        let expected = RestartStrategySpec::ExponentialDelay {
            initial_backoff: DurationMs(1000),
            max_backoff: DurationMs(60_000),
            backoff_multiplier: 1.5,
            reset_backoff_threshold: DurationMs(3_600_000),
            jitter_factor: 0.1,
            attempts_before_reset_backoff: i32::MAX as u32,
        };
        assert_eq!(g.restart_strategy(), expected);
        let g = graph(&with_restart("type: fixed-delay, attempts: 0, delay: 10s"));
        assert_eq!(g.restart_strategy(), RestartStrategySpec::FixedDelay { attempts: 0, delay: DurationMs(10_000) });
        assert_eq!(graph(&with_restart("type: none")).restart_strategy(), RestartStrategySpec::None);
    }

    #[test]
    fn failure_rate_parameters_are_checked() {
        let yaml = with_restart("type: failure-rate, max_failures_per_interval: 0");
        assert_refused(&yaml, "restart_strategy.max_failures_per_interval", "must be at least 1");
        let yaml = with_restart("type: failure-rate, failure_rate_interval: 0");
        assert_refused(&yaml, "restart_strategy.failure_rate_interval", "must be longer than 0");
    }

    #[test]
    fn exponential_delay_parameters_are_checked() {
        let yaml = with_restart("type: exponential-delay, initial_backoff: 2min");
        assert_refused(&yaml, "restart_strategy.max_backoff", "below `initial_backoff` (120000ms)");
        for multiplier in ["0.5", ".inf", ".nan"] {
            let yaml = with_restart(&format!("type: exponential-delay, backoff_multiplier: {multiplier}"));
            assert_refused(&yaml, "restart_strategy.backoff_multiplier", "must be a number of at least 1.0");
        }
        for jitter in ["-0.1", "1.5", ".nan"] {
            let yaml = with_restart(&format!("type: exponential-delay, jitter_factor: {jitter}"));
            assert_refused(&yaml, "restart_strategy.jitter_factor", "must be between 0.0 and 1.0");
        }
    }

    // -- Savepoint.

    #[test]
    fn savepoint_restore_is_read() {
        let g = graph(&format!("{KEYED}savepoint: {{path: /sp/1}}\n"));
        let savepoint = g.spec.savepoint.unwrap();
        assert_eq!((savepoint.path.as_str(), savepoint.allow_non_restored_state), ("/sp/1", false));
    }

    #[test]
    fn blank_savepoint_path_is_refused() {
        assert_refused(&format!("{KEYED}savepoint: {{path: \"\"}}\n"), "savepoint.path", "is empty");
        assert_refused(&format!("{KEYED}savepoint: {{}}\n"), "savepoint.path", "missing field `path`");
    }

    // -- Graph shape.

    /// Vertices listed downstream-first, plus a second, unconnected pipeline.
    const SHUFFLED: &str = r#"
name: shuffled
vertices:
  - {id: sink, operators: [log]}
  - {id: other-src, operators: [sequence: {}]}
  - {id: mid, operators: [map: {fields: {x: "1"}}]}
  - {id: src, operators: [sequence: {}]}
  - {id: other-sink, operators: [blackhole]}
edges:
  - {from: mid, to: sink}
  - {from: src, to: mid}
  - {from: other-src, to: other-sink}
"#;

    #[test]
    fn vertices_are_in_stable_topological_order() {
        let g = graph(SHUFFLED);
        let ids: Vec<&str> = g.vertices.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["other-src", "src", "mid", "sink", "other-sink"]);
        for edge in &g.edges {
            assert!(edge.from < edge.to, "{edge:?}");
        }
        // Edge indexes are the spec's; endpoints point into the reordered vertices.
        assert_eq!((g.edges[0].from, g.edges[0].to), (2, 3));
        assert_eq!(g.vertex("mid").unwrap().inputs, vec![1]);
        assert_eq!(g.vertex("mid").unwrap().outputs, vec![0]);
    }

    #[test]
    fn components_are_weakly_connected_sets() {
        assert_eq!(graph(SHUFFLED).components(), vec![vec![0, 4], vec![1, 2, 3]]);
        assert_eq!(graph(KEYED).components(), vec![vec![0, 1]]);
    }

    #[test]
    fn diamond_is_one_component() {
        let yaml = r#"
name: diamond
vertices:
  - {id: s, operators: [sequence: {}]}
  - {id: l, operators: [map: {fields: {x: "1"}}]}
  - {id: r, operators: [map: {fields: {x: "2"}}]}
  - {id: k, operators: [key_by: {field: x}, count, log]}
edges:
  - {from: s, to: l}
  - {from: s, to: r}
  - {from: l, to: k}
  - {from: r, to: k}
"#;
        let g = graph(yaml);
        assert_eq!(g.components(), vec![vec![0, 1, 2, 3]]);
        assert_eq!(g.vertex("k").unwrap().inputs, vec![2, 3]);
    }

    // -- Canonical JSON.

    #[test]
    fn yaml_and_equivalent_json_give_the_same_canonical_json() {
        let json = r#"{
          "checkpoints": {"interval": 1000},
          "edges": [{"to": "counter", "from": "source"}],
          "vertices": [
            {"operators": [{"sequence": {"to": 100}}, {"map": {"fields": {"k": "seq % 10"}}}], "id": "source"},
            {"id": "counter", "operators": [{"key_by": {"field": "k"}}, {"count": {}}, {"log": {}}]}
          ],
          "parallelism": 2,
          "name": "keyed"
        }"#;
        let (from_yaml, from_json) = (graph(KEYED), graph(json));
        assert_eq!(from_yaml.canonical_json, from_json.canonical_json);
        assert_eq!(from_yaml, from_json);
    }

    #[test]
    fn canonical_json_round_trips() {
        for yaml in
            [KEYED.to_string(), SHUFFLED.to_string(), with_restart("type: exponential-delay, jitter_factor: 0.3")]
        {
            let g = graph(&yaml);
            assert_eq!(JobGraph::from_canonical_json(&g.canonical_json), Ok(g.clone()));
        }
    }

    #[test]
    fn canonical_json_keeps_map_fields_sorted() {
        let g = graph(&single("sequence: {}, map: {fields: {z: \"1\", a: \"2\"}}, log"));
        assert!(g.canonical_json.contains(r#""fields":{"a":"2","z":"1"}"#), "{}", g.canonical_json);
    }

    proptest::proptest! {
        /// A pipeline listed in any order, with any parallelisms, resolves to a topological order and survives the
        /// trip through its canonical JSON.
        #[test]
        fn any_pipeline_orders_and_round_trips(
            order in proptest::sample::subsequence((0..6usize).collect::<Vec<_>>(), 1..=6).prop_shuffle(),
            parallelisms in proptest::collection::vec(1u32..5, 6),
            keyed in proptest::collection::vec(proptest::bool::ANY, 6),
        ) {
            let yaml = pipeline(&order, &parallelisms, &keyed);
            let g = graph(&yaml);
            proptest::prop_assert!(g.edges.iter().all(|e| e.from < e.to));
            proptest::prop_assert_eq!(g.components().len(), 1);
            proptest::prop_assert_eq!(JobGraph::from_canonical_json(&g.canonical_json), Ok(g.clone()));
        }
    }

    use proptest::strategy::Strategy;

    /// A linear pipeline over stages `0..order.len()`, written in the vertex order `order` (a permutation of some
    /// stage numbers, renumbered by rank): stage 0 is a source, the last a sink, `keyed` stages start with `key_by`.
    fn pipeline(order: &[usize], parallelisms: &[u32], keyed: &[bool]) -> String {
        let mut ranked: Vec<usize> = order.to_vec();
        ranked.sort_unstable();
        let stage = |v: usize| ranked.iter().position(|&r| r == v).unwrap();
        let last = order.len() - 1;
        let mut yaml = String::from("name: p\nmax_parallelism: 8\nvertices:\n");
        for &v in order {
            let s = stage(v);
            let mut ops = Vec::new();
            match s {
                0 => ops.push("sequence: {to: 10}".to_string()),
                _ if keyed[s] => ops.extend(["key_by: {field: seq}".to_string(), "count".to_string()]),
                _ => ops.push(format!("map: {{fields: {{x: \"{s}\"}}}}")),
            }
            if s == last {
                ops.push("log".to_string());
            }
            yaml += &format!("  - {{id: v{s}, parallelism: {}, operators: [{}]}}\n", parallelisms[s], ops.join(", "));
        }
        yaml += "edges:\n";
        for s in 1..=last {
            yaml += &format!("  - {{from: v{}, to: v{s}}}\n", s - 1);
        }
        if last == 0 {
            yaml += "  []\n";
        }
        yaml
    }
}
