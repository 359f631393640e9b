//! Linearizability of the register workload: every `write`/`read` on a register key must be explainable by one
//! total order of the operations that respects real time (an operation that completed before another was invoked
//! comes first) and the semantics of a single register that starts empty (`null`), where `write(v)` sets it and a
//! `read` returns what it holds.
//!
//! # Algorithm
//!
//! Keys are independent registers, and linearizability is compositional, so the history is split by `key` and each
//! key's sub-history is checked on its own. Each check is Wing & Gong's search with Lowe's memoization, in the form
//! of porcupine's `checkSingle` (Knossos calls it "wgl"): the call and return events, ordered by time (a call before a
//! return at equal times, so touching operations count as concurrent), form a doubly linked list. The search walks it
//! from the head; at a call it tries to linearize that operation now (apply it to the register model; a read must
//! match the value held) and, if that yields a configuration not seen before, lifts the call and its return out of
//! the list, pushes it on a stack and starts again from the head. Reaching a return means the operation it closes
//! must already have taken effect and did not: undo the last linearized operation and try the next call after it.
//! The configurations seen are the set of linearized operations (a bitset) with the model's state; a second visit
//! can only fail the same way, which is what keeps the search polynomial on realistic histories.
//!
//! The model is the register refined for open writes (below): an open write may be linearized only if a read of
//! its value is linearized right after it. That loses no linearization, since an open write that is overwritten or
//! last, unseen, may as well never have happened, and it keeps open writes from multiplying the search.
//!
//! # Outcomes
//!
//! * `ok`: took effect once between its invoke and its completion.
//! * `fail`: never took effect; dropped. A read of a value only a failed write wrote is therefore a violation.
//! * `info`, or an invocation that never completed: may take effect at any instant after its invoke, or never. An
//!   open write has no return event (its deadline is +infinity) and the search succeeds once every `ok` operation is
//!   linearized, so open writes may stay unlinearized. An open read is dropped: its result is unknown and it changes
//!   nothing. An open write whose value no `ok` read returned is dropped before the search, by the same argument as
//!   the refinement: it could only ever be linearized unseen.
//!
//! Values are compared as JSON (the workload writes integers, unique per key, and reads return one or `null`).
//!
//! # Evidence
//!
//! Per key: operations, how many were dropped and why, search steps and time. For an invalid key, the longest
//! linearizable prefix the search found (its length, its last operations, the register after it and the write that
//! set it), the operation whose completion came before it could be placed there (`not_linearizable`, with its
//! index, process, value and times), the other unplaced operations concurrent with it, and a sentence naming the
//! anomaly: a read of a value never written, or written only by a failed write, or a stale read or lost write.
//!
//! # Limits and `Unknown`
//!
//! [`Limits`] bound the search per key in wall-clock time and in steps (one step: one attempt to linearize a call or
//! one undo). A key whose search hits a limit is [`Validity::Unknown`]: nothing was found wrong, nothing proven. The
//! verdict is `Invalid` if any key is invalid, else `Unknown` if any key is undecided, else `Valid`. The time limit
//! applies to each key, so a whole check can take up to keys x limit.
//!
//! # Cost and pathological cases
//!
//! With c operations concurrent at any instant, the configurations reachable from a prefix of the history number at
//! most about c * 2^c, so histories with a handful of processes per key check in time roughly linear in their
//! length: a generated 10,000-operation history takes 5-10 ms in all over 10 keys of 5 processes each (under 1 ms
//! for the slowest key), or 30-45 ms on a single key, in a release build (the ignored test `bench_10k_ops`). Every
//! configuration visited keeps a bitset of the key's operations in memory.
//!
//! What remains exponential is wide concurrency among acknowledged operations when the history is invalid (or valid
//! only by an order found late): k writes all concurrent, then a contradiction, makes the search visit every subset
//! of them with each possible last write, k * 2^k configurations; k = 16 takes 0.6-1.2 s, k = 18 4-6 s (the ignored
//! test `bench_pathological`). Jepsen's usual cause, many writes timing out during a partition and some read later,
//! is handled by the refinement above: 100 such writes read back in reverse order check in about 1 ms. Undecided
//! keys are what the limits are for.
//!
//! # Cross-check
//!
//! A test runs this checker and `stateright`'s `LinearizabilityTester` (a plain search over interleavings) on 500
//! random small concurrent register histories (one key, 2-4 processes of 2-8 operations, values from {1, 2, 3},
//! with crashed operations, lost writes and corrupted reads) and requires the same answer. Stateright leaves an
//! invoked operation without a return in flight, to be linearized at any point after its invoke or not at all:
//! the meaning of `info` here, so `info` and open operations are given to it as invocations without a return.
//! `fail` has no counterpart there, so none are generated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Validity, Verdict};
use crate::history::{pair, Completed, Op, OpType};

/// The checker's name in its verdicts.
pub const NAME: &str = "linearizable";

/// How many operations of the longest linearizable prefix, and of the operations stuck after it, the evidence shows.
const EVIDENCE_OPS: usize = 10;

/// Search limits, each per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time.
    pub time: Duration,
    /// Search steps: attempts to linearize an operation plus undos.
    pub steps: u64,
}

/// Checks every register key of `history`, searching each for at most `limit`.
pub fn check(history: &[Op], limit: Duration) -> Verdict {
    check_with(history, Limits { time: limit, steps: u64::MAX })
}

/// Checks every register key of `history` within `limits`.
pub fn check_with(history: &[Op], limits: Limits) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Completed<'_>>> = BTreeMap::new();
    for op in pair(history) {
        if Kind::of(op.invoke).is_some() {
            if let Some(key) = op.invoke.key.as_deref() {
                by_key.entry(key).or_default().push(op);
            }
        }
    }

    let mut keys = serde_json::Map::new();
    let mut invalid: Vec<(&str, String)> = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    let mut total_ops = 0;
    for (key, ops) in &by_key {
        total_ops += ops.len();
        let result = check_key(key, ops, limits);
        match result.validity {
            Validity::Valid => {}
            Validity::Invalid => invalid.push((key, result.summary)),
            Validity::Unknown => unknown.push(key),
        }
        keys.insert(key.to_string(), result.evidence);
    }

    let (validity, summary) = if let Some((_, first)) = invalid.first() {
        let more = match invalid.len() {
            1 => String::new(),
            n => format!(" (and {} more invalid keys)", n - 1),
        };
        (Validity::Invalid, format!("{first}{more}"))
    } else if !unknown.is_empty() {
        let summary = format!(
            "{total_ops} ops on {}: none invalid, {} undecided within the limit ({})",
            keys_text(by_key.len()),
            unknown.len(),
            unknown.join(", ")
        );
        (Validity::Unknown, summary)
    } else {
        (Validity::Valid, format!("{total_ops} ops on {} linearizable", keys_text(by_key.len())))
    };
    let evidence = json!({
        "ops": total_ops,
        "invalid_keys": invalid.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        "unknown_keys": unknown,
        "limits": {"time_ms": limits.time.as_millis() as u64, "steps": limits.steps},
        "keys": keys,
    });
    Verdict::new(NAME, validity, summary, evidence)
}

fn keys_text(n: usize) -> String {
    match n {
        1 => "1 key".to_string(),
        n => format!("{n} keys"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
}

impl Kind {
    fn of(op: &Op) -> Option<Self> {
        match op.f.as_str() {
            "write" => Some(Self::Write),
            "read" => Some(Self::Read),
            _ => None,
        }
    }
}

/// One operation as the search sees it.
#[derive(Debug)]
struct RegOp<'a> {
    source: Completed<'a>,
    kind: Kind,
    /// The value written, or the value read, interned (see [`Values`]).
    value: u32,
    call: u64,
    /// `None`: open-ended, it may take effect at any time after `call`, or never.
    ret: Option<u64>,
}

/// Interned register values, so that the model state is a small integer; `null` is 0.
struct Values {
    ids: HashMap<String, u32>,
    values: Vec<Value>,
}

impl Values {
    fn new() -> Self {
        Self { ids: HashMap::new(), values: vec![Value::Null] }
    }

    fn intern(&mut self, value: &Value) -> u32 {
        if value.is_null() {
            return 0;
        }
        let next = self.values.len() as u32;
        let id = *self.ids.entry(value.to_string()).or_insert(next);
        if id == next {
            self.values.push(value.clone());
        }
        id
    }

    fn get(&self, id: u32) -> &Value {
        &self.values[id as usize]
    }
}

struct KeyResult {
    validity: Validity,
    summary: String,
    evidence: Value,
}

fn check_key(key: &str, all: &[Completed<'_>], limits: Limits) -> KeyResult {
    let started = Instant::now();
    let mut values = Values::new();
    let mut ops: Vec<RegOp<'_>> = Vec::new();
    let mut open_writes: Vec<RegOp<'_>> = Vec::new();
    let (mut failed, mut info_reads, mut unread_writes) = (0usize, 0usize, 0usize);
    for source in all {
        let kind = Kind::of(source.invoke).expect("only reads and writes are grouped");
        let call = source.invoke.time_ns;
        match (kind, source.outcome()) {
            (_, OpType::Fail) => failed += 1,
            (Kind::Read, OpType::Info | OpType::Invoke) => info_reads += 1,
            (Kind::Read, OpType::Ok) => {
                let completion = source.completion.expect("ok has a completion");
                let value = values.intern(&completion.value);
                // A clock step backwards must not put a return before its own call.
                let ret = Some(completion.time_ns.max(call));
                ops.push(RegOp { source: source.clone(), kind, value, call, ret });
            }
            (Kind::Write, outcome) => {
                let value = values.intern(&source.invoke.value);
                let ret = source.end_ns().map(|end| end.max(call));
                let op = RegOp { source: source.clone(), kind, value, call, ret };
                if outcome == OpType::Ok {
                    ops.push(op);
                } else {
                    open_writes.push(op);
                }
            }
        }
    }
    let read: HashSet<u32> = ops.iter().filter(|o| o.kind == Kind::Read).map(|o| o.value).collect();
    for op in open_writes {
        if read.contains(&op.value) {
            ops.push(op);
        } else {
            unread_writes += 1;
        }
    }
    ops.sort_by_key(|o| (o.call, o.source.invoke.index));

    let outcome = search(&ops, limits, started);
    let mut evidence = json!({
        "validity": outcome.validity,
        "ops": all.len(),
        "checked": ops.len(),
        "dropped": {"fail": failed, "info_reads": info_reads, "unread_info_writes": unread_writes},
        "steps": outcome.steps,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    let summary = match outcome.validity {
        Validity::Valid => format!("key {key}: {} ops linearizable", all.len()),
        Validity::Unknown => {
            evidence["linearized_count"] = json!(outcome.best.len());
            format!("key {key}: undecided within the limit")
        }
        Validity::Invalid => {
            let report = explain(key, all, &ops, &values, &outcome);
            merge(&mut evidence, report.evidence);
            report.summary
        }
    };
    KeyResult { validity: outcome.validity, summary, evidence }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

struct Report {
    summary: String,
    evidence: Value,
}

/// Describes where the deepest search path got stuck: the register after the longest linearizable prefix, the
/// operation whose return came before it could be linearized, and the others concurrent with it that were tried.
fn explain(key: &str, all: &[Completed<'_>], ops: &[RegOp<'_>], values: &Values, outcome: &Outcome) -> Report {
    let mut linearized = vec![false; ops.len()];
    for &i in &outcome.best {
        linearized[i] = true;
    }
    let set_by = outcome.best.iter().rev().map(|&i| &ops[i]).find(|o| o.kind == Kind::Write);
    let held = set_by.map_or(0, |o| o.value);
    let register = values.get(held);
    // The search only gives up once some ok operation's return is reached, so there is one.
    let blocked = (0..ops.len())
        .filter(|&i| !linearized[i])
        .filter_map(|i| ops[i].ret.map(|ret| (ret, ops[i].call, i)))
        .min()
        .map(|(_, _, i)| i);
    let Some(blocked) = blocked else {
        let summary = format!("key {key}: not linearizable");
        return Report { summary, evidence: json!({"linearized_count": outcome.best.len()}) };
    };
    let deadline = ops[blocked].ret.unwrap_or(u64::MAX);
    let stuck: Vec<usize> = (0..ops.len()).filter(|&i| !linearized[i] && ops[i].call <= deadline).collect();

    let op = &ops[blocked];
    let value = values.get(op.value);
    let who = format!("process {} (op {})", op.source.invoke.process, op.source.invoke.index);
    let reason = match op.kind {
        Kind::Read if op.value != held => {
            let writers: Vec<&Completed<'_>> =
                all.iter().filter(|c| Kind::of(c.invoke) == Some(Kind::Write) && &c.invoke.value == value).collect();
            let failed: Vec<usize> =
                writers.iter().filter(|c| c.outcome() == OpType::Fail).map(|c| c.invoke.index).collect();
            if value.is_null() {
                format!("read by {who} returned null after a write had taken effect: a lost write or stale read")
            } else if writers.is_empty() {
                format!("read by {who} returned {value}, a value never written to this key")
            } else if failed.len() == writers.len() {
                format!("read by {who} returned {value}, written only by failed write(s) {failed:?}")
            } else {
                format!(
                    "read by {who} returned {value}, but no order of the operations before it leaves that value in the \
                     register (it held {register} after {} linearized ops): a stale read or lost write",
                    outcome.best.len()
                )
            }
        }
        Kind::Read => format!(
            "read by {who} returned {value}, but every order of the operations concurrent with it leads to a \
             contradiction later"
        ),
        Kind::Write => format!(
            "write of {value} by {who}: every point at which it could have taken effect leads to a contradiction later"
        ),
    };
    let tail_from = outcome.best.len().saturating_sub(EVIDENCE_OPS);
    let evidence = json!({
        "reason": reason,
        "linearized_count": outcome.best.len(),
        "linearized_tail": outcome.best[tail_from..].iter().map(|&i| describe(&ops[i], values)).collect::<Vec<_>>(),
        "register": register,
        "register_set_by": set_by.map(|o| describe(o, values)),
        "not_linearizable": describe(op, values),
        "concurrent_unlinearized": stuck.iter().take(EVIDENCE_OPS).map(|&i| describe(&ops[i], values)).collect::<Vec<_>>(),
        "concurrent_unlinearized_count": stuck.len(),
    });
    Report { summary: format!("key {key}: {reason}"), evidence }
}

fn describe(op: &RegOp<'_>, values: &Values) -> Value {
    let outcome = match op.ret {
        Some(_) => "ok",
        None => "info",
    };
    json!({
        "index": op.source.invoke.index,
        "completion_index": op.source.completion.map(|c| c.index),
        "process": op.source.invoke.process,
        "f": op.source.invoke.f,
        "value": values.get(op.value),
        "outcome": outcome,
        "invoke_ns": op.call,
        "complete_ns": op.ret,
    })
}

struct Outcome {
    validity: Validity,
    steps: u64,
    /// The longest linearizable prefix found (indices into the ops), in linearization order.
    best: Vec<usize>,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The call and return events as a doubly linked list (node 0 is the head sentinel). Lifting an operation unlinks
/// both its events; unlifting in the reverse order restores them exactly (dancing links), which is what makes
/// backtracking O(1).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    op: Vec<usize>,
    is_call: Vec<bool>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
}

impl Events {
    fn new(ops: &[RegOp<'_>]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            // An open write has no return: its deadline is +infinity.
            if let Some(ret) = op.ret {
                events.push((ret, true, i));
            }
        }
        // At equal times calls sort first (`false < true`): touching operations are treated as concurrent, which
        // can only admit more orders, never reject a valid history.
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut list = Self {
            next: vec![NIL; nodes],
            prev: vec![NIL; nodes],
            op: vec![0; nodes],
            is_call: vec![false; nodes],
            call_node: vec![NIL; ops.len()],
            ret_node: vec![NIL; ops.len()],
        };
        for (i, &(_, is_return, op)) in events.iter().enumerate() {
            let node = i + 1;
            list.prev[node] = i;
            list.next[i] = node;
            list.op[node] = op;
            list.is_call[node] = !is_return;
            if is_return {
                list.ret_node[op] = node;
            } else {
                list.call_node[op] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if self.ret_node[op] != NIL {
            self.unlink(self.ret_node[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ret_node[op] != NIL {
            self.relink(self.ret_node[op]);
        }
        self.relink(self.call_node[op]);
    }
}

/// The configurations already explored: which operations are linearized, and the register's value. Keyed by an
/// incrementally maintained Zobrist hash so a lookup does not rehash the bitset; the bitsets themselves are kept to
/// rule out collisions, since a false hit would prune a path that might have succeeded.
#[derive(Default)]
struct Seen {
    map: HashMap<u64, Vec<Configuration>>,
}

/// Which operations are linearized (a bitset over the key's operations), and the model's state after them.
type Configuration = (Box<[u64]>, State);

impl Seen {
    /// Records the configuration; false if it was already there.
    fn insert(&mut self, hash: u64, bits: &[u64], state: State) -> bool {
        let bucket = self.map.entry(hash).or_default();
        if bucket.iter().any(|(b, s)| *s == state && **b == *bits) {
            return false;
        }
        bucket.push((bits.into(), state));
        true
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer: distinct inputs give well-spread, fixed hashes (no per-run randomness).
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The model's state: the interned value the register holds, with [`UNOBSERVED`] set while the write that put it
/// there is an open one that must be read next (see [`search`]).
type State = u32;

const UNOBSERVED: State = 1 << 31;

/// Wing & Gong / Lowe over the register model, refined for open writes: one may be linearized only if a read of
/// its value comes right after it. That loses no linearization: an open write followed by another write, or by
/// nothing, was overwritten unseen and can be removed, since it may never have happened. Without the refinement,
/// k open writes whose values are read later let the search try every subset of them before each read (2^k
/// configurations; 18 of them took over 5 s); with it each open write is tried only where a read needs it.
fn search(ops: &[RegOp<'_>], limits: Limits, started: Instant) -> Outcome {
    let mut events = Events::new(ops);
    let zobrist: Vec<u64> = (0..ops.len() as u64).map(mix).collect();
    let state_salt = |state: State| mix(u64::from(state) ^ 0xa5a5_a5a5_0000_0000);
    let mut bits = vec![0u64; ops.len().div_ceil(64)];
    let mut hash = 0u64;
    let mut seen = Seen::default();

    let must_linearize = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut linearized_ok = 0;
    // Each linearized operation with the register's value before it, to undo.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = 0;
    // The deepest path so far; `common` is how much of it the stack still shares, so that keeping it up to date
    // costs no more than the pushes themselves.
    let mut best: Vec<usize> = Vec::new();
    let mut common = 0usize;

    let mut steps = 0u64;
    let mut entry = events.next[HEAD];
    let validity = loop {
        // Open writes may never take effect: done once every ok operation is placed.
        if linearized_ok == must_linearize {
            best = stack.iter().map(|&(op, _)| op).collect();
            break Validity::Valid;
        }
        steps += 1;
        if steps > limits.steps || (steps % 1024 == 1 && started.elapsed() >= limits.time) {
            break Validity::Unknown;
        }
        if entry != NIL && events.is_call[entry] {
            let op = events.op[entry];
            let o = &ops[op];
            let after = match (o.kind, o.ret) {
                _ if state & UNOBSERVED != 0 && o.kind == Kind::Write => None,
                (Kind::Write, Some(_)) => Some(o.value),
                (Kind::Write, None) => Some(o.value | UNOBSERVED),
                (Kind::Read, _) => (o.value == state & !UNOBSERVED).then_some(o.value),
            };
            if let Some(after) = after {
                bits[op / 64] |= 1 << (op % 64);
                hash ^= zobrist[op];
                if seen.insert(hash ^ state_salt(after), &bits, after) {
                    stack.push((op, state));
                    state = after;
                    events.lift(op);
                    if o.ret.is_some() {
                        linearized_ok += 1;
                    }
                    if stack.len() > best.len() {
                        best.truncate(common);
                        best.extend(stack[common..].iter().map(|&(op, _)| op));
                        common = stack.len();
                    }
                    entry = events.next[HEAD];
                    continue;
                }
                bits[op / 64] &= !(1 << (op % 64));
                hash ^= zobrist[op];
            }
            entry = events.next[entry];
        } else {
            // A return (or the end of the list) before its operation was placed: undo the last choice.
            let Some((op, before)) = stack.pop() else { break Validity::Invalid };
            common = common.min(stack.len());
            state = before;
            bits[op / 64] &= !(1 << (op % 64));
            hash ^= zobrist[op];
            events.unlift(op);
            if ops[op].ret.is_some() {
                linearized_ok -= 1;
            }
            entry = events.next[events.call_node[op]];
        }
    };
    // An open write at the end of the path was never observed: as if it never happened.
    while best.last().is_some_and(|&op| ops[op].ret.is_none()) {
        best.pop();
    }
    Outcome { validity, steps, best }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;
    use proptest::prelude::*;
    use serde_json::json;

    const K: Option<&str> = Some("r");
    const LIMIT: Duration = Duration::from_secs(10);

    fn write(b: &mut Builder, p: u64, v: i64) -> &mut Builder {
        b.invoke(p, "write", K, json!(v)).complete(p, OpType::Ok, json!(v))
    }

    fn read(b: &mut Builder, p: u64, v: Option<i64>) -> &mut Builder {
        b.invoke(p, "read", K, json!(null)).complete(p, OpType::Ok, json!(v))
    }

    fn key_evidence<'a>(v: &'a Verdict, key: &str) -> &'a Value {
        &v.evidence["keys"][key]
    }

    #[test]
    fn sequential_history_is_valid() {
        let mut b = Builder::new();
        read(&mut b, 1, None);
        write(&mut b, 1, 1);
        read(&mut b, 2, Some(1));
        write(&mut b, 2, 2);
        read(&mut b, 1, Some(2));
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        assert_eq!(v.summary, "5 ops on 1 key linearizable");
        assert_eq!(key_evidence(&v, "r")["ops"], 5);
    }

    #[test]
    fn overlapping_write_and_read_may_be_ordered_either_way() {
        for seen in [None, Some(1)] {
            let history = Builder::new()
                .invoke(1, "write", K, json!(1))
                .invoke(2, "read", K, json!(null))
                .complete(2, OpType::Ok, json!(seen))
                .complete(1, OpType::Ok, json!(1))
                .build();
            let v = check(&history, LIMIT);
            assert_eq!(v.validity, Validity::Valid, "read {seen:?}: {v:?}");
        }
        // Two concurrent writes, then reads that agree on the later one of them.
        let mut b = Builder::new();
        b.invoke(1, "write", K, json!(1)).invoke(2, "write", K, json!(2));
        b.complete(2, OpType::Ok, json!(2)).complete(1, OpType::Ok, json!(1));
        read(&mut b, 3, Some(2));
        read(&mut b, 4, Some(2));
        assert_eq!(check(&b.build(), LIMIT).validity, Validity::Valid);
    }

    #[test]
    fn stale_read_is_invalid() {
        let mut b = Builder::new();
        write(&mut b, 1, 1);
        write(&mut b, 2, 2);
        read(&mut b, 3, Some(1));
        let history = b.build();
        let v = check(&history, LIMIT);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        let e = key_evidence(&v, "r");
        assert_eq!(e["register"], 2);
        assert_eq!(e["linearized_count"], 2);
        assert_eq!(e["not_linearizable"]["index"], 4, "the read: {e:#}");
        assert_eq!(e["not_linearizable"]["value"], 1);
        assert_eq!(e["register_set_by"]["index"], 2, "the write of 2");
        assert!(v.summary.contains("key r: read by process 3 (op 4) returned 1"), "{}", v.summary);
        assert_eq!(v.evidence["invalid_keys"], json!(["r"]));
    }

    #[test]
    fn non_monotonic_reads_around_a_concurrent_write_are_invalid() {
        let mut b = Builder::new();
        write(&mut b, 1, 1);
        b.invoke(2, "write", K, json!(2));
        read(&mut b, 3, Some(2));
        read(&mut b, 4, Some(1));
        b.complete(2, OpType::Ok, json!(2));
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert_eq!(key_evidence(&v, "r")["not_linearizable"]["process"], 4);
    }

    #[test]
    fn lost_write_is_invalid() {
        let mut b = Builder::new();
        write(&mut b, 1, 1);
        read(&mut b, 2, None);
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.summary.contains("lost write"), "{}", v.summary);
        assert_eq!(key_evidence(&v, "r")["register_set_by"]["value"], 1);
    }

    #[test]
    fn read_of_a_value_never_written_is_invalid() {
        let mut b = Builder::new();
        write(&mut b, 1, 1);
        read(&mut b, 2, Some(7));
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.summary.contains("returned 7, a value never written"), "{}", v.summary);
    }

    #[test]
    fn info_write_read_much_later_is_valid() {
        let mut b = Builder::new();
        write(&mut b, 1, 1);
        b.invoke(2, "write", K, json!(2)).complete(2, OpType::Info, json!(null));
        for p in 3..20 {
            read(&mut b, p, Some(1));
        }
        read(&mut b, 20, Some(2));
        read(&mut b, 21, Some(2));
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        // Once observed, it took effect: reading the older value after that is a violation.
        read(&mut b, 22, Some(1));
        assert_eq!(check(&b.build(), LIMIT).validity, Validity::Invalid);
    }

    #[test]
    fn info_or_open_write_never_read_is_valid() {
        for crash in [Some(OpType::Info), None] {
            let mut b = Builder::new();
            write(&mut b, 1, 1);
            b.invoke(2, "write", K, json!(2));
            if let Some(t) = crash {
                b.complete(2, t, json!(null));
            }
            read(&mut b, 3, Some(1));
            read(&mut b, 4, Some(1));
            let v = check(&b.build(), LIMIT);
            assert_eq!(v.validity, Validity::Valid, "{crash:?}: {v:?}");
            assert_eq!(key_evidence(&v, "r")["dropped"]["unread_info_writes"], 1);
        }
    }

    #[test]
    fn info_read_is_dropped() {
        let mut b = Builder::new();
        write(&mut b, 1, 1);
        b.invoke(2, "read", K, json!(null)).complete(2, OpType::Info, json!(5));
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        assert_eq!(key_evidence(&v, "r")["dropped"]["info_reads"], 1);
    }

    #[test]
    fn read_of_a_failed_write_is_invalid() {
        let mut b = Builder::new();
        write(&mut b, 1, 1);
        b.invoke(2, "write", K, json!(2)).complete(2, OpType::Fail, json!(null));
        read(&mut b, 3, Some(2));
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.summary.contains("written only by failed write(s) [2]"), "{}", v.summary);
    }

    #[test]
    fn one_bad_key_makes_the_history_invalid_and_is_named() {
        let mut b = Builder::new();
        for (p, key) in [(1, "a"), (2, "b"), (3, "c")] {
            b.invoke(p, "write", Some(key), json!(1)).complete(p, OpType::Ok, json!(1));
        }
        // Unrelated operations on other workloads are ignored.
        b.invoke(9, "submit", Some("client-1"), json!(null)).complete(9, OpType::Ok, json!({"job_id": "j"}));
        for (p, key, seen) in [(4, "a", 1), (5, "b", 2), (6, "c", 1)] {
            b.invoke(p, "read", Some(key), json!(null)).complete(p, OpType::Ok, json!(seen));
        }
        let v = check(&b.build(), LIMIT);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.summary.starts_with("key b: "), "{}", v.summary);
        assert_eq!(v.evidence["invalid_keys"], json!(["b"]));
        assert_eq!(v.evidence["ops"], 6);
        assert_eq!(key_evidence(&v, "a")["validity"], "valid");
        assert_eq!(key_evidence(&v, "b")["validity"], "invalid");
    }

    #[test]
    fn exhausted_limits_give_unknown() {
        let history = simulate(
            &Sim { keys: 2, quotas: vec![20; 6], crash_one_in: 0, corrupt_one_in: 0, sticky: false },
            &mut rng(7),
        );
        assert_eq!(check(&history, LIMIT).validity, Validity::Valid);
        let v = check(&history, Duration::ZERO);
        assert_eq!(v.validity, Validity::Unknown, "{v:?}");
        assert_eq!(v.evidence["unknown_keys"], json!(["k0", "k1"]));
        let v = check_with(&history, Limits { time: LIMIT, steps: 10 });
        assert_eq!(v.validity, Validity::Unknown, "{v:?}");
        assert!(v.summary.contains("undecided within the limit"), "{}", v.summary);
    }

    #[test]
    fn empty_history_is_valid() {
        assert_eq!(check(&[], Duration::ZERO).validity, Validity::Valid);
    }

    /// A random concurrent history: `quotas[i]` operations for client slot i (slots are spread over `keys`), each
    /// step advancing one slot: invoke, take effect on the key's register, complete. A pending operation's step
    /// crashes one time in `crash_one_in` (half with an `info` completion, half with none; the slot goes on under a
    /// fresh process, as the harness does), and goes wrong one time in `corrupt_one_in` (a write acknowledged
    /// without taking effect, or a read returning a random value). 0 disables either. A `sticky` run steps the same
    /// slot again two times in three, which leaves fewer operations overlapping (see [`STATERIGHT_BUDGET`]).
    #[derive(Debug, Clone)]
    struct Sim {
        keys: usize,
        quotas: Vec<usize>,
        crash_one_in: u32,
        corrupt_one_in: u32,
        sticky: bool,
    }

    enum Slot {
        Idle,
        Pending { write: Option<i64>, effected: bool, seen: Option<i64> },
    }

    fn one_in(n: u32, next: &mut dyn FnMut() -> u32) -> bool {
        n > 0 && next() % n == 0
    }

    fn simulate(sim: &Sim, next: &mut dyn FnMut() -> u32) -> Vec<Op> {
        let mut registers: Vec<Option<i64>> = vec![None; sim.keys];
        let mut left = sim.quotas.clone();
        let mut slots: Vec<Slot> = sim.quotas.iter().map(|_| Slot::Idle).collect();
        let mut process: Vec<u64> = (0..slots.len() as u64).collect();
        let mut fresh = slots.len() as u64;
        let mut written = 0i64;
        let mut ops: Vec<Op> = Vec::new();
        let mut emit = |process: u64, op_type: OpType, f: &str, key: usize, value: Value| {
            let index = ops.len();
            let time_ns = (index as u64 + 1) * 1_000;
            let key = Some(format!("k{key}"));
            ops.push(Op { index, process, op_type, f: f.into(), key, value, time_ns, node: None, error: None });
        };
        // Few values on tiny histories, so that reads can confuse writes; unique ones otherwise, as the workload does.
        let few_values = sim.keys == 1 && sim.quotas.len() <= 4;
        let mut last = usize::MAX;
        loop {
            let active: Vec<usize> =
                (0..slots.len()).filter(|&i| left[i] > 0 || matches!(slots[i], Slot::Pending { .. })).collect();
            if active.is_empty() {
                break ops;
            }
            let i = if active.contains(&last) && sim.sticky && next() % 3 != 0 {
                last
            } else {
                active[next() as usize % active.len()]
            };
            last = i;
            let (p, key) = (process[i], i % sim.keys);
            match &mut slots[i] {
                Slot::Idle => {
                    left[i] -= 1;
                    let write = if next() % 2 == 0 {
                        written += 1;
                        Some(if few_values { 1 + i64::from(next() % 3) } else { written })
                    } else {
                        None
                    };
                    let (f, value) = match write {
                        Some(v) => ("write", json!(v)),
                        None => ("read", Value::Null),
                    };
                    emit(p, OpType::Invoke, f, key, value);
                    slots[i] = Slot::Pending { write, effected: false, seen: None };
                }
                Slot::Pending { write, effected, seen } => {
                    let f = if write.is_some() { "write" } else { "read" };
                    if one_in(sim.crash_one_in, next) {
                        if next() % 2 == 0 {
                            emit(p, OpType::Info, f, key, Value::Null);
                        }
                        process[i] = fresh;
                        fresh += 1;
                        slots[i] = Slot::Idle;
                    } else if one_in(sim.corrupt_one_in, next) {
                        let value = match write {
                            Some(_) => json!(write),
                            None => json!(match next() % 4 {
                                0 => None,
                                n => Some(i64::from(n)),
                            }),
                        };
                        // A lost write when it has not taken effect yet; a corrupt read.
                        emit(p, OpType::Ok, f, key, value);
                        slots[i] = Slot::Idle;
                    } else if !*effected {
                        match write {
                            Some(v) => registers[key] = Some(*v),
                            None => *seen = registers[key],
                        }
                        *effected = true;
                    } else {
                        let value = if write.is_some() { json!(write) } else { json!(seen) };
                        emit(p, OpType::Ok, f, key, value);
                        slots[i] = Slot::Idle;
                    }
                }
            }
        }
    }

    fn rng(seed: u64) -> impl FnMut() -> u32 {
        let mut x = seed;
        move || {
            x = x.wrapping_add(1);
            (mix(x) >> 32) as u32
        }
    }

    fn tiny_sim() -> impl Strategy<Value = (Sim, Vec<u32>)> {
        let sim = prop::collection::vec(2usize..=8, 2..=4).prop_map(|quotas| Sim {
            keys: 1,
            quotas,
            crash_one_in: 24,
            corrupt_one_in: 24,
            sticky: true,
        });
        (sim, prop::collection::vec(any::<u32>(), 256))
    }

    fn run_tiny(sim: &Sim, choices: &[u32]) -> Vec<Op> {
        let mut choices = choices.iter().copied();
        simulate(sim, &mut || choices.next().unwrap_or(0))
    }

    /// stateright's register, counting the steps of its search: its tester has no memoization and no limit, and
    /// a few generated histories (invalid ones with four busy processes) would take it minutes. Past the budget
    /// every step is refused, which ends its search quickly, and the answer is discarded.
    #[derive(Clone, Debug)]
    struct Budgeted {
        register: stateright::semantics::register::Register<Option<i64>>,
        steps: std::rc::Rc<std::cell::Cell<u64>>,
    }

    const STATERIGHT_BUDGET: u64 = 20_000;

    impl Budgeted {
        fn spend(&self) -> bool {
            self.steps.set(self.steps.get() + 1);
            self.steps.get() <= STATERIGHT_BUDGET
        }
    }

    impl stateright::semantics::SequentialSpec for Budgeted {
        type Op = stateright::semantics::register::RegisterOp<Option<i64>>;
        type Ret = stateright::semantics::register::RegisterRet<Option<i64>>;

        fn invoke(&mut self, op: &Self::Op) -> Self::Ret {
            self.spend();
            self.register.invoke(op)
        }

        fn is_valid_step(&mut self, op: &Self::Op, ret: &Self::Ret) -> bool {
            self.spend() && self.register.is_valid_step(op, ret)
        }
    }

    /// `stateright`'s verdict on a single-key history, `None` if it ran out of budget. An `info` or open invocation
    /// stays in flight, which its tester may linearize at any point after the invoke, or not at all: the meaning
    /// of `info` here.
    fn stateright_linearizable(history: &[Op]) -> Option<bool> {
        use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
        use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
        let steps = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut tester = LinearizabilityTester::new(Budgeted { register: Register(None), steps: steps.clone() });
        for op in history {
            let write = op.f == "write";
            match op.op_type {
                OpType::Invoke => {
                    let call = if write { RegisterOp::Write(op.value.as_i64()) } else { RegisterOp::Read };
                    tester.on_invoke(op.process, call).expect("well-formed history");
                }
                OpType::Ok => {
                    let ret = if write { RegisterRet::WriteOk } else { RegisterRet::ReadOk(op.value.as_i64()) };
                    tester.on_return(op.process, ret).expect("well-formed history");
                }
                OpType::Info => {}
                OpType::Fail => unreachable!("stateright has no notion of failure; none are generated"),
            }
        }
        let consistent = tester.is_consistent();
        (steps.get() <= STATERIGHT_BUDGET).then_some(consistent)
    }

    /// Both testers on random small histories. Run by hand rather than with `proptest!` so that the share of
    /// cases actually compared, and of each verdict, can be asserted afterwards: a cross-check that quietly skipped
    /// everything, or only ever saw valid histories, would prove nothing.
    #[test]
    fn agrees_with_stateright() {
        use proptest::test_runner::{Config, TestRunner};
        use std::cell::Cell;
        let cases = 500;
        let (valid, invalid, skipped, with_info) = (Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0));
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&tiny_sim(), |(sim, choices)| {
            let history = run_tiny(&sim, &choices);
            let ours = check(&history, LIMIT);
            prop_assert_ne!(ours.validity, Validity::Unknown);
            let Some(theirs) = stateright_linearizable(&history) else {
                skipped.set(skipped.get() + 1);
                return Ok(());
            };
            prop_assert_eq!(ours.validity == Validity::Valid, theirs, "{:#?}\n{:#}", history, ours.evidence);
            let counter = if theirs { &valid } else { &invalid };
            counter.set(counter.get() + 1);
            let info = pair(&history).iter().any(|c| c.outcome() == OpType::Info);
            with_info.set(with_info.get() + usize::from(info));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let (valid, invalid, skipped, with_info) = (valid.get(), invalid.get(), skipped.get(), with_info.get());
        let cases = cases as usize;
        assert!(skipped <= cases / 20, "stateright ran out of budget on {skipped} of {cases}");
        assert!(valid >= cases / 5 && invalid >= cases / 5, "{valid} valid, {invalid} invalid of {cases}");
        assert!(with_info >= cases / 5, "{with_info} of {cases} with info or open operations");
    }

    /// `cargo test -p jepsen --release --lib -- --ignored bench_10k_ops --nocapture`
    #[test]
    #[ignore]
    fn bench_10k_ops() {
        let runs =
            [(10, 5, 0, 0), (10, 5, 200, 0), (50, 4, 200, 0), (1, 5, 200, 0), (10, 10, 20, 0), (10, 5, 200, 2_000)];
        for (keys, procs_per_key, crash_one_in, corrupt_one_in) in runs {
            let quota = 10_000 / (keys * procs_per_key);
            let quotas = vec![quota; keys * procs_per_key];
            let sim = Sim { keys, quotas, crash_one_in, corrupt_one_in, sticky: false };
            let history = simulate(&sim, &mut rng(42));
            let started = Instant::now();
            let v = check(&history, Duration::from_secs(60));
            let total = started.elapsed();
            let per_key: Vec<&Value> = v.evidence["keys"].as_object().unwrap().values().collect();
            let slowest = per_key.iter().map(|k| k["elapsed_ms"].as_f64().unwrap()).fold(0.0, f64::max);
            let open_writes =
                pair(&history).iter().filter(|c| c.invoke.f == "write" && c.outcome() == OpType::Info).count();
            let unread: u64 = per_key.iter().map(|k| k["dropped"]["unread_info_writes"].as_u64().unwrap()).sum();
            println!(
                "{} ops, {keys} keys x {procs_per_key} processes, crash 1/{crash_one_in}, corrupt 1/{corrupt_one_in}: \
                 {} open writes ({} read); {:?} in {total:?}, slowest key {slowest:.2} ms",
                v.evidence["ops"],
                open_writes,
                open_writes as u64 - unread,
                v.validity,
            );
            if corrupt_one_in == 0 {
                assert_eq!(v.validity, Validity::Valid, "{}", v.summary);
            } else {
                println!("  {}", v.summary);
            }
        }
    }

    /// The cases the module doc discusses. `k` writes ending `info`, read one by one much later in the reverse of
    /// their invoke order: exponential in k without the refinement for open writes, about k^2 steps with it. And
    /// the one that remains exponential: `k` concurrent acknowledged writes, then a read of a value none of them
    /// wrote, which only an exhaustive search over their orders can reject.
    /// `cargo test -p jepsen --release --lib -- --ignored bench_pathological --nocapture`
    #[test]
    #[ignore]
    fn bench_pathological() {
        for k in [8, 16, 20, 100] {
            let mut b = Builder::new();
            for p in 0..k {
                b.invoke(p, "write", K, json!(p)).complete(p, OpType::Info, json!(null));
            }
            for p in (0..k).rev() {
                read(&mut b, 1_000 + p, Some(p as i64));
            }
            let started = Instant::now();
            let v = check(&b.build(), Duration::from_secs(5));
            let steps = &key_evidence(&v, "r")["steps"];
            println!("{k} open writes: {:?} after {steps} steps in {:?}", v.validity, started.elapsed());
            assert_eq!(v.validity, Validity::Valid);
        }
        for k in [8, 12, 14, 16, 18, 20] {
            let mut b = Builder::new();
            for p in 0..k {
                b.invoke(p, "write", K, json!(p));
            }
            for p in 0..k {
                b.complete(p, OpType::Ok, json!(p));
            }
            read(&mut b, 1_000, Some(-1));
            let started = Instant::now();
            let v = check(&b.build(), Duration::from_secs(5));
            let steps = &key_evidence(&v, "r")["steps"];
            println!(
                "{k} concurrent writes, bad read: {:?} after {steps} steps in {:?}",
                v.validity,
                started.elapsed()
            );
        }
    }
}
