//! Expressions in workflows: jq, through the `jaq` crates.
//!
//! An expression sees `.` (the context object, or the record being mapped)
//! and the variables `$inputs`, `$steps`, `$item`, `$run`, `$state`,
//! `$last_success`, `$page` and `$inputs_given`. Expressions
//! are compiled once, when the workflow loads, so a typo is a load error
//! with a caret, not a failure halfway through a run. What could stop the
//! process is refused there: `env`, `halt`, `halt_error`, `stderr` and
//! `input` are not defined, an expression is at most
//! [`MAX_EXPRESSION_BYTES`] long and its brackets nest at most
//! [`MAX_NESTING`] deep, and jaq's recursive parser runs on a thread of its
//! own with a large stack.
//!
//! Expressions are evaluated by an [`Evaluator`] on threads of their own,
//! never on the async workers, each evaluation under a [`Budget`] of steps,
//! bytes of values produced, outputs and time; cancellation reaches it
//! within microseconds (the `meter` module says how, the `value` module
//! what a step is). Work per record is batched: a job on an evaluation thread
//! handles a page of records, and each record is one evaluation with a
//! budget of its own.
//!
//! Workflow values carry expressions as templates: a string that is exactly
//! `${{ expr }}` becomes the expression's value (any JSON type); a string
//! with `${{ … }}` inside becomes a string with each part's value spliced
//! in. Everything else is a literal.

mod meter;
mod pool;
mod reads;
mod shape;
mod value;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use self::meter::MAX_VALUE_DEPTH;
use self::meter::{Exhausted, Interrupted, thousands};
pub use self::value::Val;
use self::value::{Budgeted, Program, Raw};

/// The variables every expression may use, in the order their values are
/// passed to jaq.
pub const VARIABLES: [&str; 8] =
    ["$inputs", "$steps", "$item", "$run", "$state", "$last_success", "$page", "$inputs_given"];

/// Native filters an expression may not call. `env` reads the process
/// environment, where credentials live. `halt` ends the whole process
/// (jaq's caller exits with its code: one request could stop `weft serve`,
/// and again at every restart that resumes the run); `stderr_empty` writes
/// raw bytes to the process's stderr, forging log lines. `input` and
/// `inputs` are not linked at all.
const DENIED: [&str; 3] = ["env", "halt", "stderr_empty"];

/// Definitions of jaq's standard library built on the denied natives.
const DENIED_DEFS: [&str; 3] = ["halt", "halt_error", "stderr"];

/// Names whose absence deserves more than "unknown function".
const NOT_AVAILABLE: [(&str, &str); 6] = [
    ("halt", "it would stop the whole weft process; fail the step with error(\"…\") instead"),
    ("halt_error", "it would stop the whole weft process; fail the step with error(\"…\") instead"),
    (
        "env",
        "expressions cannot read the environment, where credentials live; pass values as workflow inputs",
    ),
    ("stderr", "expressions cannot write to the process's output; use debug, which logs"),
    ("input", "expressions read `.` and the variables, not a stream of inputs"),
    ("inputs", "expressions read `.` and the variables, not a stream of inputs"),
];

/// The longest expression accepted, in bytes. jaq's parser and compiler
/// recurse for nearly every token; the bound keeps them inside the stack of
/// the compiling thread.
pub const MAX_EXPRESSION_BYTES: usize = 16 << 10;

/// How deep brackets, strings and string interpolations may nest.
pub const MAX_NESTING: usize = 128;

/// The stack of the thread that compiles: in a debug build jaq needs up to
/// ~10 KiB per byte of the worst expression of [`MAX_EXPRESSION_BYTES`].
const COMPILE_STACK: usize = 256 << 20;

/// How much of an expression's text a message quotes.
const QUOTED_CHARS: usize = 120;

type Filter = jaq_core::compile::Filter<jaq_core::Native<Budgeted>>;

/// A compile error, with the byte range of the offending text inside the
/// expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// Where in the expression text.
    pub range: Range<usize>,
    /// What is wrong.
    pub message: String,
}

/// A compiled jq expression. Cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct Expr {
    text: Arc<str>,
    filter: Arc<Filter>,
    /// The only top-level fields of its input it reads, when provable.
    top_fields: Option<Arc<BTreeSet<String>>>,
    /// When the expression is a plain `$variable.field.field`: which
    /// variable and fields, so a template can look it up without an
    /// evaluation thread (see [`Template::render_inline`]).
    var_path: Option<Arc<VarPath>>,
    /// When the expression only picks fields and builds objects of them:
    /// what it builds, so it runs without jaq (see the `shape` module).
    shape: Option<Arc<shape::Shape>>,
}

/// An expression of the form `$variable.field.field…`.
#[derive(Debug)]
struct VarPath {
    /// The variable's place in [`VARIABLES`].
    variable: usize,
    fields: Vec<Raw>,
}

/// The longest string an inline lookup returns; a longer value, and any
/// array or object, is left to an evaluation thread, where its copy is
/// charged to the budget.
const INLINE_STRING_BYTES: usize = 4 << 10;

/// jq's keywords: `.if` and the like are left to jaq to interpret.
const KEYWORDS: [&str; 17] = [
    "and", "or", "not", "as", "def", "if", "then", "elif", "else", "end", "reduce", "foreach",
    "try", "catch", "label", "import", "include",
];

impl VarPath {
    /// The path `text` spells, when it is nothing but a known variable and
    /// plain field names.
    fn parse(text: &str) -> Option<VarPath> {
        let rest = text.trim().strip_prefix('$')?;
        let mut names = rest.split('.');
        let variable_name = names.next()?;
        let variable = VARIABLES.iter().position(|v| v[1..] == *variable_name)?;
        let is_name = |name: &str| {
            name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !KEYWORDS.contains(&name)
        };
        let fields = names.map(|name| is_name(name).then(|| Raw::from(name.to_owned())));
        Some(VarPath { variable, fields: fields.collect::<Option<Vec<_>>>()? })
    }

    /// The value at this path in `scope`, when it is found without jq:
    /// every step is an object or `null` (as jq, `null.a` is `null`) and
    /// the value is a scalar (a string no longer than
    /// [`INLINE_STRING_BYTES`]). `None` leaves the expression to jaq, which
    /// also gives the error for indexing anything else.
    fn lookup(&self, scope: &Scope) -> Option<Value> {
        let mut at = scope.variables()[self.variable].raw();
        for field in &self.fields {
            at = match at {
                Raw::Null => return Some(Value::Null),
                Raw::Obj(map) => map.get(field).unwrap_or(&Raw::Null),
                _ => return None,
            };
        }
        match at {
            Raw::Arr(_) | Raw::Obj(_) => None,
            Raw::TStr(b) | Raw::BStr(b) if b.len() > INLINE_STRING_BYTES => None,
            scalar => Some(Val::scalar(scalar.clone()).to_json()),
        }
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.text)
    }
}

/// The values of the variables for one evaluation, converted to jaq's
/// values once and shared: a for-each over 100k items builds only the
/// `$item` part for each. Cheap to clone.
#[derive(Clone, Default)]
pub struct Scope {
    inputs: Val,
    steps: Val,
    item: Val,
    run: Val,
    state: Val,
    last_success: Val,
    page: Val,
    inputs_given: Val,
    context: Val,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope").field("run", &self.run).finish_non_exhaustive()
    }
}

impl Scope {
    /// A scope with `$inputs`, `$steps` and `$run`, and no item.
    pub fn new(inputs: &Value, steps: &Value, run: &Value) -> Scope {
        let mut scope = Scope {
            inputs: to_val(inputs),
            steps: to_val(steps),
            item: Val::null(),
            run: to_val(run),
            state: Val::null(),
            last_success: Val::null(),
            page: Val::null(),
            inputs_given: Val::null(),
            context: Val::null(),
        };
        scope.context = scope.build_context();
        scope
    }

    /// The same scope with `$item` set.
    pub fn with_item(&self, item: &Value) -> Scope {
        self.with_item_val(to_val(item))
    }

    /// The same scope with `$item` set from a value already converted.
    pub fn with_item_val(&self, item: Val) -> Scope {
        let mut scope = Scope { item, context: Val::null(), ..self.clone() };
        scope.context = scope.build_context();
        scope
    }

    /// The same scope with `$state` (the workflow's state as the run
    /// sees it).
    pub fn with_state(&self, state: &Value) -> Scope {
        Scope { state: to_val(state), ..self.clone() }
    }

    /// The same scope with `$last_success` (the last successful run, or
    /// `null`).
    pub fn with_last_success(&self, last_success: &Value) -> Scope {
        Scope { last_success: to_val(last_success), ..self.clone() }
    }

    /// The same scope with `$inputs_given` (each input's name: whether
    /// the run was given it, rather than its default).
    pub fn with_inputs_given(&self, given: &Value) -> Scope {
        Scope { inputs_given: to_val(given), ..self.clone() }
    }

    /// The same scope with `$page` set (a list step's page, for its
    /// `state` expressions).
    pub fn with_page(&self, page: &Value) -> Scope {
        Scope { page: to_val(page), ..self.clone() }
    }

    fn build_context(&self) -> Val {
        Val::object([
            ("inputs", &self.inputs),
            ("steps", &self.steps),
            ("item", &self.item),
            ("run", &self.run),
        ])
    }

    /// The context object `.` of expressions that do not map a record:
    /// `{inputs, steps, item, run}`.
    pub fn context(&self) -> &Val {
        &self.context
    }

    /// Every variable's value, in the order of [`VARIABLES`].
    fn variables(&self) -> [&Val; VARIABLES.len()] {
        [
            &self.inputs,
            &self.steps,
            &self.item,
            &self.run,
            &self.state,
            &self.last_success,
            &self.page,
            &self.inputs_given,
        ]
    }

    fn vars(&self) -> Vars<Val> {
        Vars::new(self.variables().map(Val::clone))
    }
}

/// Converts a JSON value to jaq's value type.
pub fn to_val(value: &Value) -> Val {
    Val::from_json(value)
}

/// Parses JSON text (a record from a plugin) straight into jaq's value type.
pub fn parse_val(text: &str) -> Result<Val, String> {
    Val::parse(text)
}

/// The text a key is compared by, for a key held as JSON: a string as it
/// is, anything else as JSON text; `null` is no key.
pub fn json_key_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Expr {
    /// Compiles `text`.
    pub fn compile(text: &str) -> Result<Expr, CompileError> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(CompileError {
                range: 0..text.len(),
                message: format!(
                    "the expression is {} bytes; at most {} are allowed (move parts into earlier steps or `def`s)",
                    thousands(text.len() as u64),
                    thousands(MAX_EXPRESSION_BYTES as u64)
                ),
            });
        }
        check_nesting(text)?;
        let whole = || 0..text.len();
        let (filter, top_fields, shape) = std::thread::scope(|scope| {
            let compiling = std::thread::Builder::new()
                .name("weft-expr-compile".into())
                .stack_size(COMPILE_STACK)
                // The reads analysis walks the parse tree as deep as the
                // compiler does, so it needs this thread's stack too.
                .spawn_scoped(scope, || {
                    compile_filter(text)
                        .map(|filter| (filter, reads::top_fields(text), shape::shape(text)))
                })
                .map_err(|e| CompileError {
                    range: whole(),
                    message: format!("cannot start a thread to compile the expression: {e}"),
                })?;
            compiling.join().unwrap_or_else(|_| {
                Err(CompileError {
                    range: whole(),
                    message: "the expression compiler failed; please report this expression".into(),
                })
            })
        })?;
        let top_fields = top_fields.map(Arc::new);
        let var_path = VarPath::parse(text).map(Arc::new);
        let shape = shape.map(Arc::new);
        Ok(Expr { text: text.into(), filter: Arc::new(filter), top_fields, var_path, shape })
    }

    /// The top-level fields of its input (`.NAME`, `{NAME}`) that are all
    /// the expression reads of it, if that can be proven from its text
    /// (see the `reads` module): a record it runs on can then be parsed
    /// with [`Val::parse_fields`] instead of whole.
    pub fn top_fields(&self) -> Option<&BTreeSet<String>> {
        self.top_fields.as_deref()
    }

    /// `text` (a record's JSON) parsed for this expression to run on: only
    /// the fields it reads when those are known, otherwise whole.
    pub fn parse_input(&self, text: &str) -> Result<Val, String> {
        match self.top_fields() {
            Some(fields) => Val::parse_fields(text, fields),
            None => Val::parse(text),
        }
    }

    /// The expression's source text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Runs the expression on `input`: its outputs, lazily. A shape (an
    /// expression that only picks fields) is applied without jaq when it
    /// can be; where it cannot, jaq runs it and says why.
    fn outputs<'a>(
        &'a self,
        input: Val,
        scope: &Scope,
    ) -> impl Iterator<Item = Result<Val, String>> + 'a {
        if let Some(shape) = &self.shape
            && let Some(value) = shape.apply(&input)
        {
            return Outputs::Shaped(Some(Ok(value)));
        }
        let ctx = Ctx::<Budgeted>::new(Program(&self.filter.lut), scope.vars());
        Outputs::Run(
            self.filter.id.run((ctx, input)).map(|result| result.map_err(exception_message)),
        )
    }
}

/// An expression's outputs: a shape's one value, or jaq's run.
enum Outputs<I> {
    Shaped(Option<Result<Val, String>>),
    Run(I),
}

impl<I: Iterator<Item = Result<Val, String>>> Iterator for Outputs<I> {
    type Item = Result<Val, String>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Outputs::Shaped(value) => value.take(),
            Outputs::Run(outputs) => outputs.next(),
        }
    }
}

fn compile_filter(text: &str) -> Result<Filter, CompileError> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .filter(|def| !DENIED_DEFS.contains(&def.name));
    let funs = jaq_core::funs::<Budgeted>()
        .chain(jaq_std::funs::<Budgeted>())
        .filter(|(name, _, _)| !DENIED.contains(name))
        .chain(value::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code: text, path: () })
        .map_err(|errors| load_error(text, errors))?;
    Compiler::default().with_funs(funs).with_global_vars(VARIABLES).compile(modules).map_err(
        |errors| {
            let first = errors.into_iter().flat_map(|(_, e)| e).next();
            match first {
                Some((name, undefined)) => {
                    let what = match undefined {
                        jaq_core::compile::Undefined::Var => format!(
                            "unknown variable {name}; expressions can use {}",
                            VARIABLES.join(", ")
                        ),
                        jaq_core::compile::Undefined::Filter(arity) => {
                            match NOT_AVAILABLE.iter().find(|(denied, _)| *denied == name) {
                                Some((_, why)) => {
                                    format!("{name} is not available in expressions: {why}")
                                }
                                None => format!("unknown function {name}/{arity}"),
                            }
                        }
                        other => format!("undefined {other:?} {name}"),
                    };
                    CompileError { range: subrange(text, name), message: what }
                }
                None => CompileError {
                    range: 0..text.len(),
                    message: "the expression does not compile".into(),
                },
            }
        },
    )
}

/// Refuses brackets, strings and interpolations nested deeper than
/// [`MAX_NESTING`], pointing at the opening that goes too deep. Comments
/// and string contents are skipped as jq's lexer does.
fn check_nesting(text: &str) -> Result<(), CompileError> {
    #[derive(PartialEq)]
    enum Open {
        Bracket,
        Str,
        Interpolation,
    }
    let bytes = text.as_bytes();
    let mut open: Vec<Open> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at = i;
        let pushed = if open.last() == Some(&Open::Str) {
            match bytes[i] {
                b'\\' if bytes.get(i + 1) == Some(&b'(') => {
                    open.push(Open::Interpolation);
                    i += 2;
                    true
                }
                b'\\' => {
                    i += 2;
                    false
                }
                b'"' => {
                    open.pop();
                    i += 1;
                    false
                }
                _ => {
                    i += 1;
                    false
                }
            }
        } else {
            match bytes[i] {
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                    false
                }
                b'"' => {
                    open.push(Open::Str);
                    i += 1;
                    true
                }
                b'(' | b'[' | b'{' => {
                    open.push(Open::Bracket);
                    i += 1;
                    true
                }
                b')' | b']' | b'}' => {
                    open.pop();
                    i += 1;
                    false
                }
                _ => {
                    i += 1;
                    false
                }
            }
        };
        if pushed && open.len() > MAX_NESTING {
            let end =
                (at + 1..=text.len()).find(|&e| text.is_char_boundary(e)).unwrap_or(text.len());
            return Err(CompileError {
                range: at..end,
                message: format!(
                    "brackets, strings and interpolations nest more than {MAX_NESTING} levels deep here"
                ),
            });
        }
    }
    Ok(())
}

/// jaq's exception as a message: its error, cut short where it quotes a
/// large value. A `halt` cannot be compiled; if one were raised all the
/// same it is an error like any other, never an exit.
fn exception_message(exception: jaq_core::Exn<'_, Val>) -> String {
    match exception.get_err() {
        // A string (`error("…")`, or a message of jaq's) reads as itself;
        // any other value as JSON, cut short.
        Ok(error) => {
            let value = error.into_val();
            value.as_text().map_or_else(|| value::message(&value), |text| value::message(&text))
        }
        Err(other) => match other.get_halt() {
            Ok(code) => format!("halt({code}) is not available in expressions"),
            Err(_) => "a `break` or tail call escaped the expression".to_owned(),
        },
    }
}

/// How much one evaluation may use: one `when`, one template, one record
/// through `map` (and a sync's `key`), one `for_each`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Evaluation steps: a term run or an operation on a value.
    pub steps: u64,
    /// Bytes of values produced (strings, array and object slots).
    pub bytes: u64,
    /// Outputs, where all of them are kept (`for_each`, `map`).
    pub outputs: u64,
    /// Wall time.
    pub time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            steps: 10_000_000,
            bytes: 64 << 20,
            outputs: 1_000_000,
            time: Duration::from_secs(10),
        }
    }
}

impl Budget {
    /// The default budget with the step's `timeout`, when it has one, as
    /// the time an evaluation may take.
    pub fn for_timeout(timeout: Option<Duration>) -> Budget {
        let default = Budget::default();
        Budget { time: timeout.unwrap_or(default.time), ..default }
    }

    fn limits(&self) -> meter::Limits {
        meter::Limits { steps: self.steps, bytes: self.bytes, time: self.time }
    }
}

/// Why an evaluation gave no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The expression failed (a jq error); the message names the field and
    /// the expression.
    #[error("{0}")]
    Failed(String),
    /// The expression ran out of its budget (or its stack); the message
    /// names the field, the expression and the budget.
    #[error("{0}")]
    Exhausted(String),
    /// The run was cancelled or the process is shutting down.
    #[error("stopped: the run was cancelled or the process is shutting down")]
    Stopped,
}

impl EvalError {
    /// The message, for a caller that reports errors as text.
    pub fn into_message(self) -> String {
        match self {
            EvalError::Failed(message) | EvalError::Exhausted(message) => message,
            EvalError::Stopped => EvalError::Stopped.to_string(),
        }
    }
}

/// Evaluates expressions on the evaluation threads under a budget, and
/// stops them when any of its stop tokens is cancelled.
#[derive(Debug, Clone, Default)]
pub struct Evaluator {
    budget: Budget,
    stop: Vec<CancellationToken>,
}

/// Sets the cancel flag of a job when the future waiting for it goes away
/// (it was stopped, timed out, or its task was dropped).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn any_cancelled(tokens: &[CancellationToken]) {
    if tokens.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(tokens.iter().map(|token| Box::pin(token.cancelled()))).await;
}

impl Evaluator {
    /// An evaluator with `budget` for each evaluation.
    pub fn new(budget: Budget) -> Self {
        Evaluator { budget, stop: Vec::new() }
    }

    /// Also stops when `token` is cancelled.
    pub fn stopped_by(mut self, token: &CancellationToken) -> Self {
        self.stop.push(token.clone());
        self
    }

    /// The budget of each evaluation.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Runs `job` on an evaluation thread and waits for it. The job
    /// evaluates through its [`Session`]; it may be stopped between any two
    /// steps of an evaluation.
    pub async fn run<T, F>(&self, job: F) -> Result<T, EvalError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> Result<T, String> + Send + 'static,
    {
        let cancel = Arc::new(AtomicBool::new(false));
        let (answer, answered) = tokio::sync::oneshot::channel();
        let budget = self.budget;
        let flag = cancel.clone();
        pool::submit(Box::new(move || {
            let mut session = Session { budget, stopped: false, ran_out: false };
            let result = meter::with_cancel(&flag, || job(&mut session));
            let _ = answer.send(match result {
                Ok(value) => Ok(value),
                Err(_) if session.stopped => Err(EvalError::Stopped),
                Err(message) if session.ran_out => Err(EvalError::Exhausted(message)),
                Err(message) => Err(EvalError::Failed(message)),
            });
        }))
        .map_err(EvalError::Failed)?;
        let _stop = StopOnDrop(cancel);
        tokio::select! {
            biased;
            answer = answered => answer.unwrap_or_else(|_| Err(EvalError::Failed("the expression evaluator stopped before it answered".into()))),
            () = any_cancelled(&self.stop) => Err(EvalError::Stopped),
        }
    }

    /// Whether `expr` holds on the scope's context (its first output is
    /// neither `false` nor `null`; later outputs are never computed).
    pub async fn holds(&self, field: &str, expr: &Expr, scope: &Scope) -> Result<bool, EvalError> {
        let (field, expr, scope) = (field.to_owned(), expr.clone(), scope.clone());
        self.run(move |session| {
            session.evaluate(|ev| ev.holds(&field, &expr, scope.context().clone(), &scope))
        })
        .await
    }

    /// Every output of `expr` on the scope's context.
    pub async fn outputs(
        &self,
        field: &str,
        expr: &Expr,
        scope: &Scope,
    ) -> Result<Vec<Val>, EvalError> {
        let (field, expr, scope) = (field.to_owned(), expr.clone(), scope.clone());
        self.run(move |session| {
            session.evaluate(|ev| ev.all(&field, &expr, scope.context().clone(), &scope))
        })
        .await
    }

    /// The value of `template` in `scope`; `field` names it in messages.
    pub async fn render(
        &self,
        field: &str,
        template: &Template,
        scope: &Scope,
    ) -> Result<Value, EvalError> {
        // A template of plain `$variable.field` lookups (`$page.number`,
        // `$item.id`) needs no evaluation thread: a thread's wake-up costs
        // more than the lookup, once per page or item.
        if let Some(value) = template.root.render_inline(scope) {
            return Ok(value);
        }
        let (field, template, scope) = (field.to_owned(), template.clone(), scope.clone());
        self.run(move |session| session.evaluate(|ev| ev.render(&field, &template, &scope))).await
    }

    /// The first output of `expr` applied to `input` (`null` when there is
    /// none), as JSON.
    pub async fn first(
        &self,
        field: &str,
        expr: &Expr,
        input: Val,
        scope: &Scope,
    ) -> Result<Value, EvalError> {
        let (field, expr, scope) = (field.to_owned(), expr.clone(), scope.clone());
        self.run(move |session| {
            session.evaluate(|ev| {
                Ok(ev.first(&field, &expr, input, &scope)?.map_or(Value::Null, |v| v.to_json()))
            })
        })
        .await
    }
}

/// The evaluations of one job on an evaluation thread.
#[derive(Debug)]
pub struct Session {
    budget: Budget,
    stopped: bool,
    /// The last evaluation ran out of its budget.
    ran_out: bool,
}

impl Session {
    /// [`Session::evaluate`], telling a jq error from running out of the
    /// budget and from being stopped.
    pub fn try_evaluate<'e, T>(
        &mut self,
        f: impl FnOnce(&mut Evaluation<'e>) -> Result<T, String>,
    ) -> Result<T, EvalError> {
        match self.evaluate(f) {
            Ok(value) => Ok(value),
            Err(_) if self.stopped => Err(EvalError::Stopped),
            Err(message) if self.ran_out => Err(EvalError::Exhausted(message)),
            Err(message) => Err(EvalError::Failed(message)),
        }
    }

    /// One evaluation with a budget of its own: `f` may run several
    /// expressions (a record's `map`, then its `key`) and convert what they
    /// produce; all of it is charged. Past the budget `f` is abandoned and
    /// the message names the field and expression running at the time.
    pub fn evaluate<'e, T>(
        &mut self,
        f: impl FnOnce(&mut Evaluation<'e>) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut evaluation =
            Evaluation { budget: self.budget, field: Cow::Borrowed(""), text: None };
        self.ran_out = false;
        match meter::run(self.budget.limits(), || f(&mut evaluation)) {
            Ok(result) => result,
            Err(Interrupted::Exhausted(reason)) => {
                if reason == Exhausted::Stopped {
                    self.stopped = true;
                } else {
                    self.ran_out = true;
                }
                Err(evaluation.describe(&reason.to_string()))
            }
            Err(Interrupted::Panicked(message)) => Err(evaluation.describe(&format!(
                "made the evaluator fail ({message}); please report this expression"
            ))),
        }
    }
}

/// What one evaluation does; see [`Session::evaluate`]. `'e` is how long
/// the fields and expressions it is given live.
#[derive(Debug)]
pub struct Evaluation<'e> {
    budget: Budget,
    /// The field being evaluated (`map`, `record.email`), for messages.
    field: Cow<'e, str>,
    text: Option<&'e str>,
}

impl<'e> Evaluation<'e> {
    fn enter(&mut self, field: &'e str, expr: &'e Expr) {
        self.field = Cow::Borrowed(field);
        self.text = Some(&expr.text);
    }

    fn describe(&self, what: &str) -> String {
        match self.text {
            Some(text) => format!("{}: the expression `{}` {what}", self.field, quote(text)),
            None => format!("{}: {what}", self.field),
        }
    }

    fn failed(&self, message: &str) -> String {
        match self.text {
            Some(text) => format!("{}: expression `{}` failed: {message}", self.field, quote(text)),
            None => format!("{}: {message}", self.field),
        }
    }

    /// Every output of `expr` applied to `input`.
    pub fn all(
        &mut self,
        field: &'e str,
        expr: &'e Expr,
        input: Val,
        scope: &Scope,
    ) -> Result<Vec<Val>, String> {
        self.enter(field, expr);
        let limit = self.budget.outputs;
        let mut outputs = Vec::new();
        for output in expr.outputs(input, scope) {
            let value = output.map_err(|e| self.failed(&e))?;
            if outputs.len() as u64 >= limit {
                meter::fail(Exhausted::Outputs(limit));
                return Err(self.describe(&Exhausted::Outputs(limit).to_string()));
            }
            meter::bytes(std::mem::size_of::<Val>() as u64);
            outputs.push(value);
        }
        Ok(outputs)
    }

    /// The first output of `expr` applied to `input`; the rest are never
    /// computed.
    pub fn first(
        &mut self,
        field: &'e str,
        expr: &'e Expr,
        input: Val,
        scope: &Scope,
    ) -> Result<Option<Val>, String> {
        self.enter(field, expr);
        self.first_output(expr, input, scope)
    }

    fn first_output(
        &mut self,
        expr: &Expr,
        input: Val,
        scope: &Scope,
    ) -> Result<Option<Val>, String> {
        let first = expr.outputs(input, scope).next();
        first.transpose().map_err(|e| self.failed(&e))
    }

    /// Whether the first output of `expr` on `input` is neither `false` nor
    /// `null`.
    pub fn holds(
        &mut self,
        field: &'e str,
        expr: &'e Expr,
        input: Val,
        scope: &Scope,
    ) -> Result<bool, String> {
        Ok(self.first(field, expr, input, scope)?.is_some_and(|v| v.is_truthy()))
    }

    /// `value` as JSON text (charged).
    pub fn json_text(&mut self, value: &Val) -> String {
        value.to_json_text()
    }

    /// The text a key is compared by (charged): a string as it is, anything
    /// else as JSON; `null` is no key.
    pub fn key_text(&mut self, value: &Val) -> Option<String> {
        value.key_text()
    }

    /// The value of `template`, each expression in it evaluated against
    /// `.` = the context; `field` and the path inside name it in messages.
    pub fn render(
        &mut self,
        field: &str,
        template: &'e Template,
        scope: &Scope,
    ) -> Result<Value, String> {
        // The field is the path of the part being rendered, grown and cut
        // back in place as the template is walked.
        let mut path = std::mem::take(&mut self.field).into_owned();
        path.clear();
        path.push_str(field);
        self.field = Cow::Owned(path);
        self.render_node(&template.root, scope)
    }

    /// The path of the part being rendered.
    fn path(&mut self) -> &mut String {
        self.field.to_mut()
    }

    /// Evaluates one expression of a template.
    fn render_expr(&mut self, expr: &'e Expr, scope: &Scope) -> Result<Option<Value>, String> {
        self.text = Some(&expr.text);
        Ok(self.first_output(expr, scope.context().clone(), scope)?.map(|v| v.to_json()))
    }

    fn render_node(&mut self, node: &'e Node, scope: &Scope) -> Result<Value, String> {
        match node {
            Node::Literal(v) => Ok(v.clone()),
            Node::Whole(e) => Ok(self.render_expr(e, scope)?.unwrap_or(Value::Null)),
            Node::Splice(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => splice(&mut out, self.render_expr(e, scope)?),
                    }
                }
                Ok(Value::String(out))
            }
            Node::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = self.path().len();
                    let _ = std::fmt::Write::write_fmt(self.path(), format_args!("[{i}]"));
                    out.push(self.render_node(item, scope)?);
                    self.path().truncate(len);
                }
                Ok(Value::Array(out))
            }
            Node::Object(fields) => {
                let mut out = serde_json::Map::new();
                for (key, item) in fields {
                    let len = self.path().len();
                    self.path().push('.');
                    self.path().push_str(key);
                    out.insert(key.clone(), self.render_node(item, scope)?);
                    self.path().truncate(len);
                }
                Ok(Value::Object(out))
            }
        }
    }
}

/// Appends an expression's value to a string it is spliced into: a string
/// as it is, nothing for `null` or no output, anything else as JSON.
fn splice(out: &mut String, value: Option<Value>) {
    match value {
        Some(Value::String(s)) => out.push_str(&s),
        None | Some(Value::Null) => {}
        Some(other) => out.push_str(&other.to_string()),
    }
}

/// `text` cut to [`QUOTED_CHARS`] characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn subrange(whole: &str, part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    if start <= whole.len() && start + part.len() <= whole.len() {
        start..start + part.len()
    } else {
        0..whole.len()
    }
}

fn load_error(text: &str, errors: jaq_core::load::Errors<&str, ()>) -> CompileError {
    use jaq_core::load::Error;
    for (_, error) in errors {
        match error {
            Error::Lex(errs) => {
                if let Some((expect, got)) = errs.into_iter().next() {
                    let wanted = match &expect {
                        jaq_core::load::lex::Expect::Delim(d)
                            if !["(", "[", "{", "\""].contains(d) =>
                        {
                            "closing delimiter"
                        }
                        other => other.as_str(),
                    };
                    return CompileError {
                        range: subrange(text, got),
                        message: format!("expected {wanted}"),
                    };
                }
            }
            Error::Parse(errs) => {
                if let Some((expect, got)) = errs.into_iter().next() {
                    let found =
                        if got.is_empty() { "the end".to_owned() } else { format!("`{got}`") };
                    return CompileError {
                        range: subrange(text, got),
                        message: format!("expected {}, found {found}", expect.as_str()),
                    };
                }
            }
            Error::Io(errs) => {
                if let Some((path, why)) = errs.into_iter().next() {
                    return CompileError {
                        range: subrange(text, path),
                        message: format!("cannot load module {path}: {why}"),
                    };
                }
            }
        }
    }
    CompileError { range: 0..text.len(), message: "the expression does not parse".into() }
}

/// Strips an optional `${{ … }}` around a whole-string expression.
pub fn unwrap_braces(text: &str) -> (&str, usize) {
    let trimmed = text.trim();
    if let Some(inner) = trimmed.strip_prefix("${{").and_then(|t| t.strip_suffix("}}")) {
        let offset = inner.as_ptr() as usize - text.as_ptr() as usize;
        (inner, offset)
    } else {
        (text, 0)
    }
}

/// A workflow value that may contain expressions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Template {
    root: Arc<Node>,
}

#[derive(Debug)]
enum Node {
    /// No expression inside.
    Literal(Value),
    /// A string that is one expression: its value, whatever type.
    Whole(Expr),
    /// A string with expressions spliced in.
    Splice(Vec<Part>),
    /// An array with expressions somewhere inside.
    Array(Vec<Node>),
    /// An object with expressions somewhere inside.
    Object(Vec<(String, Node)>),
}

/// A piece of a spliced string.
#[derive(Debug)]
enum Part {
    /// Text kept as is.
    Text(String),
    /// An expression whose value is spliced in.
    Expr(Expr),
}

/// A template compile error: the expression text and where inside it.
#[derive(Debug, Clone)]
pub struct TemplateError {
    /// The expression's text, to find it in the file.
    pub expression: String,
    /// The error inside the expression.
    pub error: CompileError,
}

impl Template {
    /// Compiles every `${{ … }}` in `value`.
    pub fn compile(value: Value) -> Result<Template, TemplateError> {
        Ok(Template { root: Arc::new(Node::compile(value)?) })
    }

    /// Whether the template holds no expression.
    pub fn is_literal(&self) -> bool {
        matches!(self.root.as_ref(), Node::Literal(_))
    }

    /// Every expression inside, for checks such as step references.
    pub fn expressions(&self) -> Vec<&Expr> {
        self.root.expressions()
    }
}

impl Node {
    fn compile(value: Value) -> Result<Node, TemplateError> {
        match value {
            Value::String(s) if s.contains("${{") => Node::compile_str(&s),
            Value::Array(items) => {
                let parts = items.into_iter().map(Node::compile).collect::<Result<Vec<_>, _>>()?;
                if parts.iter().all(|p| matches!(p, Node::Literal(_))) {
                    Ok(Node::Literal(Value::Array(
                        parts.into_iter().filter_map(Node::into_literal).collect(),
                    )))
                } else {
                    Ok(Node::Array(parts))
                }
            }
            Value::Object(map) => {
                let parts = map
                    .into_iter()
                    .map(|(k, v)| Node::compile(v).map(|t| (k, t)))
                    .collect::<Result<Vec<_>, _>>()?;
                if parts.iter().all(|(_, p)| matches!(p, Node::Literal(_))) {
                    Ok(Node::Literal(Value::Object(
                        parts
                            .into_iter()
                            .filter_map(|(k, p)| p.into_literal().map(|v| (k, v)))
                            .collect(),
                    )))
                } else {
                    Ok(Node::Object(parts))
                }
            }
            other => Ok(Node::Literal(other)),
        }
    }

    /// The node's value when every expression in it is a
    /// [`VarPath`] that [`VarPath::lookup`] answers: what an evaluation
    /// would give, without one.
    fn render_inline(&self, scope: &Scope) -> Option<Value> {
        let lookup = |e: &Expr| e.var_path.as_ref().and_then(|path| path.lookup(scope));
        match self {
            Node::Literal(v) => Some(v.clone()),
            Node::Whole(e) => lookup(e),
            Node::Splice(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => splice(&mut out, Some(lookup(e)?)),
                    }
                }
                Some(Value::String(out))
            }
            Node::Array(items) => items
                .iter()
                .map(|item| item.render_inline(scope))
                .collect::<Option<_>>()
                .map(Value::Array),
            Node::Object(fields) => fields
                .iter()
                .map(|(key, item)| Some((key.clone(), item.render_inline(scope)?)))
                .collect::<Option<_>>()
                .map(Value::Object),
        }
    }

    fn into_literal(self) -> Option<Value> {
        match self {
            Node::Literal(v) => Some(v),
            _ => None,
        }
    }

    fn compile_str(s: &str) -> Result<Node, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("${{") {
            let after = &rest[open + 3..];
            let Some(close) = after.find("}}") else {
                return Err(TemplateError {
                    expression: after.to_owned(),
                    error: CompileError {
                        range: 0..after.len(),
                        message: "`${{` without a closing `}}`".into(),
                    },
                });
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let code = &after[..close];
            let expr = Expr::compile(code.trim())
                .map_err(|error| TemplateError { expression: code.trim().to_owned(), error })?;
            parts.push(Part::Expr(expr));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        match parts.as_slice() {
            [Part::Expr(e)] => Ok(Node::Whole(e.clone())),
            _ => Ok(Node::Splice(parts)),
        }
    }

    fn expressions(&self) -> Vec<&Expr> {
        match self {
            Node::Literal(_) => Vec::new(),
            Node::Whole(e) => vec![e],
            Node::Splice(parts) => parts
                .iter()
                .filter_map(|p| if let Part::Expr(e) = p { Some(e) } else { None })
                .collect(),
            Node::Array(items) => items.iter().flat_map(Node::expressions).collect(),
            Node::Object(fields) => fields.iter().flat_map(|(_, t)| t.expressions()).collect(),
        }
    }
}

/// The step ids an expression refers to (`.steps.ID`, `$steps.ID`,
/// `.steps["ID"]`), each with its byte range in the text.
pub fn step_references(text: &str) -> Vec<(String, Range<usize>)> {
    references(text, "steps").into_iter().map(|(name, range, _)| (name, range)).collect()
}

/// The names an expression reads under `root` (`steps`, `inputs`): `.root.NAME`,
/// `$root.NAME` and `.root["NAME"]`, each with its byte range in the text.
/// The flag says whether the reference is the variable (`$root`), which
/// means the same whatever `.` is. A textual scan, so it can miss a name
/// built at run time; the checks that use it are there to catch typos
/// early, not to prove anything (see [`root_uses`] for every use).
pub fn references(text: &str, root: &str) -> Vec<(String, Range<usize>, bool)> {
    root_uses(text, root)
        .into_iter()
        .filter_map(|used| used.name.map(|(name, range)| (name, range, used.variable)))
        .collect()
}

/// One use of `root` (`steps`, `inputs`) in an expression's text; see
/// [`root_uses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootUse {
    /// The member named right after the root (`$root.NAME`, `.root.NAME`,
    /// `.root["NAME"]`) and its byte range in the text; `None` when the
    /// root is used whole (`$steps | keys`, `.steps[$id]`) or its name
    /// appears some other way (`getpath(["steps", …])`, `.["steps"]`, a
    /// string).
    pub name: Option<(String, Range<usize>)>,
    /// Whether it is the variable `$root`.
    pub variable: bool,
    /// The field read right after the member (`records` in
    /// `$steps.NAME.records` or `.steps["NAME"]["records"]`); `None` when
    /// the member's value is used otherwise (`.steps.NAME | .records`).
    pub field: Option<String>,
}

/// Every use of `root` in an expression's text, named or not: what the
/// executor needs to know which results an expression may read. Where
/// [`references`] keeps only the named ones, this also reports the root's
/// name standing as a whole word anywhere else (as a whole use), so that
/// a caller deciding what to keep errs on the side of keeping. A word that
/// only contains it (`.mysteps`, `$steps_seen`) or a field of another value
/// (`$item.steps`) is not a use.
pub fn root_uses(text: &str, root: &str) -> Vec<RootUse> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..].find(root) {
        let start = from + pos;
        from = start + root.len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let word_after = bytes.get(from).is_some_and(|b| is_word(*b));
        if word_after || before.is_some_and(is_word) {
            continue;
        }
        let preceded = matches!(before, Some(b'.' | b'$'));
        let word_before = start > 1 && is_word(bytes[start - 2]);
        if preceded && before == Some(b'.') && word_before {
            continue;
        }
        let whole = RootUse { name: None, variable: before == Some(b'$'), field: None };
        if !preceded {
            found.push(whole);
            continue;
        }
        let rest = &text[from..];
        let name = if let Some(name) = rest.strip_prefix('.') {
            let len =
                name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
            (len > 0).then(|| (name[..len].to_owned(), from + 1..from + 1 + len))
        } else if let Some(name) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix(".[\"")) {
            let skip = rest.len() - name.len();
            name.find('"').map(|end| (name[..end].to_owned(), from + skip..from + skip + end))
        } else {
            None
        };
        match name {
            Some((name, range)) => {
                let field = member(&text[range.end..]);
                found.push(RootUse { field, name: Some((name, range)), ..whole });
            }
            None => found.push(whole),
        }
    }
    found
}

/// The field `rest` reads first: `.NAME`, `["NAME"]` or `.["NAME"]`, each
/// after an optional `?` and the closing quote of a `["…"]` name.
fn member(rest: &str) -> Option<String> {
    let rest = rest.strip_prefix("\"]").unwrap_or(rest);
    let rest = rest.strip_prefix('?').unwrap_or(rest);
    if let Some(name) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix(".[\"")) {
        return name.find('"').map(|end| name[..end].to_owned());
    }
    let name = rest.strip_prefix('.')?;
    let len = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
    (len > 0).then(|| name[..len].to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope::new(
            &json!({"email": "ada@example.com", "plan": "pro"}),
            &json!({"lookup": {"id": "cus_1"}}),
            &json!({"id": "r1", "workflow": "w"}),
        )
        .with_item(&json!({"id": 7}))
    }

    fn compile(text: &str) -> Result<Expr, String> {
        Expr::compile(text).map_err(|e| e.message)
    }

    /// Tests run on a budget of fewer steps than the default, so that in a
    /// debug build the steps run out before the time does.
    fn test_budget() -> Budget {
        Budget { steps: 1_000_000, time: Duration::from_secs(120), ..Budget::default() }
    }

    /// The first output of `text` on `input`, with `budget`.
    async fn first_with(budget: Budget, text: &str, input: Value) -> Result<Value, EvalError> {
        let expr = compile(text).map_err(EvalError::Failed)?;
        Evaluator::new(budget).first("test", &expr, to_val(&input), &scope()).await
    }

    async fn first(text: &str, input: Value) -> Result<Value, EvalError> {
        first_with(test_budget(), text, input).await
    }

    async fn all(text: &str) -> Result<Vec<Value>, EvalError> {
        let expr = compile(text).map_err(EvalError::Failed)?;
        let outputs = Evaluator::new(Budget { outputs: 100_000, ..test_budget() })
            .outputs("for_each", &expr, &scope())
            .await?;
        Ok(outputs.iter().map(|v| v.to_json()).collect())
    }

    /// Every output (or the error) of `expr` run on `text`, parsed as
    /// [`Expr::parse_input`] parses it (`projected`) or whole.
    async fn outputs_on(expr: &Expr, text: &str, projected: bool) -> Result<Vec<Value>, EvalError> {
        let (expr, text) = (expr.clone(), text.to_owned());
        Evaluator::new(test_budget())
            .run(move |session| {
                let input = if projected { expr.parse_input(&text) } else { Val::parse(&text) }?;
                let outputs = session.evaluate(|ev| ev.all("map", &expr, input, &scope()))?;
                Ok(outputs.iter().map(Val::to_json).collect())
            })
            .await
    }

    #[tokio::test]
    async fn a_shape_run_without_jaq_gives_what_jaq_gives_and_jaqs_own_errors()
    -> Result<(), EvalError> {
        let record = r#"{"id": "cus_1", "email": "Ada@X.io", "name": "Ada", "name": "Ada L",
            "metadata": {"plan": "pro", "seats": 3}, "balance": 1.5e3, "tags": ["a", "b"],
            "address": null, "na\u006de2": "x", "count": 7}"#;
        let shapes = [
            "{email, name, metadata: {source_id: .id}}",
            ".email",
            ".metadata.plan",
            ".address.city",
            ".missing",
            "{plan: .metadata.plan, seats: .metadata.seats, b: .balance, t: .tags, n: .name2}",
            r#"{"name2", id: .id, id: .email}"#,
            ".",
            "{}",
            // jaq fails on these: indexing a string and a number.
            ".email.domain",
            "{x: .count.y}",
        ];
        for text in shapes {
            let expr = compile(text).map_err(EvalError::Failed)?;
            assert!(expr.shape.is_some(), "{text} is a shape");
            let jaq = Expr { shape: None, ..expr.clone() };
            // The JSON text a sync keeps (fields in order) and the key text.
            let evaluator = Evaluator::new(test_budget());
            let texts = |expr: &Expr, input: &str, projected: bool| {
                let (expr, input) = (expr.clone(), input.to_owned());
                evaluator.run(move |session| {
                    let input =
                        if projected { expr.parse_input(&input) } else { Val::parse(&input) }?;
                    let outputs = session.evaluate(|ev| ev.all("map", &expr, input, &scope()))?;
                    Ok(outputs.iter().map(|v| (v.to_json_text(), v.key_text())).collect::<Vec<_>>())
                })
            };
            for projected in [false, true] {
                let shaped = texts(&expr, record, projected).await;
                let run = texts(&jaq, record, projected).await;
                assert_eq!(format!("{shaped:?}"), format!("{run:?}"), "{text} on the record");
            }
            for other in ["null", "[1, 2]", r#""text""#, "{}"] {
                let shaped = texts(&expr, other, false).await;
                let run = texts(&jaq, other, false).await;
                assert_eq!(format!("{shaped:?}"), format!("{run:?}"), "{text} on {other}");
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_record_parsed_for_the_fields_an_expression_reads_gives_what_the_whole_does()
    -> Result<(), EvalError> {
        // A vendor record: escapes, a field given twice, nesting, numbers.
        let record = r#"{"id": "cus_1", "object": "customer", "email": "Ada@X.io", "name": "Ada",
            "metadata": {"plan": "pro", "seats": 3}, "balance": 1.5e3, "tags": ["a", "b"],
            "address": null, "na\u006de": "Ada L", "phone": "", "created": 1700000000,
            "extra": {"deep": [1, {"x": [true, false]}]}}"#;
        let cases: &[(&str, &[&str])] = &[
            ("{email, name, metadata: {source_id: .id}}", &["email", "id", "name"]),
            (".email | ascii_downcase", &["email"]),
            ("{email: (.email | ascii_downcase), plan: .metadata.plan}", &["email", "metadata"]),
            (r#"."name", .["id"], .tags[1], .missing"#, &["id", "missing", "name", "tags"]),
            ("if .balance > 100 then {vip: true} else {vip: false} end", &["balance"]),
            (".extra.deep[1] | keys", &["extra"]),
            ("[.tags[] | ascii_upcase] | join(\",\")", &["tags"]),
            ("\"\\(.name) <\\(.email)>\"", &["email", "name"]),
            (".phone // .email", &["email", "phone"]),
            ("try (.name | tonumber) catch \"nan\"", &["name"]),
            ("reduce .tags[] as $t (0; . + 1)", &["tags"]),
            (".created as $c | {c: $c, id}", &["created", "id"]),
            (".metadata | to_entries | map(.key)", &["metadata"]),
            ("{a: null, b: true, id, $item}", &["id"]),
            (".address.city?", &["address"]),
            (".name | error", &["name"]),
        ];
        for (text, reads) in cases {
            let expr = compile(text).map_err(EvalError::Failed)?;
            let expected: BTreeSet<String> = reads.iter().map(|r| (*r).to_owned()).collect();
            assert_eq!(expr.top_fields(), Some(&expected), "{text}");
            let whole = outputs_on(&expr, record, false).await;
            let projected = outputs_on(&expr, record, true).await;
            assert_eq!(
                format!("{projected:?}"),
                format!("{whole:?}"),
                "{text}: the projected record gave something else"
            );
        }
        // Not an object: parsed whole, whatever the expression.
        let expr = compile(".a").map_err(EvalError::Failed)?;
        assert_eq!(
            outputs_on(&expr, "[1]", true).await.is_err(),
            outputs_on(&expr, "[1]", false).await.is_err()
        );
        assert!(
            outputs_on(&expr, r#"{"a": 1, "b": [}"#, true).await.is_err(),
            "bad JSON in a skipped field is still bad"
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_expression_that_reads_the_whole_record_gets_the_whole_record()
    -> Result<(), EvalError> {
        let record = r#"{"id": "cus_1", "email": "a@x", "metadata": {"k": "v"}, "n": 2}"#;
        let whole_readers = [
            ".",
            "{id} + .",
            "keys",
            "to_entries | map(.key)",
            "[..] | length",
            "[.[]] | length",
            "tojson",
            ". as $r | $r.email",
            "{email, all: .}",
            ".[\"id\"] , .",
            "if .n > 1 then . else {} end",
            "if .n > 1 then {} end",
            "del(.metadata)",
            ".email = \"b@x\"",
            "with_entries(.)",
            "def f: .; f.email",
            "{a: true} as $x | . + $x",
            "length",
            "@json",
            ".[.email]",
            "getpath([\"id\"])",
            "$item, keys_unsorted",
            "map_values(1)",
            "reduce . as $r (0; 1)",
            "reduce .id as {(.email): $v} (0; 1)",
            "label $out | .",
            "try . catch 1",
            ".id // .",
            "has(\"id\")",
            "[paths]",
        ];
        for text in whole_readers {
            let expr = compile(text).map_err(EvalError::Failed)?;
            assert_eq!(expr.top_fields(), None, "{text} reads more than named fields");
            let whole = outputs_on(&expr, record, false).await;
            assert_eq!(
                format!("{:?}", outputs_on(&expr, record, true).await),
                format!("{whole:?}"),
                "{text}"
            );
        }
        assert_eq!(
            outputs_on(&compile(".").map_err(EvalError::Failed)?, record, true).await?,
            vec![
                serde_json::from_str::<Value>(record)
                    .map_err(|e| EvalError::Failed(e.to_string()))?
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn expressions_see_the_context_and_the_variables() -> Result<(), EvalError> {
        let s = scope();
        let evaluator = Evaluator::default();
        let e = Expr::compile(".inputs.email").map_err(|e| EvalError::Failed(e.message))?;
        assert_eq!(
            evaluator.first("t", &e, s.context().clone(), &s).await?,
            json!("ada@example.com")
        );
        assert_eq!(
            first("$steps.lookup.id + \"/\" + ($item.id | tostring)", Value::Null).await?,
            json!("cus_1/7")
        );
        assert_eq!(
            first(
                "{email: .email, name: (.first + \" \" + .last)}",
                json!({"email": "a@b", "first": "Ada", "last": "L"})
            )
            .await?,
            json!({"email": "a@b", "name": "Ada L"})
        );
        let pro =
            Expr::compile(".inputs.plan == \"pro\"").map_err(|e| EvalError::Failed(e.message))?;
        assert!(evaluator.holds("when", &pro, &s).await?);
        let empty = Expr::compile("empty").map_err(|e| EvalError::Failed(e.message))?;
        assert!(!evaluator.holds("when", &empty, &s).await?);
        Ok(())
    }

    #[tokio::test]
    async fn jq_builtins_work_on_metered_values() -> Result<(), EvalError> {
        let cases = [
            ("[.[] | . * 2] | add", json!([1, 2, 3]), json!(12)),
            ("map(select(. > 1)) | length", json!([1, 2, 3]), json!(2)),
            ("to_entries | map(.key) | join(\",\")", json!({"b": 1, "a": 2}), json!("a,b")),
            ("keys", json!({"b": 1, "a": 2}), json!(["a", "b"])),
            ("sort_by(.n) | map(.n)", json!([{"n": 3}, {"n": 1}]), json!([1, 3])),
            ("unique", json!([3, 1, 3, [1], [1]]), json!([1, 3, [1]])),
            ("tojson", json!({"a": [1, "x"]}), json!("{\"a\":[1,\"x\"]}")),
            ("fromjson", json!("{\"a\": 1}"), json!({"a": 1})),
            ("\"42\" | tonumber", Value::Null, json!(42)),
            ("contains({a: [\"x\"]})", json!({"a": ["xyz"], "b": 1}), json!(true)),
            ("has(\"a\"), has(\"z\")", json!({"a": 1}), json!(true)),
            ("indices(\", \")", json!("a, b, c"), json!([1, 4])),
            ("indices(1)", json!([0, 1, 1]), json!([1, 2])),
            ("[1, 2, 3] | bsearch(2)", Value::Null, json!(1)),
            ("length", json!("héllo"), json!(5)),
            ("\"ab\" * 3", Value::Null, json!("ababab")),
            ("{a: {b: 1}} * {a: {c: 2}}", Value::Null, json!({"a": {"b": 1, "c": 2}})),
            ("[1, 2, 3, 2] - [2]", Value::Null, json!([1, 3])),
            (".a.b |= . + 1", json!({"a": {"b": 1}}), json!({"a": {"b": 2}})),
            (".[1:] = [\"x\"]", json!([1, 2, 3]), json!([1, "x"])),
            ("del(.a)", json!({"a": 1, "b": 2}), json!({"b": 2})),
            ("[paths]", json!({"a": [1]}), json!([["a"], ["a", 0]])),
            ("ascii_downcase | test(\"^ada\")", json!("ADA L"), json!(true)),
            ("try error(\"boom\") catch .", Value::Null, json!("boom")),
            ("try (1 + \"a\") catch .", Value::Null, json!("cannot calculate 1 + \"a\"")),
            ("[limit(3; repeat(1))]", Value::Null, json!([1, 1, 1])),
            ("@base64", json!("hi"), json!("aGk=")),
            ("\"\\(.a) and \\(.b)\"", json!({"a": 1, "b": [2]}), json!("1 and [2]")),
        ];
        for (text, input, expected) in cases {
            assert_eq!(first(text, input.clone()).await?, expected, "{text} on {input}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn large_integers_survive_the_round_trip() -> Result<(), EvalError> {
        assert_eq!(
            first(".n", json!({"n": 1_700_000_000_123_i64})).await?,
            json!(1_700_000_000_123_i64)
        );
        Ok(())
    }

    #[test]
    fn compile_errors_say_where() {
        let err = Expr::compile(".a | frobnicate").err();
        let err = err.as_ref().map(|e| (e.message.as_str(), e.range.clone()));
        assert_eq!(err, Some(("unknown function frobnicate/0", 5..15)));
        let err = Expr::compile("$nope").err().map(|e| e.message).unwrap_or_default();
        assert!(err.contains("unknown variable $nope"), "{err}");
        let err = Expr::compile(".a | (").err().map(|e| e.message).unwrap_or_default();
        assert!(err.starts_with("expected"), "{err}");
    }

    #[test]
    fn the_environment_is_out_of_reach() {
        let err = Expr::compile("env.HOME").err().map(|e| e.message).unwrap_or_default();
        assert!(err.contains("env is not available"), "{err}");
        assert!(Expr::compile("$ENV").is_err());
        assert!(Expr::compile("input").is_err());
    }

    /// Regression: `halt` called `process::exit` through jaq's
    /// `unwrap_valr`, ending `weft run` with status 0 and `weft serve` at
    /// the first request.
    #[test]
    fn halt_halt_error_and_stderr_are_refused_when_compiled() {
        for (text, name) in [
            (".a | halt", "halt"),
            ("halt_error", "halt_error"),
            ("\"x\" | halt_error(1)", "halt_error"),
            ("stderr", "stderr"),
        ] {
            let err = Expr::compile(text).err();
            let (message, range) = err.map(|e| (e.message, e.range)).unwrap_or_default();
            assert!(
                message.starts_with(&format!("{name} is not available in expressions")),
                "{text}: {message}"
            );
            assert_eq!(&text[range], name, "{text}");
        }
    }

    /// Regression: 1,000 nested parentheses overflowed the stack while the
    /// workflow loaded.
    #[test]
    fn deep_nesting_is_refused_before_it_is_parsed() {
        let text = format!("{}1{}", "(".repeat(1000), ")".repeat(1000));
        let err = Expr::compile(&text).err();
        let (message, range) = err.map(|e| (e.message, e.range)).unwrap_or_default();
        assert!(message.contains("more than 128 levels"), "{message}");
        assert_eq!(range, MAX_NESTING..MAX_NESTING + 1);
        // Strings and interpolations count; brackets inside strings do not.
        assert!(Expr::compile(&format!("\"{}\"", "(".repeat(1000))).is_ok());
        assert!(Expr::compile(&format!("{}1{}", "\"\\(".repeat(200), ")\"".repeat(200))).is_err());
        assert!(
            Expr::compile(&format!("{}1{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING)))
                .is_ok()
        );
        let long = "1".repeat(MAX_EXPRESSION_BYTES + 1);
        assert!(Expr::compile(&long).err().is_some_and(|e| e.message.contains("at most 16,384")));
    }

    /// The worst shapes jaq's parser recurses on, at the longest length
    /// allowed: they compile on the compiling thread's stack, and evaluating
    /// them fails on the evaluator's stack budget, not the process.
    #[tokio::test]
    async fn the_longest_expressions_of_the_deepest_shapes_compile_and_fail_cleanly()
    -> Result<(), String> {
        let negations = format!("{}1", "-".repeat(MAX_EXPRESSION_BYTES - 1));
        let sums = format!("1{}", "+1".repeat((MAX_EXPRESSION_BYTES - 1) / 2));
        for text in [negations, sums] {
            let expr = compile(&text)?;
            match Evaluator::default().first("t", &expr, Val::null(), &scope()).await {
                Ok(_) => {}
                Err(e) => assert!(e.to_string().contains("stack"), "{e}"),
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn runtime_errors_are_messages_naming_the_field() -> Result<(), String> {
        let err = first(".a + 1", json!({"a": "x"}))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(err, "test: expression `.a + 1` failed: cannot calculate \"x\" + 1");
        let err = first("error({code: 7})", Value::Null)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(err, "test: expression `error({code: 7})` failed: {\"code\":7}");
        let err =
            first("{(1): 2}", Value::Null).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("object keys must be strings"), "{err}");
        Ok(())
    }

    /// Expressions that ran for minutes, filled memory or overflowed the
    /// stack: each fails its evaluation with the budget it exceeded, in
    /// bounded time, and the evaluator goes on.
    #[tokio::test]
    async fn runaway_expressions_fail_with_the_budget_they_exceeded() -> Result<(), String> {
        let cases: [(&str, &str); 15] = [
            ("last(range(1e18))", "evaluation steps"),
            ("[range(1e9)]", "evaluation steps"),
            ("[repeat(1)] | length", "evaluation steps"),
            ("\"x\" * 1000000000000", "of values produced"),
            ("\"x\" * 100000000000000000000000", "of values produced"),
            ("reduce range(64) as $i (\"x\"; . + .)", "of values produced"),
            ("reduce range(64) as $i ([1]; . + .)", "of values produced"),
            ("def f: f; f", "evaluation steps"),
            ("def f: 1 + f; f", "stack"),
            ("last(repeat(try (1 + \"a\") catch 0))", "evaluation steps"),
            ("def d: reduce range(60) as $i ([1]; [., .]); d == d", "evaluation steps"),
            ("reduce range(60) as $i ([1]; [., .]) | tojson", "evaluation steps"),
            ("reduce range(40) as $i ([1]; [., .]) | [..] | length", "evaluation steps"),
            ("reduce range(100000) as $i (0; [.])", "nested deeper than 512"),
            ("reduce range(100) as $i (2; . * .)", "integer beyond"),
        ];
        for (text, budget) in cases {
            let started = Instant::now();
            let err =
                first(text, Value::Null).await.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(budget), "{text}: {err}");
            assert!(err.starts_with("test: "), "{text}: {err}");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{text} took {:?}",
                started.elapsed()
            );
        }
        let err = all("repeat(1)").await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("more than its budget of 100,000 outputs"), "{err}");
        let err = first("(\"[\" * 100000) | fromjson", Value::Null)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("recursion limit"), "{err}");
        // Lazily: the first output is all `when` needs.
        assert_eq!(first("repeat(1)", Value::Null).await.map_err(|e| e.to_string())?, json!(1));
        // The evaluator is fine after all that.
        assert_eq!(first("1 + 1", Value::Null).await.map_err(|e| e.to_string())?, json!(2));
        Ok(())
    }

    #[tokio::test]
    async fn a_time_budget_stops_a_slow_evaluation() -> Result<(), String> {
        let budget =
            Budget { steps: u64::MAX - 1, time: Duration::from_millis(200), ..Budget::default() };
        let started = Instant::now();
        let err = first_with(budget, "last(range(1e18))", Value::Null)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ran longer than its budget of 200ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }

    #[tokio::test]
    async fn a_stop_token_or_a_caller_that_gives_up_stops_the_evaluation() -> Result<(), String> {
        let endless =
            Budget { steps: u64::MAX - 1, time: Duration::from_secs(3600), ..Budget::default() };
        let expr = compile("last(range(1e18))")?;
        let token = CancellationToken::new();
        let evaluator = Evaluator::new(endless).stopped_by(&token);
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let outcome = evaluator.first("when", &expr, Val::null(), &scope()).await;
        assert_eq!(outcome, Err(EvalError::Stopped));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Callers that time out: their evaluations stop too, so the
        // evaluation threads are free again at once.
        let (impatient, s) = (Evaluator::new(endless), scope());
        for _ in 0..pool_size() {
            let waiting = impatient.first("map", &expr, Val::null(), &s);
            assert!(tokio::time::timeout(Duration::from_millis(50), waiting).await.is_err());
        }
        let started = Instant::now();
        assert_eq!(first("1", Value::Null).await.map_err(|e| e.to_string())?, json!(1));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        Ok(())
    }

    fn pool_size() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
    }

    #[tokio::test]
    async fn templates_keep_types_or_splice_strings_and_name_their_path() -> Result<(), String> {
        let s = scope();
        let t = Template::compile(json!({
            "email": "${{ .inputs.email }}",
            "note": "plan ${{ .inputs.plan }} for ${{ $item.id }}",
            "n": "${{ $item.id }}",
            "fixed": ["a", 1],
        }))
        .map_err(|e| e.error.message)?;
        let evaluator = Evaluator::new(test_budget());
        assert_eq!(
            evaluator.render("record", &t, &s).await.map_err(|e| e.to_string())?,
            json!({"email": "ada@example.com", "note": "plan pro for 7", "n": 7, "fixed": ["a", 1]})
        );
        assert!(Template::compile(json!("no expression")).is_ok_and(|t| t.is_literal()));
        let err =
            Template::compile(json!("${{ .a ")).err().map(|e| e.error.message).unwrap_or_default();
        assert!(err.contains("closing"), "{err}");
        let runaway = Template::compile(json!({"tags": ["a", "${{ def f: f; f }}"]}))
            .map_err(|e| e.error.message)?;
        let err = evaluator
            .render("record", &runaway, &s)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("record.tags[1]: the expression `def f: f; f` exceeded its budget of 1,000,000 evaluation steps"), "{err}");
        Ok(())
    }

    /// A template rendered on an evaluation thread, never inline.
    async fn rendered_by_jaq(template: &Template, scope: &Scope) -> Result<Value, String> {
        let (template, scope) = (template.clone(), scope.clone());
        Evaluator::new(test_budget())
            .run(move |session| session.evaluate(|ev| ev.render("t", &template, &scope)))
            .await
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn plain_variable_paths_render_inline_as_jaq_renders_them() -> Result<(), String> {
        let long = "x".repeat(INLINE_STRING_BYTES + 1);
        let s = scope()
            .with_page(&json!({"number": 3, "cursor": null, "records": [{"id": 1}]}))
            .with_state(&json!({"since": 1_700_000_000, "name": "ä", "f": 1.5, "long": long, "big": 12345678901234567890_u64, "deep": {"on": true}}));
        let inline = [
            json!("${{ $page.number }}"),
            json!("${{ $page.cursor }}"),
            json!("${{ $page.missing.deeper }}"),
            json!("${{$state.since}}"),
            json!("${{ $state.f }}"),
            json!("${{ $state.big }}"),
            json!("${{ $state.deep.on }}"),
            json!("${{ $item.id }}"),
            json!("${{ $last_success.id }}"),
            json!("${{ $steps.lookup.id }}"),
            json!(
                "name ${{ $state.name }} at ${{ $page.number }}, ${{ $page.cursor }}${{ $state.deep.on }}"
            ),
            json!({"a": ["${{ $state.since }}", 1], "b": "${{ $run.workflow }}"}),
        ];
        for template in inline {
            let compiled = Template::compile(template.clone()).map_err(|e| e.error.message)?;
            let quick = compiled.root.render_inline(&s);
            assert!(quick.is_some(), "{template} should render inline");
            assert_eq!(quick, Some(rendered_by_jaq(&compiled, &s).await?), "{template}");
        }
        // Left to jaq: containers (their copy is charged), long strings,
        // anything but a path, a keyword, and indexing a non-object (jaq
        // names the error).
        let left = [
            "${{ $page.records }}",
            "${{ $page }}",
            "${{ $state.deep }}",
            "${{ $state.long }}",
            "${{ $page.number + 1 }}",
            "${{ $page.number? }}",
            "${{ $page[\"number\"] }}",
            "${{ .inputs.email }}",
            "${{ $item.id.x }}",
            "${{ $state.if }}",
            "n ${{ $page.records }}",
        ];
        for text in left {
            let compiled = Template::compile(json!(text)).map_err(|e| e.error.message)?;
            assert_eq!(compiled.root.render_inline(&s), None, "{text}");
        }
        let err = Evaluator::new(test_budget())
            .render(
                "t",
                &Template::compile(json!("${{ $item.id.x }}")).map_err(|e| e.error.message)?,
                &s,
            )
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cannot index"), "{err}");
        Ok(())
    }

    #[test]
    fn step_references_are_found_in_every_spelling() {
        let refs: Vec<String> = step_references(
            ".steps.lookup.id + $steps.other + .steps[\"with-dash\"].x + .mysteps.no",
        )
        .into_iter()
        .map(|(id, _)| id)
        .collect();
        assert_eq!(refs, vec!["lookup", "other", "with-dash"]);
        let text = "$steps.abc";
        let (_, range) = step_references(text)[0].clone();
        assert_eq!(&text[range], "abc");
    }

    #[test]
    fn root_uses_report_the_field_read_and_every_unnamed_use() {
        let uses = |text: &str| -> Vec<(Option<String>, Option<String>)> {
            root_uses(text, "steps")
                .into_iter()
                .map(|u| (u.name.map(|(name, _)| name), u.field))
                .collect()
        };
        let named =
            |name: &str, field: Option<&str>| (Some(name.to_owned()), field.map(str::to_owned));
        assert_eq!(
            uses(".steps.a.records + $steps[\"b-c\"].count + .steps.d?.records + .steps.e"),
            vec![
                named("a", Some("records")),
                named("b-c", Some("count")),
                named("d", Some("records")),
                named("e", None)
            ]
        );
        assert_eq!(uses(".steps[\"a\"][\"records\"]"), vec![named("a", Some("records"))]);
        // Used whole, or named some other way: any result may be read.
        assert_eq!(uses("$steps | keys"), vec![(None, None)]);
        assert_eq!(uses("getpath([\"steps\", \"a\"])"), vec![(None, None)]);
        // Not the root: a longer word, a field of another value.
        assert_eq!(uses(".mysteps.a + $steps_seen + $item.steps.a"), vec![]);
    }
}
