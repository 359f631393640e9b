//! The transforms of a chain: `map`, `filter`, `key_by`, the keyed running aggregates and tumbling windows.
//!
//! A chain's transforms run synchronously, one record at a time, on the subtask's tokio task: [`Transforms::process`]
//! pushes a record through every operator and collects what comes out of the last one; the subtask then hands that
//! to the sink or the output channels (the only awaits). `key_by` sets the current key, which the keyed operators
//! after it use; keyed state lives in a [`KeyedState`] that remembers each key's key group, so snapshots can be cut
//! by key group (see `state.rs`).
//!
//! Windows: a window operator's watermark is `max(time_field seen) - allowed_lateness`, advanced per record, or the
//! combined watermark of the subtask's inputs (minimum over input channels) when that is higher. A window
//! `[start, start + size)` fires when the watermark reaches `start + size`; a record whose window has already
//! fired is late: dropped and counted. At the end of input (when drained, not when stopped by a savepoint) every
//! open window fires.
//!
//! Caveats: the record-driven watermark is per subtask, so with parallel upstreams a record more than
//! `allowed_lateness` behind the newest record this subtask saw is late even if it is on time for its own upstream.
//! Numbers: `sum` of integers stays an integer (overflow fails the task), any float makes it a float; `min`/`max`
//! compare integers exactly and mixed numbers as floats.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use serde_json::{Number, Value};

use super::expr::{ExprEngine, ExprError, Expression};
use super::partition::{canonical_json, key_group};
use super::record::{describe_record, describe_value, Record};
use super::state::OperatorState;
use crate::jobgraph::WindowAggregate;

/// Why an operator failed on a record; the subtask fails with it.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// An expression failed.
    #[error(transparent)]
    Expression(#[from] ExprError),
    /// The key field is missing from a record.
    #[error("key field `{field}` is missing from record {record}")]
    MissingKey {
        /// The key_by field.
        field: String,
        /// The record, truncated.
        record: String,
    },
    /// A field the operator needs is missing.
    #[error("field `{field}` is missing from record {record}")]
    MissingField {
        /// The field.
        field: String,
        /// The record, truncated.
        record: String,
    },
    /// A field that must be a number is not.
    #[error("field `{field}` holds {found}, not a number")]
    NotANumber {
        /// The field.
        field: String,
        /// What it holds.
        found: String,
    },
    /// An integer sum overflowed, or a float sum is no longer finite.
    #[error("the sum of field `{field}` overflowed")]
    Overflow {
        /// The field.
        field: String,
    },
    /// A keyed operator ran without a preceding `key_by` (the graph should have been refused).
    #[error("no key: a keyed operator needs a preceding key_by")]
    NoKey,
    /// A window's bounds do not fit in 64-bit milliseconds.
    #[error("event time {time} of field `{field}` is out of range for windows of {size} ms")]
    TimeOutOfRange {
        /// The time field.
        field: String,
        /// The record's time.
        time: i64,
        /// The window size.
        size: i64,
    },
    /// Reading a source or writing a sink failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl OperatorError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        OperatorError::Io { context: context.into(), source }
    }
}

/// The current key of a record in a keyed chain.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyCtx {
    /// The key value.
    pub key: Value,
    /// Its canonical JSON text (the state map's key and the hash input).
    pub canonical: String,
    /// Its key group.
    pub group: u32,
}

impl KeyCtx {
    /// The key context of `key` with `max_parallelism` key groups.
    pub fn new(key: Value, max_parallelism: u32) -> Self {
        let canonical = canonical_json(&key);
        let group = key_group(&canonical, max_parallelism);
        KeyCtx { key, canonical, group }
    }
}

/// The value of a keyed state entry, with the key it belongs to.
#[derive(Debug, Clone)]
struct KeyedEntry<T> {
    /// The key and its group.
    key: KeyCtx,
    /// The state.
    value: T,
}

/// Per-key state of one operator, cut by key group for snapshots.
#[derive(Debug, Clone)]
pub struct KeyedState<T> {
    /// Canonical key text → entry.
    entries: HashMap<String, KeyedEntry<T>>,
    /// Max parallelism, to recompute key groups on restore.
    max_parallelism: u32,
}

impl<T: Clone> KeyedState<T> {
    /// Empty state.
    pub fn new(max_parallelism: u32) -> Self {
        KeyedState { entries: HashMap::new(), max_parallelism }
    }

    /// The state of `key`, if any.
    fn get(&self, key: &KeyCtx) -> Option<&T> {
        self.entries.get(&key.canonical).map(|e| &e.value)
    }

    /// The state of `key`, created with `init` if absent.
    fn entry(&mut self, key: &KeyCtx, init: impl FnOnce() -> T) -> &mut T {
        &mut self
            .entries
            .entry(key.canonical.clone())
            .or_insert_with(|| KeyedEntry { key: key.clone(), value: init() })
            .value
    }

    /// Sets the state of `key`.
    fn put(&mut self, key: &KeyCtx, value: T) {
        match self.entries.get_mut(&key.canonical) {
            Some(entry) => entry.value = value,
            None => {
                self.entries.insert(key.canonical.clone(), KeyedEntry { key: key.clone(), value });
            }
        }
    }

    /// Entries grouped by key group, keys sorted within a group (deterministic files).
    fn snapshot(&self) -> BTreeMap<u32, Vec<(Value, T)>> {
        let mut groups: BTreeMap<u32, Vec<(&str, Value, T)>> = BTreeMap::new();
        for (canonical, e) in &self.entries {
            groups.entry(e.key.group).or_default().push((canonical, e.key.key.clone(), e.value.clone()));
        }
        groups
            .into_iter()
            .map(|(g, mut entries)| {
                entries.sort_by(|a, b| a.0.cmp(b.0));
                (g, entries.into_iter().map(|(_, k, v)| (k, v)).collect())
            })
            .collect()
    }

    /// Replaces the state with restored entries.
    fn restore(&mut self, groups: BTreeMap<u32, Vec<(Value, T)>>) {
        self.entries.clear();
        for (key, value) in groups.into_values().flatten() {
            let key = KeyCtx::new(key, self.max_parallelism);
            self.entries.insert(key.canonical.clone(), KeyedEntry { key, value });
        }
    }
}

/// The keyed aggregation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// Number of records.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Minimum of a numeric field.
    Min,
    /// Maximum of a numeric field.
    Max,
}

impl From<WindowAggregate> for AggKind {
    fn from(w: WindowAggregate) -> Self {
        match w {
            WindowAggregate::Count => AggKind::Count,
            WindowAggregate::Sum => AggKind::Sum,
            WindowAggregate::Min => AggKind::Min,
            WindowAggregate::Max => AggKind::Max,
        }
    }
}

/// What an aggregate folds in: the kind and the field it reads.
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// The function.
    pub kind: AggKind,
    /// The numeric field (required except for count).
    pub field: Option<String>,
}

impl Aggregation {
    /// Folds `record` into `acc` (None: first record of the key).
    fn fold(&self, acc: Option<&Value>, record: &Record) -> Result<Value, OperatorError> {
        if self.kind == AggKind::Count {
            let n = acc.and_then(Value::as_u64).unwrap_or(0);
            return Ok(Value::from(n.saturating_add(1)));
        }
        let field = self.field.as_deref().unwrap_or_default();
        let x = number_field(record, field)?;
        let Some(Value::Number(acc)) = acc else { return Ok(Value::Number(x)) };
        let out = match self.kind {
            AggKind::Sum => add(acc, &x).ok_or_else(|| OperatorError::Overflow { field: field.to_string() })?,
            AggKind::Min if compare(&x, acc) == Ordering::Less => x,
            AggKind::Max if compare(&x, acc) == Ordering::Greater => x,
            _ => acc.clone(),
        };
        Ok(Value::Number(out))
    }
}

/// The number in `record[field]`.
fn number_field(record: &Record, field: &str) -> Result<Number, OperatorError> {
    match record.get(field) {
        Some(Value::Number(n)) => Ok(n.clone()),
        Some(other) => Err(OperatorError::NotANumber { field: field.to_string(), found: describe_value(other) }),
        None => Err(OperatorError::MissingField { field: field.to_string(), record: describe_record(record) }),
    }
}

/// `a + b`: an integer if both are (None on overflow), else a float (None if not finite).
fn add(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.checked_add(y).map(Number::from);
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x.checked_add(y).map(Number::from);
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

/// Orders two numbers: exactly when both are integers of one kind, as floats otherwise.
fn compare(a: &Number, b: &Number) -> Ordering {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.cmp(&y);
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x.cmp(&y);
    }
    let (x, y) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
    x.partial_cmp(&y).unwrap_or(Ordering::Equal)
}

/// `map`: sets fields to expressions of the input record.
#[derive(Debug)]
pub struct MapOp {
    /// Output field → compiled expression.
    pub fields: Vec<(String, Expression)>,
    /// Keep only the listed fields.
    pub project: bool,
}

impl MapOp {
    /// Evaluates every expression on the input, then assigns.
    fn apply(&self, engine: &ExprEngine, record: Record) -> Result<Record, OperatorError> {
        let mut bindings = engine.bind(&record)?;
        let mut values = Vec::with_capacity(self.fields.len());
        for (name, expr) in &self.fields {
            values.push((name.clone(), engine.eval(expr, &mut bindings)?));
        }
        let mut out = if self.project { Record::new() } else { record };
        out.extend(values);
        Ok(out)
    }
}

/// A keyed running aggregate: emits `{key_field: key, output: value}` for every record.
#[derive(Debug)]
pub struct AggregateOp {
    /// What is folded.
    pub aggregation: Aggregation,
    /// The output field.
    pub output: String,
    /// The key field (of the vertex's key_by), repeated in the output.
    pub key_field: String,
    /// Key → current value.
    pub state: KeyedState<Value>,
}

impl AggregateOp {
    /// Folds the record into its key's value and returns the key's new value as a record.
    fn apply(&mut self, record: &Record, key: &KeyCtx) -> Result<Record, OperatorError> {
        let value = self.aggregation.fold(self.state.get(key), record)?;
        self.state.put(key, value.clone());
        let mut out = Record::new();
        out.insert(self.key_field.clone(), key.key.clone());
        out.insert(self.output.clone(), value);
        Ok(out)
    }
}

/// A keyed tumbling event-time window.
#[derive(Debug)]
pub struct WindowOp {
    /// Window length in ms, > 0.
    pub size: i64,
    /// How far the record-driven watermark trails the highest time seen, in ms.
    pub lateness: i64,
    /// Field holding event time in ms.
    pub time_field: String,
    /// What is folded per key and window.
    pub aggregation: Aggregation,
    /// The output field.
    pub output: String,
    /// The key field, repeated in the output.
    pub key_field: String,
    /// Highest event time seen.
    pub max_time: Option<i64>,
    /// Combined watermark of the subtask's inputs.
    pub input_watermark: i64,
    /// Key → window start → value.
    pub state: KeyedState<BTreeMap<i64, Value>>,
    /// Open windows by end time: what fires next.
    pub timers: BTreeSet<(i64, String)>,
    /// Late records dropped (shared with the subtask's status).
    pub late_dropped: Arc<AtomicU64>,
}

impl WindowOp {
    /// The operator's current watermark.
    pub fn watermark(&self) -> i64 {
        let driven = self.max_time.map_or(i64::MIN, |t| t.saturating_sub(self.lateness));
        driven.max(self.input_watermark)
    }

    /// Adds a record to its key's window and returns the windows that fire because its time advanced the watermark.
    fn add(&mut self, record: &Record, key: &KeyCtx) -> Result<Vec<(KeyCtx, Record)>, OperatorError> {
        let time = self.event_time(record)?;
        let start = time - time.rem_euclid(self.size);
        let out_of_range = || OperatorError::TimeOutOfRange { field: self.time_field.clone(), time, size: self.size };
        let end = start.checked_add(self.size).ok_or_else(out_of_range)?;
        if end <= self.watermark() {
            self.late_dropped.fetch_add(1, AtomicOrdering::Relaxed);
            return Ok(Vec::new());
        }
        let windows = self.state.entry(key, BTreeMap::new);
        let value = self.aggregation.fold(windows.get(&start), record)?;
        windows.insert(start, value);
        self.timers.insert((end, key.canonical.clone()));
        self.max_time = Some(self.max_time.map_or(time, |t| t.max(time)));
        Ok(self.fire(self.watermark()))
    }

    /// The record's event time in ms (floats are truncated).
    fn event_time(&self, record: &Record) -> Result<i64, OperatorError> {
        let n = number_field(record, &self.time_field)?;
        n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 9.0e18).map(|f| f as i64)).ok_or_else(
            || OperatorError::NotANumber {
                field: self.time_field.clone(),
                found: format!("{n}, which is not a time in milliseconds"),
            },
        )
    }

    /// Removes and returns every window whose end is at or before `watermark`, in end then key order.
    fn fire(&mut self, watermark: i64) -> Vec<(KeyCtx, Record)> {
        let mut out = Vec::new();
        while let Some((end, canonical)) = self.timers.first().cloned() {
            if end > watermark {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.state.entries.get_mut(&canonical) else { continue };
            let start = end - self.size;
            if let Some(value) = entry.value.remove(&start) {
                let mut record = Record::new();
                record.insert(self.key_field.clone(), entry.key.key.clone());
                record.insert("window_start".to_string(), Value::from(start));
                record.insert("window_end".to_string(), Value::from(end));
                record.insert(self.output.clone(), value);
                out.push((entry.key.clone(), record));
            }
            if entry.value.is_empty() {
                self.state.entries.remove(&canonical);
            }
        }
        out
    }

    /// Rebuilds the timers after a restore.
    fn rebuild_timers(&mut self) {
        let size = self.size;
        self.timers = self
            .state
            .entries
            .iter()
            .flat_map(|(canonical, e)| e.value.keys().map(move |start| (start.saturating_add(size), canonical.clone())))
            .collect();
    }
}

/// One transform of a chain.
#[derive(Debug)]
pub enum Transform {
    /// `map`.
    Map(MapOp),
    /// `filter`: keeps records for which the expression is true.
    Filter(Expression),
    /// `key_by`: the field whose value becomes the current key.
    KeyBy(String),
    /// `count`, `sum`, `min`, `max`.
    Aggregate(AggregateOp),
    /// `window`.
    Window(WindowOp),
}

/// What one operator did with a record.
enum Step {
    /// Pass this record to the next operator.
    Next(Record, Option<KeyCtx>),
    /// The record stops here (filtered out, buffered in a window).
    Stop,
    /// A window consumed the record and fired these.
    Fired(Vec<(KeyCtx, Record)>),
}

/// An operator error with the index (within the transforms) of the operator that raised it.
#[derive(Debug)]
pub struct TransformError {
    /// Index into the transforms.
    pub index: usize,
    /// What went wrong.
    pub error: OperatorError,
}

/// The transforms of a chain, in order.
#[derive(Debug)]
pub struct Transforms {
    /// The operators.
    pub ops: Vec<Transform>,
    /// The expression engine.
    pub engine: Arc<ExprEngine>,
    /// Max parallelism of the vertex (for key groups).
    pub max_parallelism: u32,
    /// Set when a window fired since the last [`Transforms::take_fired`].
    fired: bool,
}

impl Transforms {
    /// A chain of transforms.
    pub fn new(ops: Vec<Transform>, engine: Arc<ExprEngine>, max_parallelism: u32) -> Self {
        Transforms { ops, engine, max_parallelism, fired: false }
    }

    /// Whether a window fired since the last call (the subtask then forwards the window's watermark).
    pub fn take_fired(&mut self) -> bool {
        std::mem::take(&mut self.fired)
    }

    /// Sets the input watermark of every window without firing (restored state; firing waits for the next element).
    pub fn set_input_watermark(&mut self, watermark: i64) {
        for op in &mut self.ops {
            if let Transform::Window(w) = op {
                w.input_watermark = watermark;
            }
        }
    }

    /// Pushes a record through the chain; what leaves the last operator is appended to `out`.
    pub fn process(&mut self, record: Record, out: &mut Vec<Record>) -> Result<(), TransformError> {
        self.process_from(0, record, None, out)
    }

    /// Pushes a record through operators `start..`.
    fn process_from(
        &mut self,
        start: usize,
        mut record: Record,
        mut key: Option<KeyCtx>,
        out: &mut Vec<Record>,
    ) -> Result<(), TransformError> {
        for index in start..self.ops.len() {
            let step = self.step(index, record, key).map_err(|error| TransformError { index, error })?;
            match step {
                Step::Next(r, k) => (record, key) = (r, k),
                Step::Stop => return Ok(()),
                Step::Fired(fired) => return self.emit_fired(index, fired, out),
            }
        }
        out.push(record);
        Ok(())
    }

    /// Applies operator `index` to a record.
    fn step(&mut self, index: usize, record: Record, key: Option<KeyCtx>) -> Result<Step, OperatorError> {
        let max_parallelism = self.max_parallelism;
        Ok(match &mut self.ops[index] {
            Transform::Map(op) => Step::Next(op.apply(&self.engine, record)?, key),
            Transform::Filter(expr) => {
                let mut bindings = self.engine.bind(&record)?;
                if self.engine.eval_bool(expr, &mut bindings)? {
                    Step::Next(record, key)
                } else {
                    Step::Stop
                }
            }
            Transform::KeyBy(field) => {
                let value = record.get(field.as_str()).cloned().ok_or_else(|| OperatorError::MissingKey {
                    field: field.clone(),
                    record: describe_record(&record),
                })?;
                Step::Next(record, Some(KeyCtx::new(value, max_parallelism)))
            }
            Transform::Aggregate(op) => {
                let key = key.ok_or(OperatorError::NoKey)?;
                let out = op.apply(&record, &key)?;
                Step::Next(out, Some(key))
            }
            Transform::Window(op) => Step::Fired(op.add(&record, key.as_ref().ok_or(OperatorError::NoKey)?)?),
        })
    }

    /// Sends the records fired by window `index` through the rest of the chain.
    fn emit_fired(
        &mut self,
        index: usize,
        fired: Vec<(KeyCtx, Record)>,
        out: &mut Vec<Record>,
    ) -> Result<(), TransformError> {
        self.fired |= !fired.is_empty();
        for (key, record) in fired {
            self.process_from(index + 1, record, Some(key), out)?;
        }
        Ok(())
    }

    /// The subtask's combined input watermark advanced: windows may fire.
    pub fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Record>) -> Result<(), TransformError> {
        for index in 0..self.ops.len() {
            if let Transform::Window(op) = &mut self.ops[index] {
                op.input_watermark = op.input_watermark.max(watermark);
                let fired = op.fire(op.watermark());
                self.emit_fired(index, fired, out)?;
            }
        }
        Ok(())
    }

    /// The input is drained: every open window fires.
    pub fn drain(&mut self, out: &mut Vec<Record>) -> Result<(), TransformError> {
        self.on_watermark(i64::MAX, out)
    }

    /// The watermark of the chain's last window, if it has one: what the subtask forwards downstream.
    pub fn window_watermark(&self) -> Option<i64> {
        self.ops.iter().rev().find_map(|op| match op {
            Transform::Window(w) => Some(w.watermark()),
            _ => None,
        })
    }

    /// Each operator's state, in chain order.
    pub fn snapshot(&self) -> Vec<OperatorState> {
        self.ops
            .iter()
            .map(|op| match op {
                Transform::Map(_) | Transform::Filter(_) | Transform::KeyBy(_) => OperatorState::Stateless,
                Transform::Aggregate(a) => OperatorState::Aggregate { key_groups: a.state.snapshot() },
                Transform::Window(w) => OperatorState::Window { max_time: w.max_time, key_groups: w.state.snapshot() },
            })
            .collect()
    }

    /// Restores each operator's state (same order as [`Transforms::snapshot`]); mismatches were refused earlier.
    pub fn restore(&mut self, states: Vec<OperatorState>) {
        for (op, state) in self.ops.iter_mut().zip(states) {
            match (op, state) {
                (Transform::Aggregate(a), OperatorState::Aggregate { key_groups }) => a.state.restore(key_groups),
                (Transform::Window(w), OperatorState::Window { max_time, key_groups }) => {
                    w.max_time = max_time;
                    w.state.restore(key_groups);
                    w.rebuild_timers();
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rec(v: Value) -> Record {
        v.as_object().cloned().unwrap_or_default()
    }

    fn window(kind: AggKind, field: Option<&str>, lateness: i64) -> Transforms {
        Transforms::new(
            vec![
                Transform::KeyBy("k".into()),
                Transform::Window(WindowOp {
                    size: 10,
                    lateness,
                    time_field: "t".into(),
                    aggregation: Aggregation { kind, field: field.map(str::to_string) },
                    output: "out".into(),
                    key_field: "k".into(),
                    max_time: None,
                    input_watermark: i64::MIN,
                    state: KeyedState::new(16),
                    timers: BTreeSet::new(),
                    late_dropped: Arc::new(AtomicU64::new(0)),
                }),
            ],
            ExprEngine::shared(),
            16,
        )
    }

    #[test]
    fn window_sums_fire_when_the_watermark_passes_the_end() {
        let mut chain = window(AggKind::Sum, Some("v"), 0);
        let mut out = Vec::new();
        for (k, t, v) in [("a", 1, 1), ("b", 2, 10), ("a", 9, 2), ("a", 10, 5)] {
            chain.process(rec(json!({"k": k, "t": t, "v": v})), &mut out).unwrap();
        }
        assert_eq!(
            out,
            vec![
                rec(json!({"k": "a", "window_start": 0, "window_end": 10, "out": 3})),
                rec(json!({"k": "b", "window_start": 0, "window_end": 10, "out": 10})),
            ]
        );
        out.clear();
        chain.process(rec(json!({"k": "a", "t": 3, "v": 100})), &mut out).unwrap();
        assert!(out.is_empty(), "late record must be dropped");
        let Transform::Window(w) = &chain.ops[1] else { unreachable!() };
        assert_eq!(w.late_dropped.load(AtomicOrdering::Relaxed), 1);
        chain.drain(&mut out).unwrap();
        assert_eq!(out, vec![rec(json!({"k": "a", "window_start": 10, "window_end": 20, "out": 5}))]);
    }

    #[test]
    fn window_state_survives_snapshot_and_restore() {
        let mut chain = window(AggKind::Count, None, 5);
        let mut out = Vec::new();
        for t in [1, 2, 12] {
            chain.process(rec(json!({"k": 1, "t": t})), &mut out).unwrap();
        }
        assert!(out.is_empty(), "watermark 7 has not reached 10");
        let snapshot = chain.snapshot();
        let mut restored = window(AggKind::Count, None, 5);
        restored.restore(snapshot);
        restored.on_watermark(10, &mut out).unwrap();
        assert_eq!(out, vec![rec(json!({"k": 1, "window_start": 0, "window_end": 10, "out": 2}))]);
    }

    #[test]
    fn aggregates_keep_ints_and_promote_floats() {
        let sum = Aggregation { kind: AggKind::Sum, field: Some("v".into()) };
        let a = sum.fold(None, &rec(json!({"v": 2}))).unwrap();
        let b = sum.fold(Some(&a), &rec(json!({"v": 3}))).unwrap();
        assert_eq!(b, json!(5));
        assert_eq!(sum.fold(Some(&b), &rec(json!({"v": 0.5}))).unwrap(), json!(5.5));
        assert!(matches!(sum.fold(Some(&json!(i64::MAX)), &rec(json!({"v": 1}))), Err(OperatorError::Overflow { .. })));
        assert!(matches!(sum.fold(None, &rec(json!({"v": "x"}))), Err(OperatorError::NotANumber { .. })));
        let min = Aggregation { kind: AggKind::Min, field: Some("v".into()) };
        assert_eq!(min.fold(Some(&json!(2)), &rec(json!({"v": 1.5}))).unwrap(), json!(1.5));
        let max = Aggregation { kind: AggKind::Max, field: Some("v".into()) };
        assert_eq!(max.fold(Some(&json!(2)), &rec(json!({"v": 1.5}))).unwrap(), json!(2));
    }

    #[test]
    fn key_by_names_the_missing_field() {
        let mut chain = window(AggKind::Count, None, 0);
        let err = chain.process(rec(json!({"x": 1})), &mut Vec::new()).unwrap_err();
        assert_eq!(err.index, 0);
        assert!(err.error.to_string().contains("`k`"), "{}", err.error);
    }
}
