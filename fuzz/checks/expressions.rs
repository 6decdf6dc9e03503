//! `${{ }}` templates and jq expressions: any text compiles or is refused
//! with an error located inside it, and what compiles evaluates under a
//! budget to a value or an error, never a panic (not even one the
//! evaluator catches) and never past the budget's time.
//!
//! Input: the expression or template text, a newline, then the JSON given
//! as `$inputs` (anything else is `null`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::expr::{Budget, CompileError, EvalError, Evaluator, Expr, Scope, Template, to_val};

/// Small enough that a fuzzer runs thousands of inputs a second, large
/// enough for every expression in the repository's workflows.
const BUDGET: Budget =
    Budget { steps: 200_000, bytes: 4 << 20, outputs: 10_000, time: Duration::from_secs(2) };

/// How long past the budget's time an evaluation may take to stop: the
/// meter checks the clock every few steps, and the machine may be loaded.
const STOP_SLACK: Duration = Duration::from_secs(20);

/// What the evaluator says when it caught a panic of jaq's.
const CAUGHT_PANIC: &str = "please report this expression";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime for the fuzzer: {e}"))
    })
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (code, input) = text.split_once('\n').unwrap_or((&text, ""));
    let inputs: Value = serde_json::from_str(input).unwrap_or(Value::Null);
    let steps = json!({"fetch": {"records": [{"id": "cus_1", "email": "a@b.c"}], "count": 1}});
    let scope = Scope::new(&inputs, &steps, &json!({"id": "run_1", "workflow": "fuzz"}));
    let evaluator = Evaluator::new(BUDGET);
    let started = Instant::now();
    runtime().block_on(async {
        if code.contains("${{") {
            match Template::compile(Value::String(code.to_owned())) {
                Ok(template) => {
                    let rendered = evaluator.render("fuzz", &template, &scope).await;
                    assert_no_caught_panic(rendered.map(drop));
                }
                Err(e) => assert_located(&e.expression, &e.error),
            }
        } else {
            match Expr::compile(code) {
                Ok(expr) => {
                    let outputs = evaluator.outputs("fuzz", &expr, &scope).await;
                    assert_no_caught_panic(outputs.map(drop));
                    let first = evaluator.first("fuzz", &expr, to_val(&inputs), &scope).await;
                    assert_no_caught_panic(first.map(drop));
                    let holds = evaluator.holds("fuzz", &expr, &scope).await;
                    assert_no_caught_panic(holds.map(drop));
                }
                Err(e) => assert_located(code, &e),
            }
        }
    });
    // Three evaluations at most, each stopped at the budget's time.
    let limit = BUDGET.time * 3 + STOP_SLACK;
    assert!(started.elapsed() <= limit, "took {:?}, past {limit:?}", started.elapsed());
}

fn assert_located(code: &str, error: &CompileError) {
    let range = &error.range;
    assert!(
        range.start <= range.end && range.end <= code.len(),
        "{range:?} is outside the {} bytes of {code:?}: {}",
        code.len(),
        error.message
    );
    assert!(!error.message.contains(CAUGHT_PANIC), "{}", error.message);
}

fn assert_no_caught_panic(result: Result<(), EvalError>) {
    if let Err(EvalError::Failed(message) | EvalError::Exhausted(message)) = result {
        assert!(!message.contains(CAUGHT_PANIC), "{message}");
    }
}
