//! The web console: server-rendered HTML on the API's port, readable
//! without JavaScript. One small script (embedded, like the stylesheet)
//! refreshes a page of running work in place and selects every row of a
//! list; nothing is built with Node.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | runs, newest first: filters, search by id, pages through the index |
//! | `GET /runs/{id}` | one run: summary, steps as a timeline, plan, HTTP figures, history, workflow text |
//! | `POST /runs/{id}/cancel`, `/resume`, `/rerun` | actions (operator) |
//! | `POST /runs/bulk` | cancel or resume the runs selected (operator) |
//! | `GET /workflows`, `/workflows/{name}` | workflows, triggers, the form that starts a run |
//! | `POST /workflows/{name}/start` | starts a run or a dry run from the form (operator) |
//! | `GET /connections` | connections, plugins, hosts and rate limits |
//! | `GET /tokens`, `POST /tokens`, `POST /tokens/{name}/revoke` | tokens (admin) |
//! | `GET /login`, `POST /login`, `POST /logout` | signing in with a token |
//!
//! Every value is escaped by the templates (maud); every response forbids
//! framing and inline script (`Content-Security-Policy`), and is not cached.
//! Forms that change anything carry the session's CSRF token, which the
//! gate checks ([`super::gate`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::auth::{self, Caller};
use super::gate::{self, CSRF_FIELD};
use super::{API_BODY_LIMIT, Refusal, RunOptions, Server};
use crate::executor::Executor;
use crate::executor::plan::at_path;
use crate::store::{
    MAX_PAGE, Role, RunQuery, RunRow, RunTrigger, Status, StepState, StoreError, WorkflowState,
    now_ms,
};
use crate::workflow::inputs::{InputSpec, InputType};

/// The stylesheet, embedded.
const CSS: &str = include_str!("console.css");

/// The script, embedded.
const JS: &str = include_str!("console.js");

/// Runs on a page of the list.
const PAGE_ROWS: usize = 50;

/// Statuses offered by the filter.
const STATUSES: [Status; 5] =
    [Status::Running, Status::Succeeded, Status::Failed, Status::Cancelled, Status::Pending];

/// Triggers offered by the filter.
const TRIGGERS: [&str; 5] = ["api", "cron", "webhook", "manual", "sandbox"];

/// The console's routes; the gate is applied here.
pub(super) fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    let gated = Router::new()
        .route("/", get(runs_page))
        .route("/runs/bulk", post(bulk_action))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/cancel", post(cancel_action))
        .route("/runs/{id}/resume", post(resume_action))
        .route("/runs/{id}/rerun", post(rerun_action))
        .route("/workflows", get(workflows_page))
        .route("/workflows/{name}", get(workflow_page))
        .route("/workflows/{name}/start", post(start_action))
        .route("/connections", get(connections_page))
        .route("/tokens", get(tokens_page).post(create_token_action))
        .route("/tokens/{name}/revoke", post(revoke_token_action))
        .route("/logout", post(logout))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(server.clone(), gate::console_gate));
    let open = Router::new()
        .route("/login", get(login_page).post(login))
        .route("/console.css", get(css))
        .route("/console.js", get(js))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(server, gate::host_gate));
    gated.merge(open).layer(axum::middleware::from_fn(headers))
}

/// Headers every console response carries, and the server's time on it
/// (`Server-Timing`, which browsers' developer tools and the console bench
/// read).
async fn headers(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let took = format!("app;dur={:.2}", started.elapsed().as_secs_f64() * 1000.0);
    if let Ok(value) = HeaderValue::from_str(&took) {
        h.insert("server-timing", value);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

/// A UTC time from Unix milliseconds.
fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A duration for people.
fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

fn status_badge(status: Status) -> Markup {
    html! { span class={ "status " (status.as_str()) } { (status.as_str()) } }
}

/// The page around every view.
fn page(title: &str, caller: Option<&Caller>, live: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · weft" }
                link rel="stylesheet" href="/console.css";
                // No icon: without this line every page asks for
                // /favicon.ico and logs its 404 in the browser's console.
                link rel="icon" href="data:,";
                script src="/console.js" defer {}
                @if live {
                    noscript { meta http-equiv="refresh" content="10"; }
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        a.brand href="/" { "weft" }
                        a href="/" { "Runs" }
                        a href="/workflows" { "Workflows" }
                        a href="/connections" { "Connections" }
                        @if caller.is_some_and(|c| c.may(Role::Admin)) {
                            a href="/tokens" { "Tokens" }
                        }
                    }
                    @if let Some(caller) = caller {
                        div.who {
                            span { (caller.name) " (" (caller.role.as_str()) ")" }
                            @if caller.session.is_some() {
                                form method="post" action="/logout" {
                                    (csrf_field(caller))
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main data-live=[live.then_some("3000")] { (body) }
            }
        }
    }
}

fn csrf_field(caller: &Caller) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(caller.csrf.as_deref().unwrap_or("")); }
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// An error shown as a page.
fn error_page(caller: Option<&Caller>, status: StatusCode, message: &str) -> Response {
    let body = html! {
        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
        p.error role="alert" { (message) }
        p { a href="/" { "Back to the runs" } }
    };
    html_response(status, page("Error", caller, false, body))
}

fn refused(caller: &Caller, refusal: Refusal) -> Response {
    error_page(Some(caller), refusal.status, &refusal.message)
}

fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

// ---------------------------------------------------------------- runs

#[derive(Debug, Default, Deserialize)]
struct RunsFilter {
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    trigger: String,
    /// A date (YYYY-MM-DD, UTC): runs created on or after it.
    #[serde(default)]
    from: String,
    /// A date (YYYY-MM-DD, UTC): runs created on or before it.
    #[serde(default)]
    to: String,
    /// A run id or its start.
    #[serde(default)]
    q: String,
    #[serde(default)]
    before: String,
}

fn day_ms(text: &str, end: bool) -> Result<Option<u64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("{text:?} is not a date (YYYY-MM-DD)"))?;
    let day = if end { day.succ_opt().unwrap_or(day) } else { day };
    let ms = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or(0);
    Ok(Some(ms.max(0) as u64))
}

impl RunsFilter {
    fn query(&self) -> Result<RunQuery, String> {
        let status = match self.status.as_str() {
            "" => None,
            s => Some(Status::parse(s).ok_or_else(|| format!("{s:?} is not a status"))?),
        };
        let q = self.q.trim();
        if q.len() > 64 || !q.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("a run id is letters, digits, '-' and '_'".into());
        }
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(RunQuery {
            workflow: nonempty(&self.workflow),
            status,
            trigger: nonempty(&self.trigger),
            created_from_ms: day_ms(&self.from, false)?,
            created_to_ms: day_ms(&self.to, true)?,
            id_prefix: nonempty(q),
            before: nonempty(&self.before),
            limit: PAGE_ROWS.min(MAX_PAGE),
        })
    }

    /// The query string of these filters with another cursor.
    fn link(&self, before: &str) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("workflow", &self.workflow),
            ("status", &self.status),
            ("trigger", &self.trigger),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.q),
        ] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.append_pair("before", before);
        format!("/?{}", s.finish())
    }
}

async fn runs_page(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Query(filter): Query<RunsFilter>,
) -> Response {
    let query = match filter.query() {
        Ok(query) => query,
        Err(message) => return error_page(Some(&caller), StatusCode::BAD_REQUEST, &message),
    };
    let page_of_runs = match server.executor.store().query_runs(query).await {
        Ok(page) => page,
        Err(e) => {
            return error_page(Some(&caller), StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
    };
    let live = page_of_runs.rows.iter().any(|r| !r.status.is_finished());
    let operator = caller.may(Role::Operator);
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/" role="search" {
            label { "Workflow "
                select name="workflow" {
                    option value="" { "any" }
                    @for name in server.workflows.keys() {
                        option value=(name) selected[*name == filter.workflow] { (name) }
                    }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[s.as_str() == filter.status] { (s.as_str()) }
                    }
                }
            }
            label { "Trigger "
                select name="trigger" {
                    option value="" { "any" }
                    @for t in TRIGGERS {
                        option value=(t) selected[t == filter.trigger] { (t) }
                    }
                }
            }
            label { "From " input type="date" name="from" value=(filter.from); }
            label { "To " input type="date" name="to" value=(filter.to); }
            label { "Run id " input type="search" name="q" value=(filter.q) placeholder="run id" maxlength="64"; }
            button type="submit" { "Filter" }
            a href="/" { "Clear" }
        }
        @if page_of_runs.rows.is_empty() {
            p.empty { "No runs match." }
        } @else {
            form #runs-form method="post" action="/runs/bulk" {
                @if operator {
                    (csrf_field(&caller))
                    div.bulk {
                        span { "Selected: " }
                        button type="submit" name="action" value="cancel" { "Cancel" }
                        button type="submit" name="action" value="resume" { "Resume" }
                    }
                }
                div.scroll {
                    table #runs {
                        thead { tr {
                            @if operator { th { input type="checkbox" data-select-all="run" aria-label="Select all runs"; } }
                            th { "Run" } th { "Workflow" } th { "Status" } th { "Trigger" } th { "By" } th { "Started (UTC)" } th { "Duration" } th { "Error" }
                        } }
                        tbody {
                            @for row in &page_of_runs.rows { (run_row(row, operator)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page_of_runs.next {
            p.pager { a rel="next" href=(filter.link(next)) { "Older runs →" } }
        }
        @if page_of_runs.cut_short {
            p.note { "This page stopped early: few runs match these filters among the many looked at. Older runs may still match." }
        }
    };
    html_response(StatusCode::OK, page("Runs", Some(&caller), live, body))
}

fn run_row(row: &RunRow, operator: bool) -> Markup {
    let took = row.finished_ms.map(|f| f.saturating_sub(row.created_ms));
    html! {
        tr data-run-id=(row.id) {
            @if operator {
                td { input type="checkbox" name="run" value=(row.id) aria-label={ "Select run " (row.id) }; }
            }
            td.id { a href={ "/runs/" (row.id) } { (row.id) } }
            td { (row.workflow) @if row.dry_run { " " span.tag { "dry run" } } }
            td { (status_badge(row.status)) @if row.cancel_requested && !row.status.is_finished() { " " span.tag { "cancelling" } } }
            td { (row.trigger) }
            td { (row.started_by.as_deref().unwrap_or("")) }
            td { time { (time(row.created_ms)) } }
            td { @if let Some(took) = took { (duration(took)) } @else { "…" } }
            td.error { (row.error.as_deref().unwrap_or("")) }
        }
    }
}

async fn bulk_action(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    // Several `run` fields: read the form by hand.
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let action = pairs.iter().find(|(k, _)| k == "action").map(|(_, v)| v.as_str()).unwrap_or("");
    let runs: Vec<&str> =
        pairs.iter().filter(|(k, _)| k == "run").map(|(_, v)| v.as_str()).collect();
    if runs.is_empty() {
        return error_page(Some(&caller), StatusCode::BAD_REQUEST, "no run was selected");
    }
    if runs.len() > MAX_PAGE {
        return error_page(
            Some(&caller),
            StatusCode::BAD_REQUEST,
            &format!("at most {MAX_PAGE} runs at once"),
        );
    }
    let mut results = Vec::with_capacity(runs.len());
    for id in runs {
        let outcome = match action {
            "cancel" => server.cancel(id, &caller).await.map(|(status, _)| status),
            "resume" => server.resume(id, &caller).await.map(|()| "resuming".to_owned()),
            other => {
                return error_page(
                    Some(&caller),
                    StatusCode::BAD_REQUEST,
                    &format!("{other:?} is not an action (cancel or resume)"),
                );
            }
        };
        results.push((id.to_owned(), outcome));
    }
    let body = html! {
        h1 { "Bulk " (action) }
        table #bulk-results {
            thead { tr { th { "Run" } th { "Outcome" } } }
            tbody {
                @for (id, outcome) in &results {
                    tr data-run-id=(id) {
                        td { a href={ "/runs/" (id) } { (id) } }
                        @match outcome {
                            Ok(status) => td.ok { (status) },
                            Err(refusal) => td.error { (refusal.message) },
                        }
                    }
                }
            }
        }
        p { a href="/" { "Back to the runs" } }
    };
    html_response(StatusCode::OK, page("Bulk action", Some(&caller), false, body))
}

// ----------------------------------------------------------- run detail

async fn run_page(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let store = server.executor.store();
    let run = match store.run(&id).await {
        Ok(run) => run,
        Err(StoreError::UnknownRun(_)) => {
            return error_page(
                Some(&caller),
                StatusCode::NOT_FOUND,
                &format!("no run with id {id}"),
            );
        }
        Err(e) => {
            return error_page(Some(&caller), StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
    };
    let (steps, history, totals, row) = match (
        store.steps(&id).await,
        store.history(&id).await,
        store.connection_totals(&id).await,
        store.run_row(&id).await,
    ) {
        (Ok(s), Ok(h), Ok(t), Ok(r)) => (s, h, t, Some(r)),
        (Ok(s), Ok(h), Ok(t), Err(_)) => (s, h, t, None),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) => {
            return error_page(Some(&caller), StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
    };
    let active = server.active().contains_key(&id);
    let workflow = Executor::stored_workflow(&run).ok();
    let now = now_ms();
    let end = run.finished_ms.unwrap_or(now);
    let span = end.saturating_sub(run.created_ms).max(1);
    let operator = caller.may(Role::Operator);
    let live = !run.status.is_finished();
    let body = html! {
        h1 { "Run " code { (run.id) } }
        dl.summary #summary {
            dt { "Workflow" } dd { a href={ "/workflows/" (run.workflow) } { (run.workflow) } }
            dt { "Workflow hash" } dd { code title=(run.workflow_hash) { (run.workflow_hash.get(..12).unwrap_or(&run.workflow_hash)) } }
            dt { "Status" } dd #run-status { (status_badge(run.status)) @if run.dry_run { " " span.tag { "dry run" } } @if active { " " span.tag { "active here" } } }
            dt { "Trigger" } dd { (run.trigger.as_str()) }
            dt { "Started by" } dd { (row.as_ref().and_then(|r| r.started_by.as_deref()).unwrap_or(run.trigger.as_str())) }
            dt { "Started (UTC)" } dd { (time(run.created_ms)) }
            dt { "Finished (UTC)" } dd { @if let Some(f) = run.finished_ms { (time(f)) } @else { "—" } }
            dt { "Duration" } dd { (duration(end.saturating_sub(run.created_ms))) @if run.finished_ms.is_none() { " so far" } }
            dt { "Resumes" } dd { (run.resumes) }
            @if let Some(error) = &run.error {
                dt { "Error" } dd.error role="alert" { (error) }
            }
        }
        @if operator {
            div.actions {
                @if !run.status.is_finished() && !active {
                    form method="post" action={ "/runs/" (run.id) "/resume" } { (csrf_field(&caller)) button #resume type="submit" { "Resume" } }
                }
                @if !run.status.is_finished() {
                    form method="post" action={ "/runs/" (run.id) "/cancel" } { (csrf_field(&caller)) button #cancel type="submit" { "Cancel" } }
                }
                form method="post" action={ "/runs/" (run.id) "/rerun" } { (csrf_field(&caller)) button #rerun type="submit" { "Re-run with the same inputs" } }
            }
        }
        h2 { "Inputs" }
        pre.json { (serde_json::to_string_pretty(&run.inputs).unwrap_or_default()) }
        h2 { "Steps" }
        div.scroll {
            table #steps {
                thead { tr {
                    th { "#" } th { "Step" } th { "Op" } th { "Target" } th { "Status" } th { "Attempts" } th.timeline { "Timeline" }
                    th { "Read" } th { "Created" } th { "Updated" } th { "Unchanged" } th { "Removed" } th { "Absent" } th { "Failed" } th { "Progress" }
                } }
                tbody {
                    @for state in &steps {
                        (step_row(state, workflow.as_ref(), run.created_ms, span, now))
                    }
                }
            }
        }
        (state_changes(&steps))
        @for state in steps.iter().filter(|s| s.plan.is_some()) {
            (plan_section(state))
        }
        @if !totals.is_empty() {
            h2 { "HTTP per connection" }
            div.scroll {
                table #connections {
                    thead { tr { th { "Connection" } th { "Plugin" } th { "Requests" } th { "Answers" } th { "Time in requests" } th { "429s" } th { "Retries" } th { "Waited" } th { "Refused by host" } } }
                    tbody {
                        @for (name, t) in &totals {
                            tr {
                                td { (name) } td { (t.plugin) } td { (t.requests) }
                                td { (t.statuses.iter().map(|(class, n)| format!("{n} {class}")).collect::<Vec<_>>().join(", ")) }
                                td { (duration(t.request_ms)) } td { (t.throttled) } td { (t.retries) } td { (duration(t.waited_ms)) } td { (t.denied) }
                            }
                        }
                    }
                }
            }
            @if totals.values().any(|t| !t.calls.is_empty() || !t.traps.is_empty()) {
                h2 { "Plugin calls" }
                div.scroll {
                    table #plugin-calls {
                        thead { tr { th { "Connection" } th { "Op" } th { "Calls" } th { "Total" } th { "Mean" } th { "Longest" } } }
                        tbody {
                            @for (name, t) in &totals {
                                @for (op, c) in &t.calls {
                                    tr {
                                        td { (name) } td { (op) } td { (c.calls) } td { (duration(c.ms)) }
                                        td { (duration(c.ms / c.calls.max(1))) } td { (duration(c.max_ms)) }
                                    }
                                }
                            }
                        }
                    }
                }
                @for (name, t) in totals.iter().filter(|(_, t)| !t.traps.is_empty()) {
                    p.error { (name) ": calls stopped: " (t.traps.iter().map(|(cause, n)| format!("{n} {cause}")).collect::<Vec<_>>().join(", ")) }
                }
            }
        }
        h2 { "History" }
        table #history {
            thead { tr { th { "When (UTC)" } th { "Who" } th { "What" } th { "Detail" } } }
            tbody {
                @for entry in &history {
                    tr { td { (time(entry.at_ms)) } td { (entry.actor) } td { (entry.action) } td { (entry.detail.as_deref().unwrap_or("")) } }
                }
            }
        }
        details #workflow-text {
            summary { "Workflow text (" (run.workflow_path) ")" }
            pre { (run.workflow_text) }
        }
    };
    html_response(StatusCode::OK, page(&format!("Run {}", run.id), Some(&caller), live, body))
}

fn step_row(
    state: &StepState,
    workflow: Option<&crate::workflow::Workflow>,
    run_start: u64,
    span: u64,
    now: u64,
) -> Markup {
    let step = workflow.and_then(|w| w.steps.get(state.index as usize));
    let op = step.map(|s| s.action.name()).unwrap_or("");
    let target = step.map(|s| format!("{}.{}", s.connection, s.resource)).unwrap_or_default();
    let (offset, width) = match state.started_ms {
        Some(started) => {
            let end = state.finished_ms.unwrap_or(now);
            let offset = started.saturating_sub(run_start) * 100 / span;
            let width = (end.saturating_sub(started) * 100 / span).max(1);
            (offset.min(99), width.min(100 - offset.min(99)))
        }
        None => (0, 0),
    };
    let took = match (state.started_ms, state.finished_ms) {
        (Some(s), Some(f)) => duration(f.saturating_sub(s)),
        (Some(s), None) => format!("{} so far", duration(now.saturating_sub(s))),
        _ => String::new(),
    };
    let c = &state.counts;
    let mut progress = String::new();
    if state.pages > 0 {
        let _ = write!(progress, "{} pages", state.pages);
    }
    if state.items > 0 {
        let _ = write!(
            progress,
            "{}{} items",
            if progress.is_empty() { "" } else { ", " },
            state.items
        );
    }
    html! {
        tr data-step=(state.id) {
            td { (state.index + 1) }
            td { (state.id) }
            td { (op) }
            td { (target) }
            td { (status_badge(state.status)) }
            td { (state.attempts) }
            td.timeline title=(took) {
                @if width > 0 {
                    // SVG geometry, not a `style` attribute: the CSP
                    // (`style-src 'self'`) refuses inline styles.
                    svg.track viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" {
                        rect class={ "bar " (state.status.as_str()) } x=(offset) y="0" width=(width) height="10" {}
                    }
                }
                span.took { (took) }
            }
            td.count-read { (c.read) }
            td.count-created { (c.created) }
            td.count-updated { (c.updated) }
            td.count-unchanged { (c.unchanged) }
            td.count-removed { (c.removed) }
            td.count-absent { (c.absent) }
            td.count-failed { (c.failed) }
            td { (progress) }
        }
        @if let Some(error) = &state.error {
            tr.step-error { td {} td colspan="14" role="alert" { (error) } }
        }
        @if let Some(errors) = state.output.as_ref().and_then(|o| o.get("errors")).and_then(Value::as_array).filter(|e| !e.is_empty()) {
            tr.step-error.item-errors {
                td {}
                td colspan="14" {
                    "First failures:"
                    ul { @for e in errors.iter().take(10) { li { (e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string())) } } }
                }
            }
        }
    }
}

/// A value for a cell: `before` maps paths to values (`key` picks one);
/// otherwise the value itself. Absent is shown as `—`.
fn shown_at(value: Option<&Value>, key: Option<&str>) -> String {
    let value = match key {
        Some(key) => value.and_then(|v| v.get(key)),
        None => value,
    };
    match value {
        None => "—".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

fn plan_section(state: &StepState) -> Markup {
    let Some(plan) = &state.plan else { return html! {} };
    html! {
        section.plan id={ "plan-" (state.id) } {
            h2 { "Plan of step " (state.id) }
            p.counts {
                "create " (plan.create) ", update " (plan.update) ", unchanged " (plan.unchanged)
                ", upsert " (plan.upsert) ", remove " (plan.remove) ", already absent " (plan.already_absent)
            }
            @if !plan.irreversible.is_empty() || plan.irreversible_not_listed > 0 {
                div.irreversible role="alert" {
                    strong { (plan.irreversible.len() as u64 + plan.irreversible_not_listed) " irreversible op(s)" }
                    ul {
                        @for entry in plan.irreversible.iter().take(100) {
                            li { (entry.action.as_str()) " " code { (entry.key.as_deref().unwrap_or("?")) } }
                        }
                    }
                    @if plan.irreversible.len() > 100 || plan.irreversible_not_listed > 0 {
                        p { "… and more (the API lists them all)." }
                    }
                }
            }
            @if !plan.samples.is_empty() {
                table.samples {
                    thead { tr { th { "Action" } th { "Key" } th { "Changes (before → after)" } th { "Record to write" } } }
                    tbody {
                        @for entry in &plan.samples {
                            tr class=[entry.irreversible.then_some("irreversible")] {
                                td { (entry.action.as_str()) }
                                td { code { (entry.key.as_deref().unwrap_or("")) } }
                                td {
                                    @if !entry.changes.is_empty() {
                                        table.changes {
                                            @for field in &entry.changes {
                                                tr data-field=(field) {
                                                    th scope="row" { code { (field) } }
                                                    td.before { code { (shown_at(entry.before.as_ref(), Some(field))) } }
                                                    td { "→" }
                                                    td.after { code { (shown_at(entry.record.as_ref().and_then(|r| at_path(r, field)), None)) } }
                                                }
                                            }
                                        }
                                    }
                                }
                                td { @if let Some(record) = &entry.record { pre.json { (serde_json::to_string_pretty(record).unwrap_or_default()) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn cancel_action(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match server.cancel(&id, &caller).await {
        Ok(_) => see_other(&format!("/runs/{id}")),
        Err(refusal) => refused(&caller, refusal),
    }
}

async fn resume_action(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match server.resume(&id, &caller).await {
        Ok(()) => see_other(&format!("/runs/{id}")),
        Err(refusal) => refused(&caller, refusal),
    }
}

async fn rerun_action(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match server.rerun(&id, &caller).await {
        Ok(run) => see_other(&format!("/runs/{}", run.id)),
        Err(refusal) => refused(&caller, refusal),
    }
}

// ------------------------------------------------------------ workflows

async fn workflows_page(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let store = server.executor.store();
    let mut last: BTreeMap<&str, Option<RunRow>> = BTreeMap::new();
    for name in server.workflows.keys() {
        let query = RunQuery { workflow: Some(name.clone()), limit: 1, ..RunQuery::default() };
        let row = store.query_runs(query).await.ok().and_then(|p| p.rows.into_iter().next());
        last.insert(name, row);
    }
    let body = html! {
        h1 { "Workflows" }
        div.scroll {
            table #workflows {
                thead { tr { th { "Workflow" } th { "Triggers" } th { "Next firing (UTC)" } th { "Fired" } th { "Skipped firings" } th { "Last run" } } }
                tbody {
                    @for (name, served) in &server.workflows {
                        @let w = &served.workflow;
                        tr data-workflow=(name) {
                            td { a href={ "/workflows/" (name) } { (name) } br; small { (w.description) } }
                            td { (triggers(w)) }
                            td { (next_firing(w)) }
                            td { (served.fired.load(std::sync::atomic::Ordering::Relaxed)) }
                            td { (served.skipped_firings.load(std::sync::atomic::Ordering::Relaxed)) }
                            td {
                                @if let Some(Some(row)) = last.get(name.as_str()) {
                                    a href={ "/runs/" (row.id) } { (status_badge(row.status)) } " " (time(row.created_ms))
                                } @else { "never" }
                            }
                        }
                    }
                }
            }
        }
        @if !server.broken.is_empty() {
            h2 { "Files that did not load" }
            @for (path, diagnostics) in &server.broken {
                section.broken {
                    h3 { code { (path) } }
                    pre.error { (diagnostics) }
                }
            }
        }
    };
    html_response(StatusCode::OK, page("Workflows", Some(&caller), false, body))
}

fn triggers(w: &crate::workflow::Workflow) -> Markup {
    html! {
        @if let Some(cron) = &w.trigger.cron {
            div { "cron " code { (cron.expression) } }
        }
        @if w.trigger.webhook.is_some() {
            div { "webhook " code { "/hooks/" (w.name) } }
        }
        @if w.trigger.cron.is_none() && w.trigger.webhook.is_none() { "by hand" }
    }
}

fn next_firing(w: &crate::workflow::Workflow) -> String {
    w.trigger
        .cron
        .as_ref()
        .and_then(|c| c.next_after(chrono::Utc::now()))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

async fn workflow_page(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    workflow_view(&server, &caller, &name, &BTreeMap::new(), None).await
}

async fn workflow_view(
    server: &Server,
    caller: &Caller,
    name: &str,
    given: &BTreeMap<String, String>,
    problem: Option<&str>,
) -> Response {
    let Some(served) = server.workflows.get(name) else {
        return error_page(
            Some(caller),
            StatusCode::NOT_FOUND,
            &format!("no workflow named {name:?} is served here"),
        );
    };
    let w = &served.workflow;
    let state = if w.state.is_empty() {
        None
    } else {
        match server.executor.store().workflow_state(name).await {
            Ok(stored) => Some(stored),
            Err(e) => {
                return error_page(Some(caller), StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
        }
    };
    let body = html! {
        h1 { "Workflow " (w.name) }
        p { (w.description) }
        dl.summary {
            dt { "File" } dd { code { (w.path.display()) } }
            dt { "Hash" } dd { code title=(w.hash) { (w.hash.get(..12).unwrap_or(&w.hash)) } }
            dt { "Triggers" } dd { (triggers(w)) }
            dt { "Next firing (UTC)" } dd { (next_firing(w)) }
            dt { "Steps" } dd { @for (i, s) in w.steps.iter().enumerate() { @if i > 0 { ", " } (s.id) " (" (s.action.name()) ")" } }
        }
        p { a href={ "/?workflow=" (url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()) } { "Runs of this workflow" } }
        @if let Some(stored) = &state {
            (state_section(w, stored))
        }
        @if caller.may(Role::Operator) {
            h2 { "Start a run" }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form #start method="post" action={ "/workflows/" (w.name) "/start" } {
                (csrf_field(caller))
                @if w.inputs.is_empty() {
                    p { "This workflow takes no inputs." }
                }
                @for input in &w.inputs {
                    (input_field(input, given.get(&input.name).map(String::as_str)))
                }
                div.actions {
                    button type="submit" name="mode" value="run" { "Start run" }
                    button type="submit" name="mode" value="dry-run" { "Dry run" }
                }
            }
        }
    };
    html_response(
        if problem.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK },
        page(&w.name, Some(caller), false, body),
    )
}

/// The most of one state value a page shows; `weft state show` and the
/// API give it whole.
const SHOWN_STATE_BYTES: usize = 2 << 10;

/// A state value as compact JSON, cut to [`SHOWN_STATE_BYTES`].
fn state_value(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().map(|(i, _)| i).find(|&i| i > SHOWN_STATE_BYTES) {
        Some(cut) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text,
    }
}

/// The workflow's state as its next run reads it: each declared value
/// (stored, else its default), and which run and step changed it last.
fn state_section(w: &crate::workflow::Workflow, stored: &WorkflowState) -> Markup {
    let values = w.state_values(&stored.values);
    html! {
        h2 { "State" }
        p #state-origin {
            "Version " (stored.version) ": "
            @match (&stored.run, &stored.step, stored.updated_ms) {
                (_, _, None) => { "never changed." }
                (Some(run), Some(step), Some(at)) => {
                    "last changed by run " a href={ "/runs/" (run) } { code { (run) } } ", step " code { (step) } " at " (time(at)) " UTC."
                }
                (_, _, Some(at)) => { "last changed by hand (weft state set or reset) at " (time(at)) " UTC." }
            }
        }
        div.scroll {
            table #state {
                thead { tr { th { "Name" } th { "Value" } th { "Default" } } }
                tbody {
                    @for spec in &w.state {
                        tr {
                            td { code { (spec.name) } }
                            td { code { (state_value(values.get(&spec.name).unwrap_or(&Value::Null))) } }
                            td { code { (state_value(&spec.default)) } }
                        }
                    }
                }
            }
        }
    }
}

/// What the run's steps changed in the workflow's state: each value from
/// before to after (planned only, for a dry run).
fn state_changes(steps: &[StepState]) -> Markup {
    html! {
        @if steps.iter().any(|s| s.state_write.as_ref().is_some_and(|w| !w.values.is_empty())) {
            h2 { "State changes" }
            div.scroll {
                table #state-changes {
                    thead { tr { th { "Step" } th { "Name" } th { "Before" } th { "After" } } }
                    tbody {
                        @for step in steps {
                            @if let Some(write) = &step.state_write {
                                @for (name, value) in &write.values {
                                    tr {
                                        td { (step.id) }
                                        td { code { (name) } }
                                        td { code { (state_value(write.before.get(name).unwrap_or(&Value::Null))) } }
                                        td { code { (state_value(value)) } @if write.planned { " " span.tag { "planned: dry run" } } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn input_field(input: &InputSpec, given: Option<&str>) -> Markup {
    let id = format!("input-{}", input.name);
    let field = format!("input.{}", input.name);
    let default = input.default.as_ref().map(|d| match d {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let value = given.map(str::to_owned).unwrap_or_default();
    html! {
        div.field {
            label for=(id) {
                (input.name) " "
                small { (input.kind.as_str()) @if input.required { ", required" } }
            }
            @match input.kind {
                InputType::Boolean => {
                    select id=(id) name=(field) {
                        option value="" { "default" @if let Some(d) = &default { " (" (d) ")" } }
                        option value="true" selected[value == "true"] { "true" }
                        option value="false" selected[value == "false"] { "false" }
                    }
                }
                InputType::Object | InputType::Array | InputType::Any => {
                    textarea id=(id) name=(field) rows="3" placeholder=[default.as_deref()] required[input.required && input.default.is_none()] { (value) }
                }
                InputType::Integer | InputType::Number => {
                    input id=(id) name=(field) type="number" step=(if input.kind == InputType::Integer { "1" } else { "any" }) value=(value) placeholder=[default.as_deref()] required[input.required && input.default.is_none()];
                }
                InputType::String => {
                    input id=(id) name=(field) type="text" value=(value) placeholder=[default.as_deref()] required[input.required && input.default.is_none()];
                }
            }
            @if !input.description.is_empty() { p.help { (input.description) } }
        }
    }
}

/// The inputs a start form gives, typed by the workflow's declarations.
/// An empty field is not given (its default applies).
fn form_inputs(
    inputs: &[InputSpec],
    given: &BTreeMap<String, String>,
) -> Result<serde_json::Map<String, Value>, String> {
    let mut out = serde_json::Map::new();
    for input in inputs {
        let Some(text) = given.get(&input.name).filter(|t| !t.trim().is_empty()) else { continue };
        let value = match input.kind {
            InputType::String => Value::String(text.clone()),
            _ => serde_json::from_str(text.trim()).map_err(|e| {
                format!("input {}: {text:?} is not {} JSON: {e}", input.name, input.kind.as_str())
            })?,
        };
        out.insert(input.name.clone(), value);
    }
    Ok(out)
}

async fn start_action(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(served) = server.workflows.get(&name) else {
        return error_page(
            Some(&caller),
            StatusCode::NOT_FOUND,
            &format!("no workflow named {name:?} is served here"),
        );
    };
    let mut given = BTreeMap::new();
    let mut mode = String::new();
    for (key, value) in url::form_urlencoded::parse(&body) {
        if let Some(input) = key.strip_prefix("input.") {
            given.insert(input.to_owned(), value.into_owned());
        } else if key == "mode" {
            mode = value.into_owned();
        }
    }
    let inputs = match form_inputs(&served.workflow.inputs, &given) {
        Ok(inputs) => inputs,
        Err(problem) => {
            return workflow_view(&server, &caller, &name, &given, Some(&problem)).await;
        }
    };
    let options = RunOptions {
        inputs,
        dry_run: mode == "dry-run",
        trigger: RunTrigger::Api,
        started_by: Some(caller.name.clone()),
        ..RunOptions::default()
    };
    match server.start_for(&name, options).await {
        Ok(run) => see_other(&format!("/runs/{}", run.id)),
        Err(refusal) if refusal.status == StatusCode::UNPROCESSABLE_ENTITY => {
            workflow_view(&server, &caller, &name, &given, Some(&refusal.message)).await
        }
        Err(refusal) => refused(&caller, refusal),
    }
}

// ---------------------------------------------------------- connections

async fn connections_page(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    // A connection is a name with its settings in one workflow; the same
    // name in several workflows is listed once per distinct definition.
    let mut rows = Vec::new();
    for served in server.workflows.values() {
        let w = &served.workflow;
        for connection in w.connections.values() {
            let plugin = match server.endpoints.get(&connection.name) {
                Some(endpoint) => Ok((endpoint.manifest().clone(), String::from("(in-process)"))),
                None => server
                    .executor
                    .plugin(&connection.name, &connection.plugin)
                    .await
                    .map(|p| (p.manifest().clone(), p.digest().to_owned())),
            };
            rows.push((w.name.clone(), connection.clone(), plugin));
        }
    }
    let body = html! {
        h1 { "Connections" }
        div.scroll {
            table #connections {
                thead { tr {
                    th { "Workflow" } th { "Connection" } th { "Credentials" } th { "Plugin" } th { "Digest" } th { "Hosts allowed" } th { "Rate limits in force" }
                } }
                tbody {
                    @for (workflow, c, plugin) in &rows {
                        tr data-connection=(c.name) {
                            td { (workflow) }
                            td { (c.name) }
                            td { code { (c.credentials.as_deref().map(credential_source).unwrap_or_else(|| "none".into())) } }
                            @match plugin {
                                Ok((manifest, digest)) => {
                                    td { (manifest.name) " " (manifest.version) br; small { (c.plugin.to_string()) } }
                                    td { code title=(digest) { (digest.get(..16).unwrap_or(digest)) } }
                                    td { (hosts(c, manifest)) }
                                    td { (limits(c, manifest)) }
                                }
                                Err(e) => { td.error colspan="4" { (e.to_string()) } }
                            }
                        }
                    }
                }
            }
        }
        p.note { "Rate limits learned from a vendor's answers (429s, rate headers) live in each run's limiter and are not shown here." }
    };
    html_response(StatusCode::OK, page("Connections", Some(&caller), false, body))
}

/// Where a credential comes from (`env:NAME`, `file:PATH`), never its
/// value; a literal value in the workflow is not shown at all.
fn credential_source(reference: &str) -> String {
    match reference.split_once(':') {
        Some((kind @ ("env" | "file"), rest)) => format!("{kind}:{rest}"),
        _ => "(given in the workflow)".into(),
    }
}

fn hosts(c: &crate::workflow::Connection, manifest: &crate::connector::Manifest) -> Markup {
    let base = c.base_url.clone().unwrap_or_else(|| manifest.default_base_url.clone());
    html! {
        div { code { (base) } }
        @for host in manifest.extra_hosts.iter().chain(&c.allow_hosts) { div { code { (host) } } }
        @if c.allow_private_network { div { span.tag { "private network allowed" } } }
    }
}

fn limits(c: &crate::workflow::Connection, manifest: &crate::connector::Manifest) -> Markup {
    html! {
        @for o in &c.rate_limits {
            div { (format!("{:?}", o.class).to_lowercase()) " " (format!("{:.2}", o.per_second)) "/s " span.tag { "overridden" } }
        }
        @for l in &manifest.rate_limits {
            div {
                (format!("{:?}", l.method_class).to_lowercase()) " " (l.requests) " per " (l.per_seconds) " s "
                span.tag { "published" }
                @if let Some(prefix) = &l.credential_prefix { " for keys " code { (prefix) "…" } }
            }
        }
        @if c.rate_limits.is_empty() && manifest.rate_limits.is_empty() {
            "none published: learned from the vendor's answers"
        }
    }
}

// --------------------------------------------------------------- tokens

async fn tokens_page(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    tokens_view(&server, &caller, None, StatusCode::OK).await
}

async fn tokens_view(
    server: &Server,
    caller: &Caller,
    created: Option<(&str, &str)>,
    status: StatusCode,
) -> Response {
    let tokens = match server.executor.store().tokens().await {
        Ok(tokens) => tokens,
        Err(e) => {
            return error_page(Some(caller), StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
    };
    let body = html! {
        h1 { "Tokens" }
        @if let Some((name, token)) = created {
            div.created role="status" {
                p { "Token " strong { (name) } " created. Copy it now: it is not shown again." }
                pre #new-token { (token) }
            }
        }
        @if server.access.is_open() {
            p.note { "This server is open to this machine's users: the store holds no token. Creating one closes it (sign in with the token then)." }
        }
        table #tokens {
            thead { tr { th { "Name" } th { "Role" } th { "Id" } th { "Created (UTC)" } th { "By" } th { "State" } th {} } }
            tbody {
                @for t in &tokens {
                    tr data-token=(t.name) {
                        td { (t.name) } td { (t.role.as_str()) } td { code { (t.id) } }
                        td { (time(t.created_ms)) } td { (t.created_by.as_deref().unwrap_or("")) }
                        td { @if let Some(r) = t.revoked_ms { "revoked " (time(r)) } @else { "active" } }
                        td {
                            @if t.is_active() {
                                form method="post" action={ "/tokens/" (t.id) "/revoke" } { (csrf_field(caller)) button type="submit" { "Revoke" } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Create a token" }
        form #create-token method="post" action="/tokens" {
            (csrf_field(caller))
            label { "Name " input name="name" required maxlength="64" pattern="[A-Za-z0-9._@-]{1,64}"; }
            label { "Role "
                select name="role" {
                    option value="viewer" { "viewer: reads" }
                    option value="operator" { "operator: also starts, resumes, cancels" }
                    option value="admin" { "admin: also manages tokens" }
                }
            }
            button type="submit" { "Create" }
        }
    };
    html_response(status, page("Tokens", Some(caller), false, body))
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

async fn create_token_action(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    axum::Form(form): axum::Form<TokenForm>,
) -> Response {
    match server.create_token(&form.name, &form.role, &caller).await {
        Ok(issued) => {
            tokens_view(
                &server,
                &caller,
                Some((&issued.record.name, issued.token.expose())),
                StatusCode::CREATED,
            )
            .await
        }
        Err(refusal) => refused(&caller, refusal),
    }
}

async fn revoke_token_action(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    match server.revoke_token(&name, &caller).await {
        Ok(_) => see_other("/tokens"),
        Err(refusal) => refused(&caller, refusal),
    }
}

// -------------------------------------------------------------- sign-in

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// `next` when it is a path of this server, else `/`: no open redirect.
fn local_path(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 2048
        && !next.chars().any(char::is_control);
    if local { next } else { "/" }
}

fn login_view(next: &str, problem: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(problem) = problem { p.error role="alert" { (problem) } }
        form #signin method="post" action="/login" {
            input type="hidden" name="next" value=(local_path(next));
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            p.help { "An admin makes one with " code { "weft tokens create NAME --role viewer" } "." }
            button type="submit" { "Sign in" }
        }
    };
    html_response(status, page("Sign in", None, false, body))
}

async fn login_page(
    State(server): State<Arc<Server>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    if server.access.is_open() {
        return see_other(local_path(&query.next));
    }
    login_view(&query.next, None, StatusCode::OK)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(server): State<Arc<Server>>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    // A sign-in form of another site: refused (the gate checked Origin
    // when there is one; a browser that sends none still sends this).
    if headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
        return login_view(
            &form.next,
            Some("sign in from this server's own page"),
            StatusCode::FORBIDDEN,
        );
    }
    let access = &server.access;
    if let Err(wait) = access.limiter.check(addr.ip()) {
        let message = format!(
            "too many failed sign-ins from this address; try again in {} s",
            wait.as_secs()
        );
        let mut response = login_view(&form.next, Some(&message), StatusCode::TOO_MANY_REQUESTS);
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let store = server.executor.store();
    let record = match auth::check_token(store, &form.token).await {
        Ok(caller) => store.token(&caller.token_id).await.ok().flatten(),
        Err(auth::AuthError::Invalid) => None,
        Err(auth::AuthError::Store(e)) => {
            return login_view(&form.next, Some(&e.to_string()), StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let Some(record) = record else {
        access.limiter.failed(addr.ip());
        tracing::warn!(client = %addr.ip(), "console sign-in with a token that is not valid");
        return login_view(
            &form.next,
            Some("that token is not valid (unknown, revoked or mistyped)"),
            StatusCode::UNAUTHORIZED,
        );
    };
    let (cookie, hash, session) = auth::open_session(&record);
    if let Err(e) = store.create_session(&hash, &session).await {
        return login_view(&form.next, Some(&e.to_string()), StatusCode::SERVICE_UNAVAILABLE);
    }
    tracing::info!(token = %record.name, "console sign-in");
    let mut response = see_other(local_path(&form.next));
    if let Ok(value) = HeaderValue::from_str(&auth::session_cookie(Some(&cookie), access.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if let Some(hash) = &caller.session
        && let Err(e) = server.executor.store().end_session(hash).await
    {
        tracing::warn!(error = %e, "cannot end a session");
    }
    let mut response = see_other("/login");
    if let Ok(value) = HeaderValue::from_str(&auth::session_cookie(None, server.access.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path("/runs/abc?x=1"), "/runs/abc?x=1");
        for foreign in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
            "",
            "/\nx",
        ] {
            assert_eq!(local_path(foreign), "/", "{foreign:?}");
        }
    }

    #[test]
    fn form_inputs_follow_the_declared_types_and_skip_empty_fields() {
        let spec = |name: &str, kind| InputSpec {
            name: name.into(),
            kind,
            required: false,
            default: None,
            description: String::new(),
        };
        let inputs = [
            spec("s", InputType::String),
            spec("n", InputType::Integer),
            spec("b", InputType::Boolean),
            spec("o", InputType::Object),
        ];
        let given: BTreeMap<String, String> = [("s", "42"), ("n", "42"), ("b", "true"), ("o", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let out = form_inputs(&inputs, &given).unwrap_or_default();
        assert_eq!(out.get("s"), Some(&Value::String("42".into())), "a string stays text");
        assert_eq!(out.get("n"), Some(&serde_json::json!(42)));
        assert_eq!(out.get("b"), Some(&Value::Bool(true)));
        assert!(!out.contains_key("o"), "an empty field takes the default");
        let bad: BTreeMap<String, String> = [("n".to_owned(), "forty".to_owned())].into();
        assert!(form_inputs(&inputs, &bad).is_err_and(|e| e.contains("input n")));
    }

    #[test]
    fn dates_filter_whole_utc_days_and_nonsense_is_refused() {
        assert_eq!(day_ms("1970-01-02", false), Ok(Some(86_400_000)));
        assert_eq!(day_ms("1970-01-01", true), Ok(Some(86_400_000)));
        assert_eq!(day_ms("", false), Ok(None));
        assert!(day_ms("yesterday", false).is_err());
        let filter = RunsFilter { q: "<script>".into(), ..RunsFilter::default() };
        assert!(filter.query().is_err());
    }
}
