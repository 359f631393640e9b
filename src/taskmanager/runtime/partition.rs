//! Key groups and routing: which downstream subtask a record goes to.
//!
//! Keyed state is split into `max_parallelism` key groups (Flink's `KeyGroupRangeAssignment`): a key's group is a
//! stable hash of the key modulo max parallelism, and subtask `i` of `p` owns the contiguous range of groups
//! [`key_group_range`]. Because groups, not keys, are assigned to subtasks, a snapshot can be restored at any
//! parallelism up to max parallelism by handing each new subtask the groups of its range.
//!
//! Invariant: [`key_hash`] must never change. It is FNV-1a (64-bit) over the key's canonical JSON text (object keys
//! sorted, no whitespace), finished with MurmurHash3's 64-bit finalizer so the low bits are well mixed. It does not
//! depend on the process, the platform or the Rust version (std's `RandomState` would), so every TaskManager routes
//! a key to the same subtask, and a snapshot's key groups mean the same thing after an upgrade. A golden test pins
//! it.
//!
//! Caveat: keys are compared by their JSON text, so the integer `3` and the float `3.0` are different keys.

use std::ops::RangeInclusive;

use serde_json::Value;

/// The FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// The FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The key's canonical JSON text: compact, object keys sorted. What keys are hashed and compared by.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// Appends the canonical text of `value` to `out`.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted explicitly: serde_json's map order depends on a cargo feature (`preserve_order`).
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The stable 64-bit hash of a key given as canonical JSON text.
pub fn key_hash(canonical: &str) -> u64 {
    let mut hash = FNV_OFFSET;
    for byte in canonical.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    fmix64(hash)
}

/// MurmurHash3's 64-bit finalizer: spreads every input bit over the output.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The key group of a key (canonical JSON text), in `0..max_parallelism`.
pub fn key_group(canonical: &str, max_parallelism: u32) -> u32 {
    // max_parallelism is at least 1 for a valid graph; `max(1)` keeps a bad one from dividing by zero.
    (key_hash(canonical) % u64::from(max_parallelism.max(1))) as u32
}

/// The subtask owning a key group: `key_group * parallelism / max_parallelism` (Flink's
/// `computeOperatorIndexForKeyGroup`).
pub fn subtask_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism.max(1))) as u32
}

/// The key groups owned by subtask `index` of `parallelism` (Flink's `computeKeyGroupRangeForOperatorIndex`).
pub fn key_group_range(max_parallelism: u32, parallelism: u32, index: u32) -> RangeInclusive<u32> {
    let (max, p, i) = (u64::from(max_parallelism), u64::from(parallelism.max(1)), u64::from(index));
    let start = (i * max).div_ceil(p);
    let end = ((i + 1) * max).saturating_sub(1) / p;
    (start as u32)..=(end as u32)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hash_is_pinned() {
        // Golden values: changing them would route keys differently from running TaskManagers and would make
        // existing snapshots' key groups meaningless. Do not update them; add a new hash instead.
        assert_eq!(key_hash(""), fmix64(FNV_OFFSET));
        assert_eq!(key_hash("0"), 0xc1e4_2af0_88ff_1b2c);
        assert_eq!(key_hash("\"user-1\""), 0x9f72_c5bb_bec9_bdbd);
        assert_eq!(key_group("0", 128), 44);
        assert_eq!(key_group(&canonical_json(&json!("user-1")), 128), 61);
    }

    #[test]
    fn canonical_json_sorts_object_keys() {
        assert_eq!(canonical_json(&json!({"b": 1, "a": [true, null, "x"]})), r#"{"a":[true,null,"x"],"b":1}"#);
        assert_eq!(canonical_json(&json!("k")), "\"k\"");
        assert_eq!(canonical_json(&json!(3)), "3");
        assert_ne!(canonical_json(&json!(3)), canonical_json(&json!(3.0)));
    }

    #[test]
    fn key_group_assignment_matches_flink() {
        // Flink: operator index = keyGroup * parallelism / maxParallelism, and the ranges partition 0..max exactly.
        assert_eq!(subtask_for_key_group(128, 2, 63), 0);
        assert_eq!(subtask_for_key_group(128, 2, 64), 1);
        assert_eq!(subtask_for_key_group(128, 3, 43), 1);
        assert_eq!(key_group_range(128, 3, 0), 0..=42);
        assert_eq!(key_group_range(128, 3, 1), 43..=85);
        assert_eq!(key_group_range(128, 3, 2), 86..=127);
        for max in [1u32, 2, 7, 128, 1000] {
            for p in 1..=max.min(20) {
                let mut next = 0;
                for i in 0..p {
                    let range = key_group_range(max, p, i);
                    assert_eq!(*range.start(), next, "max {max} p {p} i {i}");
                    for kg in range.clone() {
                        assert_eq!(subtask_for_key_group(max, p, kg), i);
                    }
                    next = range.end() + 1;
                }
                assert_eq!(next, max);
            }
        }
    }

    #[test]
    fn keys_spread_over_groups() {
        let mut counts = [0u32; 8];
        for k in 0..8000 {
            counts[key_group(&canonical_json(&json!(k)), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
