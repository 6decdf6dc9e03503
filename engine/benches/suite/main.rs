//! weft's benchmark suite: what the engine costs over the client a user
//! would otherwise write, side by side in one run, as one table.
//!
//! ```sh
//! cargo bench -p weft --bench suite                 # everything, a table
//! cargo bench -p weft --bench suite -- --json       # the same as JSON
//! cargo bench -p weft --bench suite -- --only export,plugin
//! WEFT_BENCH_SCALE=0.1 cargo bench -p weft --bench suite   # a quick look
//! ```
//!
//! Sections (`--only` takes their names):
//!
//! - `export`: every customer of a Stripe emulator (100k) through `weft
//!   run`, a native reqwest + serde_json client and stripe-python.
//! - `plugin`: one `list` of a 100-record page with HTTP stubbed, on a
//!   warm instance and on a fresh one, next to a native parse; cold starts.
//! - `durable`: for-each bookkeeping with a native no-op connector, and the
//!   peak RSS of `weft run` on a sync of 100k and 1M records.
//! - `rate-limits`: weft's limiter against a naive retry-on-429 client.
//! - `serve`: a burst of 2,000 run starts through `weft serve`'s API at 100
//!   concurrent, then as many webhook deliveries: every one answered 202 or
//!   503, none lost, the answer's p50/p99, `/healthz` throughout.
//! - `expressions`: the map-heavy sync's expressions over 100k records with
//!   their budgets, next to jaq as it ran before budgets.
//! - `console`: the console's runs list and run detail with 100k runs of
//!   five steps in the store (server time, p50/p95), and its first page's
//!   weight.
//! - `metrics`: a scrape of `/metrics` (its exposition) with 50 workflows
//!   and 20 connections, both text formats.
//! - `retention`: the run store's size over 10,000 runs pruned to the
//!   newest 1,000 as `weft serve --retention` prunes, beside never pruned.
//! - `languages`: the connector `weft plugin new` writes in Rust, Python
//!   and JavaScript, built with the pinned tools: a warm `get` with HTTP
//!   stubbed, side by side; first compile; cold start from the cache.
//! - `fleet`: a fleet on PostgreSQL (`WEFT_TEST_POSTGRES`): for-each
//!   bookkeeping and store bytes per item beside sled, claim latency at 50
//!   runs/s, runs/s by one and three `weft serve` workers, and the 100k
//!   export with `--store postgres://…` beside native. Not in the default
//!   run (it needs a server): ask for it with `--only fleet`.
//! - `estimate`: a dry run's estimate of requests and duration against the
//!   real run, a sync between Stripe emulators at 25 r/s.
//! - `state-pages`: list bookkeeping with a state value committed per page
//!   beside the same list without state.
//!
//! `WEFT_BENCH_SCALE` scales every record count and duration (default 1).
//! The rate-limit scenarios run at a quarter of their published durations
//! in the suite unless `WEFT_BENCH_RATE_SCALE` says otherwise (1 is the
//! full 30 s / 90 s / 120 s of BENCHMARKS.md). `WEFT_BENCH_EXPORT_ROUNDS`
//! (default 5) sets the export's rounds, `WEFT_BENCH_PYTHON` the Python that
//! has stripe-python.
//!
//! For profiling: `--serve-stripe RECORDS PORT` serves a seeded Stripe
//! emulator until killed (to run `weft run` by hand under callgrind),
//! `--serve-sync RECORDS PORT` the sync bench's two (source on PORT, target
//! on PORT + 1), and
//! `WEFT_BENCH_PROFILE_CALLS=warm|fresh|native` makes the `plugin` section
//! run only that kind of call (then it prints no row; count instructions
//! with `valgrind --tool=callgrind`).

mod console;
mod durable;
mod export;
mod expressions;
mod fleet;
mod languages;
mod metrics_scrape;
mod plan_estimate;
mod plugin_call;
mod rate_limits;
mod report;
mod retention;
mod serve_burst;

use report::Row;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the command line and the environment asked for.
#[derive(Debug, Clone)]
pub struct Config {
    /// Multiplies every record count and duration.
    pub scale: f64,
    /// Print JSON instead of the table (progress still goes to stderr).
    pub json: bool,
}

const SECTIONS: &[&str] = &[
    "export",
    "plugin",
    "durable",
    "rate-limits",
    "serve",
    "expressions",
    "console",
    "metrics",
    "retention",
    "languages",
    "fleet",
    "estimate",
    "state-pages",
];

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The native export client runs in a process of its own.
    if let Some(at) = args.iter().position(|a| a == "--native-export") {
        return exit("native export", export::native_export(&args[at + 1..]));
    }
    // So does the native sync client.
    if let Some(at) = args.iter().position(|a| a == "--native-sync") {
        return exit("native sync", durable::native_sync(&args[at + 1..]));
    }
    // For profiling a client by hand: serve a seeded Stripe emulator.
    if let Some(at) = args.iter().position(|a| a == "--serve-stripe") {
        return exit("serve stripe", export::serve_stripe(&args[at + 1..]));
    }
    // Or the sync bench's two.
    if let Some(at) = args.iter().position(|a| a == "--serve-sync") {
        return exit("serve sync", durable::serve_sync(&args[at + 1..]));
    }
    // A missed target is a finding, not a failure: the table says so.
    exit("bench suite", run(&args))
}

fn exit(what: &str, result: BenchResult<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> BenchResult<()> {
    let json = args.iter().any(|a| a == "--json");
    let only: Vec<String> = match args.iter().position(|a| a == "--only") {
        Some(at) => args
            .get(at + 1)
            .ok_or("--only takes a list of sections")?
            .split(',')
            .map(str::to_owned)
            .collect(),
        // The fleet section needs a PostgreSQL server: only when asked.
        None => SECTIONS.iter().filter(|s| **s != "fleet").map(|s| (*s).to_owned()).collect(),
    };
    if let Some(unknown) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        return Err(format!(
            "unknown section {unknown:?}; the sections are {}",
            SECTIONS.join(", ")
        )
        .into());
    }
    let scale: f64 =
        std::env::var("WEFT_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let config = Config { scale, json };
    // Two workers, like the machine: the emulators live here.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rows: Vec<Row> = Vec::new();
    for section in SECTIONS.iter().filter(|s| only.iter().any(|o| o == *s)) {
        eprintln!("bench suite: {section}…");
        let section_rows = match *section {
            "export" => runtime.block_on(export::run(&config))?,
            "plugin" => runtime.block_on(plugin_call::run(&config))?,
            "durable" => runtime.block_on(durable::run(&config))?,
            "rate-limits" => runtime.block_on(rate_limits::run(&config))?,
            "serve" => runtime.block_on(serve_burst::run(&config))?,
            "expressions" => runtime.block_on(expressions::run(&config))?,
            "console" => runtime.block_on(console::run(&config))?,
            "metrics" => runtime.block_on(metrics_scrape::run(&config))?,
            "retention" => runtime.block_on(retention::run(&config))?,
            "languages" => runtime.block_on(languages::run(&config))?,
            "fleet" => runtime.block_on(fleet::run(&config))?,
            "estimate" => runtime.block_on(plan_estimate::estimate(&config))?,
            "state-pages" => runtime.block_on(plan_estimate::state_pages(&config))?,
            _ => unreachable!("sections are checked above"),
        };
        rows.extend(section_rows);
    }
    let machine = report::machine();
    if json {
        println!("{}", serde_json::to_string_pretty(&report::to_json(&rows, &machine, scale))?);
    } else {
        report::print_table(&rows, &machine);
    }
    Ok(())
}
