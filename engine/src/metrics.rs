//! The process's metrics, served by `weft serve` as `GET /metrics` in the
//! OpenMetrics text format that Prometheus scrapes: runs, steps, records,
//! vendor HTTP, plugin calls, cron firings and webhook deliveries.
//!
//! One [`Metrics`] is made per process and shared (an `Arc`) by the
//! executor, every connection's HTTP policy and the server. Labels carry
//! only names from the served workflows and plugins (workflow, step,
//! connection, plugin, op) and fixed words (trigger, status, outcome,
//! method, status class), never a run id, a record id or a value from a
//! request, so the number of series does not grow with the runs.
//!
//! The HTTP send path takes its counters from a [`ConnectionMetrics`]
//! resolved once per connection, so a request costs a few atomic adds,
//! not a look-up by labels.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::connector::MethodClass;
use crate::http::{Method, STATUS_CLASSES, status_class};
use crate::store::{RunTrigger, Status, StepCounts};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`Metrics::encode_prometheus_text`]'s text.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 5 ms to about 3 hours: runs, steps and plugin calls.
fn long_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 4.0, 12))
}

/// Seconds, from 1 ms to about 65 s: one vendor request.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunStartLabels {
    workflow: String,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunEndLabels {
    workflow: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    workflow: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabels {
    workflow: String,
    step: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: String,
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    connection: String,
    plugin: String,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOpLabels {
    plugin: String,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrapLabels {
    plugin: String,
    op: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLabels {
    connection: String,
    plugin: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    plugin: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    workflow: String,
    outcome: &'static str,
}

/// What became of a cron firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronOutcome {
    /// A run started.
    Ran,
    /// A run started at start-up for a firing missed while weft was down
    /// (`catch_up = true`).
    CaughtUp,
    /// The workflow's previous run was still going (`overlap = "skip"`).
    SkippedOverlap,
    /// The server had as many runs as it takes.
    SkippedFull,
    /// The run could not be recorded.
    Failed,
    /// Another worker sharing the store started this firing's run.
    FiredElsewhere,
}

impl CronOutcome {
    fn as_str(self) -> &'static str {
        match self {
            CronOutcome::Ran => "ran",
            CronOutcome::CaughtUp => "caught_up",
            CronOutcome::SkippedOverlap => "skipped_overlap",
            CronOutcome::SkippedFull => "skipped_full",
            CronOutcome::Failed => "failed",
            CronOutcome::FiredElsewhere => "fired_elsewhere",
        }
    }
}

/// What became of a webhook delivery to a served workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Verified, and its run recorded.
    Accepted,
    /// No signature, or not the workflow's.
    BadSignature,
    /// Signed too long ago (or in the future).
    Stale,
    /// A signature header that does not parse, or a body that is not a
    /// JSON object.
    Malformed,
    /// Already received (the same signature).
    Replay,
    /// Another delivery of an event already received (a sender's retry,
    /// signed anew): answered 200, nothing started.
    Duplicate,
    /// Larger than the webhook takes.
    Oversized,
    /// The server had no room for its run (as many runs as it takes, or
    /// the run store slow to answer): the sender should try again.
    RefusedBusy,
    /// Refused for another reason (inputs, the store).
    Refused,
}

impl WebhookOutcome {
    fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::BadSignature => "bad_signature",
            WebhookOutcome::Stale => "stale",
            WebhookOutcome::Malformed => "malformed",
            WebhookOutcome::Replay => "replay",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Oversized => "oversized",
            WebhookOutcome::RefusedBusy => "refused_busy",
            WebhookOutcome::Refused => "refused",
        }
    }
}

/// Why a plugin call was stopped, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapCause {
    /// Its CPU time limit.
    Cpu,
    /// Its memory limit.
    Memory,
    /// The call deadline (or no instance slot before it).
    Deadline,
    /// A panic (wasm `unreachable`), in the plugin or the host's import.
    Panic,
    /// Anything else: a wasm trap, a reply past its limit.
    Other,
}

impl TrapCause {
    /// Every cause.
    pub const ALL: [TrapCause; 5] = [
        TrapCause::Cpu,
        TrapCause::Memory,
        TrapCause::Deadline,
        TrapCause::Panic,
        TrapCause::Other,
    ];

    /// Its name as a label and in a run's figures.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapCause::Cpu => "cpu",
            TrapCause::Memory => "memory",
            TrapCause::Deadline => "deadline",
            TrapCause::Panic => "panic",
            TrapCause::Other => "other",
        }
    }
}

/// The process's metrics and the registry that serves them.
pub struct Metrics {
    registry: Registry,
    runs_started: Family<RunStartLabels, Counter>,
    runs_finished: Family<RunEndLabels, Counter>,
    run_duration: Histograms<WorkflowLabels>,
    step_duration: Histograms<StepLabels>,
    active_runs: Family<WorkflowLabels, Gauge>,
    records: Family<RecordLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Histograms<ConnectionLabels>,
    http_throttled: Family<ConnectionLabels, Counter>,
    http_retries: Family<ConnectionLabels, Counter>,
    http_waited: Family<ConnectionLabels, Counter<f64, AtomicU64>>,
    http_denied: Family<ConnectionLabels, Counter>,
    plugin_calls: Histograms<PluginOpLabels>,
    plugin_traps: Family<TrapLabels, Counter>,
    cron_firings: Family<OutcomeLabels, Counter>,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
    http_rate: Family<RateLabels, Gauge<f64, AtomicU64>>,
    plugin_loads: Family<LoadLabels, Counter>,
    instances_idle: Gauge,
    store_size: Gauge,
    /// Run before every encoding, to set the gauges read at scrape time.
    samplers: Mutex<Vec<Sampler>>,
}

/// Sets gauges from live state when the metrics are read.
type Sampler = Box<dyn Fn(&Metrics) + Send + Sync>;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered under the prefix `weft_`, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let m = Metrics {
            registry: Registry::default(),
            runs_started: Family::default(),
            runs_finished: Family::default(),
            run_duration: Family::new_with_constructor(long_buckets),
            step_duration: Family::new_with_constructor(long_buckets),
            active_runs: Family::default(),
            records: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(request_buckets),
            http_throttled: Family::default(),
            http_retries: Family::default(),
            http_waited: Family::default(),
            http_denied: Family::default(),
            plugin_calls: Family::new_with_constructor(long_buckets),
            plugin_traps: Family::default(),
            cron_firings: Family::default(),
            webhook_deliveries: Family::default(),
            http_rate: Family::default(),
            plugin_loads: Family::default(),
            instances_idle: Gauge::default(),
            store_size: Gauge::default(),
            samplers: Mutex::default(),
        };
        // A gauge at 1, not OpenMetrics' info type: Prometheus's own text
        // parser (promtool, older servers) knows no info type.
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION")),
                // The connector contracts this host serves (runtime/v0_1.rs).
                ("wit", "weft:connector@0.1.0"),
            ])
            .set(1);
        registry.register(
            "build_info",
            "The weft version, and the connector contracts it serves",
            build,
        );
        let r = &mut registry;
        r.register(
            "runs_started",
            "Runs recorded, by workflow and trigger",
            m.runs_started.clone(),
        );
        r.register(
            "runs_finished",
            "Runs ended, by workflow and status (succeeded, failed, cancelled)",
            m.runs_finished.clone(),
        );
        r.register(
            "run_duration_seconds",
            "Time from a run's recording to its end",
            m.run_duration.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Time one attempt at a step took, by workflow and step",
            m.step_duration.clone(),
        );
        r.register("runs_active", "Runs executing in this process", m.active_runs.clone());
        r.register(
            "records",
            "Records and items by workflow, step and outcome (read, created, updated, unchanged, removed, absent, failed)",
            m.records.clone(),
        );
        r.register(
            "http_requests",
            "Requests sent to vendors, by connection, plugin, method and status class (error: no answer)",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time one vendor request took, until its body was read",
            m.http_duration.clone(),
        );
        r.register("http_throttled", "Vendor answers with status 429", m.http_throttled.clone());
        r.register(
            "http_retries",
            "Requests the host sent again after a failure",
            m.http_retries.clone(),
        );
        r.register(
            "http_wait_seconds",
            "Time requests waited before sending: the rate limiter and retry backoff",
            m.http_waited.clone(),
        );
        r.register(
            "http_denied",
            "Requests refused by the host policy before sending",
            m.http_denied.clone(),
        );
        r.register(
            "plugin_call_duration_seconds",
            "Time one plugin call took, by plugin and op",
            m.plugin_calls.clone(),
        );
        r.register(
            "plugin_traps",
            "Plugin calls stopped, by plugin, op and cause (cpu, memory, deadline, panic, other)",
            m.plugin_traps.clone(),
        );
        r.register(
            "cron_firings",
            "Cron firings by workflow and outcome (ran, caught_up, skipped_overlap, skipped_full, failed, fired_elsewhere)",
            m.cron_firings.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook deliveries by workflow and outcome (accepted, bad_signature, stale, malformed, replay, oversized, refused_busy, refused)",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "http_rate_limit",
            "Requests per second the host's limiter allows now, by connection, plugin and the class of requests it paces (any, read, write, get, post…)",
            m.http_rate.clone(),
        );
        r.register(
            "plugin_loads",
            "Plugins loaded, by plugin and source (cache: the compiled component read from the disk cache; compile: compiled anew)",
            m.plugin_loads.clone(),
        );
        r.register(
            "plugin_instances_idle",
            "Warm plugin instances kept idle for the next call, all plugins",
            m.instances_idle.clone(),
        );
        r.register(
            "store_size_bytes",
            "Size of the run store: the sled directory on disk, or the PostgreSQL database",
            m.store_size.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Calls `sample` before every encoding, to set gauges read from live
    /// state (idle instances, say). It must be quick: a scrape waits.
    pub fn sample_with(&self, sample: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.samplers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(sample));
    }

    /// Sets `weft_plugin_instances_idle`.
    pub fn set_instances_idle(&self, idle: usize) {
        self.instances_idle.set(i64::try_from(idle).unwrap_or(i64::MAX));
    }

    /// Sets `weft_store_size_bytes`.
    pub fn set_store_size(&self, bytes: u64) {
        self.store_size.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A plugin was loaded: from the compiled cache (`cache_hit`) or by
    /// compiling it.
    pub fn plugin_loaded(&self, plugin: &str, cache_hit: bool) {
        let source = if cache_hit { "cache" } else { "compile" };
        self.plugin_loads.get_or_create(&LoadLabels { plugin: plugin.to_owned(), source }).inc();
    }

    /// The exposition, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        for sample in self.samplers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter()
        {
            sample(self);
        }
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an encoder error would be a
        // bug of the crate's, and a partial exposition is still served.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }

    /// The exposition in Prometheus's older text format (0.0.4), for a
    /// client that does not ask for OpenMetrics (`curl`, `promtool`): the
    /// same samples; a counter's `# HELP` and `# TYPE` name its `_total`
    /// series, and there is no `# EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        let open = self.encode();
        let mut text = String::with_capacity(open.len());
        // OpenMetrics puts HELP before TYPE; whether the name gains
        // `_total` is known at TYPE.
        let mut help: Option<(&str, &str)> = None;
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = rest.split_once(' ').or(Some((rest, "")));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
                let name = match kind {
                    "counter" => format!("{name}_total"),
                    _ => name.to_owned(),
                };
                if let Some((_, said)) = help.take() {
                    text.push_str(&format!("# HELP {name} {said}\n"));
                }
                text.push_str(&format!("# TYPE {name} {kind}\n"));
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// A run was recorded.
    pub fn run_started(&self, workflow: &str, trigger: &RunTrigger) {
        // A stored word this version does not know is not a label value:
        // the set stays fixed.
        let trigger = match trigger {
            RunTrigger::Manual => "manual",
            RunTrigger::Cron => "cron",
            RunTrigger::Webhook => "webhook",
            RunTrigger::Api => "api",
            RunTrigger::Sandbox => "sandbox",
            RunTrigger::Other(_) => "other",
        };
        self.runs_started
            .get_or_create(&RunStartLabels { workflow: workflow.to_owned(), trigger })
            .inc();
    }

    /// A run ended with `status` after `duration` since it was recorded.
    pub fn run_finished(&self, workflow: &str, status: Status, duration: Duration) {
        self.runs_finished
            .get_or_create(&RunEndLabels { workflow: workflow.to_owned(), status: status.as_str() })
            .inc();
        self.run_duration
            .get_or_create(&WorkflowLabels { workflow: workflow.to_owned() })
            .observe(duration.as_secs_f64());
    }

    /// Counts a run of `workflow` as executing until the guard is dropped.
    pub fn run_active(&self, workflow: &str) -> ActiveRun {
        let gauge =
            self.active_runs.get_or_create_owned(&WorkflowLabels { workflow: workflow.to_owned() });
        gauge.inc();
        ActiveRun { gauge }
    }

    /// An attempt at a step ended after `duration`, having added `counts`.
    pub fn step_finished(
        &self,
        workflow: &str,
        step: &str,
        duration: Duration,
        counts: StepCounts,
    ) {
        self.step_duration
            .get_or_create(&StepLabels { workflow: workflow.to_owned(), step: step.to_owned() })
            .observe(duration.as_secs_f64());
        let outcomes = [
            ("read", counts.read),
            ("created", counts.created),
            ("updated", counts.updated),
            ("unchanged", counts.unchanged),
            ("removed", counts.removed),
            ("absent", counts.absent),
            ("failed", counts.failed),
        ];
        for (outcome, n) in outcomes.into_iter().filter(|(_, n)| *n > 0) {
            self.records
                .get_or_create(&RecordLabels {
                    workflow: workflow.to_owned(),
                    step: step.to_owned(),
                    outcome,
                })
                .inc_by(n);
        }
    }

    /// A cron firing of `workflow` ended with `outcome`.
    pub fn cron_fired(&self, workflow: &str, outcome: CronOutcome) {
        self.cron_firings
            .get_or_create(&OutcomeLabels {
                workflow: workflow.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A webhook delivery to `workflow` (a served one) ended with `outcome`.
    pub fn webhook_delivered(&self, workflow: &str, outcome: WebhookOutcome) {
        self.webhook_deliveries
            .get_or_create(&OutcomeLabels {
                workflow: workflow.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A plugin call ended after `duration`, stopped by `trap` if it was.
    pub fn plugin_called(
        &self,
        plugin: &str,
        op: &'static str,
        duration: Duration,
        trap: Option<TrapCause>,
    ) {
        self.plugin_calls
            .get_or_create(&PluginOpLabels { plugin: plugin.to_owned(), op })
            .observe(duration.as_secs_f64());
        if let Some(cause) = trap {
            self.plugin_traps
                .get_or_create(&TrapLabels { plugin: plugin.to_owned(), op, cause: cause.as_str() })
                .inc();
        }
    }

    /// The counters of one connection's HTTP, resolved once.
    pub fn connection(&self, connection: &str, plugin: &str) -> ConnectionMetrics {
        let labels =
            ConnectionLabels { connection: connection.to_owned(), plugin: plugin.to_owned() };
        ConnectionMetrics {
            requests: self.http_requests.clone(),
            by_method_and_class: Default::default(),
            duration: self.http_duration.get_or_create_owned(&labels),
            throttled: self.http_throttled.get_or_create_owned(&labels),
            retries: self.http_retries.get_or_create_owned(&labels),
            waited: self.http_waited.get_or_create_owned(&labels),
            denied: self.http_denied.get_or_create_owned(&labels),
            rates: self.http_rate.clone(),
            rate_by_class: Default::default(),
            labels,
        }
    }
}

/// Keeps a run counted in `weft_runs_active` while it lives.
#[derive(Debug)]
pub struct ActiveRun {
    gauge: Gauge,
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

const METHODS: [Method; 6] =
    [Method::Get, Method::Post, Method::Put, Method::Patch, Method::Delete, Method::Head];

/// One connection's HTTP counters, resolved when the connection is made.
/// A request's counter by method and status class is made the first time
/// that pair is seen, so unused pairs show no series.
#[derive(Debug)]
pub struct ConnectionMetrics {
    labels: ConnectionLabels,
    requests: Family<RequestLabels, Counter>,
    by_method_and_class: [[OnceLock<Counter>; STATUS_CLASSES.len()]; METHODS.len()],
    duration: Histogram,
    throttled: Counter,
    retries: Counter,
    waited: Counter<f64, AtomicU64>,
    denied: Counter,
    rates: Family<RateLabels, Gauge<f64, AtomicU64>>,
    /// `rates`' gauges by [`MethodClass::ALL`], made on first use.
    rate_by_class: [OnceLock<Gauge<f64, AtomicU64>>; MethodClass::ALL.len()],
}

impl ConnectionMetrics {
    /// A request was sent and ended with `status` (`None`: no answer)
    /// after `duration`.
    pub fn request(&self, method: Method, status: Option<u16>, duration: Duration) {
        let class = status_class(status);
        let m = METHODS.iter().position(|x| *x == method).unwrap_or(0);
        let counter = self.by_method_and_class[m][class].get_or_init(|| {
            self.requests.get_or_create_owned(&RequestLabels {
                connection: self.labels.connection.clone(),
                plugin: self.labels.plugin.clone(),
                method: method.as_str(),
                status_class: STATUS_CLASSES[class],
            })
        });
        counter.inc();
        self.duration.observe(duration.as_secs_f64());
        if status == Some(429) {
            self.throttled.inc();
        }
    }

    /// A request is sent again.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// A request waited `waited` before sending (limiter or backoff).
    pub fn waited(&self, waited: Duration) {
        if !waited.is_zero() {
            self.waited.inc_by(waited.as_secs_f64());
        }
    }

    /// A request was refused by the host policy.
    pub fn denied(&self) {
        self.denied.inc();
    }

    /// The limiter's rates now, requests per second by the class of
    /// requests each paces.
    pub fn rates(&self, rates: &[(MethodClass, f64)]) {
        for (class, rate) in rates {
            let at = MethodClass::ALL.iter().position(|c| c == class).unwrap_or(0);
            let gauge = self.rate_by_class[at].get_or_init(|| {
                self.rates.get_or_create_owned(&RateLabels {
                    connection: self.labels.connection.clone(),
                    plugin: self.labels.plugin.clone(),
                    class: class.as_str(),
                })
            });
            gauge.set(*rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn counters_read_back_under_their_labels_with_the_weft_prefix() {
        let metrics = Metrics::new();
        metrics.run_started("mirror", &RunTrigger::Cron);
        metrics.run_started("mirror", &RunTrigger::Cron);
        metrics.run_started("mirror", &RunTrigger::Other("from the future".into()));
        metrics.webhook_delivered("mirror", WebhookOutcome::BadSignature);
        let http = metrics.connection("stripe", "stripe");
        http.request(Method::Get, Some(200), Duration::from_millis(3));
        http.request(Method::Get, Some(429), Duration::from_millis(3));
        http.request(Method::Post, None, Duration::from_millis(3));
        let text = metrics.encode();
        assert_eq!(
            line(&text, "weft_runs_started_total{workflow=\"mirror\",trigger=\"cron\"}"),
            Some("weft_runs_started_total{workflow=\"mirror\",trigger=\"cron\"} 2"),
            "{text}"
        );
        assert!(text.contains("trigger=\"other\"} 1"), "{text}");
        assert!(text.contains(
            "weft_webhook_deliveries_total{workflow=\"mirror\",outcome=\"bad_signature\"} 1"
        ));
        assert!(text.contains("weft_http_requests_total{connection=\"stripe\",plugin=\"stripe\",method=\"GET\",status_class=\"2xx\"} 1"), "{text}");
        assert!(text.contains("method=\"GET\",status_class=\"4xx\"} 1"), "{text}");
        assert!(text.contains("method=\"POST\",status_class=\"error\"} 1"), "{text}");
        assert!(
            text.contains("weft_http_throttled_total{connection=\"stripe\",plugin=\"stripe\"} 1")
        );
        assert!(text.contains("weft_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_prometheus_text_names_counters_by_their_total_series_and_has_no_eof() {
        let metrics = Metrics::new();
        metrics.run_started("mirror", &RunTrigger::Api);
        metrics.run_finished("mirror", Status::Succeeded, Duration::from_secs(2));
        let text = metrics.encode_prometheus_text();
        assert!(text.contains("# HELP weft_runs_started_total Runs recorded"), "{text}");
        assert!(text.contains("# TYPE weft_runs_started_total counter\n"), "{text}");
        assert!(text.contains("weft_runs_started_total{workflow=\"mirror\",trigger=\"api\"} 1\n"));
        assert!(text.contains("# TYPE weft_run_duration_seconds histogram\n"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn the_active_runs_gauge_falls_when_the_guard_goes() {
        let metrics = Metrics::new();
        let first = metrics.run_active("w");
        let second = metrics.run_active("w");
        assert!(metrics.encode().contains("weft_runs_active{workflow=\"w\"} 2"));
        drop(first);
        drop(second);
        assert!(metrics.encode().contains("weft_runs_active{workflow=\"w\"} 0"));
    }

    #[test]
    fn records_count_only_the_outcomes_that_happened() {
        let metrics = Metrics::new();
        let counts = StepCounts { created: 3, failed: 1, ..StepCounts::default() };
        metrics.step_finished("w", "push", Duration::from_millis(5), counts);
        let text = metrics.encode();
        assert!(
            text.contains("weft_records_total{workflow=\"w\",step=\"push\",outcome=\"created\"} 3")
        );
        assert!(text.contains("outcome=\"failed\"} 1"));
        assert!(!text.contains("outcome=\"updated\""), "{text}");
    }
}
