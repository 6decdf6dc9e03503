//! Retention: the run store's size over a long soak of scheduled runs,
//! pruned as `weft serve --retention` prunes (keeping the newest 1,000
//! runs), beside the same soak never pruned. Bounded means the pruned
//! store ends about the size it had once its window was full.
//!
//! Each run is a for-each of 20 upserts through a native no-op connector
//! that also sets the workflow's state, so a run leaves a run record, its
//! row and index entries, two steps, item groups, history and a state
//! change. `WEFT_BENCH_RUNS` sets the soak's length (default 10,000 times
//! the scale).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use weft::endpoint::Endpoint;
use weft::executor::{Executor, RunOptions, Silent};
use weft::runtime::{Runtime, RuntimeConfig};
use weft::store::{RunStore, Status};
use weft::workflow::Workflow;

use super::durable::{NoOp, dir_size};
use super::report::{Row, grouped};
use super::{BenchResult, Config};

/// Runs kept by the pruned soak.
const WINDOW: usize = 1000;

struct Soak {
    /// Store bytes after each tenth of the soak.
    sizes: Vec<u64>,
    seconds: f64,
    runs_left: usize,
}

async fn soak(runs: usize, prune: bool) -> BenchResult<Soak> {
    let dir = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let path = dir.path().join("soak.toml");
    std::fs::write(
        &path,
        "[workflow]\nname = \"soak\"\n\n[state.done]\ndefault = 0\n\n[connections.noop]\nplugin = \"noop\"\n\n[[step]]\nid = \"first\"\nget = \"noop.records\"\nkey = \"r1\"\n\n[[step]]\nid = \"each\"\nfor_each = \"[range(0; 20)]\"\nupsert = \"noop.records\"\nrecord = { id = \"${{ $item }}\", email = \"user${{ $item }}@example.com\" }\nstate = { done = \"${{ $state.done + 1 }}\" }\n",
    )?;
    let workflow = Workflow::load(&path)?;
    let executor =
        Executor::new(Runtime::new(RuntimeConfig::default())?, RunStore::open(state.path())?);
    let endpoint: Arc<dyn Endpoint> = Arc::new(NoOp::new());
    let options = RunOptions {
        endpoints: BTreeMap::from([("noop".to_owned(), endpoint)]),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let mut created = Vec::with_capacity(runs);
    let mut sizes = Vec::new();
    let tenth = (runs / 10).max(1);
    for n in 1..=runs {
        let summary = executor.start(&workflow, &options, &Silent).await?;
        if summary.status != Status::Succeeded {
            return Err(format!("soak run {n} did not succeed: {:?}", summary.error).into());
        }
        created.push(executor.store().run(&summary.run_id).await?.created_ms);
        // As `weft serve --retention` does, now and then: everything older
        // than the WINDOW-th newest run goes.
        if prune && n % (WINDOW / 4).max(1) == 0 && n > WINDOW {
            let cutoff = created[n - WINDOW];
            executor.store().prune_runs(cutoff, false).await?;
        }
        if n % tenth == 0 {
            sizes.push(dir_size(state.path()));
        }
    }
    let runs_left = executor.store().runs().await?.len();
    Ok(Soak { sizes, seconds: started.elapsed().as_secs_f64(), runs_left })
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let runs: usize = std::env::var("WEFT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(((10_000.0 * config.scale).round() as usize).max(2 * WINDOW));
    eprintln!("  {} runs, pruned to the newest {}…", grouped(runs as f64), grouped(WINDOW as f64));
    let pruned = soak(runs, true).await?;
    eprintln!("  {} runs, never pruned…", grouped(runs as f64));
    let kept = soak(runs, false).await?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let last = |s: &Soak| s.sizes.last().copied().unwrap_or(0);
    // sled does not give freed space back to the file system; it reuses
    // it. Bounded means the store stops growing: the largest size of the
    // soak's second half against the largest of its first.
    let half = pruned.sizes.len() / 2;
    let first_half = pruned.sizes[..half].iter().copied().max().unwrap_or(0).max(1);
    let second_half = pruned.sizes[half..].iter().copied().max().unwrap_or(0);
    let growth = second_half as f64 / first_half as f64;
    Ok(vec![
        Row::new(
            "retention",
            format!(
                "store after {} runs, pruned to the newest {} (as --retention does)",
                grouped(runs as f64),
                grouped(WINDOW as f64)
            ),
            format!("{:.1} MiB", mib(last(&pruned))),
        )
        .reference(format!("{:.1} MiB never pruned", mib(last(&kept))))
        .result(format!("second half's largest {growth:.2}x the first half's"))
        .figures(json!({
            "runs": runs,
            "window": WINDOW,
            "pruned_sizes_bytes_per_tenth": pruned.sizes,
            "unpruned_sizes_bytes_per_tenth": kept.sizes,
            "runs_left_pruned": pruned.runs_left,
            "runs_left_unpruned": kept.runs_left,
            "seconds_pruned": pruned.seconds,
            "seconds_unpruned": kept.seconds,
        })),
    ])
}
