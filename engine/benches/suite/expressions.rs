//! What an expression budget costs on the map-heavy sync: the per-record
//! work of the durable section's sync (parse a Stripe customer, `map` it to
//! `{email, name, metadata: {source_id: .id}}`, evaluate its `key`
//! `.email`, write the result as JSON), over 100,000 records in pages of
//! 100, two ways, alternating round by round in one run:
//!
//! - weft: as a sync runs it now, a page a job on an evaluation thread,
//!   each record one evaluation under the default budget (every step and
//!   byte charged, depth tracked);
//! - reference: as weft ran it before budgets, jaq with its own value type
//!   on the calling thread, nothing counted (`from_val` as it was).
//!
//! The HTTP, the plugin and the store of a real sync come on top of both,
//! so the share of a whole sync is smaller than the figure here.
//!
//! `WEFT_BENCH_EXPR_RECORDS` sets the record count (default 100,000 times
//! the scale), `WEFT_BENCH_EXPR_ROUNDS` the rounds of each (default 9).

use std::time::Instant;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data};
use serde_json::{Value, json};
use weft::expr::{Evaluator, Expr, Scope};

use super::report::{Row, grouped, median, quantile};
use super::{BenchResult, Config};

const MAP: &str = "{email, name, metadata: {source_id: .id}}";
const KEY: &str = ".email";
const PAGE: usize = 100;

/// The overhead the issue allows.
const TARGET_OVERHEAD: f64 = 0.03;

type Plain = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<jaq_json::Val>>>;

/// A customer as the Stripe emulator lists it.
fn customer(i: usize) -> String {
    json!({
        "id": format!("cus_{i:014}"),
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": 1_700_000_000 + i,
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": null,
        "email": format!("user{i}@sync.example"),
        "invoice_prefix": format!("{:08X}", i),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null},
        "livemode": false,
        "metadata": {},
        "name": format!("User {i}"),
        "phone": null,
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null
    })
    .to_string()
}

/// Compiles `text` as weft did before budgets: jaq's value type, the
/// standard library, `env` left out.
fn plain(text: &str) -> BenchResult<Plain> {
    type D = data::JustLut<jaq_json::Val>;
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs::<D>().chain(jaq_std::funs::<D>()).chain(jaq_json::funs::<D>()).filter(|(name, _, _)| *name != "env");
    let arena = Arena::default();
    let modules = Loader::new(defs).load(&arena, File { code: text, path: () }).map_err(|_| format!("{text} does not parse"))?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(["$inputs", "$steps", "$item", "$run"])
        .compile(modules)
        .map_err(|_| format!("{text} does not compile").into())
}

/// weft's `from_val` before budgets.
fn from_val(value: &jaq_json::Val) -> Value {
    use jaq_json::{Num, Val};
    match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Val::Num(other) => serde_json::from_str(&other.to_string()).unwrap_or(Value::Null),
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(items) => Value::Array(items.iter().map(from_val).collect()),
        Val::Obj(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => other.to_string(),
                    };
                    (key, from_val(v))
                })
                .collect(),
        ),
    }
}

/// The reference: every page on this thread, as before budgets. Returns
/// the bytes of JSON and key text written, so neither side's work can be
/// skipped.
fn reference(map: &Plain, key: &Plain, scope: &[jaq_json::Val; 4], pages: &[Vec<String>]) -> BenchResult<usize> {
    // The scope's values cloned into each evaluation, as weft did.
    let vars = || Vars::new(scope.clone());
    let mut written = 0;
    for page in pages {
        for text in page {
            let record: jaq_json::Val = serde_json::from_str(text)?;
            for desired in map.id.run((Ctx::<data::JustLut<jaq_json::Val>>::new(&map.lut, vars()), record)) {
                let desired = desired.map_err(|_| "map failed")?;
                let first = key.id.run((Ctx::<data::JustLut<jaq_json::Val>>::new(&key.lut, vars()), desired.clone())).next();
                let key_text = match first.transpose().map_err(|_| "key failed")?.map(|k| from_val(&k)) {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                written += key_text.len() + from_val(&desired).to_string().len();
            }
        }
    }
    Ok(written)
}

/// weft: each page a job on an evaluation thread, each record one
/// evaluation under the default budget, as a sync's scan does it.
async fn metered(evaluator: &Evaluator, map: &Expr, key: &Expr, scope: &Scope, pages: Vec<Vec<String>>) -> BenchResult<usize> {
    let mut written = 0;
    for page in pages {
        let (map, key, scope) = (map.clone(), key.clone(), scope.clone());
        written += evaluator
            .run(move |session| {
                let mut written = 0;
                for text in &page {
                    let record = weft::expr::parse_val(text)?;
                    session.evaluate(|ev| {
                        for desired in ev.all("map", &map, record, &scope)? {
                            let key_text = ev.first("sync.key", &key, desired.clone(), &scope)?.and_then(|k| ev.key_text(&k)).unwrap_or_default();
                            written += key_text.len() + ev.json_text(&desired).len();
                        }
                        Ok(())
                    })?;
                }
                Ok(written)
            })
            .await?;
    }
    Ok(written)
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let records: usize = std::env::var("WEFT_BENCH_EXPR_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(((100_000.0 * config.scale).round() as usize).max(1000));
    let rounds: usize = std::env::var("WEFT_BENCH_EXPR_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(9).max(1);
    let pages: Vec<Vec<String>> = (0..records).map(customer).collect::<Vec<_>>().chunks(PAGE).map(<[String]>::to_vec).collect();
    let (plain_map, plain_key) = (plain(MAP)?, plain(KEY)?);
    let (map, key) = (Expr::compile(MAP).map_err(|e| e.message)?, Expr::compile(KEY).map_err(|e| e.message)?);
    let (inputs, steps, run) = (json!({}), json!({}), json!({"id": "bench", "workflow": "sync-bench", "trigger": "manual", "dry_run": false}));
    let scope = Scope::new(&inputs, &steps, &run);
    let plain_scope: [jaq_json::Val; 4] = [serde_json::from_value(inputs)?, serde_json::from_value(steps)?, jaq_json::Val::Null, serde_json::from_value(run)?];
    let evaluator = Evaluator::default();

    // One of each first, unmeasured: threads started, caches warm, and
    // both sides must write the same output.
    let expected = reference(&plain_map, &plain_key, &plain_scope, &pages)?;
    let got = metered(&evaluator, &map, &key, &scope, pages.clone()).await?;
    if got != expected {
        return Err(format!("the two sides wrote different output: {got} and {expected} bytes").into());
    }
    let (mut weft_seconds, mut reference_seconds) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer
        // or cooler machine.
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            if side == 0 {
                let started = Instant::now();
                reference(&plain_map, &plain_key, &plain_scope, &pages)?;
                reference_seconds.push(started.elapsed().as_secs_f64());
            } else {
                let owned = pages.clone();
                let started = Instant::now();
                metered(&evaluator, &map, &key, &scope, owned).await?;
                weft_seconds.push(started.elapsed().as_secs_f64());
            }
        }
    }
    let (weft, reference) = (median(&weft_seconds), median(&reference_seconds));
    let overhead = weft / reference - 1.0;
    let spread = |samples: &[f64]| {
        let mut sorted = samples.to_vec();
        (quantile(&mut sorted, 0.0), quantile(&mut sorted, 1.0))
    };
    let ((weft_min, weft_max), (reference_min, reference_max)) = (spread(&weft_seconds), spread(&reference_seconds));
    let rate = |seconds: f64| grouped(records as f64 / seconds);
    Ok(vec![
        Row::new(
            "expressions",
            format!("map + key + JSON of {} Stripe customers (sync bench's expressions), budgeted; median of {rounds}", grouped(records as f64)),
            format!("{} records/s", rate(weft)),
        )
        .reference(format!("{} records/s unbudgeted, inline (jaq as before)", rate(reference)))
        .result(format!("{:+.1}% time", overhead * 100.0))
        .target(format!("<= +{:.0}%", TARGET_OVERHEAD * 100.0), overhead <= TARGET_OVERHEAD)
        .figures(json!({
            "records": records,
            "page": PAGE,
            "rounds": rounds,
            "weft_seconds_median": weft,
            "weft_seconds_min": weft_min,
            "weft_seconds_max": weft_max,
            "reference_seconds_median": reference,
            "reference_seconds_min": reference_min,
            "reference_seconds_max": reference_max,
            "weft_seconds": weft_seconds,
            "reference_seconds": reference_seconds,
            "overhead": overhead,
        })),
    ])
}
