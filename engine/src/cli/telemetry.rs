//! Where diagnostics go: the log on stderr (human lines or JSON objects,
//! under `--log`), and, when an OTLP endpoint is given (`--otlp-endpoint`
//! or `OTEL_EXPORTER_OTLP_ENDPOINT`), the spans of runs exported as
//! OpenTelemetry traces over OTLP/HTTP (protobuf): run → step → plugin
//! call → vendor request, with their ids, names, methods, hosts, statuses,
//! attempts and limiter waits as attributes, never a credential, a URL's
//! path or query, a header or a body. Off by default.

use anyhow::{Context as _, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::{Global, LogFormat};

/// How long one export of a batch of spans may take (OTLP's default).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What must be flushed before the process exits.
#[derive(Debug)]
pub(crate) struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still batched (bounded by the exporter's timeout).
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: could not send the last traces: {e}");
        }
    }
}

/// Installs the log and, when asked, the trace exporter. Called before the
/// async runtime starts: the exporter's blocking HTTP client may not be
/// made inside it.
pub(crate) fn init(global: &Global) -> Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match global.log_format {
        LogFormat::Human => log.with_target(false).boxed(),
        // The event's fields at the top level, and every span it is in
        // (run, step: with run id, workflow, step and connection) listed.
        LogFormat::Json => {
            log.json().flatten_event(true).with_current_span(false).with_span_list(true).boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(log.with_filter(filter));
    let Some(endpoint) = global.otlp_endpoint.as_ref() else {
        registry.init();
        return Ok(Telemetry { traces: None });
    };
    // As OTEL_EXPORTER_OTLP_ENDPOINT means it: the base, traces under it.
    let traces_url = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
    // The exporter's own client, so that a plain-HTTP endpoint (a local
    // collector, the common case) does not load and parse the system's
    // trust store first: that alone cost a short `weft run` ~2% of its CPU.
    let mut client = reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT);
    if endpoint.scheme() == "http" {
        client = client.tls_certs_only([]);
    }
    let client = client.build().context("cannot make the trace exporter's HTTP client")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_timeout(EXPORT_TIMEOUT)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url.clone())
        .build()
        .with_context(|| format!("cannot export traces to {traces_url}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("weft")
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    // weft's own spans only (not its events, whose messages may quote a
    // URL or a vendor's answer), whatever --log says.
    // The level hint matters for speed: without one the subscriber's
    // maximum level is TRACE, so every dependency's `log::trace!` (hyper,
    // rustls, h2, per request) becomes a record that the `log` bridge
    // turns into an event and every filter then refuses one by one; that
    // cost an export 14% of its CPU.
    let spans = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("weft") && *meta.level() <= tracing::Level::INFO
    })
    .with_max_level_hint(tracing::level_filters::LevelFilter::INFO);
    // Off what costs time on every poll or span and tells an operator
    // nothing the span's name and attributes do not: busy/idle timing
    // (two clock reads per poll), activating an OpenTelemetry context on
    // every poll (nothing in weft reads it), and per-span attributes for
    // the source file, the thread and the target.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("weft"))
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(spans);
    registry.with(traces).init();
    Ok(Telemetry { traces: Some(provider) })
}
