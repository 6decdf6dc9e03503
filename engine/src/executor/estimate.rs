//! A dry run's estimate of the real run: how many vendor requests it will
//! send per connection, and how long the rate limiter will make that take
//! at the limits in force (the connector's published limits, or the
//! workflow's `rate_limit` overrides).
//!
//! The model, stated so the figures can be judged:
//!
//! - reads: the requests the dry run itself sent on the connection (its
//!   lists and gets are the real run's), less the lookups only a plan makes
//!   (one get per upsert that carries an id, and per remove);
//! - writes: what the plan implies, counted as the built-in connectors
//!   spend requests: an upsert call looks its record up (a read) and then
//!   writes (a write) when it creates or changes something, so a planned
//!   create, update or upsert is a read and a write, an `unchanged` one a
//!   read; a batch of creates (100 a call, when the target takes batches)
//!   is one write; a remove is one write (an already-absent one too: the
//!   real run still asks). A sync calls for its creates, updates and
//!   removes, not for what is unchanged. A connector that spends requests
//!   otherwise is misjudged by the difference;
//! - time: the requests of each class spaced at the slowest bucket that
//!   counts them (the limiter's pace, its safety margin included), reads
//!   and writes one after the other, connections one after the other (the
//!   steps of a run are), except that a sync lists its source and its target
//!   at once: when they are two connections, the shorter listing (its pages
//!   at its connection's read pace) is not counted twice. Latency is not
//!   counted: against a limited vendor the pace dominates. With no limit in
//!   force the limiter adapts to the vendor, so no time is given for that
//!   connection.

use std::collections::BTreeMap;

use serde::Serialize;

use super::StepSummary;
use crate::connector::{Manifest, MethodClass, Op};
use crate::store::ConnectionTotals;
use crate::workflow::{Action, Workflow};

/// Records per batch upsert (the sync's batch).
const BATCH: u64 = 100;

/// A dry run's estimate of the real run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlanEstimate {
    /// Vendor requests the real run will send, over all connections.
    pub requests: u64,
    /// Seconds the limiter will make them take, when every connection
    /// used has a limit in force.
    pub seconds: Option<f64>,
    /// Per connection.
    pub connections: BTreeMap<String, ConnectionEstimate>,
}

/// One connection's part of a [`PlanEstimate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConnectionEstimate {
    /// Read requests (lists, gets).
    pub reads: u64,
    /// Write requests (upserts, batches, removes).
    pub writes: u64,
    /// The limits in force: requests per second by the class they count
    /// (the limiter's pace, margin included); empty when none is.
    pub limits: BTreeMap<String, f64>,
    /// Seconds at those limits; `None` without a limit for a class used.
    pub seconds: Option<f64>,
}

/// The limits in force on one connection: `(class, requests per second)`
/// of each bucket, and whether they are limits (published or overridden)
/// rather than the adaptive pace of a vendor that publishes none.
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitsInForce {
    pub(crate) rates: Vec<(MethodClass, f64)>,
    pub(crate) bounded: bool,
}

/// Estimates the real run from a successful dry run's steps and figures.
pub(crate) fn estimate(
    workflow: &Workflow,
    steps: &[StepSummary],
    totals: &BTreeMap<String, ConnectionTotals>,
    manifests: &BTreeMap<String, Manifest>,
    limits: &BTreeMap<String, LimitsInForce>,
) -> PlanEstimate {
    let mut per: BTreeMap<String, ConnectionEstimate> = BTreeMap::new();
    // Each sync's two listings on two connections: (source, its pages,
    // target, its pages).
    let mut overlaps: Vec<(&str, u64, &str, u64)> = Vec::new();
    for (name, t) in totals {
        per.entry(name.clone()).or_default().reads = t.requests;
    }
    for summary in steps {
        let (Some(step), Some(plan)) = (workflow.step(&summary.id), &summary.plan) else {
            continue;
        };
        let entry = per.entry(step.connection.clone()).or_default();
        match &step.action {
            Action::Upsert { .. } => {
                // Each planned with its id was looked up by the plan; the
                // real run's connector looks each up itself.
                let looked_up = plan.create + plan.update + plan.unchanged;
                entry.reads = entry.reads.saturating_sub(looked_up);
                entry.reads += looked_up + plan.upsert;
                entry.writes += plan.create + plan.update + plan.upsert;
            }
            Action::Remove { .. } => {
                let looked_up = plan.remove + plan.already_absent;
                entry.reads = entry.reads.saturating_sub(looked_up);
                entry.writes += plan.remove + plan.already_absent;
            }
            Action::Sync(spec) => {
                if let Some(from) = spec.from.resource()
                    && from.connection != step.connection
                {
                    let pages = |connection: &str, resource: &str, records: &str| {
                        let size = manifests
                            .get(connection)
                            .and_then(|m| m.resource(resource))
                            .map_or(1, |r| u64::from(r.max_page_size.max(1)));
                        let records = summary
                            .output
                            .as_ref()
                            .and_then(|o| o.get(records))
                            .and_then(serde_json::Value::as_u64)
                            .unwrap_or(0);
                        // An empty listing is a page too.
                        records.div_ceil(size).max(1)
                    };
                    overlaps.push((
                        from.connection.as_str(),
                        pages(&from.connection, &from.resource, "source_records"),
                        step.connection.as_str(),
                        pages(&step.connection, &step.resource, "target_records"),
                    ));
                }
                let batches = manifests
                    .get(&step.connection)
                    .and_then(|m| m.resource(&step.resource))
                    .is_some_and(|r| r.offers(Op::UpsertBatch));
                let (create_reads, create_writes) = if batches {
                    (0, plan.create.div_ceil(BATCH))
                } else {
                    (plan.create, plan.create)
                };
                entry.reads += create_reads + plan.update;
                entry.writes += create_writes + plan.update + plan.remove;
            }
            Action::List { .. } | Action::Get { .. } | Action::Fail { .. } => {}
        }
    }
    let mut total = PlanEstimate::default();
    let mut seconds = Some(0.0);
    for (name, entry) in &mut per {
        let in_force = limits.get(name).cloned().unwrap_or_default();
        if in_force.bounded {
            entry.limits = in_force
                .rates
                .iter()
                .map(|(class, rate)| (class.as_str().to_owned(), *rate))
                .collect();
        }
        entry.seconds = if entry.reads + entry.writes == 0 {
            Some(0.0)
        } else if in_force.bounded {
            match (time(&in_force, entry.reads, true), time(&in_force, entry.writes, false)) {
                (Some(r), Some(w)) => Some(r + w),
                _ => None,
            }
        } else {
            None
        };
        total.requests += entry.reads + entry.writes;
        seconds = match (seconds, entry.seconds) {
            (Some(s), Some(e)) => Some(s + e),
            _ => None,
        };
    }
    // A sync's two listings overlap: the shorter is not waited for twice.
    for (source, source_pages, target, target_pages) in overlaps {
        let listing = |name: &str, pages: u64| {
            limits.get(name).filter(|l| l.bounded).and_then(|l| time(l, pages, true))
        };
        if let (Some(s), Some(a), Some(b)) =
            (seconds, listing(source, source_pages), listing(target, target_pages))
        {
            seconds = Some((s - a.min(b)).max(0.0));
        }
    }
    total.seconds = seconds;
    total.connections = per;
    total
}

/// Seconds `count` requests (reads or writes) take at the slowest pace of
/// the buckets in force that count them; `None` without one.
fn time(in_force: &LimitsInForce, count: u64, read: bool) -> Option<f64> {
    let pace = in_force
        .rates
        .iter()
        .filter(|(class, _)| counts(*class, read))
        .map(|(_, rate)| *rate)
        .fold(None, |slowest: Option<f64>, rate| Some(slowest.map_or(rate, |s| s.min(rate))));
    match (count, pace) {
        (0, _) => Some(0.0),
        (n, Some(rate)) if rate > 0.0 => Some(n as f64 / rate),
        _ => None,
    }
}

/// Whether a bucket of `class` counts a read (a GET) or a write (taken as
/// a POST, what upserts send; a limit only for PUT, PATCH or DELETE is not
/// applied to writes here).
fn counts(class: MethodClass, read: bool) -> bool {
    match class {
        MethodClass::Any => true,
        MethodClass::Read | MethodClass::Get => read,
        MethodClass::Write | MethodClass::Post => !read,
        MethodClass::Put | MethodClass::Patch | MethodClass::Delete => false,
    }
}
