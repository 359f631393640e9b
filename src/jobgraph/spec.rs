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

/// One operator of a chain. Written as a single-key mapping, e.g. `{map: {fields: {k: "seq % 10"}}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Output directory, shared by the subtasks; committed part files are named `part-<subtask>-<n>`.
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RestartStrategySpec {
    /// Never restart: the first failure fails the job.
    None,
    /// Restart up to `attempts` times, waiting `delay` before each.
    FixedDelay {
        /// Restarts allowed. Flink's default: effectively unlimited (i32::MAX).
        #[serde(default = "default_fixed_delay_attempts")]
        attempts: u32,
        /// Wait before each restart. Default 1 s.
        #[serde(default = "default_one_second")]
        delay: DurationMs,
    },
    /// Restart while fewer than `max_failures_per_interval` failures happened within `failure_rate_interval`.
    FailureRate {
        /// Failures allowed per interval. Default 1.
        #[serde(default = "one")]
        max_failures_per_interval: u32,
        /// The sliding interval. Default 1 min.
        #[serde(default = "default_one_minute")]
        failure_rate_interval: DurationMs,
        /// Wait before each restart. Default 1 s.
        #[serde(default = "default_one_second")]
        delay: DurationMs,
    },
    /// Exponentially growing delays, reset after a quiet period, with jitter (Flink's defaults).
    ExponentialDelay {
        /// First delay. Default 1 s.
        #[serde(default = "default_one_second")]
        initial_backoff: DurationMs,
        /// Cap on the delay. Default 1 min.
        #[serde(default = "default_one_minute")]
        max_backoff: DurationMs,
        /// Factor applied per failure. Default 1.5.
        #[serde(default = "default_backoff_multiplier")]
        backoff_multiplier: f64,
        /// Running this long without failure resets the delay to `initial_backoff`. Default 1 h.
        #[serde(default = "default_one_hour")]
        reset_backoff_threshold: DurationMs,
        /// Random spread around each delay, 0.0 ..= 1.0. Default 0.1.
        #[serde(default = "default_jitter_factor")]
        jitter_factor: f64,
        /// Restarts allowed. Default effectively unlimited.
        #[serde(default = "default_fixed_delay_attempts")]
        attempts_before_reset_backoff: u32,
    },
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
                u64::try_from(v).map(DurationMs).map_err(|_| E::custom("a duration cannot be negative"))
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
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. \"500ms\", \"10 s\" or \"1min\""))?;
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
