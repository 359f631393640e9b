//! Reading a spec document (YAML or JSON) into [`JobSpec`](super::JobSpec).

use super::{JobSpec, SpecError, MAX_SPEC_BYTES};

/// Parses the document; structural checks only (types, unknown keys, size).
pub(super) fn parse_document(bytes: &[u8]) -> Result<JobSpec, SpecError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(SpecError::new("<document>", format!("{} bytes; at most {MAX_SPEC_BYTES}", bytes.len())));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| SpecError::new("<document>", format!("not UTF-8: {e}")))?;
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| SpecError::new("<document>", e.to_string()))
    } else {
        serde_norway::from_str(text).map_err(|e| SpecError::new("<document>", e.to_string()))
    }
}
