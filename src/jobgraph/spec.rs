//! The job specification's types: what a user writes (YAML or JSON) and what every component reads.
//!
//! Field names follow Flink where Flink has a name (`parallelism`, `max_parallelism`, checkpoint `interval`,
//! `timeout`, `min_pause`, `tolerable_failed`, `retained`; restart strategies `fixed-delay`, `failure-rate`,
//! `exponential-delay` with Flink's parameters). Unknown keys are errors (`deny_unknown_fields`), so a typo never
//! silently falls back to a default. Durations are written either as integer milliseconds or as strings with a
//! unit (`500ms`, `10 s`, `1min`, `2h`), like Flink's `Duration` options; see [`DurationMs`].
//!
//! These types are stored inside the replicated log as canonical JSON (not bincode), so adding an optional field
//! with a default is backward compatible; renaming or removing one is not.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Flink's default max parallelism when none is given (`pipeline.max-parallelism` defaults to 128 for small jobs).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
/// Flink's upper bound for max parallelism (key groups): 2^15.
pub const UPPER_MAX_PARALLELISM: u32 = 32768;

/// A whole job: its operator graph and how it is checkpointed and restarted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Human-readable name, 1 to 256 bytes.
    pub name: String,
    /// Default parallelism for vertices that do not set one (Flink's `parallelism.default`, default 1).
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Default max parallelism (number of key groups) for vertices that do not set one.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    /// The operator chains, each run as `parallelism` subtasks. At least one.
    pub vertices: Vec<VertexSpec>,
    /// Data exchanges between vertices. The graph must be acyclic.
    #[serde(default)]
    pub edges: Vec<EdgeSpec>,
    /// Checkpointing; disabled when absent or when `interval` is absent.
    #[serde(default)]
    pub checkpoints: CheckpointSpec,
    /// What to do when a task or TaskManager fails. Default: `fixed-delay` with Flink's defaults when checkpointing
    /// is enabled, `none` otherwise (as Flink does).
    #[serde(default)]
    pub restart_strategy: Option<RestartStrategySpec>,
    /// Start from this savepoint (or retained checkpoint) instead of from scratch.
    #[serde(default)]
    pub savepoint: Option<SavepointRestoreSpec>,
}

/// One vertex of the job graph: a chain of operators run together in one subtask (Flink's task chaining).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexSpec {
    /// Unique id within the job: letters, digits, `-` and `_`, 1 to 64 bytes. Used for state files and metrics.
    pub id: String,
    /// Number of parallel subtasks; defaults to the job's `parallelism`. 1 ..= max_parallelism.
    #[serde(default)]
    pub parallelism: Option<u32>,
    /// Number of key groups for keyed state; defaults to the job's `max_parallelism`. Fixed for the job's life:
    /// a savepoint can be restored with any parallelism up to it.
    #[serde(default)]
    pub max_parallelism: Option<u32>,
    /// The chain, applied in order. A source may only come first, a sink only last.
    pub operators: Vec<OperatorSpec>,
}

/// A data exchange from every subtask of `from` to subtasks of `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// Upstream vertex id.
    pub from: String,
    /// Downstream vertex id.
    pub to: String,
    /// How records are routed; default `forward` when both sides have equal parallelism, `rebalance` otherwise,
    /// and always `hash` into a vertex that starts with `key_by`.
    #[serde(default)]
    pub partitioning: Option<Partitioning>,
}

/// How an edge routes records to downstream subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Subtask i sends to subtask i; both sides must have the same parallelism.
    Forward,
    /// By the hash of the key set by the downstream vertex's leading `key_by`, through key groups (as Flink does).
    Hash,
    /// Round-robin over all downstream subtasks.
    Rebalance,
}

/// One operator of a chain. Written as a single-key mapping, e.g. `{map: {fields: {k: "seq % 10"}}}`; the sinks
/// without required settings may also be written bare (`- blackhole`, `- log`) or with an empty or null value.
///
/// Serialized externally tagged (`{"map": {...}}`). Deserialized by hand (see the `Deserialize` impl below) so that
/// an unknown operator name gets an error listing the known ones, and so that YAML and JSON accept the same forms.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorSpec {
    // -- sources: only as the first operator of a vertex without inputs.
    /// Deterministic sequence of records `{"seq": n}` for n in `from..to`, split across subtasks.
    Sequence(SequenceSource),
    /// Lines of the files in a directory: `{"file": name, "offset": byte offset, "line": text}`.
    Files(FilesSource),
    // -- transforms.
    /// Sets fields of each record to the values of expressions over the record's fields.
    Map(MapOperator),
    /// Keeps records for which the expression is true.
    Filter(FilterOperator),
    /// Keys the stream by a field; only first in a vertex, whose inputs are then hash-partitioned by it.
    KeyBy(KeyByOperator),
    /// Keyed running count: emits `{key_field: key, output: count}` for every record. Needs a preceding `key_by`.
    Count(AggregateOperator),
    /// Keyed running sum of `field`. Needs a preceding `key_by`.
    Sum(AggregateOperator),
    /// Keyed running minimum of `field`. Needs a preceding `key_by`.
    Min(AggregateOperator),
    /// Keyed running maximum of `field`. Needs a preceding `key_by`.
    Max(AggregateOperator),
    /// Keyed tumbling windows; emits one record per key and window when the window closes. Needs a `key_by`.
    Window(WindowOperator),
    // -- sinks: only as the last operator of a vertex without outputs.
    /// Exactly-once files: records are written to pending part files, committed when the checkpoint completes.
    File(FileSink),
    /// Writes records to the TaskManager's log at INFO.
    Log(LogSink),
    /// Discards records (for benchmarks).
    Blackhole(BlackholeSink),
}

/// `sequence` source settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSource {
    /// First value, inclusive. Default 0.
    #[serde(default)]
    pub from: u64,
    /// Last value, exclusive; unbounded when absent. When reached, the source finishes.
    #[serde(default)]
    pub to: Option<u64>,
    /// Records per second for the whole source (all subtasks together); unlimited when absent.
    #[serde(default)]
    pub rate: Option<f64>,
}

/// `files` source settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSource {
    /// Directory whose regular files are read, in name order, split across subtasks by file.
    pub path: String,
    /// Keep watching the directory for new files and appended lines (default false: finish at the end).
    #[serde(default)]
    pub watch: bool,
}

/// `map` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapOperator {
    /// Field name → expression; evaluated against the input record, all before any is assigned.
    pub fields: BTreeMap<String, String>,
    /// Drop every field not listed in `fields` (default false: keep them).
    #[serde(default)]
    pub project: bool,
}

/// `filter` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterOperator {
    /// A boolean expression over the record's fields.
    pub expr: String,
}

/// `key_by` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyByOperator {
    /// The field whose value is the key. A record without it is an error (the task fails).
    pub field: String,
}

/// Settings of the keyed running aggregates `count`, `sum`, `min`, `max`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateOperator {
    /// The numeric field aggregated; required for sum/min/max, not allowed for count.
    #[serde(default)]
    pub field: Option<String>,
    /// Name of the output field; default the operator's name (`count`, `sum`, `min`, `max`).
    #[serde(default)]
    pub output: Option<String>,
}

/// `window` settings: tumbling event-time windows over a timestamp field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowOperator {
    /// Window length.
    pub size: DurationMs,
    /// Field holding the record's event time in milliseconds.
    pub time_field: String,
    /// How far behind the highest time seen the watermark trails (bounded out-of-orderness). Default 0.
    #[serde(default)]
    pub allowed_lateness: DurationMs,
    /// The aggregate computed per key and window.
    pub aggregate: WindowAggregate,
    /// The numeric field aggregated; required except for `count`.
    #[serde(default)]
    pub field: Option<String>,
    /// Name of the output field; default the aggregate's name.
    #[serde(default)]
    pub output: Option<String>,
}

/// The aggregate a window computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowAggregate {
    /// Number of records.
    Count,
    /// Sum of `field`.
    Sum,
    /// Minimum of `field`.
    Min,
    /// Maximum of `field`.
    Max,
}

/// `file` sink settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// Output directory, shared by the subtasks; committed part files are named `part-<vertex>-<subtask>-<n>`.
    pub path: String,
}

/// `log` sink settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSink {
    /// Prefix of each logged line; default the vertex id.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `blackhole` sink settings (none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSink {}

/// Checkpointing, with Flink's names (`execution.checkpointing.*`) and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Time between checkpoint triggers; checkpointing is disabled when absent. At least 10 ms.
    #[serde(default)]
    pub interval: Option<DurationMs>,
    /// A checkpoint not complete after this long is aborted. Default 10 min.
    #[serde(default = "default_checkpoint_timeout")]
    pub timeout: DurationMs,
    /// Least time between the end of one checkpoint and the trigger of the next. Default 0.
    #[serde(default)]
    pub min_pause: DurationMs,
    /// Consecutive failed checkpoints tolerated before the job fails over. Default 0.
    #[serde(default)]
    pub tolerable_failed: u32,
    /// Completed checkpoints retained, 1 ..= 1000. Default 1.
    #[serde(default = "one")]
    pub retained: u32,
    /// Checkpoint storage directory for this job, overriding the cluster's `--checkpoint-dir`.
    #[serde(default)]
    pub dir: Option<String>,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval: None,
            timeout: default_checkpoint_timeout(),
            min_pause: DurationMs(0),
            tolerable_failed: 0,
            retained: 1,
            dir: None,
        }
    }
}

/// Flink's restart strategies, with Flink's parameter names and defaults.
///
/// Written as a mapping with a `type` (`none`, `fixed-delay`, `failure-rate`, `exponential-delay`) and that type's
/// parameters. Serialized internally tagged; deserialized by hand through one flat struct so that an error in a
/// parameter is reported at its own path (`restart_strategy.delay`), which serde's buffered internally tagged
/// enums cannot do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RestartStrategySpec {
    /// Never restart: the first failure fails the job.
    None,
    /// Restart up to `attempts` times, waiting `delay` before each.
    FixedDelay {
        /// Restarts allowed. Flink's default: effectively unlimited (i32::MAX).
        attempts: u32,
        /// Wait before each restart. Default 1 s.
        delay: DurationMs,
    },
    /// Restart while fewer than `max_failures_per_interval` failures happened within `failure_rate_interval`.
    FailureRate {
        /// Failures allowed per interval. Default 1.
        max_failures_per_interval: u32,
        /// The sliding interval. Default 1 min.
        failure_rate_interval: DurationMs,
        /// Wait before each restart. Default 1 s.
        delay: DurationMs,
    },
    /// Exponentially growing delays, reset after a quiet period, with jitter (Flink's defaults).
    ExponentialDelay {
        /// First delay. Default 1 s.
        initial_backoff: DurationMs,
        /// Cap on the delay. Default 1 min.
        max_backoff: DurationMs,
        /// Factor applied per failure. Default 1.5.
        backoff_multiplier: f64,
        /// Running this long without failure resets the delay to `initial_backoff`. Default 1 h.
        reset_backoff_threshold: DurationMs,
        /// Random spread around each delay, 0.0 ..= 1.0. Default 0.1.
        jitter_factor: f64,
        /// Restarts allowed. Default effectively unlimited.
        attempts_before_reset_backoff: u32,
    },
}

impl OperatorSpec {
    /// Every operator name, as written in a spec, in documentation order.
    pub const NAMES: &'static [&'static str] = &[
        "sequence",
        "files",
        "map",
        "filter",
        "key_by",
        "count",
        "sum",
        "min",
        "max",
        "window",
        "file",
        "log",
        "blackhole",
    ];

    /// The operator's name as written in a spec (`map`, `key_by`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sequence(_) => "sequence",
            Self::Files(_) => "files",
            Self::Map(_) => "map",
            Self::Filter(_) => "filter",
            Self::KeyBy(_) => "key_by",
            Self::Count(_) => "count",
            Self::Sum(_) => "sum",
            Self::Min(_) => "min",
            Self::Max(_) => "max",
            Self::Window(_) => "window",
            Self::File(_) => "file",
            Self::Log(_) => "log",
            Self::Blackhole(_) => "blackhole",
        }
    }

    /// Whether this is a source (`sequence`, `files`): it produces records and has no input.
    pub fn is_source(&self) -> bool {
        matches!(self, Self::Sequence(_) | Self::Files(_))
    }

    /// Whether this is a sink (`file`, `log`, `blackhole`): it consumes records and has no output.
    pub fn is_sink(&self) -> bool {
        matches!(self, Self::File(_) | Self::Log(_) | Self::Blackhole(_))
    }

    /// Whether this operator keeps keyed state and so needs the vertex to start with `key_by`.
    pub fn is_keyed(&self) -> bool {
        matches!(self, Self::Count(_) | Self::Sum(_) | Self::Min(_) | Self::Max(_) | Self::Window(_))
    }
}

impl WindowAggregate {
    /// The aggregate's name as written in a spec, which is also its default output field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
        }
    }
}

impl<'de> Deserialize<'de> for OperatorSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OperatorVisitor)
    }
}

/// Reads `{name: settings}`, or a bare name for the operators whose settings are all optional.
struct OperatorVisitor;

impl<'de> serde::de::Visitor<'de> for OperatorVisitor {
    type Value = OperatorSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an operator: a mapping with one key naming it, e.g. `map: {fields: {k: \"seq % 10\"}}`")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<OperatorSpec, E> {
        match name {
            "count" => Ok(OperatorSpec::Count(AggregateOperator::default())),
            "log" => Ok(OperatorSpec::Log(LogSink::default())),
            "blackhole" => Ok(OperatorSpec::Blackhole(BlackholeSink::default())),
            known if OperatorSpec::NAMES.contains(&known) => {
                Err(E::custom(format!("operator `{known}` needs settings; write it as `{known}: {{...}}`")))
            }
            unknown => Err(E::custom(unknown_operator(unknown))),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OperatorSpec, A::Error> {
        use serde::de::Error;
        let Some(name) = map.next_key::<String>()? else {
            return Err(A::Error::custom("an operator is a mapping with one key naming it; this one is empty"));
        };
        let operator = match name.as_str() {
            "sequence" => OperatorSpec::Sequence(map.next_value()?),
            "files" => OperatorSpec::Files(map.next_value()?),
            "map" => OperatorSpec::Map(map.next_value()?),
            "filter" => OperatorSpec::Filter(map.next_value()?),
            "key_by" => OperatorSpec::KeyBy(map.next_value()?),
            "count" => OperatorSpec::Count(next_optional_settings(&mut map)?),
            "sum" => OperatorSpec::Sum(map.next_value()?),
            "min" => OperatorSpec::Min(map.next_value()?),
            "max" => OperatorSpec::Max(map.next_value()?),
            "window" => OperatorSpec::Window(map.next_value()?),
            "file" => OperatorSpec::File(map.next_value()?),
            "log" => OperatorSpec::Log(next_optional_settings(&mut map)?),
            "blackhole" => OperatorSpec::Blackhole(next_optional_settings(&mut map)?),
            unknown => return Err(A::Error::custom(unknown_operator(unknown))),
        };
        if let Some(extra) = map.next_key::<String>()? {
            return Err(A::Error::custom(format!(
                "an operator is a mapping with exactly one key, but this one has `{name}` and `{extra}`; \
                 put each operator in its own list item"
            )));
        }
        Ok(operator)
    }
}

/// Settings that may be omitted entirely (`count: {}`, `log: ~`, `blackhole:`): null means all defaults.
fn next_optional_settings<'de, A, T>(map: &mut A) -> Result<T, A::Error>
where
    A: serde::de::MapAccess<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(map.next_value::<Option<T>>()?.unwrap_or_default())
}

fn unknown_operator(name: &str) -> String {
    format!("unknown operator `{name}`; expected one of {}", OperatorSpec::NAMES.join(", "))
}

impl<'de> Deserialize<'de> for RestartStrategySpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawRestartStrategy::deserialize(deserializer)?.resolve().map_err(serde::de::Error::custom)
    }
}

/// The restart strategy as written: a type and every parameter of every type, each optional. Resolved into a
/// [`RestartStrategySpec`] by [`RawRestartStrategy::resolve`], which refuses parameters of another type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestartStrategy {
    #[serde(rename = "type")]
    kind: RestartStrategyKind,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    delay: Option<DurationMs>,
    #[serde(default)]
    max_failures_per_interval: Option<u32>,
    #[serde(default)]
    failure_rate_interval: Option<DurationMs>,
    #[serde(default)]
    initial_backoff: Option<DurationMs>,
    #[serde(default)]
    max_backoff: Option<DurationMs>,
    #[serde(default)]
    backoff_multiplier: Option<f64>,
    #[serde(default)]
    reset_backoff_threshold: Option<DurationMs>,
    #[serde(default)]
    jitter_factor: Option<f64>,
    #[serde(default)]
    attempts_before_reset_backoff: Option<u32>,
}

/// The `type` of a restart strategy.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RestartStrategyKind {
    None,
    FixedDelay,
    FailureRate,
    ExponentialDelay,
}

impl RestartStrategyKind {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::FixedDelay => "fixed-delay",
            Self::FailureRate => "failure-rate",
            Self::ExponentialDelay => "exponential-delay",
        }
    }

    /// The parameters this type takes.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Self::None => &[],
            Self::FixedDelay => &["attempts", "delay"],
            Self::FailureRate => &["max_failures_per_interval", "failure_rate_interval", "delay"],
            Self::ExponentialDelay => &[
                "initial_backoff",
                "max_backoff",
                "backoff_multiplier",
                "reset_backoff_threshold",
                "jitter_factor",
                "attempts_before_reset_backoff",
            ],
        }
    }
}

impl RawRestartStrategy {
    /// The names of the parameters that were written.
    fn written_parameters(&self) -> Vec<&'static str> {
        let written = [
            ("attempts", self.attempts.is_some()),
            ("delay", self.delay.is_some()),
            ("max_failures_per_interval", self.max_failures_per_interval.is_some()),
            ("failure_rate_interval", self.failure_rate_interval.is_some()),
            ("initial_backoff", self.initial_backoff.is_some()),
            ("max_backoff", self.max_backoff.is_some()),
            ("backoff_multiplier", self.backoff_multiplier.is_some()),
            ("reset_backoff_threshold", self.reset_backoff_threshold.is_some()),
            ("jitter_factor", self.jitter_factor.is_some()),
            ("attempts_before_reset_backoff", self.attempts_before_reset_backoff.is_some()),
        ];
        written.into_iter().filter(|(_, is_written)| *is_written).map(|(name, _)| name).collect()
    }

    /// Refuses parameters that belong to another type, then fills in Flink's defaults.
    fn resolve(self) -> Result<RestartStrategySpec, String> {
        let allowed = self.kind.parameters();
        if let Some(foreign) = self.written_parameters().into_iter().find(|name| !allowed.contains(name)) {
            // Phrased like serde's own message so the parser reports it at `restart_strategy.<foreign>`.
            let expected = match allowed {
                [] => "it takes no parameters".to_string(),
                _ => format!("it takes {}", allowed.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")),
            };
            return Err(format!("unknown field `{foreign}` for restart strategy `{}`; {expected}", self.kind.name()));
        }
        Ok(match self.kind {
            RestartStrategyKind::None => RestartStrategySpec::None,
            RestartStrategyKind::FixedDelay => RestartStrategySpec::FixedDelay {
                attempts: self.attempts.unwrap_or_else(default_fixed_delay_attempts),
                delay: self.delay.unwrap_or_else(default_one_second),
            },
            RestartStrategyKind::FailureRate => RestartStrategySpec::FailureRate {
                max_failures_per_interval: self.max_failures_per_interval.unwrap_or_else(one),
                failure_rate_interval: self.failure_rate_interval.unwrap_or_else(default_one_minute),
                delay: self.delay.unwrap_or_else(default_one_second),
            },
            RestartStrategyKind::ExponentialDelay => RestartStrategySpec::ExponentialDelay {
                initial_backoff: self.initial_backoff.unwrap_or_else(default_one_second),
                max_backoff: self.max_backoff.unwrap_or_else(default_one_minute),
                backoff_multiplier: self.backoff_multiplier.unwrap_or_else(default_backoff_multiplier),
                reset_backoff_threshold: self.reset_backoff_threshold.unwrap_or_else(default_one_hour),
                jitter_factor: self.jitter_factor.unwrap_or_else(default_jitter_factor),
                attempts_before_reset_backoff: self
                    .attempts_before_reset_backoff
                    .unwrap_or_else(default_fixed_delay_attempts),
            },
        })
    }
}

/// Restoring a new job from a savepoint or retained checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointRestoreSpec {
    /// The savepoint's directory (the path `jm job savepoint` printed), holding its `_metadata`.
    pub path: String,
    /// Allow state in the savepoint that no vertex of this job claims (Flink's `--allowNonRestoredState`).
    #[serde(default)]
    pub allow_non_restored_state: bool,
}

/// A duration in milliseconds, written as an integer (milliseconds) or a string with a unit: `ms`, `s`, `min`, `h`
/// (also Flink's long forms such as `10 s`, `1 min`, `500 milliseconds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationMs(pub u64);

impl DurationMs {
    /// As a std duration.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

fn one() -> u32 {
    1
}
fn default_max_parallelism() -> u32 {
    DEFAULT_MAX_PARALLELISM
}
fn default_checkpoint_timeout() -> DurationMs {
    DurationMs(10 * 60 * 1000)
}
fn default_fixed_delay_attempts() -> u32 {
    i32::MAX as u32
}
fn default_one_second() -> DurationMs {
    DurationMs(1000)
}
fn default_one_minute() -> DurationMs {
    DurationMs(60_000)
}
fn default_one_hour() -> DurationMs {
    DurationMs(3_600_000)
}
fn default_backoff_multiplier() -> f64 {
    1.5
}
fn default_jitter_factor() -> f64 {
    0.1
}

impl Serialize for DurationMs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationMs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("milliseconds as an integer, or a duration such as \"500ms\", \"10 s\", \"1min\", \"2h\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationMs, E> {
                Ok(DurationMs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationMs, E> {
                u64::try_from(v)
                    .map(DurationMs)
                    .map_err(|_| E::custom(format!("`{v}` is negative; a duration cannot be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationMs, E> {
                parse_duration(v).map(DurationMs).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses `"500ms"`, `"10 s"`, `"1min"`, `"2 h"`, `"3 days"` or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("`{text}` is negative; a duration cannot be negative"));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. \"500ms\", \"10 s\" or \"1min\""))?;
    if unit.starts_with('.') || unit.starts_with(',') {
        return Err(format!("`{text}` has a fraction; write a whole number of a smaller unit, e.g. \"1500ms\""));
    }
    let factor = match unit.trim() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use ms, s, min, h or d")),
    };
    value.checked_mul(factor).ok_or_else(|| format!("`{text}` is too long"))
}
