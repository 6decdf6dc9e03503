//! What an expression budget costs on the map-heavy sync: the per-record
//! work of the durable section's sync (parse a Stripe customer, `map` it to
//! `{email, name, metadata: {source_id: .id}}`, evaluate its `key`
//! `.email`, write the result as JSON), over 100,000 records in pages of
//! 100, two ways, alternating round by round in one run:
//!
//! - weft: as a sync runs it now, a page a job on an evaluation thread,
//!   each record one evaluation under the default budget (every step and
//!   byte charged, depth tracked);
//! - reference: as weft ran it before budgets, jaq with its own value type,
//!   nothing counted (`from_val` as it was); and the same with weft's
//!   direct JSON writer, so the budget's own cost shows. Each runs on a
//!   thread of its own, as weft's side does.
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
    let funs = jaq_core::funs::<D>()
        .chain(jaq_std::funs::<D>())
        .chain(jaq_json::funs::<D>())
        .filter(|(name, _, _)| *name != "env");
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(&arena, File { code: text, path: () })
        .map_err(|_| format!("{text} does not parse"))?;
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
        Val::Num(Num::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
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

/// A jaq value written as JSON directly, as weft's evaluator writes its
/// own (without counting): the reference for what the budget alone costs.
struct Direct<'a>(&'a jaq_json::Val);

impl serde::Serialize for Direct<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use jaq_json::{Num, Val};
        use serde::ser::{SerializeMap as _, SerializeSeq as _};
        match self.0 {
            Val::Null => serializer.serialize_unit(),
            Val::Bool(b) => serializer.serialize_bool(*b),
            Val::Num(Num::Int(i)) => serializer.serialize_i64(*i as i64),
            Val::Num(Num::Float(f)) if f.is_finite() => serializer.serialize_f64(*f),
            Val::Num(_) => serializer.serialize_unit(),
            Val::TStr(b) | Val::BStr(b) => serializer.serialize_str(&String::from_utf8_lossy(b)),
            Val::Arr(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(&Direct(item))?;
                }
                seq.end()
            }
            Val::Obj(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields.iter() {
                    match key {
                        Val::TStr(b) | Val::BStr(b) => {
                            map.serialize_entry(&String::from_utf8_lossy(b), &Direct(value))?
                        }
                        other => map.serialize_entry(&other.to_string(), &Direct(value))?,
                    }
                }
                map.end()
            }
        }
    }
}

/// How a reference writes JSON: through `from_val` as weft did before
/// budgets, or directly as the budgeted evaluator does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    FromVal,
    Direct,
}

/// A reference: every page on this thread, nothing counted. Returns the
/// bytes of JSON and key text written, so neither side's work can be
/// skipped.
fn reference(
    map: &Plain,
    key: &Plain,
    scope: &[jaq_json::Val; 4],
    pages: &[Vec<String>],
    writer: Writer,
) -> BenchResult<usize> {
    // The scope's values cloned into each evaluation, as weft did.
    let vars = || Vars::new(scope.clone());
    let mut written = 0;
    for page in pages {
        for text in page {
            let record: jaq_json::Val = serde_json::from_str(text)?;
            for desired in
                map.id.run((Ctx::<data::JustLut<jaq_json::Val>>::new(&map.lut, vars()), record))
            {
                let desired = desired.map_err(|_| "map failed")?;
                let first = key
                    .id
                    .run((
                        Ctx::<data::JustLut<jaq_json::Val>>::new(&key.lut, vars()),
                        desired.clone(),
                    ))
                    .next();
                let key = first.transpose().map_err(|_| "key failed")?;
                let (key_text, json) = match writer {
                    Writer::FromVal => {
                        let key_text = match key.map(|k| from_val(&k)) {
                            Some(Value::String(s)) => s,
                            Some(other) => other.to_string(),
                            None => String::new(),
                        };
                        (key_text, from_val(&desired).to_string())
                    }
                    Writer::Direct => {
                        let key_text = match &key {
                            Some(jaq_json::Val::TStr(b) | jaq_json::Val::BStr(b)) => {
                                String::from_utf8_lossy(b).into_owned()
                            }
                            Some(other) => serde_json::to_string(&Direct(other))?,
                            None => String::new(),
                        };
                        (key_text, serde_json::to_string(&Direct(&desired))?)
                    }
                };
                written += key_text.len() + json.len();
            }
        }
    }
    Ok(written)
}

/// weft: each page a job on an evaluation thread, each record one
/// evaluation under the default budget, as a sync's scan does it.
async fn metered(
    evaluator: &Evaluator,
    map: &Expr,
    key: &Expr,
    scope: &Scope,
    pages: Vec<Vec<String>>,
) -> BenchResult<usize> {
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
                            let key_text = ev
                                .first("sync.key", &key, desired.clone(), &scope)?
                                .and_then(|k| ev.key_text(&k))
                                .unwrap_or_default();
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

/// A thread the references run on, the same one every round, as weft's
/// side runs on its evaluation threads: each side then allocates in a warm
/// arena of its own, not in the one the test data was built in.
struct ReferenceThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl ReferenceThread {
    fn start() -> BenchResult<ReferenceThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new().name("reference".into()).spawn(move || {
            while let Ok(job) = queue.recv() {
                job();
            }
        })?;
        Ok(ReferenceThread { jobs })
    }

    /// Runs `work` there and waits for it.
    fn run(
        &self,
        work: impl FnOnce() -> BenchResult<usize> + Send + 'static,
    ) -> BenchResult<usize> {
        let (done, result) = std::sync::mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work().map_err(|e| e.to_string()));
            }))
            .map_err(|_| "the reference thread stopped")?;
        Ok(result.recv()??)
    }
}

/// The durable section's for-each template, rendered for `items` items as
/// a for-each does it: 256 items a job on an evaluation thread, each item
/// an evaluation with a budget of its own.
async fn per_item(
    evaluator: &Evaluator,
    template: &weft::expr::Template,
    scope: &Scope,
    items: usize,
) -> BenchResult<usize> {
    let mut written = 0;
    let mut next = 0;
    while next < items {
        let scopes: Vec<Scope> = (next..items.min(next + 256))
            .map(|i| scope.with_item_val(weft::expr::to_val(&json!(i))))
            .collect();
        next += scopes.len();
        let template = template.clone();
        written += evaluator
            .run(move |session| {
                let mut written = 0;
                for scope in &scopes {
                    written += session
                        .evaluate(|ev| ev.render("record", &template, scope))?
                        .to_string()
                        .len();
                }
                Ok(written)
            })
            .await?;
    }
    Ok(written)
}

/// The same template's two expressions by jaq, unbudgeted, on one thread.
fn per_item_reference(
    id: &Plain,
    email: &Plain,
    scope: &[jaq_json::Val; 4],
    items: usize,
) -> BenchResult<usize> {
    let mut written = 0;
    for i in 0..items {
        let item = jaq_json::Val::from(i as isize);
        // The context object `.` for the item, as weft built it before
        // budgets.
        let fields =
            [("inputs", &scope[0]), ("steps", &scope[1]), ("item", &item), ("run", &scope[3])];
        let context = jaq_json::Val::obj(
            fields
                .into_iter()
                .map(|(k, v)| (jaq_json::Val::from(k.to_owned()), v.clone()))
                .collect(),
        );
        std::hint::black_box(&context);
        let vars = Vars::new([scope[0].clone(), scope[1].clone(), item, scope[3].clone()]);
        let value = |f: &Plain| -> BenchResult<Value> {
            let ctx = Ctx::<data::JustLut<jaq_json::Val>>::new(&f.lut, vars.clone());
            let first =
                f.id.run((ctx, jaq_json::Val::Null))
                    .next()
                    .transpose()
                    .map_err(|_| "template failed")?;
            Ok(first.as_ref().map_or(Value::Null, from_val))
        };
        let email = match value(email)? {
            Value::String(s) => format!("user{s}@example.com"),
            other => format!("user{other}@example.com"),
        };
        let record = json!({ "id": value(id)?, "email": email });
        written += record.to_string().len();
    }
    Ok(written)
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let records: usize = std::env::var("WEFT_BENCH_EXPR_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(((100_000.0 * config.scale).round() as usize).max(1000));
    let rounds: usize = std::env::var("WEFT_BENCH_EXPR_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9)
        .max(1);
    let pages: Vec<Vec<String>> = (0..records)
        .map(customer)
        .collect::<Vec<_>>()
        .chunks(PAGE)
        .map(<[String]>::to_vec)
        .collect();
    let (plain_map, plain_key) =
        (std::sync::Arc::new(plain(MAP)?), std::sync::Arc::new(plain(KEY)?));
    let pages = std::sync::Arc::new(pages);
    let reference_thread = ReferenceThread::start()?;
    let (map, key) =
        (Expr::compile(MAP).map_err(|e| e.message)?, Expr::compile(KEY).map_err(|e| e.message)?);
    let (inputs, steps, run) = (
        json!({}),
        json!({}),
        json!({"id": "bench", "workflow": "sync-bench", "trigger": "manual", "dry_run": false}),
    );
    let scope = Scope::new(&inputs, &steps, &run);
    let plain_scope: std::sync::Arc<[jaq_json::Val; 4]> = std::sync::Arc::new([
        serde_json::from_value(inputs)?,
        serde_json::from_value(steps)?,
        jaq_json::Val::Null,
        serde_json::from_value(run)?,
    ]);
    // The reference's work on its thread, in the way `writer` says.
    let on_thread = |writer: Writer| {
        let (map, key, scope, pages) =
            (plain_map.clone(), plain_key.clone(), plain_scope.clone(), pages.clone());
        reference_thread.run(move || reference(&map, &key, &scope, &pages, writer))
    };
    let evaluator = Evaluator::default();

    // One of each first, unmeasured: threads started, caches warm, and
    // both sides must write the same output.
    let expected = on_thread(Writer::FromVal)?;
    let direct = on_thread(Writer::Direct)?;
    let got = metered(&evaluator, &map, &key, &scope, pages.to_vec()).await?;
    if got != expected || direct != expected {
        return Err(format!(
            "the sides wrote different output: {got}, {expected} and {direct} bytes"
        )
        .into());
    }
    // Seconds per round: weft, the reference as before budgets, and the
    // reference that writes JSON as weft now does.
    let mut seconds: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        // Rotate which goes first, so none always runs on a warmer or
        // cooler machine.
        for turn in 0..3 {
            let side = (round + turn) % 3;
            let started = Instant::now();
            match side {
                0 => {
                    let owned = pages.to_vec();
                    let started = Instant::now();
                    metered(&evaluator, &map, &key, &scope, owned).await?;
                    seconds[0].push(started.elapsed().as_secs_f64());
                    continue;
                }
                1 => on_thread(Writer::FromVal)?,
                _ => on_thread(Writer::Direct)?,
            };
            seconds[side].push(started.elapsed().as_secs_f64());
        }
    }
    let [weft_seconds, before_seconds, direct_seconds] = seconds;
    let (weft, before, direct) =
        (median(&weft_seconds), median(&before_seconds), median(&direct_seconds));
    let spread = |samples: &[f64]| {
        let mut sorted = samples.to_vec();
        json!({ "median": median(samples), "min": quantile(&mut sorted, 0.0), "max": quantile(&mut sorted, 1.0), "all": samples })
    };
    let rate = |seconds: f64| grouped(records as f64 / seconds);
    let rate_of = |count: usize, seconds: f64| grouped(count as f64 / seconds);
    let range = |samples: &[f64]| {
        let mut sorted = samples.to_vec();
        format!(
            "{:.0}–{:.0} ms",
            quantile(&mut sorted, 0.0) * 1e3,
            quantile(&mut sorted, 1.0) * 1e3
        )
    };
    let what = |how: &str| {
        format!(
            "map + key + JSON of {} Stripe customers (the sync bench's expressions), {how}; median of {rounds}",
            grouped(records as f64)
        )
    };
    let figures = json!({
        "records": records,
        "page": PAGE,
        "rounds": rounds,
        "weft_seconds": spread(&weft_seconds),
        "before_budgets_seconds": spread(&before_seconds),
        "unbudgeted_same_writer_seconds": spread(&direct_seconds),
    });
    // The for-each's record template, as the durable section's for-each.
    let items = records * 2;
    let template = weft::expr::Template::compile(
        json!({ "id": "${{ $item }}", "email": "user${{ $item }}@example.com" }),
    )
    .map_err(|e| e.error.message)?;
    let (plain_id, plain_email) =
        (std::sync::Arc::new(plain("$item")?), std::sync::Arc::new(plain("$item")?));
    let mut item_seconds: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds.div_ceil(2) {
        for turn in 0..2 {
            let side = (round + turn) % 2;
            let started = Instant::now();
            if side == 0 {
                per_item(&evaluator, &template, &scope, items).await?;
            } else {
                let (id, email, scope) =
                    (plain_id.clone(), plain_email.clone(), plain_scope.clone());
                reference_thread.run(move || per_item_reference(&id, &email, &scope, items))?;
            }
            item_seconds[side].push(started.elapsed().as_secs_f64());
        }
    }
    let [job_seconds, inline_seconds] = item_seconds;
    let (job, inline) = (median(&job_seconds), median(&inline_seconds));
    let per_item_figures = json!({ "items": items, "in_flight": 16, "job_per_item_seconds": spread(&job_seconds), "unbudgeted_inline_seconds": spread(&inline_seconds) });
    Ok(vec![
        Row::new(
            "expressions",
            format!(
                "a for-each's record template for {} items, 256 items a job; median of {}",
                grouped(items as f64),
                job_seconds.len()
            ),
            format!("{} items/s ({})", rate_of(items, job), range(&job_seconds)),
        )
        .reference(format!(
            "{} items/s ({}) as before budgets: unbudgeted, one thread",
            rate_of(items, inline),
            range(&inline_seconds)
        ))
        .result(format!("{:+.1}% time", (job / inline - 1.0) * 100.0))
        .figures(per_item_figures),
        Row::new(
            "expressions",
            what("budgeted, a page a job on an evaluation thread"),
            format!("{} records/s ({})", rate(weft), range(&weft_seconds)),
        )
        .reference(format!(
            "{} records/s ({}) as before budgets: unbudgeted, from_val",
            rate(before),
            range(&before_seconds)
        ))
        .result(format!("{:+.1}% time", (weft / before - 1.0) * 100.0))
        .target(
            format!("<= +{:.0}%", TARGET_OVERHEAD * 100.0),
            weft / before - 1.0 <= TARGET_OVERHEAD,
        )
        .figures(figures.clone()),
        Row::new(
            "expressions",
            what("the budget alone: budgeted vs the same work unbudgeted"),
            format!("{} records/s ({})", rate(weft), range(&weft_seconds)),
        )
        .reference(format!(
            "{} records/s ({}) unbudgeted, weft's JSON writer",
            rate(direct),
            range(&direct_seconds)
        ))
        .result(format!("{:+.1}% time", (weft / direct - 1.0) * 100.0))
        .target(
            format!("<= +{:.0}%", TARGET_OVERHEAD * 100.0),
            weft / direct - 1.0 <= TARGET_OVERHEAD,
        )
        .figures(figures),
    ])
}
