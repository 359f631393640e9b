//! Flink's `serialized-throwable`: a failure cause as Java object serialization, base64-encoded.
//!
//! Flink's Java client (`flink savepoint`, `flink stop`, the Kubernetes operator) reads a failed operation's
//! `failure-cause` only from this field: it deserializes an `org.apache.flink.util.SerializedThrowable` and ignores
//! `class` and `stack-trace`. With anything else there it cannot parse the answer and polls until its timeout, so
//! the user never sees why the savepoint failed. This writes the smallest stream that class reads: its own fields
//! (no nested original exception, so no Java class of ours is needed), over `Exception` and `Throwable`.

/// Java's serialization stream constants (`java.io.ObjectStreamConstants`).
const STREAM_MAGIC: [u8; 2] = [0xAC, 0xED];
const STREAM_VERSION: [u8; 2] = [0x00, 0x05];
const TC_NULL: u8 = 0x70;
const TC_CLASSDESC: u8 = 0x72;
const TC_OBJECT: u8 = 0x73;
const TC_STRING: u8 = 0x74;
const TC_ENDBLOCKDATA: u8 = 0x78;
const TC_LONGSTRING: u8 = 0x7C;
const SC_WRITE_METHOD: u8 = 0x01;
const SC_SERIALIZABLE: u8 = 0x02;

/// The serialVersionUIDs the reading JVM checks (`serialver`); stable across Flink 1.x/2.x and JDK releases.
const SERIALIZED_THROWABLE_UID: i64 = 7284183123441947635;
const EXCEPTION_UID: i64 = -3387516993124229948;
const THROWABLE_UID: i64 = -3042686055658047285;

/// Flink's `failure-cause` object for an error named `class` with message `message`.
pub fn failure_cause(class: &str, message: &str) -> serde_json::Value {
    let stack_trace = format!("{class}: {message}");
    serde_json::json!({
        "class": class,
        "stack-trace": stack_trace,
        "serialized-throwable": base64(&serialized_throwable(class, message, &stack_trace)),
    })
}

/// A `SerializedThrowable` whose `toString()` is `class: message` and whose printed stack trace is `stack_trace`.
fn serialized_throwable(class: &str, message: &str, stack_trace: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + message.len() + stack_trace.len());
    out.extend_from_slice(&STREAM_MAGIC);
    out.extend_from_slice(&STREAM_VERSION);
    out.push(TC_OBJECT);

    // Class descriptors, most derived first; fields in Java's order (by name, as all are objects).
    let string_type = "Ljava/lang/String;";
    class_desc(
        &mut out,
        "org.apache.flink.util.SerializedThrowable",
        SERIALIZED_THROWABLE_UID,
        SC_SERIALIZABLE,
        &[
            (b'L', "fullStringifiedStackTrace", string_type),
            (b'L', "originalErrorClassName", string_type),
            (b'[', "serializedException", "[B"),
        ],
    );
    class_desc(&mut out, "java.lang.Exception", EXCEPTION_UID, SC_SERIALIZABLE, &[]);
    // Throwable has a writeObject method, so its field values end with an end-of-block marker.
    class_desc(
        &mut out,
        "java.lang.Throwable",
        THROWABLE_UID,
        SC_SERIALIZABLE | SC_WRITE_METHOD,
        &[
            (b'L', "cause", "Ljava/lang/Throwable;"),
            (b'L', "detailMessage", string_type),
            (b'[', "stackTrace", "[Ljava/lang/StackTraceElement;"),
            (b'L', "suppressedExceptions", "Ljava/util/List;"),
        ],
    );
    out.push(TC_NULL); // no serializable superclass above Throwable

    // Field values, least derived class first. A null stack trace and suppressed list read back as empty ones.
    out.push(TC_NULL);
    string(&mut out, message);
    out.push(TC_NULL);
    out.push(TC_NULL);
    out.push(TC_ENDBLOCKDATA);
    string(&mut out, stack_trace);
    string(&mut out, class);
    out.push(TC_NULL); // no original exception: deserializeError() returns the SerializedThrowable itself
    out
}

/// A class descriptor: name, serialVersionUID, flags and `(type code, name, signature)` fields, no annotation.
fn class_desc(out: &mut Vec<u8>, name: &str, uid: i64, flags: u8, fields: &[(u8, &str, &str)]) {
    out.push(TC_CLASSDESC);
    utf(out, name);
    out.extend_from_slice(&uid.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (type_code, field, signature) in fields {
        out.push(*type_code);
        utf(out, field);
        string(out, signature);
    }
    out.push(TC_ENDBLOCKDATA);
}

/// A `String` object: short ones with a 16-bit length, longer ones with a 64-bit one.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = modified_utf8(s);
    match u16::try_from(bytes.len()) {
        Ok(len) => {
            out.push(TC_STRING);
            out.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => {
            out.push(TC_LONGSTRING);
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&bytes);
}

/// A name in a class descriptor (always short: these are fixed identifiers).
fn utf(out: &mut Vec<u8>, s: &str) {
    let bytes = modified_utf8(s);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(&bytes);
}

/// Java's modified UTF-8: UTF-16 code units, each in 1 to 3 bytes, with NUL as two bytes.
fn modified_utf8(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for unit in s.encode_utf16() {
        match unit {
            0x0001..=0x007F => out.push(unit as u8),
            0x0000 | 0x0080..=0x07FF => {
                out.push(0xC0 | (unit >> 6) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
            _ => {
                out.push(0xE0 | (unit >> 12) as u8);
                out.push(0x80 | ((unit >> 6) & 0x3F) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
        }
    }
    out
}

/// Standard base64 with padding, what Jackson's `binaryValue()` decodes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 0x3F] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xAC, 0xED, 0x00, 0x05]), "rO0ABQ==");
    }

    #[test]
    fn modified_utf8_encodes_nul_and_supplementary_characters_like_java() {
        assert_eq!(modified_utf8("a\0"), [b'a', 0xC0, 0x80]);
        assert_eq!(modified_utf8("é"), "é".as_bytes());
        // U+1F600 as two surrogates of three bytes each, not UTF-8's four bytes.
        assert_eq!(modified_utf8("😀"), [0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80]);
    }

    #[test]
    fn the_stream_carries_the_message_and_class_as_java_strings() {
        let bytes = serialized_throwable("SavepointFailure", "disk full", "SavepointFailure: disk full");
        assert_eq!(bytes[..5], [0xAC, 0xED, 0x00, 0x05, TC_OBJECT]);
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&[TC_STRING, 0, 9, b'd', b'i', b's', b'k', b' ', b'f', b'u', b'l', b'l']));
        assert!(contains(&SERIALIZED_THROWABLE_UID.to_be_bytes()));
        assert_eq!(bytes.last(), Some(&TC_NULL));
        let long = "x".repeat(70_000);
        let bytes = serialized_throwable("C", &long, "C");
        assert!(bytes.windows(9).any(|w| w == [TC_LONGSTRING, 0, 0, 0, 0, 0, 1, 0x11, 0x70]));
    }
}
