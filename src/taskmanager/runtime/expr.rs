//! The expression language of `map` and `filter`: [Rhai](https://rhai.rs) expressions over a record's fields.
//!
//! Every field of the input record is a variable: JSON integers become Rhai `INT` (i64; integers above `i64::MAX`
//! become floats), other numbers `FLOAT` (f64), strings strings, booleans booleans, `null` the unit `()`, arrays
//! arrays and objects object maps (`user.name`). Results convert back the same way; a float that is not finite, or a
//! value with no JSON form (a range, a function pointer, ...), is an error.
//!
//! Invariants:
//! * Expressions are compiled once, at deployment ([`ExprEngine::compile`]); a syntax error names the expression.
//! * Evaluation is sandboxed and bounded: only expressions are accepted (no statements, no assignment, no loops,
//!   no `eval`), and the engine caps operations, call depth, string, array and map sizes, so a hostile expression
//!   fails its subtask instead of hanging or exhausting a TaskManager.
//! * Arithmetic is checked: integer overflow and division by zero are errors, never wrapped values.
//!
//! Why Rhai: it is maintained, permissively licensed (MIT or Apache-2.0) and has an expressions-only mode.
//! `evalexpr` would fit as well, but from version 12 on it is AGPL-3.0-only, which this Apache-2.0 crate cannot
//! link; its MIT-licensed 11.x line is no longer developed.
//!
//! Caveat: Rhai compares values of different types with `==` as unequal (`1 == 1.0` is false), but converts
//! between integers and floats for arithmetic and ordering comparisons.

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Scope, AST};
use serde_json::{Map, Number, Value};

use super::record::{describe_value, Record};

/// Upper bound on the operations one evaluation may perform.
const MAX_OPERATIONS: u64 = 100_000;
/// Upper bound on the length of a string an expression builds, in bytes.
const MAX_STRING_BYTES: usize = 1 << 20;
/// Upper bound on the size of an array or map an expression builds.
const MAX_COLLECTION_ITEMS: usize = 10_000;
/// Deepest nesting of JSON values converted into or out of the engine.
const MAX_VALUE_DEPTH: usize = 64;

/// Why an expression did not compile or evaluate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// The text is not a valid expression.
    #[error("`{expr}` is not a valid expression: {reason}")]
    Syntax {
        /// The expression as written.
        expr: String,
        /// The parser's message, with line and position.
        reason: String,
    },
    /// The expression reads a field the record does not have.
    #[error("expression `{expr}` uses field `{field}`, which the record does not have")]
    MissingField {
        /// The expression as written.
        expr: String,
        /// The missing field.
        field: String,
    },
    /// Evaluation failed (type mismatch, overflow, division by zero, a limit exceeded, ...).
    #[error("expression `{expr}` failed: {reason}")]
    Eval {
        /// The expression as written.
        expr: String,
        /// The engine's message.
        reason: String,
    },
    /// A filter expression produced something other than a boolean.
    #[error("filter expression `{expr}` returned {found}, not a boolean")]
    NotBoolean {
        /// The expression as written.
        expr: String,
        /// The value it returned, described.
        found: String,
    },
    /// The result has no JSON form.
    #[error("expression `{expr}` returned {found}, which has no JSON form")]
    Unsupported {
        /// The expression as written.
        expr: String,
        /// The value it returned, described.
        found: String,
    },
    /// A record field holds a value nested deeper than the engine accepts.
    #[error("field `{field}` is nested deeper than {MAX_VALUE_DEPTH} levels")]
    TooDeep {
        /// The field.
        field: String,
    },
}

/// A compiled expression and its source text (for error messages).
#[derive(Debug, Clone)]
pub struct Expression {
    /// The expression as written.
    text: String,
    /// The compiled form.
    ast: AST,
}

impl Expression {
    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The configured, sandboxed engine. One per deployment, shared by its subtasks (it is `Send + Sync`).
pub struct ExprEngine {
    /// The Rhai engine with limits applied.
    engine: Engine,
}

impl std::fmt::Debug for ExprEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExprEngine")
    }
}

impl Default for ExprEngine {
    fn default() -> Self {
        Self::new()
    }
}

/// The variables of one record, built once per record and shared by all expressions evaluated on it.
pub struct Bindings {
    /// The Rhai scope holding one constant per field.
    scope: Scope<'static>,
}

impl ExprEngine {
    /// A sandboxed engine: expressions only, no looping, no `eval`, bounded work and sizes.
    pub fn new() -> Self {
        let mut engine = Engine::new();
        engine
            .set_allow_looping(false)
            .set_max_operations(MAX_OPERATIONS)
            .set_max_call_levels(16)
            .set_max_expr_depths(64, 32)
            .set_max_string_size(MAX_STRING_BYTES)
            .set_max_array_size(MAX_COLLECTION_ITEMS)
            .set_max_map_size(MAX_COLLECTION_ITEMS);
        engine.disable_symbol("eval");
        // `print` and `debug` would write to the TaskManager's stdout; expressions have no business doing that.
        engine.on_print(|_| {});
        engine.on_debug(|_, _, _| {});
        Self { engine }
    }

    /// A shared engine, as subtasks hold it.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// Compiles `text`; only a single expression is accepted.
    pub fn compile(&self, text: &str) -> Result<Expression, ExprError> {
        let ast = self
            .engine
            .compile_expression(text)
            .map_err(|e| ExprError::Syntax { expr: text.to_string(), reason: e.to_string() })?;
        Ok(Expression { text: text.to_string(), ast })
    }

    /// The variables of `record`, for [`ExprEngine::eval`].
    pub fn bind(&self, record: &Record) -> Result<Bindings, ExprError> {
        let mut scope = Scope::with_capacity(record.len());
        for (name, value) in record {
            let value = to_dynamic(value, 0).ok_or_else(|| ExprError::TooDeep { field: name.clone() })?;
            scope.push_constant_dynamic(name.as_str(), value);
        }
        Ok(Bindings { scope })
    }

    /// Evaluates `expr` with the record's variables and converts the result to JSON.
    pub fn eval(&self, expr: &Expression, bindings: &mut Bindings) -> Result<Value, ExprError> {
        let result = self.eval_dynamic(expr, bindings)?;
        from_dynamic(&result, 0)
            .ok_or_else(|| ExprError::Unsupported { expr: expr.text.clone(), found: describe_dynamic(&result) })
    }

    /// Evaluates a boolean expression (a filter's predicate).
    pub fn eval_bool(&self, expr: &Expression, bindings: &mut Bindings) -> Result<bool, ExprError> {
        let result = self.eval_dynamic(expr, bindings)?;
        result
            .as_bool()
            .map_err(|_| ExprError::NotBoolean { expr: expr.text.clone(), found: describe_dynamic(&result) })
    }

    /// Evaluates `expr`, mapping the engine's errors to [`ExprError`].
    fn eval_dynamic(&self, expr: &Expression, bindings: &mut Bindings) -> Result<Dynamic, ExprError> {
        self.engine.eval_ast_with_scope::<Dynamic>(&mut bindings.scope, &expr.ast).map_err(|e| match *e {
            EvalAltResult::ErrorVariableNotFound(field, _) => {
                ExprError::MissingField { expr: expr.text.clone(), field }
            }
            other => ExprError::Eval { expr: expr.text.clone(), reason: other.to_string() },
        })
    }
}

/// JSON to Rhai; `None` when nested deeper than [`MAX_VALUE_DEPTH`].
fn to_dynamic(value: &Value, depth: usize) -> Option<Dynamic> {
    if depth > MAX_VALUE_DEPTH {
        return None;
    }
    Some(match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => {
            Dynamic::from_array(items.iter().map(|v| to_dynamic(v, depth + 1)).collect::<Option<Vec<_>>>()?)
        }
        Value::Object(map) => {
            let mut out = rhai::Map::new();
            for (k, v) in map {
                out.insert(k.as_str().into(), to_dynamic(v, depth + 1)?);
            }
            Dynamic::from_map(out)
        }
    })
}

/// Rhai to JSON; `None` for values with no JSON form (non-finite floats, ranges, function pointers, ...).
fn from_dynamic(value: &Dynamic, depth: usize) -> Option<Value> {
    if depth > MAX_VALUE_DEPTH {
        return None;
    }
    if value.is_unit() {
        return Some(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Some(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Some(Value::Number(i.into()));
    }
    if let Ok(f) = value.as_float() {
        return Number::from_f64(f).map(Value::Number);
    }
    if let Ok(c) = value.as_char() {
        return Some(Value::String(c.to_string()));
    }
    if value.is_string() {
        return value.clone().into_string().ok().map(Value::String);
    }
    if value.is_array() {
        let items = value.clone().into_array().ok()?;
        return items.iter().map(|v| from_dynamic(v, depth + 1)).collect::<Option<Vec<_>>>().map(Value::Array);
    }
    if value.is_map() {
        let map = value.clone().try_cast::<rhai::Map>()?;
        let mut out = Map::new();
        for (k, v) in &map {
            out.insert(k.to_string(), from_dynamic(v, depth + 1)?);
        }
        return Some(Value::Object(out));
    }
    None
}

/// A short description of an engine value for error messages: its type and, for scalars, its value.
fn describe_dynamic(value: &Dynamic) -> String {
    match from_dynamic(value, 0) {
        Some(json) => describe_value(&json),
        None => format!("a value of type {}", value.type_name()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(value: Value) -> Record {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test records are objects"),
        }
    }

    fn eval(text: &str, fields: Value) -> Result<Value, ExprError> {
        let engine = ExprEngine::new();
        let expr = engine.compile(text)?;
        let mut bindings = engine.bind(&record(fields))?;
        engine.eval(&expr, &mut bindings)
    }

    #[test]
    fn arithmetic_keeps_integers_and_promotes_to_float() {
        assert_eq!(eval("seq % 7", json!({"seq": 23})).unwrap(), json!(2));
        assert_eq!(eval("a * 2 + b", json!({"a": 3, "b": 4})).unwrap(), json!(10));
        assert_eq!(eval("a / 2", json!({"a": 7})).unwrap(), json!(3));
        assert_eq!(eval("a + 0.5", json!({"a": 1})).unwrap(), json!(1.5));
        assert_eq!(eval("-a", json!({"a": 2.25})).unwrap(), json!(-2.25));
    }

    #[test]
    fn comparisons_and_logic() {
        assert_eq!(eval("a > 2 && b == \"x\"", json!({"a": 3, "b": "x"})).unwrap(), json!(true));
        assert_eq!(eval("a <= 2 || !c", json!({"a": 3, "c": true})).unwrap(), json!(false));
        assert_eq!(eval("a < 1.5", json!({"a": 1})).unwrap(), json!(true));
        assert_eq!(eval("if a > 0 { \"pos\" } else { \"neg\" }", json!({"a": -1})).unwrap(), json!("neg"));
    }

    #[test]
    fn strings_nulls_and_nested_values() {
        assert_eq!(eval("first + \" \" + last", json!({"first": "Ada", "last": "L"})).unwrap(), json!("Ada L"));
        assert_eq!(eval("name.len()", json!({"name": "abcd"})).unwrap(), json!(4));
        assert_eq!(eval("n == ()", json!({"n": null})).unwrap(), json!(true));
        assert_eq!(eval("user.name", json!({"user": {"name": "z"}})).unwrap(), json!("z"));
        assert_eq!(eval("xs[1]", json!({"xs": [1, 2, 3]})).unwrap(), json!(2));
        assert_eq!(eval("#{a: x, b: [x]}", json!({"x": 1})).unwrap(), json!({"a": 1, "b": [1]}));
    }

    #[test]
    fn missing_field_is_named() {
        let err = eval("seq + missing", json!({"seq": 1})).unwrap_err();
        assert_eq!(err, ExprError::MissingField { expr: "seq + missing".into(), field: "missing".into() });
        assert!(err.to_string().contains("`missing`"), "{err}");
    }

    #[test]
    fn runtime_errors_are_errors_not_panics() {
        assert!(matches!(eval("a / 0", json!({"a": 1})), Err(ExprError::Eval { .. })));
        assert!(matches!(eval("a + 1", json!({"a": i64::MAX})), Err(ExprError::Eval { .. })));
        assert!(matches!(eval("a + \"x\" * 2", json!({"a": 1})), Err(ExprError::Eval { .. })));
        assert!(matches!(
            eval("1.0 / 0.0", json!({})),
            Err(ExprError::Unsupported { .. }) | Err(ExprError::Eval { .. })
        ));
    }

    #[test]
    fn statements_loops_and_eval_do_not_compile() {
        let engine = ExprEngine::new();
        for text in ["x = 1", "let y = 1", "loop { }", "while true { }", "eval(\"1\")", "seq +", "fn f() { 1 }"] {
            assert!(matches!(engine.compile(text), Err(ExprError::Syntax { .. })), "{text} compiled");
        }
    }

    #[test]
    fn filter_needs_a_boolean() {
        let engine = ExprEngine::new();
        let expr = engine.compile("seq % 2").unwrap();
        let mut bindings = engine.bind(&record(json!({"seq": 3}))).unwrap();
        let err = engine.eval_bool(&expr, &mut bindings).unwrap_err();
        assert_eq!(err.to_string(), "filter expression `seq % 2` returned the integer 1, not a boolean");
    }
}
