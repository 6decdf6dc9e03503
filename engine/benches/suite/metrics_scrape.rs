//! What a scrape of `/metrics` costs: the exposition of a process serving
//! 50 workflows (4 steps each) over 20 connections, every series those
//! make filled in (runs by trigger and status, step and run histograms,
//! records by outcome, vendor requests by method and status class, plugin
//! calls, cron and webhook outcomes), encoded as Prometheus asks for it
//! (OpenMetrics) and as `curl` gets it (the 0.0.4 text format).

use std::time::{Duration, Instant};

use serde_json::json;
use weft::http::Method;
use weft::metrics::{CronOutcome, Metrics, WebhookOutcome};
use weft::store::{RunTrigger, Status, StepCounts};

use super::report::{Row, quantile};
use super::{BenchResult, Config};

const TARGET_SCRAPE_MS: f64 = 5.0;
const WORKFLOWS: usize = 50;
const CONNECTIONS: usize = 20;

fn filled() -> Metrics {
    let metrics = Metrics::new();
    for w in 0..WORKFLOWS {
        let workflow = format!("workflow-{w:02}");
        for trigger in [RunTrigger::Api, RunTrigger::Cron, RunTrigger::Webhook] {
            metrics.run_started(&workflow, &trigger);
        }
        for status in [Status::Succeeded, Status::Failed] {
            metrics.run_finished(&workflow, status, Duration::from_secs(3));
        }
        drop(metrics.run_active(&workflow));
        for step in ["read", "map", "push", "prune"] {
            let counts = StepCounts {
                read: 10,
                created: 3,
                updated: 2,
                unchanged: 5,
                failed: 1,
                ..StepCounts::default()
            };
            metrics.step_finished(&workflow, step, Duration::from_millis(200), counts);
        }
        metrics.cron_fired(&workflow, CronOutcome::Ran);
        metrics.cron_fired(&workflow, CronOutcome::SkippedOverlap);
        metrics.webhook_delivered(&workflow, WebhookOutcome::Accepted);
        metrics.webhook_delivered(&workflow, WebhookOutcome::BadSignature);
    }
    for c in 0..CONNECTIONS {
        let plugin = ["stripe", "baremetrics", "metronome", "growpanel", "stripe-scim"][c % 5];
        let connection = metrics.connection(&format!("connection-{c:02}"), plugin);
        for (method, status) in [
            (Method::Get, Some(200)),
            (Method::Post, Some(200)),
            (Method::Get, Some(429)),
            (Method::Post, Some(503)),
            (Method::Delete, None),
        ] {
            connection.request(method, status, Duration::from_millis(40));
        }
        connection.retry();
        connection.waited(Duration::from_millis(5));
        for op in ["list", "get", "upsert", "remove"] {
            metrics.plugin_called(plugin, op, Duration::from_millis(2), None);
        }
    }
    metrics
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let metrics = filled();
    let rounds = ((200.0 * config.scale).round() as usize).max(20);
    let mut open = Vec::with_capacity(rounds);
    let mut text = Vec::with_capacity(rounds);
    let mut bytes = (0, 0);
    for _ in 0..rounds {
        let started = Instant::now();
        let encoded = std::hint::black_box(metrics.encode());
        open.push(started.elapsed().as_secs_f64() * 1e3);
        bytes.0 = encoded.len();
        let started = Instant::now();
        let encoded = std::hint::black_box(metrics.encode_prometheus_text());
        text.push(started.elapsed().as_secs_f64() * 1e3);
        bytes.1 = encoded.len();
    }
    let series = metrics.encode().lines().filter(|l| !l.starts_with('#')).count();
    let (open_p50, open_p99) = (quantile(&mut open.clone(), 0.5), quantile(&mut open, 0.99));
    let (text_p50, text_p99) = (quantile(&mut text.clone(), 0.5), quantile(&mut text, 0.99));
    Ok(vec![
        Row::new(
            "metrics",
            format!("scrape: {WORKFLOWS} workflows, {CONNECTIONS} connections, {series} samples, OpenMetrics ({} KB)", bytes.0 / 1024),
            format!("p50 {open_p50:.2} ms, p99 {open_p99:.2} ms"),
        )
        .reference(format!("text 0.0.4 ({} KB) p50 {text_p50:.2} ms, p99 {text_p99:.2} ms", bytes.1 / 1024))
        .target(format!("<= {TARGET_SCRAPE_MS:.0} ms"), open_p50 <= TARGET_SCRAPE_MS && text_p50 <= TARGET_SCRAPE_MS)
        .figures(json!({ "rounds": rounds, "samples": series, "openmetrics_bytes": bytes.0, "openmetrics_p50_ms": open_p50, "openmetrics_p99_ms": open_p99, "text_bytes": bytes.1, "text_p50_ms": text_p50, "text_p99_ms": text_p99 })),
    ])
}
