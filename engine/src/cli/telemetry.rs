//! Where diagnostics go: the log on stderr (human lines or JSON objects,
//! under `--log`), and, when an OTLP endpoint is given (`--otlp-endpoint`
//! or `OTEL_EXPORTER_OTLP_ENDPOINT`), the spans of runs exported as
//! OpenTelemetry traces over OTLP/HTTP (protobuf): run → step → page or
//! item → plugin call → vendor request, with their ids, names, methods,
//! hosts, statuses, attempts and limiter waits as attributes, never a
//! credential, a URL's path or query, a header or a body. Off by default.
//!
//! The spans are weft's own `tracing` spans, recorded by a lean layer
//! ([`OtlpLayer`]) rather than tracing-opentelemetry and the OpenTelemetry
//! SDK: each span's attributes are written as OTLP protobuf when the span
//! is made, and the finished span is appended to a shared buffer that a
//! thread of its own posts in batches. Through the SDK a span cost ~5 µs
//! (a span builder, attribute values, a span object, a channel, then a
//! conversion to the protobuf structs and their encoding), which put 3-5%
//! on a 100k-record export.
//!
//! Three field names on a span are read, not exported as attributes:
//! `otel.status_code` (`"ERROR"` marks the span failed),
//! `otel.status_description` (the status message) and `traceparent` (a W3C
//! header: the span continues the caller's trace, as the run does for an
//! API start or a webhook).

use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::{Global, LogFormat};

/// How long one export of a batch of spans may take, unless
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT` say
/// otherwise (OTLP's default).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans in a batch that wake the exporter before its period is up. Larger
/// than the SDK's 512: fewer wake-ups and requests on a long export.
const BATCH_SPANS: usize = 2048;

/// How long a finished span may wait for its batch (the SDK's default).
const EXPORT_PERIOD: Duration = Duration::from_secs(5);

/// Spans kept waiting at most; past it (a receiver that cannot keep up)
/// new spans are dropped and counted rather than held in memory.
const MAX_QUEUED_SPANS: usize = 16 * 1024;

/// What must be flushed before the process exits.
#[derive(Debug)]
pub(crate) struct Telemetry {
    traces: Option<Exporter>,
}

impl Telemetry {
    /// Sends the spans still batched (bounded by the exporter's timeout).
    pub(crate) fn shutdown(self) {
        if let Some(exporter) = self.traces {
            exporter.shutdown();
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
    let config = ExportConfig::from_env(endpoint, |name| std::env::var(name).ok())?;
    let exporter = Exporter::start(config)?;
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
    let layer = OtlpLayer { queue: exporter.queue.clone() };
    registry.with(layer.with_filter(spans)).init();
    Ok(Telemetry { traces: Some(exporter) })
}

/// Where and how the spans are sent.
#[derive(Debug, Clone, PartialEq)]
struct ExportConfig {
    /// `<endpoint>/v1/traces`.
    url: reqwest::Url,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, then `OTEL_EXPORTER_OTLP_TRACES_HEADERS`
    /// (a collector's API key, say): sent with every export, never logged.
    headers: Vec<(String, String)>,
    timeout: Duration,
    /// `OTEL_RESOURCE_ATTRIBUTES`, beside `service.name` and `service.version`.
    resource: Vec<(String, String)>,
}

impl ExportConfig {
    /// Reads the standard variables through `var` (the process's
    /// environment, or a test's map). A timeout that is not a whole,
    /// positive number of milliseconds is refused, naming the variable,
    /// rather than quietly replaced by the default.
    fn from_env(endpoint: &url::Url, var: impl Fn(&str) -> Option<String>) -> Result<ExportConfig> {
        // As OTEL_EXPORTER_OTLP_ENDPOINT means it: the base, traces under it.
        let traces = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
        let url = reqwest::Url::parse(&traces)
            .with_context(|| format!("cannot export traces to {traces}"))?;
        let mut timeout = DEFAULT_EXPORT_TIMEOUT;
        // The signal's own variable wins over the general one.
        for name in ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"] {
            let Some(value) = var(name).filter(|v| !v.trim().is_empty()) else { continue };
            let millis: u64 = match value.trim().parse() {
                Ok(millis) if millis > 0 => millis,
                _ => bail!(
                    "{name}={value:?}: the OTLP export timeout must be a whole number of milliseconds above 0 (e.g. 10000)"
                ),
            };
            timeout = Duration::from_millis(millis);
            break;
        }
        let mut headers = Vec::new();
        for name in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            for (key, value) in key_values(&var(name).unwrap_or_default()) {
                let valid = reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_ok()
                    && reqwest::header::HeaderValue::from_str(&value).is_ok();
                if !valid {
                    // The value may be a key: only the name is told.
                    bail!("{name}: the header {key:?} is not a valid HTTP header");
                }
                headers.retain(|(k, _): &(String, String)| !k.eq_ignore_ascii_case(&key));
                headers.push((key, value));
            }
        }
        let resource = key_values(&var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default())
            .into_iter()
            .filter(|(key, _)| key != "service.name" && key != "service.version")
            .collect();
        Ok(ExportConfig { url, headers, timeout, resource })
    }
}

/// `key=value,key=value` with percent-encoded values, as the OpenTelemetry
/// variables write them. Entries without a key or a value are skipped.
fn key_values(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), percent_decoded(value.trim())))
        .filter(|(key, value)| !key.is_empty() && !value.is_empty())
        .collect()
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The finished spans waiting for the exporter, already encoded.
#[derive(Debug, Default)]
struct Pending {
    /// `ScopeSpans.spans` entries: tag, length, `Span` message, one after
    /// the other.
    encoded: Vec<u8>,
    spans: usize,
    dropped: u64,
    shutting_down: bool,
    /// The exporter could not start: finished spans are not kept.
    refused: bool,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Rung when a batch is full and at shutdown.
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves only bytes behind: go on.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The thread that posts batches of spans, and its queue.
#[derive(Debug)]
struct Exporter {
    queue: Arc<Queue>,
    thread: std::thread::JoinHandle<()>,
}

impl Exporter {
    /// Starts the exporter's thread. The HTTP client is made there, so
    /// that the process does not wait for it (a few ms: a runtime thread
    /// and a TLS configuration) before it starts its work.
    fn start(config: ExportConfig) -> Result<Exporter> {
        let queue = Arc::new(Queue::default());
        let resource = encoded_resource(&config.resource);
        let thread = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("weft-otlp".into())
                .spawn(move || match http_client(&config) {
                    Ok(client) => export_loop(&queue, &client, &config.url, &resource),
                    Err(e) => {
                        eprintln!("warning: no traces are sent: {e:#}");
                        queue.lock().refused = true;
                    }
                })
                .context("cannot start the trace exporter's thread")?
        };
        Ok(Exporter { queue, thread })
    }

    /// Posts what is pending and stops the thread. Bounded: one last
    /// request, within the export timeout.
    fn shutdown(self) {
        {
            let mut pending = self.queue.lock();
            pending.shutting_down = true;
        }
        self.queue.ready.notify_all();
        if self.thread.join().is_err() {
            eprintln!(
                "warning: the trace exporter stopped unexpectedly; some traces were not sent"
            );
        }
    }
}

/// The exporter's own client, so that a plain-HTTP endpoint (a local
/// collector, the common case) does not load and parse the system's trust
/// store first: that alone cost a short `weft run` ~2% of its CPU.
fn http_client(config: &ExportConfig) -> Result<reqwest::blocking::Client> {
    let mut client = reqwest::blocking::Client::builder().timeout(config.timeout);
    if config.url.scheme() == "http" {
        client = client.tls_certs_only([]);
    }
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/x-protobuf"),
    );
    // Checked by `ExportConfig::from_env` already.
    for (key, value) in &config.headers {
        if let (Ok(key), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            headers.insert(key, value);
        }
    }
    client.default_headers(headers).build().context("cannot make the trace exporter's HTTP client")
}

/// Waits for a full batch (or the period), posts it, and again, until shut
/// down; then posts the rest.
fn export_loop(
    queue: &Queue,
    client: &reqwest::blocking::Client,
    url: &reqwest::Url,
    resource: &[u8],
) {
    let mut buffer = Vec::new();
    let mut failures = 0u64;
    let mut warned = false;
    loop {
        let (spans, last) = {
            let mut pending = queue.lock();
            let deadline = std::time::Instant::now() + EXPORT_PERIOD;
            while pending.spans < BATCH_SPANS && !pending.shutting_down {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                pending = match queue.ready.wait_timeout(pending, left) {
                    Ok((pending, _)) => pending,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            std::mem::swap(&mut buffer, &mut pending.encoded);
            let spans = std::mem::take(&mut pending.spans);
            (spans, pending.shutting_down)
        };
        if spans > 0 {
            let body = export_request(resource, &buffer);
            buffer.clear();
            let sent = client.post(url.clone()).body(body).send();
            let failed = match sent {
                Ok(answer) if answer.status().is_success() => None,
                Ok(answer) => Some(format!("the collector answered {}", answer.status())),
                Err(e) => Some(reqwest_cause(&e)),
            };
            if let Some(why) = failed {
                failures += spans as u64;
                // Once: a collector that is down would fill the log.
                if !warned {
                    eprintln!("warning: could not send traces to {url}: {why}");
                    warned = true;
                }
            }
        }
        if last {
            break;
        }
    }
    let dropped = queue.lock().dropped;
    if failures > 0 || dropped > 0 {
        eprintln!(
            "warning: {} span(s) were not sent to {url} ({failures} in failed exports, {dropped} dropped while the exporter was behind)",
            failures + dropped
        );
    }
}

/// What went wrong with an export, without the URL twice.
fn reqwest_cause(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer within the export timeout".into();
    }
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        cause = e.to_string();
        source = e.source();
    }
    if cause.is_empty() { error.to_string() } else { cause }
}

/// A `tracing` layer that records weft's spans as OTLP protobuf: ids and
/// the start time when the span is made, its fields as attributes as they
/// are recorded, and the whole span appended to the exporter's queue when
/// it closes. Only the spans its filter lets through reach it.
struct OtlpLayer {
    queue: Arc<Queue>,
}

/// A span being recorded: what is kept in the registry's extensions.
struct OpenSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// All zeros for a trace's root.
    parent_span_id: [u8; 8],
    /// The parent came from a `traceparent` (another process).
    remote_parent: bool,
    /// A caller's `traceparent` said not sampled: nothing of this trace is
    /// exported, as OpenTelemetry's parent-based sampling does.
    sampled: bool,
    start_unix_nanos: u64,
    /// `Span.attributes` entries, encoded.
    attributes: Vec<u8>,
    error: bool,
    status_message: Option<String>,
}

impl<S> Layer<S> for OtlpLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent().and_then(|parent| {
            let extensions = parent.extensions();
            let open = extensions.get::<OpenSpan>()?;
            Some((open.trace_id, open.span_id, open.sampled))
        });
        let (trace_id, parent_span_id, sampled) = match parent {
            Some((trace_id, span_id, sampled)) => (trace_id, span_id, sampled),
            None => (non_zero_id(), [0; 8], true),
        };
        let mut open = OpenSpan {
            trace_id,
            span_id: non_zero_id(),
            parent_span_id,
            remote_parent: false,
            sampled,
            start_unix_nanos: unix_nanos(SystemTime::now()),
            attributes: Vec::with_capacity(96),
            error: false,
            status_message: None,
        };
        attrs.record(&mut FieldWriter { span: &mut open });
        span.extensions_mut().insert(open);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<OpenSpan>() {
            values.record(&mut FieldWriter { span: open });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let end = unix_nanos(SystemTime::now());
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<OpenSpan>() else { return };
        if !open.sampled {
            return;
        }
        let mut pending = self.queue.lock();
        if pending.refused {
            return;
        }
        if pending.spans >= MAX_QUEUED_SPANS {
            pending.dropped += 1;
            return;
        }
        encode_span(&mut pending.encoded, &open, span.name(), end);
        pending.spans += 1;
        let full = pending.spans == BATCH_SPANS;
        drop(pending);
        if full {
            self.queue.ready.notify_one();
        }
    }
}

/// Writes a span's fields as OTLP attributes, and reads the three fields
/// that are not attributes (see the module's documentation).
struct FieldWriter<'a> {
    span: &'a mut OpenSpan,
}

impl FieldWriter<'_> {
    fn special(&mut self, field: &Field, value: &str) -> bool {
        match field.name() {
            "otel.status_code" => {
                self.span.error = value.eq_ignore_ascii_case("error");
                true
            }
            "otel.status_description" => {
                self.span.status_message = Some(value.to_owned());
                true
            }
            "traceparent" => {
                if let Some((trace_id, span_id, sampled)) = parse_traceparent(value) {
                    self.span.trace_id = trace_id;
                    self.span.parent_span_id = span_id;
                    self.span.remote_parent = true;
                    self.span.sampled = sampled;
                }
                true
            }
            _ => false,
        }
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.special(field, value) {
            encode_attribute(&mut self.span.attributes, field.name(), AnyValue::Str(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%display` fields come here too, as a value whose Debug is its
        // Display: written straight into the attribute, with no string of
        // its own.
        if matches!(field.name(), "otel.status_code" | "otel.status_description" | "traceparent") {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            self.special(field, &text);
            return;
        }
        put_message(&mut self.span.attributes, 9, |out| {
            put_bytes(out, 1, field.name().as_bytes());
            put_message(out, 2, |out| {
                put_message(out, 1, |out| {
                    let _ = write!(ProtobufText(out), "{value:?}");
                });
            });
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.record_i64(field, value),
            Err(_) => self.record_debug(field, &value),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        encode_attribute(&mut self.span.attributes, field.name(), AnyValue::Int(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        encode_attribute(&mut self.span.attributes, field.name(), AnyValue::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        encode_attribute(&mut self.span.attributes, field.name(), AnyValue::Double(value));
    }
}

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`): the trace
/// id, the parent's span id and whether it is sampled. A version other
/// than 00 is read as 00 is, as the specification asks, when the header
/// is at least as long; all-zero ids are invalid.
fn parse_traceparent(header: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = header.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ![version, trace, parent, flags].iter().all(|s| lower_hex(s)) || flags.len() != 2 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags & 1 == 1))
}

/// A random id, never all zeros (which OTLP reads as "none").
fn non_zero_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

// The protobuf encoding of the OTLP messages weft sends
// (opentelemetry/proto/trace/v1/trace.proto and common.proto), by hand:
// a handful of fields, written once, instead of building the generated
// structs for every span and encoding them afterwards.

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A length-delimited field whose body `write` appends: written in place,
/// the body's length reserved at the most it can take (the attributes and
/// messages here are far below 2 MiB: three bytes), then the length
/// written in as few bytes and the body moved down when it took fewer.
fn put_message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    put_tag(out, field, LEN);
    let at = out.len();
    out.extend_from_slice(&[0; 3]);
    write(out);
    let body = out.len() - at - 3;
    let mut length = Vec::with_capacity(5);
    put_varint(&mut length, body as u64);
    if length.len() <= 3 {
        let shift = 3 - length.len();
        out[at..at + length.len()].copy_from_slice(&length);
        if shift > 0 {
            out.copy_within(at + 3.., at + length.len());
            out.truncate(out.len() - shift);
        }
    } else {
        // A body of 2 MiB or more: the length takes more than three bytes.
        let tail = out.split_off(at + 3);
        out.truncate(at);
        out.extend_from_slice(&length);
        out.extend_from_slice(&tail);
    }
}

/// Formats into a protobuf buffer: the bytes of a string field's body.
struct ProtobufText<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ProtobufText<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

enum AnyValue<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
}

/// A `KeyValue` (key 1, value 2: an `AnyValue`) as field `field`.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: AnyValue<'_>) {
    put_message(out, field, |out| {
        put_bytes(out, 1, key.as_bytes());
        put_message(out, 2, |out| match value {
            AnyValue::Str(s) => put_bytes(out, 1, s.as_bytes()),
            AnyValue::Bool(b) => {
                put_tag(out, 2, VARINT);
                put_varint(out, u64::from(b));
            }
            AnyValue::Int(n) => {
                put_tag(out, 3, VARINT);
                put_varint(out, n as u64);
            }
            AnyValue::Double(d) => {
                put_tag(out, 4, FIXED64);
                out.extend_from_slice(&d.to_le_bytes());
            }
        });
    });
}

/// `Span.attributes` (field 9).
fn encode_attribute(out: &mut Vec<u8>, key: &str, value: AnyValue<'_>) {
    put_key_value(out, 9, key, value);
}

/// One `ScopeSpans.spans` entry (field 2).
fn encode_span(out: &mut Vec<u8>, span: &OpenSpan, name: &str, end_unix_nanos: u64) {
    put_message(out, 2, |out| {
        put_bytes(out, 1, &span.trace_id);
        put_bytes(out, 2, &span.span_id);
        if span.parent_span_id != [0; 8] {
            put_bytes(out, 4, &span.parent_span_id);
        }
        put_bytes(out, 5, name.as_bytes());
        // SPAN_KIND_INTERNAL.
        put_tag(out, 6, VARINT);
        put_varint(out, 1);
        put_tag(out, 7, FIXED64);
        out.extend_from_slice(&span.start_unix_nanos.to_le_bytes());
        put_tag(out, 8, FIXED64);
        out.extend_from_slice(&end_unix_nanos.max(span.start_unix_nanos).to_le_bytes());
        out.extend_from_slice(&span.attributes);
        if span.error {
            put_message(out, 15, |out| {
                if let Some(message) = &span.status_message {
                    put_bytes(out, 2, message.as_bytes());
                }
                // STATUS_CODE_ERROR.
                put_tag(out, 3, VARINT);
                put_varint(out, 2);
            });
        }
        // The W3C flags (sampled), and that whether the parent is remote
        // is known, and if it is.
        let flags: u32 = 0x01 | 0x100 | if span.remote_parent { 0x200 } else { 0 };
        put_tag(out, 16, FIXED32);
        out.extend_from_slice(&flags.to_le_bytes());
    });
}

/// `ResourceSpans.resource` (field 1): service name and version, and
/// `OTEL_RESOURCE_ATTRIBUTES`.
fn encoded_resource(extra: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_message(&mut out, 1, |out| {
        put_key_value(out, 1, "service.name", AnyValue::Str("weft"));
        put_key_value(out, 1, "service.version", AnyValue::Str(env!("CARGO_PKG_VERSION")));
        for (key, value) in extra {
            put_key_value(out, 1, key, AnyValue::Str(value));
        }
    });
    out
}

/// An `ExportTraceServiceRequest` of one resource and one scope ("weft")
/// holding `spans` (already encoded `ScopeSpans.spans` entries).
fn export_request(resource: &[u8], spans: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len() + resource.len() + 32);
    put_message(&mut out, 1, |out| {
        out.extend_from_slice(resource);
        put_message(out, 2, |out| {
            put_message(out, 1, |out| {
                put_bytes(out, 1, b"weft");
                put_bytes(out, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            out.extend_from_slice(spans);
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;

    fn config(vars: &[(&str, &str)]) -> Result<ExportConfig> {
        let endpoint = url::Url::parse("http://127.0.0.1:4318/")?;
        ExportConfig::from_env(&endpoint, |name| {
            vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn the_timeout_is_the_traces_variable_then_the_general_one_then_ten_seconds() -> Result<()> {
        assert_eq!(config(&[])?.timeout, DEFAULT_EXPORT_TIMEOUT);
        assert_eq!(config(&[])?.url.as_str(), "http://127.0.0.1:4318/v1/traces");
        let general = config(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])?;
        assert_eq!(general.timeout, Duration::from_millis(2500));
        let both = config(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", " 700 "),
        ])?;
        assert_eq!(both.timeout, Duration::from_millis(700));
        let blank = config(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", ""),
        ])?;
        assert_eq!(blank.timeout, Duration::from_millis(2500), "an empty variable is unset");
        for bad in ["10s", "0", "-1", "1.5", "lots", "99999999999999999999999"] {
            let error = config(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", bad)])
                .err()
                .ok_or_else(|| anyhow::anyhow!("{bad:?} was taken"))?;
            let text = format!("{error:#}");
            assert!(
                text.contains("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") && text.contains(bad),
                "{text}"
            );
        }
        Ok(())
    }

    #[test]
    fn headers_and_resource_attributes_are_read_percent_decoded() -> Result<()> {
        let read = config(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=general, x-tenant = a%2Cb ,broken,=x"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "API-Key=traces%20key"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=other"),
        ])?;
        assert_eq!(
            read.headers,
            [
                ("x-tenant".to_owned(), "a,b".to_owned()),
                ("API-Key".to_owned(), "traces key".to_owned())
            ]
        );
        assert_eq!(read.resource, [("deployment.environment".to_owned(), "prod".to_owned())]);
        let error = config(&[("OTEL_EXPORTER_OTLP_HEADERS", "bad header=secret-value")])
            .err()
            .ok_or_else(|| anyhow::anyhow!("a header name with a space was taken"))?;
        let text = format!("{error:#}");
        assert!(text.contains("bad header") && !text.contains("secret-value"), "{text}");
        Ok(())
    }

    #[test]
    fn a_traceparent_is_read_only_when_well_formed() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, span, sampled) = parse_traceparent(header).unwrap_or_default();
        assert_eq!(hex::encode(trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(span), "00f067aa0ba902b7");
        assert!(sampled);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(parse_traceparent(unsampled).map(|p| p.2), Some(false));
        for bad in [
            "",
            "00-not-a-header",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
        match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Any::StringValue(s)) => s.clone(),
            Some(Any::IntValue(n)) => n.to_string(),
            Some(Any::BoolValue(b)) => b.to_string(),
            Some(Any::DoubleValue(d)) => d.to_string(),
            other => format!("{other:?}"),
        }
    }

    /// Runs `work` under a registry with the layer, and decodes what it queued.
    fn recorded(work: impl FnOnce()) -> Result<Vec<opentelemetry_proto::tonic::trace::v1::Span>> {
        let queue = Arc::new(Queue::default());
        let subscriber = tracing_subscriber::registry().with(OtlpLayer { queue: queue.clone() });
        tracing::subscriber::with_default(subscriber, work);
        let pending = queue.lock();
        let body = export_request(&encoded_resource(&[]), &pending.encoded);
        let request = ExportTraceServiceRequest::decode(body.as_slice())?;
        Ok(request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect())
    }

    #[test]
    fn the_layer_records_parentage_fields_status_and_a_callers_traceparent() -> Result<()> {
        let spans = recorded(|| {
            let run = tracing::info_span!(
                "run",
                run = %"r-1",
                workflow = %"nightly",
                traceparent = tracing::field::Empty
            );
            run.record("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            let _in_run = run.enter();
            let step = tracing::info_span!(
                "step",
                step = %"export",
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty
            );
            {
                let _in_step = step.enter();
                let attempt = tracing::info_span!(
                    "vendor request",
                    attempt = 2u64,
                    ok = true,
                    status = tracing::field::Empty
                );
                attempt.record("status", 429u16);
            }
            step.record("otel.status_code", "ERROR");
            step.record("otel.status_description", "step failed");
        })?;
        let named = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| anyhow::anyhow!("no {name} span: {spans:#?}"))
        };
        let (run, step, attempt) = (named("run")?, named("step")?, named("vendor request")?);
        assert_eq!(hex::encode(&run.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(&run.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(
            (step.trace_id.clone(), step.parent_span_id.clone()),
            (run.trace_id.clone(), run.span_id.clone())
        );
        assert_eq!(attempt.parent_span_id, step.span_id);
        assert_ne!(step.span_id, run.span_id);
        let value = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
            span.attributes.iter().find(|kv| kv.key == key).map(|kv| text(&kv.value))
        };
        assert_eq!(value(run, "run").as_deref(), Some("r-1"));
        assert_eq!(value(run, "workflow").as_deref(), Some("nightly"));
        assert_eq!(value(run, "traceparent"), None, "read, not exported");
        assert_eq!(value(step, "step").as_deref(), Some("export"));
        assert_eq!(value(step, "otel.status_code"), None);
        assert_eq!(
            step.status.as_ref().map(|s| (s.code, s.message.as_str())),
            Some((2, "step failed"))
        );
        assert_eq!(run.status, None);
        assert_eq!(value(attempt, "attempt").as_deref(), Some("2"));
        assert_eq!(value(attempt, "ok").as_deref(), Some("true"));
        assert_eq!(value(attempt, "status").as_deref(), Some("429"));
        assert!(run.start_time_unix_nano > 0 && run.end_time_unix_nano >= run.start_time_unix_nano);
        // A caller's trace that is not sampled: nothing of it is exported;
        // a run without one is a root of its own.
        let spans = recorded(|| {
            let run = tracing::info_span!("run", traceparent = tracing::field::Empty);
            run.record("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
            let _in_run = run.enter();
            let _step = tracing::info_span!("step").entered();
        })?;
        assert!(spans.is_empty(), "{spans:#?}");
        let spans = recorded(|| {
            let _run = tracing::info_span!("run").entered();
        })?;
        assert!(
            spans.len() == 1 && spans[0].parent_span_id.is_empty() && spans[0].trace_id.len() == 16
        );
        Ok(())
    }

    #[test]
    fn the_hand_written_protobuf_decodes_as_an_otlp_export() -> Result<()> {
        // Lengths around every varint boundary the encoder moves bytes for,
        // and a batch past 2 MiB (a length of four bytes).
        let sizes = [0usize, 1, 127, 128, 16_383, 16_384, 70_000];
        let mut encoded = Vec::new();
        for (n, size) in sizes.iter().enumerate() {
            let mut span = OpenSpan {
                trace_id: [7; 16],
                span_id: [n as u8 + 1; 8],
                parent_span_id: if n == 0 { [0; 8] } else { [1; 8] },
                remote_parent: n == 0,
                sampled: true,
                start_unix_nanos: 1_000 + n as u64,
                attributes: Vec::new(),
                error: n == 1,
                status_message: (n == 1).then(|| "step failed".to_owned()),
            };
            encode_attribute(&mut span.attributes, "text", AnyValue::Str(&"x".repeat(*size)));
            encode_attribute(&mut span.attributes, "count", AnyValue::Int(-3));
            encode_attribute(&mut span.attributes, "big", AnyValue::Int(i64::MAX));
            encode_attribute(&mut span.attributes, "flag", AnyValue::Bool(true));
            encode_attribute(&mut span.attributes, "ratio", AnyValue::Double(0.5));
            encode_span(&mut encoded, &span, &format!("span {n}"), 2_000);
        }
        for _ in 0..40 {
            let span = OpenSpan {
                trace_id: [9; 16],
                span_id: [9; 8],
                parent_span_id: [0; 8],
                remote_parent: false,
                sampled: true,
                start_unix_nanos: 5,
                attributes: Vec::new(),
                error: false,
                status_message: None,
            };
            let mut span = span;
            encode_attribute(&mut span.attributes, "filler", AnyValue::Str(&"y".repeat(60_000)));
            encode_span(&mut encoded, &span, "filler", 4);
        }
        let resource = encoded_resource(&[("deployment.environment".into(), "test".into())]);
        let request =
            ExportTraceServiceRequest::decode(export_request(&resource, &encoded).as_slice())?;
        assert_eq!(request.resource_spans.len(), 1);
        let resource_spans = &request.resource_spans[0];
        let attributes =
            &resource_spans.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
        let named =
            |key: &str| attributes.iter().find(|kv| kv.key == key).map(|kv| text(&kv.value));
        assert_eq!(named("service.name").as_deref(), Some("weft"));
        assert_eq!(named("deployment.environment").as_deref(), Some("test"));
        let scope = &resource_spans.scope_spans[0];
        assert_eq!(scope.scope.as_ref().map(|s| s.name.as_str()), Some("weft"));
        assert_eq!(scope.spans.len(), sizes.len() + 40);
        for (n, size) in sizes.iter().enumerate() {
            let span = &scope.spans[n];
            assert_eq!(span.name, format!("span {n}"));
            assert_eq!(span.trace_id, [7; 16]);
            assert_eq!(span.span_id, [n as u8 + 1; 8]);
            assert_eq!(span.parent_span_id.is_empty(), n == 0);
            assert_eq!(span.kind, 1);
            assert_eq!(
                (span.start_time_unix_nano, span.end_time_unix_nano),
                (1_000 + n as u64, 2_000)
            );
            assert_eq!(span.flags & 0x300, if n == 0 { 0x300 } else { 0x100 });
            let value = |key: &str| {
                span.attributes.iter().find(|kv| kv.key == key).map(|kv| text(&kv.value))
            };
            assert_eq!(value("text").map(|t| t.len()), Some(*size));
            assert_eq!(value("count").as_deref(), Some("-3"));
            assert_eq!(value("big"), Some(i64::MAX.to_string()));
            assert_eq!(value("flag").as_deref(), Some("true"));
            assert_eq!(value("ratio").as_deref(), Some("0.5"));
            let status = span.status.as_ref().map(|s| (s.code, s.message.as_str()));
            assert_eq!(status, (n == 1).then_some((2, "step failed")));
        }
        Ok(())
    }
}
