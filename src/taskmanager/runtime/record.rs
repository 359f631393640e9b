//! Records and the stream elements that carry them between subtasks.
//!
//! A record is a JSON object. Between subtasks flow [`StreamElement`]s: records, watermarks, checkpoint barriers and
//! the end-of-input marker. Within one channel elements keep their order; that order is what makes aligned
//! barriers a consistent cut (every record before the barrier is in the snapshot, none after).

use std::sync::Arc;

use serde_json::Value;

use super::Barrier;

/// One record: a JSON object.
pub type Record = serde_json::Map<String, Value>;

/// What flows through a channel between two subtasks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StreamElement {
    /// A data record.
    Record(Record),
    /// Event time has reached this many milliseconds on the sending subtask: no later record from it is older.
    Watermark(i64),
    /// A checkpoint or savepoint barrier; shared because it is broadcast to every output channel.
    Barrier(Arc<Barrier>),
    /// The sender will send nothing more.
    EndOfInput(EndReason),
}

/// Why an input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The sources ran out of data: event time is complete, so windows fire (Flink's MAX_WATERMARK).
    Drained,
    /// Stopped by stop-with-savepoint: open windows stay in the savepoint and are not fired (Flink's stop without
    /// `--drain`).
    Stopped,
}

impl EndReason {
    /// Combines the reasons of several inputs: stopped if any input was stopped.
    pub(crate) fn combine(self, other: EndReason) -> EndReason {
        if self == EndReason::Stopped || other == EndReason::Stopped {
            EndReason::Stopped
        } else {
            EndReason::Drained
        }
    }
}

/// Longest rendering of a value kept in an error message.
const MAX_DESCRIBED_CHARS: usize = 80;

/// A short description of a JSON value for error messages, e.g. `the integer 3` or `the string "abc"`.
pub(crate) fn describe_value(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "the boolean",
        Value::Number(n) if n.is_f64() => "the float",
        Value::Number(_) => "the integer",
        Value::String(_) => "the string",
        Value::Array(_) => "the array",
        Value::Object(_) => "the object",
    };
    format!("{kind} {}", truncated_json(value))
}

/// The value's JSON text, cut to [`MAX_DESCRIBED_CHARS`] characters.
pub(crate) fn truncated_json(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_DESCRIBED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A record as JSON text for error messages, cut like [`truncated_json`].
pub(crate) fn describe_record(record: &Record) -> String {
    truncated_json(&Value::Object(record.clone()))
}
