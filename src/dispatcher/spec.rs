//! Job specs: YAML or JSON documents describing a job, validated before anything is written.
//!
//! This version of the format knows two fields; everything else in the document is kept as part of the
//! job graph, stored as canonical JSON:
//!
//! ```yaml
//! name: fraud-detection          # required, 1 to 256 bytes
//! checkpoints:
//!   retained: 3                  # optional, 1 to 1000, default 1 (Flink's state.checkpoints.num-retained)
//! ```

use serde_json::Value;

use super::DispatchError;
use crate::raft::command::MAX_RETAINED_CHECKPOINTS;

/// The largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// A validated job spec.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job's name.
    pub name: String,
    /// How many completed checkpoints to keep.
    pub retained_checkpoints: u32,
    /// The whole document as canonical (compact, key-sorted) JSON.
    pub canonical_json: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> DispatchError {
    DispatchError::InvalidSpec { field: field.to_string(), reason: reason.into() }
}

/// Parses and validates a spec given as YAML or JSON.
pub fn parse_spec(bytes: &[u8]) -> Result<JobSpec, DispatchError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(invalid("<document>", format!("{} bytes; a spec may have at most {MAX_SPEC_BYTES}", bytes.len())));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| invalid("<document>", format!("not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(invalid("<document>", "empty; a spec needs at least a `name`"));
    }
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| invalid("<document>", format!("invalid JSON: {e}")))?
    } else {
        serde_norway::from_str(text).map_err(|e| invalid("<document>", format!("invalid YAML: {e}")))?
    };
    let Value::Object(map) = &doc else {
        return Err(invalid("<document>", "must be a mapping with at least a `name` field"));
    };
    let name = match map.get("name") {
        None => return Err(invalid("name", "missing; every job needs a name")),
        Some(Value::String(s)) if s.trim().is_empty() => return Err(invalid("name", "must not be empty")),
        Some(Value::String(s)) if s.len() > 256 => return Err(invalid("name", "longer than 256 bytes")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(invalid("name", format!("must be a string, got {other}"))),
    };
    let retained_checkpoints = retained(map.get("checkpoints"))?;
    // serde_json's map is a BTreeMap (no preserve_order feature): serializing it sorts the keys.
    let canonical_json = serde_json::to_string(&doc).map_err(|e| invalid("<document>", e.to_string()))?;
    Ok(JobSpec { name, retained_checkpoints, canonical_json })
}

fn retained(checkpoints: Option<&Value>) -> Result<u32, DispatchError> {
    let Some(checkpoints) = checkpoints else { return Ok(1) };
    let Value::Object(c) = checkpoints else {
        return Err(invalid("checkpoints", "must be a mapping"));
    };
    match c.get("retained") {
        None => Ok(1),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(r) if (1..=u64::from(MAX_RETAINED_CHECKPOINTS)).contains(&r) => Ok(r as u32),
            _ => Err(invalid(
                "checkpoints.retained",
                format!("must be an integer from 1 to {MAX_RETAINED_CHECKPOINTS}, got {n}"),
            )),
        },
        Some(other) => Err(invalid("checkpoints.retained", format!("must be an integer, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: DispatchError) -> String {
        match e {
            DispatchError::InvalidSpec { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn yaml_and_json_specs_give_the_same_canonical_graph() {
        let yaml = parse_spec(b"name: wordcount\nparallelism: 2\ncheckpoints:\n  retained: 3\n").unwrap();
        let json = parse_spec(br#"{"parallelism": 2, "checkpoints": {"retained": 3}, "name": "wordcount"}"#).unwrap();
        assert_eq!(yaml, json);
        assert_eq!(yaml.retained_checkpoints, 3);
        assert_eq!(yaml.canonical_json, r#"{"checkpoints":{"retained":3},"name":"wordcount","parallelism":2}"#);
    }

    #[test]
    fn retained_checkpoints_default_to_one() {
        assert_eq!(parse_spec(b"name: a").unwrap().retained_checkpoints, 1);
    }

    #[test]
    fn bad_specs_name_the_offending_field() {
        assert_eq!(field_of(parse_spec(b"parallelism: 2").unwrap_err()), "name");
        assert_eq!(field_of(parse_spec(b"name: ''").unwrap_err()), "name");
        assert_eq!(field_of(parse_spec(b"name: [1]").unwrap_err()), "name");
        assert_eq!(field_of(parse_spec(b"name: a\ncheckpoints: 3").unwrap_err()), "checkpoints");
        assert_eq!(field_of(parse_spec(b"name: a\ncheckpoints: {retained: 0}").unwrap_err()), "checkpoints.retained");
        assert_eq!(field_of(parse_spec(b"name: a\ncheckpoints: {retained: x}").unwrap_err()), "checkpoints.retained");
        assert_eq!(field_of(parse_spec(b"- a\n- b").unwrap_err()), "<document>");
        assert_eq!(field_of(parse_spec(b"{not json").unwrap_err()), "<document>");
        assert_eq!(field_of(parse_spec(b"  ").unwrap_err()), "<document>");
        assert_eq!(field_of(parse_spec(&[0xff, 0xfe]).unwrap_err()), "<document>");
    }

    #[test]
    fn oversized_specs_are_refused_before_parsing() {
        let big = vec![b'a'; MAX_SPEC_BYTES + 1];
        assert!(parse_spec(&big).unwrap_err().to_string().contains("at most"));
    }
}
