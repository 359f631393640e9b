//! Reading a spec document (YAML or JSON) into a [`JobSpec`](super::JobSpec): the structural half of validation.
//!
//! Owns the document-level checks (size, UTF-8, emptiness), the choice of format (JSON when the first non-blank
//! character is `{`, YAML otherwise) and the translation of every serde error into a [`SpecError`] whose `field` is
//! the path of the offending value, e.g. `checkpoints.intervall` for an unknown key or `vertices[1].parallelism`
//! for a wrong type. Paths are tracked by `serde_path_to_error`, which wraps either format's deserializer, so YAML
//! and JSON report the same path for the same mistake.
//!
//! Invariant: nothing here judges meaning (parallelism bounds, cycles, operator placement); that is `validate`'s job,
//! which runs only on a document that parsed.
//!
//! Caveat: serde reports a missing or unknown field at the path of the mapping that holds it; the field's own name
//! is recovered from the message (``missing field `name` ``), see [`field_of`].

use super::{JobSpec, SpecError, MAX_SPEC_BYTES};

/// The `field` of an error about the document as a whole.
pub(super) const DOCUMENT: &str = "<document>";

/// Parses the document; structural checks only (size, encoding, syntax, types, unknown keys, missing fields).
pub(super) fn parse_document(bytes: &[u8]) -> Result<JobSpec, SpecError> {
    if bytes.len() > MAX_SPEC_BYTES {
        let reason = format!("is {} bytes; a job spec may be at most {MAX_SPEC_BYTES} bytes", bytes.len());
        return Err(SpecError::new(DOCUMENT, reason));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| SpecError::new(DOCUMENT, format!("is not UTF-8 ({e}); save the spec as UTF-8")))?;
    // Editors on some platforms prepend a byte order mark; it is not part of the document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if is_blank(text) {
        return Err(SpecError::new(DOCUMENT, "is empty; a job spec needs at least `name` and `vertices`"));
    }
    if is_json(text) {
        from_json(text)
    } else {
        from_yaml(text)
    }
}

/// Whether the document is JSON rather than YAML: its first non-blank character opens an object.
fn is_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Whether the document holds nothing but whitespace and YAML comments.
fn is_blank(text: &str) -> bool {
    text.lines().map(str::trim).all(|line| line.is_empty() || line.starts_with('#') || line == "---")
}

fn from_json(text: &str) -> Result<JobSpec, SpecError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let spec = serde_path_to_error::deserialize(&mut deserializer).map_err(to_spec_error)?;
    deserializer.end().map_err(|e| {
        SpecError::new(DOCUMENT, format!("has more after the JSON object ({e}); a spec is a single JSON object"))
    })?;
    Ok(spec)
}

fn from_yaml(text: &str) -> Result<JobSpec, SpecError> {
    serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text)).map_err(to_spec_error)
}

/// Turns a serde error into a [`SpecError`] at the path where it happened.
fn to_spec_error<E: std::fmt::Display>(error: serde_path_to_error::Error<E>) -> SpecError {
    let path = match error.path().to_string() {
        root if root == "." => String::new(),
        path => path,
    };
    let (message, location) = split_location(error.inner().to_string());
    let message = strip_path_prefix(&message);
    let field = field_of(&path, message);
    let reason = match location {
        Some(location) => format!("{} (at {location})", fix_hint(message)),
        None => fix_hint(message),
    };
    SpecError::new(field, reason)
}

/// The field an error is about: the path, extended by the field named in a missing- or unknown-field message (serde
/// reports those at the enclosing mapping, or for an unknown key sometimes at the key itself).
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let field = match named {
        Some(name) if !ends_with_segment(path, name) => join_path(path, name),
        _ => path.to_string(),
    };
    if field.is_empty() {
        DOCUMENT.to_string()
    } else {
        field
    }
}

fn ends_with_segment(path: &str, name: &str) -> bool {
    path == name || path.ends_with(&format!(".{name}"))
}

fn join_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Splits `"<message> at line 3 column 7"` (both formats end their messages so) into the message and the location.
fn split_location(text: String) -> (String, Option<String>) {
    if let Some(at) = text.rfind(" at line ") {
        let location = &text[at + " at ".len()..];
        if is_line_and_column(location) {
            return (text[..at].to_string(), Some(location.to_string()));
        }
    }
    (text, None)
}

/// Whether `text` is exactly `line <n> column <m>`.
fn is_line_and_column(text: &str) -> bool {
    let words: Vec<&str> = text.split(' ').collect();
    let is_number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    matches!(words.as_slice(), ["line", l, "column", c] if is_number(l) && is_number(c))
}

/// Drops the `path: ` prefix serde_norway puts before its messages: the path is reported in `field` already.
fn strip_path_prefix(message: &str) -> &str {
    match message.split_once(": ") {
        Some((prefix, rest)) if !rest.is_empty() && is_path_like(prefix) => rest,
        _ => message,
    }
}

fn is_path_like(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-.[]?".contains(c))
}

/// Adds how to fix the few serde messages that do not say so themselves.
fn fix_hint(message: &str) -> String {
    if message.starts_with("missing field `") {
        format!("{message}; it is required")
    } else if message.starts_with("unknown field `") && message.contains("expected") {
        format!("{message}; check the spelling (see docs/jobs.md)")
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> SpecError {
        parse_document(text.as_bytes()).expect_err("the document should be refused")
    }

    const MINIMAL_YAML: &str =
        "name: j\nvertices:\n  - id: a\n    operators:\n      - sequence: {}\n      - blackhole\n";

    #[test]
    fn minimal_yaml_parses() {
        let spec = parse_document(MINIMAL_YAML.as_bytes()).unwrap();
        assert_eq!(spec.name, "j");
        assert_eq!(spec.vertices[0].operators.len(), 2);
    }

    #[test]
    fn too_large_document_is_refused() {
        let e = parse_document(&vec![b' '; MAX_SPEC_BYTES + 1]).unwrap_err();
        assert_eq!(e.field, DOCUMENT);
        assert!(e.reason.contains("at most 1048576 bytes"), "{e}");
    }

    #[test]
    fn non_utf8_document_is_refused() {
        let e = parse_document(b"name: \xff\xfe").unwrap_err();
        assert_eq!(e.field, DOCUMENT);
        assert!(e.reason.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn empty_and_comment_only_documents_are_refused() {
        for text in ["", "  \n\t\n", "# nothing here\n---\n"] {
            let e = error(text);
            assert_eq!(e.field, DOCUMENT);
            assert!(e.reason.contains("is empty"), "{e}");
        }
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let text = format!("\u{feff}{MINIMAL_YAML}");
        assert_eq!(parse_document(text.as_bytes()).unwrap().name, "j");
    }

    #[test]
    fn json_is_chosen_by_a_leading_brace() {
        let json = r#"  {"name": "j", "vertices": [{"id": "a", "operators": [{"sequence": {}}, {"blackhole": {}}]}]}"#;
        assert_eq!(parse_document(json.as_bytes()).unwrap().name, "j");
    }

    #[test]
    fn json_with_trailing_content_is_refused() {
        let e = error(r#"{"name": "j", "vertices": []} {"#);
        assert_eq!(e.field, DOCUMENT);
        assert!(e.reason.contains("single JSON object"), "{e}");
    }

    #[test]
    fn json_syntax_error_gives_location() {
        let e = error("{\"name\": \"j\",\n \"vertices\": [,]}");
        assert!(e.reason.contains("line 2"), "{e}");
    }

    #[test]
    fn yaml_syntax_error_is_reported() {
        let e = error("name: [unclosed\nvertices: []\n");
        assert_eq!(e.field, "name");
        assert!(e.reason.contains("line"), "{e}");
    }

    #[test]
    fn multiple_yaml_documents_are_refused() {
        let e = error(&format!("{MINIMAL_YAML}---\n{MINIMAL_YAML}"));
        assert_eq!(e.field, DOCUMENT);
        assert!(e.reason.contains("more than one document"), "{e}");
    }

    #[test]
    fn unknown_key_in_yaml_names_its_path_and_the_allowed_keys() {
        let e = error(&format!("{MINIMAL_YAML}checkpoints:\n  intervall: 1s\n"));
        assert_eq!(e.field, "checkpoints.intervall");
        assert!(e.reason.contains("unknown field `intervall`"), "{e}");
        assert!(e.reason.contains("`interval`") && e.reason.contains("`retained`"), "{e}");
        assert!(e.reason.contains("line 8"), "{e}");
    }

    #[test]
    fn unknown_key_in_json_names_its_path() {
        let json = r#"{"name": "j", "vertices": [], "checkpoints": {"intervall": 1000}}"#;
        let e = error(json);
        assert_eq!(e.field, "checkpoints.intervall");
        assert!(e.reason.contains("expected one of `interval`"), "{e}");
    }

    #[test]
    fn unknown_top_level_key_names_it() {
        let e = error(&format!("{MINIMAL_YAML}paralelism: 2\n"));
        assert_eq!(e.field, "paralelism");
        assert!(e.reason.contains("`parallelism`"), "{e}");
    }

    #[test]
    fn missing_top_level_field_names_it() {
        let e = error("vertices: []\n");
        assert_eq!(e.field, "name");
        assert!(e.reason.contains("missing field `name`; it is required"), "{e}");
    }

    #[test]
    fn missing_nested_field_names_its_path() {
        let e = error("name: j\nvertices:\n  - id: a\n");
        assert_eq!(e.field, "vertices[0].operators");
        let e = error(r#"{"name": "j", "vertices": [{"operators": []}]}"#);
        assert_eq!(e.field, "vertices[0].id");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let yaml = "name: j\nvertices:\n  - id: a\n    operators: [blackhole]\n  - id: b\n    parallelism: two\n    operators: [blackhole]\n";
        let e = error(yaml);
        assert_eq!(e.field, "vertices[1].parallelism");
        assert!(e.reason.contains("invalid type: string \"two\", expected u32"), "{e}");
        let json = r#"{"name": "j", "vertices": [{"id": "a", "operators": []}, {"id": "b", "parallelism": -1, "operators": []}]}"#;
        let e = error(json);
        assert_eq!(e.field, "vertices[1].parallelism");
        assert!(e.reason.contains("-1"), "{e}");
    }

    #[test]
    fn unknown_operator_lists_the_known_ones() {
        let yaml = "name: j\nvertices:\n  - id: a\n    operators:\n      - sequence: {}\n      - map: {fields: {k: seq}}\n      - mapp: {fields: {k: seq}}\n";
        let e = error(yaml);
        assert_eq!(e.field, "vertices[0].operators[2]");
        assert!(e.reason.starts_with("unknown operator `mapp`; expected one of sequence, files, map, "), "{e}");
        let json = r#"{"name": "j", "vertices": [{"id": "a", "operators": [{"sequence": {}}, {"mapp": {}}]}]}"#;
        assert_eq!(error(json).field, "vertices[0].operators[1]");
    }

    #[test]
    fn operator_settings_errors_name_the_operator_in_the_path() {
        let yaml = "name: j\nvertices:\n  - id: a\n    operators:\n      - sequence: {form: 1}\n";
        let e = error(yaml);
        assert_eq!(e.field, "vertices[0].operators[0].sequence.form");
        let json = r#"{"name": "j", "vertices": [{"id": "a", "operators": [{"filter": {}}]}]}"#;
        assert_eq!(error(json).field, "vertices[0].operators[0].filter.expr");
    }

    #[test]
    fn operator_with_two_keys_is_refused() {
        let yaml = "name: j\nvertices:\n  - id: a\n    operators:\n      - sequence: {}\n        blackhole: {}\n";
        let e = error(yaml);
        assert_eq!(e.field, "vertices[0].operators[0]");
        assert!(e.reason.contains("exactly one key"), "{e}");
    }

    #[test]
    fn sinks_without_settings_may_be_bare_empty_or_null() {
        use crate::jobgraph::{BlackholeSink, LogSink, OperatorSpec};
        let yaml = "name: j\nvertices:\n  - id: a\n    operators: [blackhole, {blackhole: {}}, {blackhole: null}, log, {log: {}}, {log: ~}]\n";
        let ops = &parse_document(yaml.as_bytes()).unwrap().vertices[0].operators;
        assert!(ops[..3].iter().all(|op| *op == OperatorSpec::Blackhole(BlackholeSink {})));
        assert!(ops[3..].iter().all(|op| *op == OperatorSpec::Log(LogSink::default())));
        let json =
            r#"{"name": "j", "vertices": [{"id": "a", "operators": ["log", {"blackhole": null}, {"blackhole": {}}]}]}"#;
        assert_eq!(parse_document(json.as_bytes()).unwrap().vertices[0].operators.len(), 3);
    }

    #[test]
    fn bare_operator_that_needs_settings_says_so() {
        let e = error("name: j\nvertices:\n  - id: a\n    operators: [map]\n");
        assert_eq!(e.field, "vertices[0].operators[0]");
        assert!(e.reason.contains("operator `map` needs settings"), "{e}");
    }

    #[test]
    fn unknown_restart_strategy_type_names_the_type_field() {
        let e = error(&format!("{MINIMAL_YAML}restart_strategy: {{type: fixed}}\n"));
        assert_eq!(e.field, "restart_strategy.type");
        assert!(e.reason.contains("unknown variant `fixed`, expected one of `none`, `fixed-delay`"), "{e}");
        let e = error(&format!("{MINIMAL_YAML}restart_strategy: {{delay: 1s}}\n"));
        assert_eq!(e.field, "restart_strategy.type");
    }

    #[test]
    fn restart_strategy_parameter_of_another_type_names_it() {
        let e = error(&format!("{MINIMAL_YAML}restart_strategy: {{type: fixed-delay, max_backoff: 1s}}\n"));
        assert_eq!(e.field, "restart_strategy.max_backoff");
        assert!(e.reason.contains("restart strategy `fixed-delay`; it takes `attempts`, `delay`"), "{e}");
        let e = error(&format!("{MINIMAL_YAML}restart_strategy: {{type: none, attempts: 3}}\n"));
        assert_eq!(e.field, "restart_strategy.attempts");
        assert!(e.reason.contains("takes no parameters"), "{e}");
    }

    #[test]
    fn restart_strategy_wrong_type_names_the_parameter() {
        let e = error(&format!("{MINIMAL_YAML}restart_strategy: {{type: fixed-delay, delay: 5 parsecs}}\n"));
        assert_eq!(e.field, "restart_strategy.delay");
        assert!(e.reason.contains("unknown unit `parsecs`"), "{e}");
    }

    #[test]
    fn durations_accept_integers_and_units() {
        let with_interval = |value: &str| {
            parse_document(format!("{MINIMAL_YAML}checkpoints: {{interval: {value}}}\n").as_bytes())
                .map(|spec| spec.checkpoints.interval.unwrap().0)
        };
        assert_eq!(with_interval("500ms"), Ok(500));
        assert_eq!(with_interval("10 s"), Ok(10_000));
        assert_eq!(with_interval("1min"), Ok(60_000));
        assert_eq!(with_interval("2h"), Ok(7_200_000));
        assert_eq!(with_interval("1500"), Ok(1500));
        assert_eq!(with_interval("\"1500\""), Ok(1500));
    }

    #[test]
    fn bad_durations_name_the_field() {
        let cases = [
            ("-5", "`-5` is negative"),
            ("-5s", "`-5s` is negative"),
            ("5 parsecs", "unknown unit `parsecs` in `5 parsecs`; use ms, s, min, h or d"),
            ("1.5s", "has a fraction"),
            ("soon", "`soon` is not a duration"),
            ("99999999999999999999d", "not a duration"),
        ];
        for (value, fragment) in cases {
            let e = error(&format!("{MINIMAL_YAML}checkpoints: {{interval: {value}}}\n"));
            assert_eq!(e.field, "checkpoints.interval", "{value}");
            assert!(e.reason.contains(fragment), "{value}: {e}");
        }
        let e = error(r#"{"name": "j", "vertices": [], "checkpoints": {"timeout": -1}}"#);
        assert_eq!(e.field, "checkpoints.timeout");
        assert!(e.reason.contains("cannot be negative"), "{e}");
    }

    #[test]
    fn path_prefix_is_stripped_only_when_path_like() {
        assert_eq!(strip_path_prefix("checkpoints.interval: bad"), "bad");
        assert_eq!(strip_path_prefix("vertices[0].id: bad"), "bad");
        assert_eq!(strip_path_prefix("invalid type: string"), "invalid type: string");
    }

    #[test]
    fn location_is_split_off() {
        let (message, location) = split_location("oops at line 3 column 7".to_string());
        assert_eq!((message.as_str(), location.as_deref()), ("oops", Some("line 3 column 7")));
        let (message, location) = split_location("oops at line three".to_string());
        assert_eq!((message.as_str(), location), ("oops at line three", None));
    }
}
