//! The run store on PostgreSQL (issue 16): runs and their
//! workflow text, steps, list pages, for-each items (a group per commit, as sled keeps
//! them), webhook deliveries seen (a replay is refused by a primary key, on
//! every process at once), history, HTTP totals, tokens and sessions, each
//! written in one transaction as the sled store writes it.
//!
//! A list step's pages are rows, committed with the step's cursor in one
//! transaction. A sync's sorted runs are merged from files on the worker's
//! own disk (a temporary directory per process), and each is stored in the
//! database with the progress that counts it: a worker that resumes the
//! run fetches the runs its disk lacks, so nothing a resume needs lives only
//! on one worker's disk.
//!
//! Runs go through a queue (`weft_queue`, schema 5): a run that is not
//! finished has a row, and the process running it holds the row's lease,
//! renewed by a heartbeat task every quarter lease (`WEFT_LEASE_SECS`,
//! default [`DEFAULT_LEASE`]). A worker claims runs whose lease passed with `FOR UPDATE SKIP LOCKED`;
//! each claim moves the row's fence on, and every commit of a run's state
//! checks, in its transaction and under a share lock on the row, the fence
//! this process claimed it with. So a worker whose lease passed to another
//! commits nothing more ([`StoreError::LeaseLost`]), and a claim waits for
//! (or skips) a commit under way rather than slipping in before it.
//!
//! A cron firing is recorded with the run it starts (`weft_cron_firings`,
//! schema 6, a primary key on workflow and scheduled time): of the workers
//! whose schedulers fire together, one starts the run.
//!
//! The fleet's rate limits are rows too (`weft_limits`, schema 9): a GCRA
//! row per connection identity and method class, from which each worker's
//! limiter leases slots in small batches (`PgLimits`, see
//! [`crate::limiter`]).
//!
//! The location is a URL, `postgres://USER@HOST:PORT/DATABASE` with
//! libpq's options (`sslmode=disable|prefer|require`, …). The password is
//! never written in it: `postgres://USER:env:NAME@…`, or
//! `?password=env:NAME` / `?password=file:PATH` (as every other secret), or
//! `PGPASSWORD`; a literal password is refused, since a URL shows in `ps`,
//! shell history and logs. TLS is rustls with the system's roots.
//!
//! The schema is versioned: `weft store migrate` applies the SQL files in
//! `postgres/` (embedded in the binary) in order under an advisory lock and
//! records each in `weft_schema`; opening a store checks the version and
//! refuses one older (migrate first) or newer (a newer weft wrote it) than
//! this binary knows. Connections come from a bounded pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::{
    Commit, ConnectionTotals, DELIVERY_SLACK_SECS, Delivery, HistoryEntry, ItemRecord, ItemScan,
    MAX_PAGE, PageLog, PageReader, PageSink, PageSource, Result, RunPage, RunQuery, RunRecord,
    RunRow, SessionRecord, Status, StepState, StoreError, TokenError, TokenRecord, WorkflowState,
    decode, encode, now_ms,
};

/// The schema version this weft reads and writes.
pub const SCHEMA_VERSION: i32 = 9;

/// The migrations, in order: version, what it adds, its SQL.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "runs, steps, deliveries, history, HTTP totals, tokens, sessions",
        include_str!("postgres/0001_runs.sql"),
    ),
    (2, "for-each items", include_str!("postgres/0002_items.sql")),
    (3, "webhook event ids", include_str!("postgres/0003_events.sql")),
    (4, "list pages and sorted runs", include_str!("postgres/0004_pages_scratch.sql")),
    (5, "the queue of runs and their leases", include_str!("postgres/0005_queue.sql")),
    (6, "cron firings, once per fleet", include_str!("postgres/0006_cron_firings.sql")),
    (7, "plugin calls in a run's figures", include_str!("postgres/0007_call_totals.sql")),
    (8, "workflow state across runs", include_str!("postgres/0008_workflow_state.sql")),
    (9, "one vendor limit across workers", include_str!("postgres/0009_limits.sql")),
];

/// Connections the pool holds, at most.
const POOL_SIZE: usize = 16;

/// How long a caller waits for a free connection before the store says so.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Key of the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x7765_6674_5f6d_6967; // "weft_mig"

/// How long a run's lease lasts without a heartbeat, unless
/// `WEFT_LEASE_SECS` says otherwise: a worker killed with -9 holds its
/// runs this long at most.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(20);

/// The database's clock, in Unix ms: leases are judged by one clock,
/// whatever the workers' clocks say.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::int8";

/// Runs read per query by [`PgStore::recent_runs`].
const RECENT_BATCH: i64 = 256;

/// A PostgreSQL store: a bounded pool of connections to one database.
#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
    /// The URL without any password, for messages.
    shown: Arc<str>,
    /// This process's copies of sorted runs, to merge from (the database
    /// holds the durable ones); removed when the last clone goes.
    scratch: Arc<tempfile::TempDir>,
    /// The runs this process holds leases on.
    leases: Arc<Leases>,
}

/// The leases one process holds, and its name as a worker.
#[derive(Debug)]
pub(crate) struct Leases {
    /// This process as a worker: host, pid and a random part.
    worker: String,
    /// How long a lease lasts without a heartbeat.
    lease: Duration,
    /// Run id to the fence it was claimed with. A lease found lost stays
    /// here, so that every later commit of the run is refused.
    held: std::sync::Mutex<BTreeMap<String, Held>>,
    /// Whether the heartbeat task runs.
    beating: std::sync::atomic::AtomicBool,
    /// Run id to its cancel, cancelled when the heartbeat finds the run
    /// out of the queue (cancelled by another process).
    watchers: std::sync::Mutex<BTreeMap<String, tokio_util::sync::CancellationToken>>,
}

/// A lease this process took.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The fence the run was claimed with.
    fence: i64,
    /// The heartbeat found it gone (passed to another worker): no longer
    /// renewed, and every commit of the run is refused.
    lost: bool,
}

/// Renews the leases `leases` holds every quarter lease, until the store
/// is dropped. A lease not renewed (its fence moved on: another worker
/// claimed the run) is marked lost and said so in the log.
async fn heartbeat(leases: std::sync::Weak<Leases>, pool: Pool) {
    loop {
        let Some(held) = leases.upgrade() else { return };
        let every = held.lease / 4;
        let (runs, fences): (Vec<String>, Vec<i64>) = held
            .held()
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(run, h)| (run.clone(), h.fence))
            .unzip();
        let (worker, lease_ms) = (held.worker.clone(), held.lease_ms());
        drop(held);
        if !runs.is_empty() {
            let renewed = match pool.get().await {
                Ok(client) => client
                    .query(
                        &format!(
                            "UPDATE weft_queue q SET lease_until_ms = {DB_NOW_MS} + $3
                             FROM unnest($1::text[], $2::int8[]) AS h (run_id, fence)
                             WHERE q.run_id = h.run_id AND q.fence = h.fence AND q.worker = $4
                             RETURNING q.run_id"
                        ),
                        &[&runs, &fences, &lease_ms, &worker],
                    )
                    .await
                    .map_err(|e| reason(&e)),
                Err(e) => Err(e.to_string()),
            };
            match renewed {
                Ok(rows) => {
                    let renewed: std::collections::BTreeSet<String> =
                        rows.iter().filter_map(|r| r.try_get::<_, String>(0).ok()).collect();
                    // A run out of the queue ended elsewhere (a cancel from
                    // the command line or another worker's API), rather than
                    // passing to another worker.
                    let missed: Vec<&String> =
                        runs.iter().filter(|r| !renewed.contains(*r)).collect();
                    let mut queued = std::collections::BTreeSet::new();
                    if !missed.is_empty()
                        && let Ok(client) = pool.get().await
                        && let Ok(rows) = client
                            .query(
                                "SELECT run_id FROM weft_queue WHERE run_id = ANY($1)",
                                &[&missed],
                            )
                            .await
                    {
                        queued =
                            rows.iter().filter_map(|r| r.try_get::<_, String>(0).ok()).collect();
                    } else if !missed.is_empty() {
                        queued = missed.iter().map(|r| (*r).clone()).collect();
                    }
                    if let Some(held) = leases.upgrade() {
                        let mut map = held.held();
                        for (run, fence) in runs.iter().zip(&fences) {
                            if renewed.contains(run) {
                                continue;
                            }
                            // Finished meanwhile (and forgotten), or passed on.
                            if let Some(h) = map.get_mut(run)
                                && h.fence == *fence
                            {
                                h.lost = true;
                                if queued.contains(run) {
                                    tracing::warn!(run = %run, "this worker's lease on the run passed to another worker; it commits nothing more of it");
                                } else {
                                    tracing::info!(run = %run, "the run left the queue (cancelled or ended elsewhere); this worker stops it and commits nothing more of it");
                                    // Stops it now, not at its next commit:
                                    // a wait for a limit or a backoff ends.
                                    if let Some(cancel) = held.watchers().get(run) {
                                        cancel.cancel();
                                    }
                                }
                            }
                        }
                    }
                }
                // The lease runs on; if the database stays away longer,
                // another worker takes the run and this one's commits fail.
                Err(e) => tracing::warn!(error = %e, "cannot renew run leases"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

impl Leases {
    fn new() -> Leases {
        let lease = std::env::var("WEFT_LEASE_SECS")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.2 && *s <= 86_400.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_LEASE);
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().chars().filter(|c| c.is_ascii_graphic()).take(64).collect::<String>())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "weft".into());
        let worker = format!("{host}/{}/{:08x}", std::process::id(), rand::random::<u32>());
        Leases {
            worker,
            lease,
            held: std::sync::Mutex::default(),
            beating: std::sync::atomic::AtomicBool::new(false),
            watchers: std::sync::Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn watchers(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, tokio_util::sync::CancellationToken>> {
        self.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fence(&self, run: &str) -> Option<i64> {
        self.held().get(run).map(|h| h.fence)
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.shown).finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`, to show.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" { "***".to_owned() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        // Whatever precedes an `@` may be a password.
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("postgres://***@{host}"),
            None => url.to_owned(),
        },
    }
}

fn location_error(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Location { given: redact(url), reason: reason.into() }
}

/// `text` with its `%XX` escapes decoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The connection settings for `url`, the password resolved from where the
/// URL points (see the module docs).
fn pg_config(url: &str) -> Result<tokio_postgres::Config> {
    let mut parsed = url::Url::parse(url).map_err(|e| location_error(url, e.to_string()))?;
    // The url crate keeps the userinfo percent-encoded (`env%3ANAME`).
    let mut reference = parsed.password().map(percent_decoded);
    let mut pairs = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if key == "password" {
            reference = Some(value.into_owned());
        } else {
            pairs.push((key.into_owned(), value.into_owned()));
        }
    }
    let _ = parsed.set_password(None);
    if pairs.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let mut config: tokio_postgres::Config = parsed
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| location_error(url, e.to_string()))?;
    let password = match reference {
        Some(reference) => {
            let source = crate::credentials::CredentialSource::parse(&reference).map_err(|_| {
                location_error(
                    url,
                    "a password written in the URL would show in `ps`, shell history and logs; \
                     give it as env:NAME or file:PATH (postgres://USER:env:NAME@HOST/DB or \
                     ?password=file:PATH), or in PGPASSWORD",
                )
            })?;
            let secret =
                source.resolve().map_err(|e| location_error(url, format!("password: {e}")))?;
            Some(secret.expose().to_owned())
        }
        None => std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
    };
    if let Some(password) = password {
        config.password(password);
    }
    if config.get_user().is_none() {
        let user = std::env::var("PGUSER").or_else(|_| std::env::var("USER")).map_err(|_| {
            location_error(url, "no user: name one in the URL (postgres://USER@HOST/DB) or PGUSER")
        })?;
        config.user(user);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("weft");
    }
    Ok(config)
}

/// A pool of connections to `url`, none opened yet.
fn pool(url: &str) -> Result<Pool> {
    let config = pg_config(url)?;
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    } else {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_platform_verifier())
            .map_err(|e| location_error(url, format!("TLS set-up: {e}")))?
            .with_no_client_auth();
        Manager::from_config(
            config,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            manager_config,
        )
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(Duration::from_secs(15)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| location_error(url, e.to_string()))
}

/// What a PostgreSQL error says, with the server's message and SQLSTATE
/// when it sent one.
fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

/// Whether `name` is a sorted run's file name as a sync writes it
/// (`source-00000.jsonl`): no separator, no `..`.
fn valid_run_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

/// Maps a PostgreSQL error to a store error saying what was being done.
fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Postgres { what: what.to_owned(), reason: reason(&e) }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// The fleet's rate limits in PostgreSQL: a GCRA row per connection
/// identity and method class, leased from by `weft_limit_lease` (schema 9)
/// in one round trip.
#[derive(Clone)]
pub(crate) struct PgLimits {
    pool: Pool,
    worker: String,
}

impl std::fmt::Debug for PgLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLimits").field("worker", &self.worker).finish_non_exhaustive()
    }
}

impl crate::limiter::SharedLimits for PgLimits {
    fn lease(
        &self,
        request: crate::limiter::LeaseRequest,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = std::result::Result<crate::limiter::LeaseGrant, String>>
                + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(|e| match &e {
                deadpool_postgres::PoolError::Backend(e) => reason(e),
                other => other.to_string(),
            })?;
            let statement = client
                .prepare_cached(
                    "SELECT out_start_us, out_slots, out_rate, out_version, out_holders \
                     FROM weft_limit_lease($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .await
                .map_err(|e| reason(&e))?;
            let slots = i32::try_from(request.slots).unwrap_or(i32::MAX);
            let pause_ms = request.pause.map_or(0.0, |p| p.as_secs_f64() * 1000.0);
            let horizon_ms = request.horizon.as_secs_f64() * 1000.0;
            let row = client
                .query_one(
                    &statement,
                    &[
                        &request.identity,
                        &request.class,
                        &self.worker,
                        &slots,
                        &request.configured,
                        &request.rate,
                        &request.cut,
                        &request.grew,
                        &request.seen,
                        &pause_ms,
                        &horizon_ms,
                    ],
                )
                .await
                .map_err(|e| reason(&e))?;
            let starts_in_us: f64 = row.try_get(0).map_err(|e| reason(&e))?;
            let slots: i32 = row.try_get(1).map_err(|e| reason(&e))?;
            let rate: f64 = row.try_get(2).map_err(|e| reason(&e))?;
            let version: i64 = row.try_get(3).map_err(|e| reason(&e))?;
            let holders: i32 = row.try_get(4).map_err(|e| reason(&e))?;
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("weft_limits holds a rate of {rate}"));
            }
            // A pause longer than an hour is a broken row, not a vendor's word.
            let starts_in = Duration::from_secs_f64((starts_in_us / 1e6).clamp(0.0, 3600.0));
            Ok(crate::limiter::LeaseGrant {
                starts_in,
                slots: u32::try_from(slots).unwrap_or(0).min(request.slots),
                rate,
                version,
                holders: u32::try_from(holders).unwrap_or(1),
            })
        })
    }
}

/// Unix ms (or any count) as PostgreSQL's bigint.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A bigint read back as a count (a negative one, from a hand edit, as 0).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn text(row: &Row, column: &str) -> Result<String> {
    row.try_get(column).map_err(pg("reading a row"))
}

/// The schema version recorded in the database, 0 when none is.
async fn schema_version(client: &impl GenericClient) -> Result<i32> {
    match client.query_one("SELECT coalesce(max(version), 0) FROM weft_schema", &[]).await {
        Ok(row) => row.try_get(0).map_err(pg("reading the schema version")),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(pg("reading the schema version")(e)),
    }
}

fn too_new(shown: &str, found: i32) -> StoreError {
    StoreError::PostgresSchema(format!(
        "the PostgreSQL run store at {shown} has schema version {found}, newer than this weft \
         knows ({SCHEMA_VERSION}): a newer weft migrated it; run that version (or a newer one)"
    ))
}

/// Brings the schema at `url` up to [`SCHEMA_VERSION`]; returns the
/// versions before and after. Safe to run from several machines at once
/// (an advisory lock serialises them; the second finds nothing to do).
pub async fn migrate(url: &str) -> Result<(i32, i32)> {
    let shown = redact(url);
    let pool = pool(url)?;
    let mut client = pool.get().await.map_err(|e| StoreError::Postgres {
        what: format!("connecting to {shown}"),
        reason: e.to_string(),
    })?;
    let tx = client.transaction().await.map_err(pg("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS weft_schema (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_ms bigint NOT NULL
         )",
    )
    .await
    .map_err(pg("creating weft_schema"))?;
    let found = schema_version(&tx).await?;
    if found > SCHEMA_VERSION {
        return Err(too_new(&shown, found));
    }
    for (version, description, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
        tx.batch_execute(sql).await.map_err(|e| StoreError::Postgres {
            what: format!("applying migration {version} ({description})"),
            reason: reason(&e),
        })?;
        tx.execute(
            "INSERT INTO weft_schema (version, description, applied_ms) VALUES ($1, $2, $3)",
            &[version, description, &big(now_ms())],
        )
        .await
        .map_err(pg("recording a migration"))?;
    }
    tx.commit().await.map_err(pg("committing the migration"))?;
    Ok((found, SCHEMA_VERSION))
}

/// Inserts or replaces a run's record and row. `started_by` is written
/// when `set_started_by` (a new run), else the stored one is kept.
const PUT_RUN: &str = "INSERT INTO weft_runs (id, workflow, status, trigger, dry_run, created_ms,
        finished_ms, error, resumes, cancel_requested, started_by, record)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (id) DO UPDATE SET workflow = EXCLUDED.workflow, status = EXCLUDED.status,
        trigger = EXCLUDED.trigger, dry_run = EXCLUDED.dry_run, created_ms = EXCLUDED.created_ms,
        finished_ms = EXCLUDED.finished_ms, error = EXCLUDED.error, resumes = EXCLUDED.resumes,
        cancel_requested = EXCLUDED.cancel_requested, record = EXCLUDED.record,
        started_by = CASE WHEN $13 THEN EXCLUDED.started_by ELSE weft_runs.started_by END";

async fn put_run(
    client: &impl GenericClient,
    run: &RunRecord,
    started_by: Option<&str>,
    set_started_by: bool,
) -> Result<()> {
    let row = RunRow::of(run, started_by.map(str::to_owned));
    let record = String::from_utf8(encode(run)?)
        .map_err(|e| StoreError::Encode { what: "run".into(), reason: e.to_string() })?;
    client
        .execute(
            PUT_RUN,
            &[
                &row.id,
                &row.workflow,
                &row.status.as_str(),
                &row.trigger,
                &row.dry_run,
                &big(row.created_ms),
                &row.finished_ms.map(big),
                &row.error,
                &i32::try_from(row.resumes).unwrap_or(i32::MAX),
                &row.cancel_requested,
                &row.started_by,
                &record,
                &set_started_by,
            ],
        )
        .await
        .map_err(pg("writing a run"))?;
    Ok(())
}

/// One connection's figures of `run` from a `weft_run_stats` row: the
/// JSON sum in `detail` (`{}` in rows from before schema 7), its counts
/// taken from the columns.
fn totals_row(run: &str, row: &Row) -> Result<(String, ConnectionTotals)> {
    let get = pg("reading a run's figures");
    let n = |column: &str| row.try_get::<_, i64>(column).map(count).map_err(&get);
    let connection: String = row.try_get("connection").map_err(&get)?;
    let key = format!("{run}/{connection}");
    let mut totals: ConnectionTotals = decode(key.as_bytes(), text(row, "detail")?.as_bytes())?;
    totals.requests = n("requests")?;
    totals.throttled = n("throttled")?;
    totals.retries = n("retries")?;
    totals.waited_ms = n("waited_ms")?;
    totals.denied = n("denied")?;
    Ok((connection, totals))
}

/// Takes a finished run out of the queue.
async fn dequeue(client: &impl GenericClient, run: &str) -> Result<()> {
    client
        .execute("DELETE FROM weft_queue WHERE run_id = $1", &[&run])
        .await
        .map_err(pg("taking a finished run out of the queue"))?;
    Ok(())
}

/// JSON text of a value, for a text column.
/// A workflow's state; `lock` takes the row's lock for the transaction
/// (a row not there yet is locked by the insert that makes it, and the
/// primary key refuses a second).
async fn read_state(
    client: &impl GenericClient,
    workflow: &str,
    lock: bool,
) -> Result<WorkflowState> {
    let sql = if lock {
        "SELECT state FROM weft_workflow_state WHERE workflow = $1 FOR UPDATE"
    } else {
        "SELECT state FROM weft_workflow_state WHERE workflow = $1"
    };
    let row =
        client.query_opt(sql, &[&workflow]).await.map_err(pg("reading a workflow's state"))?;
    match row {
        Some(row) => {
            let text = text(&row, "state")?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                key: format!("weft_workflow_state/{workflow}"),
                reason: e.to_string(),
            })
        }
        None => Ok(WorkflowState::default()),
    }
}

async fn write_state(
    client: &impl GenericClient,
    workflow: &str,
    state: &WorkflowState,
) -> Result<()> {
    let text = json_text(state)?;
    client
        .execute(
            "INSERT INTO weft_workflow_state (workflow, state) VALUES ($1, $2)
             ON CONFLICT (workflow) DO UPDATE SET state = EXCLUDED.state",
            &[&workflow, &text],
        )
        .await
        .map_err(pg("writing a workflow's state"))?;
    Ok(())
}

/// Writes a step's state in `tx`, with its change to its workflow's state
/// (if it carries one): every path that commits a step's progress (a
/// step, a page group, an item group, a sorted run) goes through here, so
/// none can commit progress without the state change it made.
async fn write_step(tx: &impl GenericClient, run: &str, step: &StepState) -> Result<()> {
    apply_state(tx, run, step).await?;
    let index = i32::try_from(step.index).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO weft_steps (run_id, idx, state) VALUES ($1, $2, $3)
         ON CONFLICT (run_id, idx) DO UPDATE SET state = EXCLUDED.state",
        &[&run, &index, &json_text(step)?],
    )
    .await
    .map_err(pg("writing a step"))?;
    Ok(())
}

/// Applies a step's change to its workflow's state in the step's commit
/// transaction (compare-and-set under the row's lock).
async fn apply_state(client: &impl GenericClient, run: &str, step: &StepState) -> Result<()> {
    let Some(write) = step.state_write.as_ref().filter(|_| writes_state(step)) else {
        return Ok(());
    };
    let current = read_state(client, &write.workflow, true).await?;
    if let Some(next) = current.after(run, &step.id, write)? {
        write_state(client, &write.workflow, &next).await?;
    }
    Ok(())
}

/// Whether committing `step` changes its workflow's state.
fn writes_state(step: &StepState) -> bool {
    step.state_write.as_ref().is_some_and(|w| !w.planned && !w.values.is_empty())
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String> {
    String::from_utf8(encode(value)?).map_err(|e| StoreError::Encode {
        what: std::any::type_name::<T>().to_owned(),
        reason: e.to_string(),
    })
}

const ROW_COLUMNS: &str = "id, workflow, status, trigger, dry_run, created_ms, finished_ms, error, \
                           resumes, cancel_requested, started_by";

fn run_row(row: &Row) -> Result<RunRow> {
    let get = pg("reading a run row");
    let id: String = row.try_get("id").map_err(&get)?;
    let status: String = row.try_get("status").map_err(&get)?;
    let status = Status::parse(&status).ok_or_else(|| StoreError::Corrupt {
        key: format!("weft_runs/{id}"),
        reason: format!("unknown status {status:?}"),
    })?;
    Ok(RunRow {
        workflow: row.try_get("workflow").map_err(&get)?,
        status,
        trigger: row.try_get("trigger").map_err(&get)?,
        dry_run: row.try_get("dry_run").map_err(&get)?,
        created_ms: count(row.try_get("created_ms").map_err(&get)?),
        finished_ms: row.try_get::<_, Option<i64>>("finished_ms").map_err(&get)?.map(count),
        error: row.try_get("error").map_err(&get)?,
        resumes: u32::try_from(row.try_get::<_, i32>("resumes").map_err(&get)?).unwrap_or(0),
        cancel_requested: row.try_get("cancel_requested").map_err(&get)?,
        started_by: row.try_get("started_by").map_err(&get)?,
        id,
    })
}

impl PgStore {
    /// Connects to `url` and checks its schema version.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let shown: Arc<str> = redact(url).into();
        let scratch = tempfile::Builder::new().prefix("weft-scratch-").tempdir().map_err(|e| {
            StoreError::Scratch {
                path: std::env::temp_dir().display().to_string(),
                reason: format!("cannot make this process's scratch directory: {e}"),
            }
        })?;
        let store = PgStore {
            pool: pool(url)?,
            shown,
            scratch: Arc::new(scratch),
            leases: Arc::new(Leases::new()),
        };
        let client = store.client().await?;
        let found = schema_version(&client).await?;
        if found > SCHEMA_VERSION {
            return Err(too_new(&store.shown, found));
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::PostgresSchema(format!(
                "the PostgreSQL run store has schema version {found} (0: none yet); this weft \
                 needs version {SCHEMA_VERSION}: run `weft store migrate --store {}` first",
                store.shown
            )));
        }
        Ok(store)
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| StoreError::Postgres {
            what: format!("connecting to {}", self.shown),
            reason: match &e {
                deadpool_postgres::PoolError::Backend(e) => reason(e),
                other => other.to_string(),
            },
        })
    }

    /// Records that this process holds `run` under `fence`, and starts
    /// the heartbeat that renews its leases.
    fn hold(&self, run: &str, fence: i64) {
        self.leases.held().insert(run.to_owned(), Held { fence, lost: false });
        if !self.leases.beating.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tokio::spawn(heartbeat(Arc::downgrade(&self.leases), self.pool.clone()));
        }
    }

    /// In `tx`, checks that this process still holds `run` under the fence
    /// it claimed it with, and keeps the row from being claimed until `tx`
    /// ends (a claim waits, or skips it). A run this process does not hold
    /// (a cancel from the command line) is not checked.
    async fn check_fence(&self, tx: &impl GenericClient, run: &str) -> Result<()> {
        let Some(fence) = self.leases.fence(run) else { return Ok(()) };
        let row = tx
            .query_opt("SELECT fence, worker FROM weft_queue WHERE run_id = $1 FOR SHARE", &[&run])
            .await
            .map_err(pg("checking a run's lease"))?;
        match row {
            Some(row) if row.try_get::<_, i64>("fence").ok() == Some(fence) => Ok(()),
            row => Err(StoreError::LeaseLost {
                run: run.to_owned(),
                holder: row.and_then(|r| r.try_get::<_, Option<String>>("worker").ok().flatten()),
            }),
        }
    }

    /// A transaction on `client` in which this process's lease on `run`
    /// holds (see [`PgStore::check_fence`]).
    async fn fenced<'a>(
        &self,
        client: &'a mut Object,
        run: &str,
        what: &'static str,
    ) -> Result<deadpool_postgres::Transaction<'a>> {
        let tx = client.transaction().await.map_err(pg(what))?;
        self.check_fence(&tx, run).await?;
        Ok(tx)
    }

    /// This store as a new worker whose leases last `lease`.
    pub(crate) fn with_lease(mut self, lease: Duration) -> Self {
        let mut leases = Leases::new();
        leases.lease = lease.max(Duration::from_millis(200));
        self.leases = Arc::new(leases);
        self
    }

    /// The fleet's shared rate limits (`weft_limits`, schema 9), leased
    /// through this store's pool under this process's worker name.
    pub(crate) fn shared_limits(&self) -> PgLimits {
        PgLimits { pool: self.pool.clone(), worker: self.leases.worker.clone() }
    }

    /// The worker name of this process.
    pub(crate) fn worker(&self) -> &str {
        &self.leases.worker
    }

    /// How long a lease lasts without a heartbeat.
    pub(crate) fn lease(&self) -> Duration {
        self.leases.lease
    }

    /// Claims `run` for this process, to resume it: taken when no worker
    /// holds its lease (or this one does). While another worker's lease
    /// runs, waits for it to pass (a worker that died), up to two leases;
    /// a lease still renewed then is refused, naming its worker.
    pub(crate) async fn claim_run(&self, run: &str) -> Result<()> {
        self.claim_run_within(run, self.leases.lease * 2 + Duration::from_secs(1)).await
    }

    /// As [`PgStore::claim_run`], waiting at most `patience` for another
    /// worker's lease to pass (zero: refused at once while one runs).
    pub(crate) async fn claim_run_within(&self, run: &str, patience: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let client = self.client().await?;
            let claimed = client
                .query_opt(
                    &format!(
                        "INSERT INTO weft_queue (run_id, workflow, enqueued_ms, worker, lease_until_ms, fence)
                         SELECT id, workflow, {DB_NOW_MS}, $2, {DB_NOW_MS} + $3, 1 FROM weft_runs
                         WHERE id = $1 AND status IN ('pending', 'running')
                         ON CONFLICT (run_id) DO UPDATE SET worker = EXCLUDED.worker,
                             lease_until_ms = EXCLUDED.lease_until_ms, fence = weft_queue.fence + 1
                         WHERE weft_queue.worker = EXCLUDED.worker
                            OR weft_queue.lease_until_ms < {DB_NOW_MS}
                         RETURNING fence"
                    ),
                    &[&run, &self.leases.worker, &self.leases.lease_ms()],
                )
                .await
                .map_err(pg("claiming a run"))?;
            if let Some(row) = claimed {
                let fence: i64 = row.try_get("fence").map_err(pg("claiming a run"))?;
                self.hold(run, fence);
                return Ok(());
            }
            let holder = client
                .query_opt(
                    &format!(
                        "SELECT worker, lease_until_ms - {DB_NOW_MS} AS left_ms
                         FROM weft_queue WHERE run_id = $1"
                    ),
                    &[&run],
                )
                .await
                .map_err(pg("reading a run's lease"))?;
            let Some(holder) = holder else { return Err(StoreError::UnknownRun(run.to_owned())) };
            let worker: Option<String> = holder.try_get("worker").map_err(pg("reading a lease"))?;
            let left_ms: i64 = holder.try_get("left_ms").map_err(pg("reading a lease"))?;
            let wait = Duration::from_millis(count(left_ms).saturating_add(50));
            if tokio::time::Instant::now() + wait > deadline {
                return Err(StoreError::Leased {
                    run: run.to_owned(),
                    worker: worker.unwrap_or_default(),
                });
            }
            drop(client);
            tracing::info!(run = %run, worker = ?worker, wait_ms = wait.as_millis() as u64, "the run's lease is held; waiting for it to pass");
            tokio::time::sleep(wait).await;
        }
    }

    /// The worker other than this process whose lease on `run` has not
    /// passed, if one holds it.
    pub(crate) async fn lease_holder(&self, run: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT worker FROM weft_queue WHERE run_id = $1 AND worker IS NOT NULL
                     AND worker <> $2 AND lease_until_ms >= {DB_NOW_MS}"
                ),
                &[&run, &self.leases.worker],
            )
            .await
            .map_err(pg("reading a run's lease"))?;
        row.map(|r| r.try_get::<_, String>("worker")).transpose().map_err(pg("reading a lease"))
    }

    /// Claims up to `limit` runs whose lease has passed (their worker died
    /// or stopped), oldest first, with `FOR UPDATE SKIP LOCKED`: workers
    /// claiming at once take different runs. Returns their ids.
    pub(crate) async fn claim_runs(&self, limit: usize) -> Result<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Runs this process runs are not claimed again, even if a database
        // outage let their leases run out: their commits would fail.
        let running: Vec<String> =
            self.leases.held().iter().filter(|(_, h)| !h.lost).map(|(r, _)| r.clone()).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "WITH free AS (
                         SELECT run_id FROM weft_queue
                         WHERE lease_until_ms < {DB_NOW_MS} AND NOT (run_id = ANY($4))
                         ORDER BY enqueued_ms LIMIT $3 FOR UPDATE SKIP LOCKED)
                     UPDATE weft_queue q SET worker = $1, lease_until_ms = {DB_NOW_MS} + $2,
                         fence = q.fence + 1
                     FROM free WHERE q.run_id = free.run_id
                     RETURNING q.run_id, q.fence"
                ),
                &[&self.leases.worker, &self.leases.lease_ms(), &big(limit as u64), &running],
            )
            .await
            .map_err(pg("claiming runs"))?;
        let mut claimed = Vec::new();
        for row in rows {
            let run: String = row.try_get("run_id").map_err(pg("claiming runs"))?;
            let fence: i64 = row.try_get("fence").map_err(pg("claiming runs"))?;
            self.hold(&run, fence);
            claimed.push(run);
        }
        Ok(claimed)
    }

    /// Stops renewing this process's lease on `run` (its task ended and
    /// the run is not finished: it stopped on an error that may pass). The
    /// lease runs out within its length, and then any worker, this one
    /// included, may claim the run again: a retry a lease later, not a
    /// loop.
    pub(crate) async fn release_run(&self, run: &str) -> Result<()> {
        self.leases.held().remove(run);
        Ok(())
    }

    /// See [`crate::store::RunStore::watch_cancel`].
    pub(crate) fn watch_cancel(&self, run: &str, token: &tokio_util::sync::CancellationToken) {
        self.leases.watchers().insert(run.to_owned(), token.clone());
    }

    /// See [`crate::store::RunStore::unwatch_cancel`].
    pub(crate) fn unwatch_cancel(&self, run: &str) {
        self.leases.watchers().remove(run);
    }

    /// Gives up this process's lease on `run` at once (its run stopped on
    /// request, unfinished): any worker may claim it now.
    pub(crate) async fn give_up_run(&self, run: &str) -> Result<()> {
        let Some(held) = self.leases.held().remove(run) else { return Ok(()) };
        if held.lost {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                "UPDATE weft_queue SET lease_until_ms = 0 WHERE run_id = $1 AND fence = $2",
                &[&run, &held.fence],
            )
            .await
            .map_err(pg("giving up a run's lease"))?;
        Ok(())
    }

    /// Gives up this process's leases (a worker stopping cleanly), so
    /// another worker may resume its runs at once.
    pub(crate) async fn release_leases(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE weft_queue SET lease_until_ms = 0 WHERE worker = $1",
                &[&self.leases.worker],
            )
            .await
            .map_err(pg("releasing leases"))?;
        Ok(())
    }

    pub(crate) async fn new_run_id(&self) -> Result<String> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT nextval('weft_ids')", &[])
            .await
            .map_err(pg("taking a run id"))?;
        let seq: i64 = row.try_get(0).map_err(pg("taking a run id"))?;
        Ok(format!("{:011x}-{:05x}", now_ms(), seq & 0xf_ffff))
    }

    pub(crate) async fn create_run_by(
        &self,
        run: &RunRecord,
        step_ids: &[String],
        delivery: Option<&Delivery>,
        actor: Option<&str>,
    ) -> Result<()> {
        self.create_run_fired(run, step_ids, delivery, actor, None).await
    }

    /// Records a new run as [`PgStore::create_run_by`] does; with
    /// `firing` (the scheduled Unix ms of a cron firing), the firing too,
    /// in the same transaction: a firing another worker recorded first is
    /// refused with [`StoreError::AlreadyFired`], and no run.
    pub(crate) async fn create_run_fired(
        &self,
        run: &RunRecord,
        step_ids: &[String],
        delivery: Option<&Delivery>,
        actor: Option<&str>,
        firing: Option<u64>,
    ) -> Result<()> {
        let actor = actor.map(str::to_owned).unwrap_or_else(|| run.trigger.as_str().to_owned());
        let detail = match (run.dry_run, run.trigger.as_str()) {
            (true, trigger) => Some(format!("dry run, trigger {trigger}")),
            (false, trigger) => Some(format!("trigger {trigger}")),
        };
        let started = json_text(&HistoryEntry {
            at_ms: run.created_ms,
            actor: actor.clone(),
            action: "started".into(),
            detail,
        })?;
        let (indexes, states): (Vec<i32>, Vec<String>) = step_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                Ok((
                    i32::try_from(i).unwrap_or(i32::MAX),
                    json_text(&StepState::pending(id, index))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("starting a run"))?;
        if let Some(scheduled_ms) = firing {
            // As a delivery: the primary key decides, on every worker.
            let inserted = tx
                .execute(
                    "INSERT INTO weft_cron_firings (workflow, scheduled_ms, run_id)
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&run.workflow, &big(scheduled_ms), &run.id],
                )
                .await
                .map_err(pg("recording a cron firing"))?;
            if inserted == 0 {
                return Err(StoreError::AlreadyFired {
                    workflow: run.workflow.clone(),
                    scheduled_ms,
                });
            }
        }
        if let Some(delivery) = delivery {
            // The primary key decides, on every worker at once: a second
            // insert of the same delivery waits for the first to commit
            // and then inserts nothing.
            let inserted = tx
                .execute(
                    "INSERT INTO weft_deliveries (workflow, signature, signed_at, run_id)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&delivery.workflow, &delivery.signature, &delivery.signed_at, &run.id],
                )
                .await
                .map_err(pg("remembering a webhook delivery"))?;
            if inserted == 0 {
                return Err(StoreError::Replay { workflow: delivery.workflow.clone() });
            }
            if let Some((event, keep_until_ms)) = &delivery.event {
                let inserted = tx
                    .execute(
                        "INSERT INTO weft_delivery_events (workflow, event_id, keep_until_ms, run_id)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[&delivery.workflow, event, &big(*keep_until_ms), &run.id],
                    )
                    .await
                    .map_err(pg("remembering a webhook event id"))?;
                if inserted == 0 {
                    return Err(StoreError::DuplicateEvent {
                        workflow: delivery.workflow.clone(),
                        event: event.clone(),
                    });
                }
            }
        }
        put_run(&tx, run, Some(&actor), true).await?;
        tx.execute(
            "INSERT INTO weft_steps (run_id, idx, state)
             SELECT $1, i, s FROM unnest($2::int4[], $3::text[]) AS t (i, s)
             ON CONFLICT (run_id, idx) DO UPDATE SET state = EXCLUDED.state",
            &[&run.id, &indexes, &states],
        )
        .await
        .map_err(pg("writing a run's steps"))?;
        tx.execute(
            "INSERT INTO weft_history (run_id, entry) VALUES ($1, $2)",
            &[&run.id, &started],
        )
        .await
        .map_err(pg("writing a run's history"))?;
        // The run's queue row, its lease held by this process, which
        // starts it now.
        tx.execute(
            &format!(
                "INSERT INTO weft_queue (run_id, workflow, enqueued_ms, worker, lease_until_ms, fence)
                 VALUES ($1, $2, {DB_NOW_MS}, $3, {DB_NOW_MS} + $4, 1)"
            ),
            &[&run.id, &run.workflow, &self.leases.worker, &self.leases.lease_ms()],
        )
        .await
        .map_err(pg("queueing a run"))?;
        tx.commit().await.map_err(pg("committing a new run"))?;
        self.hold(&run.id, 1);
        Ok(())
    }

    /// Writes a run (under this process's lease, when it holds one); a
    /// finished run leaves the queue in the same transaction.
    pub(crate) async fn commit_run(&self, run: &RunRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = self.fenced(&mut client, &run.id, "writing a run").await?;
        put_run(&tx, run, None, false).await?;
        if run.status.is_finished() {
            dequeue(&tx, &run.id).await?;
        }
        tx.commit().await.map_err(pg("committing a run"))?;
        if run.status.is_finished() {
            self.leases.held().remove(&run.id);
        }
        Ok(())
    }

    pub(crate) async fn fail_run(&self, id: &str, message: &str) -> Result<RunRecord> {
        let mut client = self.client().await?;
        let tx = self.fenced(&mut client, id, "failing a run").await?;
        let row = tx
            .query_opt("SELECT record FROM weft_runs WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(pg("reading a run"))?
            .ok_or_else(|| StoreError::UnknownRun(id.to_owned()))?;
        let mut run: RunRecord = decode(id.as_bytes(), text(&row, "record")?.as_bytes())?;
        if !run.status.is_finished() {
            run.status = Status::Failed;
            run.error = Some(message.to_owned());
            run.finished_ms = Some(now_ms());
            put_run(&tx, &run, None, false).await?;
        }
        dequeue(&tx, id).await?;
        tx.commit().await.map_err(pg("committing a failed run"))?;
        self.leases.held().remove(id);
        Ok(run)
    }

    pub(crate) async fn commit_step(&self, run: &str, step: &StepState) -> Result<()> {
        let mut client = self.client().await?;
        if !writes_state(step) {
            return self.commit_step_alone(&client, run, step).await;
        }
        let tx = self.fenced(&mut client, run, "writing a step").await?;
        write_step(&tx, run, step).await?;
        tx.commit().await.map_err(pg("committing a step"))
    }

    /// A step's state with no change to its workflow's state (a list
    /// step's cursor, most commits): the lease check and the write in one
    /// statement, its own transaction, one round trip with a prepared
    /// statement instead of six (begin, check, write, commit, and two
    /// prepares). The lease row is locked `FOR SHARE` until the statement
    /// commits, as in [`PgStore::fenced`], and the answer comes only once
    /// the commit is durable (`synchronous_commit` as the server has it).
    async fn commit_step_alone(&self, client: &Object, run: &str, step: &StepState) -> Result<()> {
        let index = i32::try_from(step.index).unwrap_or(i32::MAX);
        let state = json_text(step)?;
        let Some(fence) = self.leases.fence(run) else {
            // Not held by this process (a cancel from the command line).
            let statement = client
                .prepare_cached(
                    "INSERT INTO weft_steps (run_id, idx, state) VALUES ($1, $2, $3)
                     ON CONFLICT (run_id, idx) DO UPDATE SET state = EXCLUDED.state",
                )
                .await
                .map_err(pg("writing a step"))?;
            client
                .execute(&statement, &[&run, &index, &state])
                .await
                .map_err(pg("writing a step"))?;
            return Ok(());
        };
        let statement = client
            .prepare_cached(
                "WITH lease AS (
                     SELECT fence, worker FROM weft_queue WHERE run_id = $1 FOR SHARE
                 ), written AS (
                     INSERT INTO weft_steps (run_id, idx, state)
                     SELECT $1, $2, $3 FROM lease WHERE lease.fence = $4
                     ON CONFLICT (run_id, idx) DO UPDATE SET state = EXCLUDED.state
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM written) AS written,
                        (SELECT worker FROM lease) AS worker",
            )
            .await
            .map_err(pg("writing a step"))?;
        let row = client
            .query_one(&statement, &[&run, &index, &state, &fence])
            .await
            .map_err(pg("writing a step"))?;
        let written: i64 = row.try_get("written").map_err(pg("writing a step"))?;
        if written == 1 {
            return Ok(());
        }
        Err(StoreError::LeaseLost {
            run: run.to_owned(),
            holder: row.try_get::<_, Option<String>>("worker").ok().flatten(),
        })
    }

    /// Removes these runs; their steps, pages, items, queue rows, history
    /// and HTTP figures go with them (`ON DELETE CASCADE`), and so do the
    /// cron firings that started them: one row a tick would otherwise pile
    /// up for ever. A firing that old is not fired again (a catch-up looks
    /// only at the last missed firing, and the newest run is kept).
    pub(crate) async fn delete_runs(&self, ids: &[String]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("removing old runs"))?;
        tx.execute("DELETE FROM weft_cron_firings WHERE run_id = ANY($1)", &[&ids])
            .await
            .map_err(pg("removing old runs' cron firings"))?;
        tx.execute("DELETE FROM weft_runs WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(pg("removing old runs"))?;
        tx.commit().await.map_err(pg("removing old runs"))
    }

    /// Writes `workflow`'s state as a copy from another store brings it,
    /// unless the database has one already (kept). Whether it was written.
    pub(crate) async fn import_workflow_state(
        &self,
        workflow: &str,
        state: &WorkflowState,
    ) -> Result<bool> {
        let text = json_text(state)?;
        let client = self.client().await?;
        let written = client
            .execute(
                "INSERT INTO weft_workflow_state (workflow, state) VALUES ($1, $2)
                 ON CONFLICT (workflow) DO NOTHING",
                &[&workflow, &text],
            )
            .await
            .map_err(pg("copying a workflow's state"))?;
        Ok(written == 1)
    }

    /// The state of `workflow`.
    pub(crate) async fn workflow_state(&self, workflow: &str) -> Result<WorkflowState> {
        let client = self.client().await?;
        read_state(&client, workflow, false).await
    }

    /// Changes `workflow`'s state by hand, under the row's lock.
    pub(crate) async fn edit_workflow_state(
        &self,
        workflow: &str,
        set: &std::collections::BTreeMap<String, Option<serde_json::Value>>,
        reset_all: bool,
    ) -> Result<WorkflowState> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("changing a workflow's state"))?;
        let next = read_state(&tx, workflow, true).await?.edited(set, reset_all);
        write_state(&tx, workflow, &next).await?;
        tx.commit().await.map_err(pg("changing a workflow's state"))?;
        Ok(next)
    }

    /// A page log that holds pages until [`PgStore::start_commit`] writes
    /// them as rows with the step's state.
    pub(crate) async fn page_log(&self, _run: &str, step: &StepState) -> Result<PageLog> {
        Ok(PageLog { next_page: step.pages, sink: PageSink::Rows { pending: Vec::new() } })
    }

    /// Writes the pages `log` holds and the step's state in one
    /// transaction, in the background.
    pub(crate) fn start_commit(
        &self,
        run: &str,
        step: &StepState,
        log: Option<&mut PageLog>,
    ) -> Commit {
        let pending = match log.map(|log| &mut log.sink) {
            Some(PageSink::Rows { pending }) => std::mem::take(pending),
            // A log is opened by the store it commits to: a file never
            // reaches PostgreSQL.
            Some(PageSink::File { .. }) | None => Vec::new(),
        };
        let (store, run, step) = (self.clone(), run.to_owned(), step.clone());
        let task = tokio::spawn(async move {
            if pending.is_empty() {
                return store.commit_step(&run, &step).await;
            }
            let index = i32::try_from(step.index).unwrap_or(i32::MAX);
            let (numbers, pages): (Vec<i32>, Vec<String>) = pending
                .into_iter()
                .map(|(page, records)| (i32::try_from(page).unwrap_or(i32::MAX), records))
                .unzip();
            let mut client = store.client().await?;
            let tx = store.fenced(&mut client, &run, "committing pages").await?;
            // A page read again after an interruption replaces itself.
            tx.execute(
                "INSERT INTO weft_pages (run_id, idx, page, records)
                 SELECT $1, $2, p, r FROM unnest($3::int4[], $4::text[]) AS t (p, r)
                 ON CONFLICT (run_id, idx, page) DO UPDATE SET records = EXCLUDED.records",
                &[&run, &index, &numbers, &pages],
            )
            .await
            .map_err(pg("writing pages"))?;
            // The page's change to the workflow's state commits with it.
            write_step(&tx, &run, &step).await?;
            tx.commit().await.map_err(pg("committing pages"))
        });
        Commit { task, path: self.shown.to_string() }
    }

    /// Up to `limit` pages of a step from page `from` on, in order.
    pub(crate) async fn page_rows(
        &self,
        run: &str,
        index: u32,
        from: u32,
        limit: u32,
    ) -> Result<Vec<(u32, String)>> {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        let from = i32::try_from(from).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT page, records FROM weft_pages WHERE run_id = $1 AND idx = $2 AND page >= $3
                 ORDER BY page LIMIT $4",
                &[&run, &index, &from, &i64::from(limit)],
            )
            .await
            .map_err(pg("reading pages"))?;
        rows.iter()
            .map(|row| {
                let page: i32 = row.try_get("page").map_err(pg("reading pages"))?;
                Ok((u32::try_from(page).unwrap_or(u32::MAX), text(row, "records")?))
            })
            .collect()
    }

    pub(crate) fn items(&self, run: &str, index: u32) -> ItemScan {
        ItemScan {
            store: super::ItemSource::Postgres {
                store: self.clone(),
                run: run.to_owned(),
                index,
                after: i64::MIN,
            },
            prefix: Vec::new(),
            after: None,
            buffer: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// Records a group of finished items and the step's state in one
    /// transaction; the group's number comes from a sequence, so groups
    /// read back in the order they were committed.
    pub(crate) async fn commit_items(
        &self,
        run: &str,
        step: &StepState,
        items: &[(u64, ItemRecord)],
    ) -> Result<()> {
        let group = json_text(&items)?;
        let index = i32::try_from(step.index).unwrap_or(i32::MAX);
        let mut client = self.client().await?;
        let tx = self.fenced(&mut client, run, "committing items").await?;
        tx.execute(
            "INSERT INTO weft_items (run_id, idx, items) VALUES ($1, $2, $3)",
            &[&run, &index, &group],
        )
        .await
        .map_err(pg("writing a group of items"))?;
        write_step(&tx, run, step).await?;
        tx.commit().await.map_err(pg("committing items"))
    }

    /// Up to `limit` groups of a step's items after group `after`, in
    /// commit order.
    pub(crate) async fn item_groups(
        &self,
        run: &str,
        index: u32,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>> {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT grp, items FROM weft_items WHERE run_id = $1 AND idx = $2 AND grp > $3
                 ORDER BY grp LIMIT $4",
                &[&run, &index, &after, &big(limit as u64)],
            )
            .await
            .map_err(pg("reading items"))?;
        rows.iter()
            .map(|row| Ok((row.try_get("grp").map_err(pg("reading items"))?, text(row, "items")?)))
            .collect()
    }

    /// This process's directory for a step's sorted runs, holding every
    /// run the database has for the step (fetched one at a time when the
    /// directory lacks it, or holds another length of it).
    pub(crate) async fn scratch_dir(&self, run: &str, index: u32) -> Result<PathBuf> {
        let dir = self.local_scratch(run, index);
        let failed = |e: std::io::Error| StoreError::Scratch {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        tokio::fs::create_dir_all(&dir).await.map_err(failed)?;
        let idx = i32::try_from(index).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let stored = client
            .query(
                "SELECT name, octet_length(bytes)::int8 AS len FROM weft_sorted_runs
                 WHERE run_id = $1 AND idx = $2 ORDER BY name",
                &[&run, &idx],
            )
            .await
            .map_err(pg("listing a sync's sorted runs"))?;
        for row in &stored {
            let name = text(row, "name")?;
            let len: i64 = row.try_get("len").map_err(pg("listing a sync's sorted runs"))?;
            // A name is ours (`source-00000.jsonl`); anything else would
            // point outside the directory.
            if !valid_run_name(&name) {
                return Err(StoreError::Corrupt {
                    key: format!("weft_sorted_runs/{run}/{index:05}/{name}"),
                    reason: "not a sorted run's file name".into(),
                });
            }
            let path = dir.join(&name);
            let local = tokio::fs::metadata(&path).await.ok().map(|m| m.len());
            if local == Some(count(len)) {
                continue;
            }
            let row = client
                .query_one(
                    "SELECT bytes FROM weft_sorted_runs WHERE run_id = $1 AND idx = $2 AND name = $3",
                    &[&run, &idx, &name],
                )
                .await
                .map_err(pg("reading a sync's sorted run"))?;
            let bytes: Vec<u8> = row.try_get("bytes").map_err(pg("reading a sync's sorted run"))?;
            let partial = path.with_extension("fetching");
            tokio::fs::write(&partial, &bytes).await.map_err(failed)?;
            tokio::fs::rename(&partial, &path).await.map_err(failed)?;
        }
        Ok(dir)
    }

    fn local_scratch(&self, run: &str, index: u32) -> PathBuf {
        self.scratch.path().join(run).join(format!("{index:05}"))
    }

    /// Stores the sorted run `file` (when there is one) and the step's
    /// state in one transaction.
    pub(crate) async fn commit_sorted_run(
        &self,
        run: &str,
        step: &StepState,
        file: Option<&Path>,
    ) -> Result<()> {
        let Some(file) = file else { return self.commit_step(run, step).await };
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| valid_run_name(n))
            .ok_or_else(|| StoreError::Scratch {
                path: file.display().to_string(),
                reason: "not a sorted run's file name".into(),
            })?
            .to_owned();
        let bytes = tokio::fs::read(file).await.map_err(|e| StoreError::Scratch {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        let index = i32::try_from(step.index).unwrap_or(i32::MAX);
        let mut client = self.client().await?;
        let tx = self.fenced(&mut client, run, "committing a sorted run").await?;
        tx.execute(
            "INSERT INTO weft_sorted_runs (run_id, idx, name, bytes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, idx, name) DO UPDATE SET bytes = EXCLUDED.bytes",
            &[&run, &index, &name, &bytes],
        )
        .await
        .map_err(pg("writing a sorted run"))?;
        write_step(&tx, run, step).await?;
        tx.commit().await.map_err(pg("committing a sorted run"))
    }

    /// Removes the step's sorted runs, here and in the database.
    pub(crate) async fn remove_scratch(&self, run: &str, index: u32) -> Result<()> {
        let dir = self.local_scratch(run, index);
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Scratch {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
            _ => {
                let _ = tokio::fs::remove_dir(self.scratch.path().join(run)).await;
            }
        }
        let idx = i32::try_from(index).unwrap_or(i32::MAX);
        let client = self.client().await?;
        client
            .execute("DELETE FROM weft_sorted_runs WHERE run_id = $1 AND idx = $2", &[&run, &idx])
            .await
            .map_err(pg("removing a sync's sorted runs"))?;
        Ok(())
    }

    pub(crate) async fn forget_deliveries(
        &self,
        workflow: &str,
        tolerance: Duration,
        now_ms: u64,
    ) -> Result<usize> {
        // As sled's `delivery_expired`: signed at `at`, a replay passes
        // only while now <= at + tolerance; kept past that by some slack.
        let now = big(now_ms / 1000);
        let keep = big(tolerance.as_secs()).saturating_add(DELIVERY_SLACK_SECS);
        let client = self.client().await?;
        let gone = client
            .execute(
                "DELETE FROM weft_deliveries
                 WHERE workflow = $1 AND signed_at IS NOT NULL AND $2 > signed_at + $3",
                &[&workflow, &now, &keep],
            )
            .await
            .map_err(pg("forgetting stale deliveries"))?;
        let events = client
            .execute(
                "DELETE FROM weft_delivery_events WHERE workflow = $1 AND keep_until_ms < $2",
                &[&workflow, &big(now_ms)],
            )
            .await
            .map_err(pg("forgetting old webhook event ids"))?;
        Ok(usize::try_from(gone.saturating_add(events)).unwrap_or(usize::MAX))
    }

    pub(crate) async fn run(&self, id: &str) -> Result<RunRecord> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT record FROM weft_runs WHERE id = $1", &[&id])
            .await
            .map_err(pg("reading a run"))?
            .ok_or_else(|| StoreError::UnknownRun(id.to_owned()))?;
        decode(id.as_bytes(), text(&row, "record")?.as_bytes())
    }

    pub(crate) async fn runs(&self) -> Result<Vec<RunRecord>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT id, record FROM weft_runs ORDER BY id", &[])
            .await
            .map_err(pg("reading runs"))?;
        rows.iter()
            .map(|row| decode(text(row, "id")?.as_bytes(), text(row, "record")?.as_bytes()))
            .collect()
    }

    pub(crate) async fn recent_runs(
        &self,
        limit: usize,
        wanted: impl Fn(&RunRecord) -> bool + Send + 'static,
    ) -> Result<Vec<RunRecord>> {
        let client = self.client().await?;
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        while out.len() < limit {
            let rows = client
                .query(
                    "SELECT id, record FROM weft_runs WHERE ($1::text IS NULL OR id < $1)
                     ORDER BY id DESC LIMIT $2",
                    &[&before, &RECENT_BATCH],
                )
                .await
                .map_err(pg("reading recent runs"))?;
            for row in &rows {
                let run: RunRecord =
                    decode(text(row, "id")?.as_bytes(), text(row, "record")?.as_bytes())?;
                if out.len() < limit && wanted(&run) {
                    out.push(run);
                }
            }
            if rows.len() < RECENT_BATCH as usize {
                break;
            }
            before = rows.last().map(|row| text(row, "id")).transpose()?;
        }
        Ok(out)
    }

    pub(crate) async fn steps(&self, run: &str) -> Result<Vec<StepState>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT idx, state FROM weft_steps WHERE run_id = $1 ORDER BY idx", &[&run])
            .await
            .map_err(pg("reading steps"))?;
        rows.iter()
            .map(|row| {
                let index: i32 = row.try_get("idx").map_err(pg("reading steps"))?;
                decode(format!("{run}/{index:05}").as_bytes(), text(row, "state")?.as_bytes())
            })
            .collect()
    }

    pub(crate) async fn pages(&self, run: &str, index: u32) -> Result<PageReader> {
        Ok(PageReader {
            source: PageSource::Rows {
                store: self.clone(),
                run: run.to_owned(),
                index,
                next: 0,
                buffer: std::collections::VecDeque::new(),
                done: false,
            },
        })
    }

    pub(crate) async fn query_runs(&self, query: RunQuery) -> Result<RunPage> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let from = query.created_from_ms.map(|ms| format!("{ms:011x}"));
        let to = query.created_to_ms.map(|ms| format!("{ms:011x}"));
        let prefix = query.id_prefix.filter(|p| !p.is_empty());
        let status = query.status.map(Status::as_str);
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM weft_runs
             WHERE ($1::text IS NULL OR workflow = $1)
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR trigger = $3)
               AND ($4::text IS NULL OR id >= $4)
               AND ($5::text IS NULL OR id < $5)
               AND ($6::text IS NULL OR starts_with(id, $6))
               AND ($7::text IS NULL OR id < $7)
             ORDER BY id DESC LIMIT $8"
        );
        let client = self.client().await?;
        let rows = client
            .query(
                &sql,
                &[
                    &query.workflow,
                    &status,
                    &query.trigger,
                    &from,
                    &to,
                    &prefix,
                    &query.before,
                    &big(limit as u64 + 1),
                ],
            )
            .await
            .map_err(pg("listing runs"))?;
        let mut page = RunPage {
            rows: rows.iter().map(run_row).collect::<Result<_>>()?,
            ..RunPage::default()
        };
        if page.rows.len() > limit {
            page.rows.truncate(limit);
            page.next = page.rows.last().map(|r| r.id.clone());
        }
        Ok(page)
    }

    pub(crate) async fn run_row(&self, id: &str) -> Result<RunRow> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {ROW_COLUMNS} FROM weft_runs WHERE id = $1"), &[&id])
            .await
            .map_err(pg("reading a run row"))?
            .ok_or_else(|| StoreError::UnknownRun(id.to_owned()))?;
        run_row(&row)
    }

    pub(crate) async fn record_action(&self, run: &str, entry: &HistoryEntry) -> Result<()> {
        let entry = json_text(entry)?;
        let client = self.client().await?;
        let added = client
            .execute(
                "INSERT INTO weft_history (run_id, entry)
                 SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM weft_runs WHERE id = $1)",
                &[&run, &entry],
            )
            .await
            .map_err(pg("writing a run's history"))?;
        if added == 0 {
            return Err(StoreError::UnknownRun(run.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn history(&self, run: &str) -> Result<Vec<HistoryEntry>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT seq, entry FROM weft_history WHERE run_id = $1 ORDER BY seq", &[&run])
            .await
            .map_err(pg("reading a run's history"))?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").map_err(pg("reading a run's history"))?;
                decode(format!("{run}/{seq:016x}").as_bytes(), text(row, "entry")?.as_bytes())
            })
            .collect()
    }

    pub(crate) async fn add_connection_totals(
        &self,
        run: &str,
        totals: &BTreeMap<String, ConnectionTotals>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("adding a run's figures"))?;
        for (name, add) in totals {
            // Summed here, not in SQL: the maps are JSON. The row is locked
            // while it is read; a run has one attempt at a time.
            let row = tx
                .query_opt(
                    "SELECT connection, requests, throttled, retries, waited_ms, denied, detail
                     FROM weft_run_stats WHERE run_id = $1 AND connection = $2 FOR UPDATE",
                    &[&run, name],
                )
                .await
                .map_err(pg("reading a run's figures"))?;
            let mut sum = match &row {
                Some(row) => totals_row(run, row)?.1,
                None => ConnectionTotals::default(),
            };
            sum.add(add);
            tx.execute(
                "INSERT INTO weft_run_stats (run_id, connection, requests, throttled, retries,
                     waited_ms, denied, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (run_id, connection) DO UPDATE SET
                     requests = EXCLUDED.requests, throttled = EXCLUDED.throttled,
                     retries = EXCLUDED.retries, waited_ms = EXCLUDED.waited_ms,
                     denied = EXCLUDED.denied, detail = EXCLUDED.detail",
                &[
                    &run,
                    name,
                    &big(sum.requests),
                    &big(sum.throttled),
                    &big(sum.retries),
                    &big(sum.waited_ms),
                    &big(sum.denied),
                    &json_text(&sum)?,
                ],
            )
            .await
            .map_err(pg("adding a run's figures"))?;
        }
        tx.commit().await.map_err(pg("committing a run's figures"))
    }

    pub(crate) async fn connection_totals(
        &self,
        run: &str,
    ) -> Result<BTreeMap<String, ConnectionTotals>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT connection, requests, throttled, retries, waited_ms, denied, detail
                 FROM weft_run_stats WHERE run_id = $1",
                &[&run],
            )
            .await
            .map_err(pg("reading a run's figures"))?;
        rows.iter().map(|row| totals_row(run, row)).collect()
    }

    pub(crate) async fn create_token(&self, token: &TokenRecord) -> Result<(), TokenError> {
        let record = json_text(token)?;
        let client = self.client().await?;
        match client
            .execute(
                "INSERT INTO weft_tokens (id, name, created_ms, revoked_ms, record)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,
                     created_ms = EXCLUDED.created_ms, revoked_ms = EXCLUDED.revoked_ms,
                     record = EXCLUDED.record",
                &[
                    &token.id,
                    &token.name,
                    &big(token.created_ms),
                    &token.revoked_ms.map(big),
                    &record,
                ],
            )
            .await
        {
            Ok(_) => Ok(()),
            // The partial unique index: an active token has that name.
            Err(e) if is_unique_violation(&e) => Err(TokenError::NameTaken(token.name.clone())),
            Err(e) => Err(pg("writing a token")(e).into()),
        }
    }

    pub(crate) async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT id, record FROM weft_tokens ORDER BY created_ms, id", &[])
            .await
            .map_err(pg("reading tokens"))?;
        rows.iter()
            .map(|row| decode(text(row, "id")?.as_bytes(), text(row, "record")?.as_bytes()))
            .collect()
    }

    pub(crate) async fn size_bytes(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .map_err(pg("reading the database's size"))?;
        row.try_get::<_, i64>(0).map(count).map_err(pg("reading the database's size"))
    }

    pub(crate) async fn has_active_tokens(&self) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT EXISTS (SELECT 1 FROM weft_tokens WHERE revoked_ms IS NULL)", &[])
            .await
            .map_err(pg("reading tokens"))?;
        row.try_get(0).map_err(pg("reading tokens"))
    }

    pub(crate) async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT record FROM weft_tokens WHERE id = $1", &[&id])
            .await
            .map_err(pg("reading a token"))?;
        row.map(|row| decode(id.as_bytes(), text(&row, "record")?.as_bytes())).transpose()
    }

    pub(crate) async fn revoke_token(&self, name_or_id: &str) -> Result<TokenRecord, TokenError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("revoking a token"))?;
        let Some(row) = tx
            .query_opt(
                "SELECT id, record FROM weft_tokens
                 WHERE revoked_ms IS NULL AND (name = $1 OR id = $1)
                 ORDER BY id LIMIT 1 FOR UPDATE",
                &[&name_or_id],
            )
            .await
            .map_err(pg("reading a token"))?
        else {
            return Err(TokenError::Unknown(name_or_id.to_owned()));
        };
        let mut token: TokenRecord =
            decode(text(&row, "id")?.as_bytes(), text(&row, "record")?.as_bytes())?;
        token.revoked_ms = Some(now_ms());
        let record = json_text(&token)?;
        tx.execute(
            "UPDATE weft_tokens SET revoked_ms = $2, record = $3 WHERE id = $1",
            &[&token.id, &token.revoked_ms.map(big), &record],
        )
        .await
        .map_err(pg("revoking a token"))?;
        tx.execute("DELETE FROM weft_sessions WHERE token_id = $1", &[&token.id])
            .await
            .map_err(pg("ending a token's sessions"))?;
        tx.commit().await.map_err(pg("committing a revoked token"))?;
        Ok(token)
    }

    pub(crate) async fn create_session(
        &self,
        cookie_sha256: &str,
        session: &SessionRecord,
    ) -> Result<()> {
        let record = json_text(session)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO weft_sessions (cookie_sha256, token_id, expires_ms, record)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (cookie_sha256) DO UPDATE SET token_id = EXCLUDED.token_id,
                     expires_ms = EXCLUDED.expires_ms, record = EXCLUDED.record",
                &[&cookie_sha256, &session.token_id, &big(session.expires_ms), &record],
            )
            .await
            .map_err(pg("writing a session"))?;
        Ok(())
    }

    pub(crate) async fn live_session(
        &self,
        cookie_sha256: &str,
        now_ms: u64,
    ) -> Result<Option<(SessionRecord, TokenRecord)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT s.record AS session, t.id AS token_id, t.record AS token
                 FROM weft_sessions s JOIN weft_tokens t ON t.id = s.token_id
                 WHERE s.cookie_sha256 = $1 AND s.expires_ms > $2 AND t.revoked_ms IS NULL",
                &[&cookie_sha256, &big(now_ms)],
            )
            .await
            .map_err(pg("reading a session"))?;
        let Some(row) = row else { return Ok(None) };
        let session: SessionRecord =
            decode(cookie_sha256.as_bytes(), text(&row, "session")?.as_bytes())?;
        let token: TokenRecord =
            decode(text(&row, "token_id")?.as_bytes(), text(&row, "token")?.as_bytes())?;
        Ok(token.is_active().then_some((session, token)))
    }

    pub(crate) async fn end_session(&self, cookie_sha256: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM weft_sessions WHERE cookie_sha256 = $1", &[&cookie_sha256])
            .await
            .map_err(pg("ending a session"))?;
        Ok(())
    }

    pub(crate) async fn forget_expired_sessions(&self, now_ms: u64) -> Result<usize> {
        let client = self.client().await?;
        let gone = client
            .execute("DELETE FROM weft_sessions WHERE expires_ms <= $1", &[&big(now_ms)])
            .await
            .map_err(pg("forgetting expired sessions"))?;
        Ok(usize::try_from(gone).unwrap_or(usize::MAX))
    }
}

/// One run being copied in (`weft store copy`): one transaction on one
/// connection, begun by [`PgStore::import`] and ended by
/// [`RunImport::commit`] (or rolled back on drop of the error path by
/// [`RunImport::abandon`]).
pub(crate) struct RunImport {
    client: Object,
    run: String,
}

impl PgStore {
    /// Begins copying `run` in: writes its record (with `started_by`),
    /// steps, history and HTTP totals, and, when it is not finished, a
    /// queue row no worker holds (any worker may claim it at once).
    /// `None` when the database has the run already (nothing written).
    pub(crate) async fn import(
        &self,
        run: &RunRecord,
        started_by: Option<&str>,
        steps: &[StepState],
        history: &[HistoryEntry],
        totals: &BTreeMap<String, ConnectionTotals>,
    ) -> Result<Option<RunImport>> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(pg("starting a copy"))?;
        let import = RunImport { client, run: run.id.clone() };
        match import.write_run(run, started_by, steps, history, totals).await {
            Ok(true) => Ok(Some(import)),
            Ok(false) => {
                import.abandon().await;
                Ok(None)
            }
            Err(e) => {
                import.abandon().await;
                Err(e)
            }
        }
    }
}

impl RunImport {
    async fn write_run(
        &self,
        run: &RunRecord,
        started_by: Option<&str>,
        steps: &[StepState],
        history: &[HistoryEntry],
        totals: &BTreeMap<String, ConnectionTotals>,
    ) -> Result<bool> {
        let c = &self.client;
        let there = c
            .query_opt("SELECT 1 FROM weft_runs WHERE id = $1", &[&run.id])
            .await
            .map_err(pg("reading a run"))?;
        if there.is_some() {
            return Ok(false);
        }
        put_run(c, run, started_by, true).await?;
        for step in steps {
            let index = i32::try_from(step.index).unwrap_or(i32::MAX);
            c.execute(
                "INSERT INTO weft_steps (run_id, idx, state) VALUES ($1, $2, $3)",
                &[&run.id, &index, &json_text(step)?],
            )
            .await
            .map_err(pg("writing a step"))?;
        }
        for entry in history {
            c.execute(
                "INSERT INTO weft_history (run_id, entry) VALUES ($1, $2)",
                &[&run.id, &json_text(entry)?],
            )
            .await
            .map_err(pg("writing a run's history"))?;
        }
        for (connection, t) in totals {
            c.execute(
                "INSERT INTO weft_run_stats (run_id, connection, requests, throttled, retries,
                     waited_ms, denied, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &run.id,
                    connection,
                    &big(t.requests),
                    &big(t.throttled),
                    &big(t.retries),
                    &big(t.waited_ms),
                    &big(t.denied),
                    // Plugin, answers by class, plugin calls: all of it.
                    &json_text(t)?,
                ],
            )
            .await
            .map_err(pg("writing a run's HTTP totals"))?;
        }
        if !run.status.is_finished() {
            c.execute(
                "INSERT INTO weft_queue (run_id, workflow, enqueued_ms) VALUES ($1, $2, $3)",
                &[&run.id, &run.workflow, &big(run.created_ms)],
            )
            .await
            .map_err(pg("queueing a run"))?;
        }
        Ok(true)
    }

    /// Adds pages of step `index`, numbered from `first`.
    pub(crate) async fn pages(&self, index: u32, first: u32, pages: &[String]) -> Result<()> {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        let numbers: Vec<i32> = (0..pages.len())
            .map(|n| i32::try_from(u64::from(first) + n as u64).unwrap_or(i32::MAX))
            .collect();
        self.client
            .execute(
                "INSERT INTO weft_pages (run_id, idx, page, records)
                 SELECT $1, $2, p, r FROM unnest($3::int4[], $4::text[]) AS t (p, r)",
                &[&self.run, &index, &numbers, &pages],
            )
            .await
            .map_err(pg("writing pages"))?;
        Ok(())
    }

    /// Adds a group of finished items of step `index`.
    pub(crate) async fn items(&self, index: u32, items: &[(u64, ItemRecord)]) -> Result<()> {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        self.client
            .execute(
                "INSERT INTO weft_items (run_id, idx, items) VALUES ($1, $2, $3)",
                &[&self.run, &index, &json_text(&items)?],
            )
            .await
            .map_err(pg("writing a group of items"))?;
        Ok(())
    }

    /// Adds a sorted run of step `index` (an unfinished sync).
    pub(crate) async fn sorted_run(&self, index: u32, name: &str, bytes: &[u8]) -> Result<()> {
        if !valid_run_name(name) {
            return Err(StoreError::Scratch {
                path: name.to_owned(),
                reason: "not a sorted run's file name".into(),
            });
        }
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        self.client
            .execute(
                "INSERT INTO weft_sorted_runs (run_id, idx, name, bytes) VALUES ($1, $2, $3, $4)",
                &[&self.run, &index, &name, &bytes],
            )
            .await
            .map_err(pg("writing a sorted run"))?;
        Ok(())
    }

    /// Commits the copy of the run.
    pub(crate) async fn commit(self) -> Result<()> {
        match self.client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abandon().await;
                Err(pg("committing a copied run")(e))
            }
        }
    }

    /// Rolls the copy of the run back; a connection that cannot is not
    /// given back to the pool.
    pub(crate) async fn abandon(self) {
        if self.client.batch_execute("ROLLBACK").await.is_err() {
            let _ = Object::take(self.client);
        }
    }
}

impl PgStore {
    /// Remembers a webhook delivery copied from another store: a
    /// signature (`signed_at` as the sender signed it) or an event id kept
    /// until `keep_until_ms`. `false` when it was remembered already.
    pub(crate) async fn import_delivery(
        &self,
        workflow: &str,
        signature: Option<(&str, Option<i64>)>,
        event: Option<(&str, u64)>,
    ) -> Result<bool> {
        let client = self.client().await?;
        let mut inserted = 0;
        if let Some((signature, signed_at)) = signature {
            inserted += client
                .execute(
                    "INSERT INTO weft_deliveries (workflow, signature, signed_at, run_id)
                     VALUES ($1, $2, $3, '') ON CONFLICT DO NOTHING",
                    &[&workflow, &signature, &signed_at],
                )
                .await
                .map_err(pg("remembering a webhook delivery"))?;
        }
        if let Some((event, keep_until_ms)) = event {
            inserted += client
                .execute(
                    "INSERT INTO weft_delivery_events (workflow, event_id, keep_until_ms, run_id)
                     VALUES ($1, $2, $3, '') ON CONFLICT DO NOTHING",
                    &[&workflow, &event, &big(keep_until_ms)],
                )
                .await
                .map_err(pg("remembering a webhook event id"))?;
        }
        Ok(inserted > 0)
    }
}

/// Throwaway schemas for tests (the engine's and the end-to-end suite's):
/// each test gets its own schema in the database `WEFT_TEST_POSTGRES`
/// names, migrated, and dropped when the test ends. Not part of the API.
#[doc(hidden)]
pub mod scratch {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{Result, StoreError, migrate, pg, redact};

    /// The variable naming the test server.
    pub const TEST_URL_VAR: &str = "WEFT_TEST_POSTGRES";

    /// A migrated schema of its own; dropped (with everything in it) on drop.
    #[derive(Debug)]
    pub struct ScratchSchema {
        /// A store URL whose connections use only this schema.
        pub url: String,
        base: String,
        schema: String,
    }

    /// The test server's URL. `None` (the caller skips, saying so) when
    /// it is not set outside CI; under `CI=true` a missing server is an
    /// error, so a CI run cannot pass without running these tests.
    pub fn test_url(test: &str) -> Result<Option<String>, String> {
        match std::env::var(TEST_URL_VAR) {
            Ok(url) if !url.is_empty() => Ok(Some(url)),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => Err(format!(
                "{test}: {TEST_URL_VAR} is not set and CI=true: the PostgreSQL tests must run \
                 in CI (.ci/run starts a server through .ci/postgres)"
            )),
            _ => {
                eprintln!(
                    "{test}: PostgreSQL part skipped: {TEST_URL_VAR} is not set \
                     (`source .ci/postgres` starts a throwaway server and sets it)"
                );
                Ok(None)
            }
        }
    }

    impl ScratchSchema {
        /// Creates and migrates a new schema in the database at `base`.
        pub async fn create(base: &str) -> Result<ScratchSchema> {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let schema = format!(
                "weft_test_{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                super::now_ms()
            );
            let admin = super::pool(base)?;
            let client = admin.get().await.map_err(|e| StoreError::Postgres {
                what: format!("connecting to {}", redact(base)),
                reason: e.to_string(),
            })?;
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
                .map_err(pg("creating a test schema"))?;
            let separator = if base.contains('?') { '&' } else { '?' };
            // Its connections carry the schema's name, so the drop can
            // end any the test left in a transaction.
            let url = format!(
                "{base}{separator}options=-csearch_path%3D{schema}&application_name={schema}"
            );
            let scratch = ScratchSchema { url, base: base.to_owned(), schema };
            migrate(&scratch.url).await?;
            Ok(scratch)
        }
    }

    impl Drop for ScratchSchema {
        fn drop(&mut self) {
            let (base, schema) = (self.base.clone(), self.schema.clone());
            // Drop runs inside the test's runtime: the schema goes on a
            // thread of its own, with a runtime of its own, waited for.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(async {
                        if let Ok(pool) = super::pool(&base)
                            && let Ok(client) = pool.get().await
                        {
                            // A test that ended mid-transaction (its runtime
                            // stopped before the rollback went out) would
                            // hold locks the drop waits for.
                            let _ = client
                                .execute(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                     WHERE application_name = $1",
                                    &[&schema],
                                )
                                .await;
                            let sql = format!(
                                "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                            );
                            if let Err(e) = client.batch_execute(&sql).await {
                                eprintln!("test schema {schema} not dropped: {e}");
                            }
                        }
                    });
                }
            });
            let _ = dropped.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scratch::{ScratchSchema, test_url};
    use super::*;
    use crate::store::{RunStore, RunTrigger};

    fn record(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            workflow: "w".into(),
            workflow_hash: "h".into(),
            workflow_text: "[workflow]".into(),
            workflow_path: "w.toml".into(),
            inputs: serde_json::json!({}),
            status: Status::Running,
            created_ms: now_ms(),
            finished_ms: None,
            error: None,
            dry_run: false,
            trigger: RunTrigger::Webhook,
            cancel_requested: false,
            resumes: 0,
            inputs_defaulted: Vec::new(),
        }
    }

    #[test]
    fn a_password_written_in_the_url_is_refused_and_never_shown() {
        let err = pg_config("postgres://weft:hunter2@db.example/weft")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("env:NAME or file:PATH"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = pg_config("postgres://weft@db.example/weft?password=hunter2")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("env:NAME or file:PATH") && !err.contains("hunter2"), "{err}");
        assert_eq!(
            redact("postgres://u:secret@h/d?password=x&sslmode=require"),
            "postgres://u:***@h/d?password=***&sslmode=require"
        );
    }

    #[test]
    fn a_password_comes_from_the_file_or_variable_the_url_names()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("pg-password");
        std::fs::write(&file, "from-file\n")?;
        let url = format!("postgres://weft@db.example/weft?password=file:{}", file.display());
        let config = pg_config(&url)?;
        assert_eq!(config.get_password(), Some(&b"from-file"[..]));
        assert_eq!(config.get_user(), Some("weft"));
        assert_eq!(config.get_dbname(), Some("weft"));
        let err = pg_config("postgres://weft:env:WEFT_TEST_UNSET_PASSWORD_VAR@db.example/weft")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("WEFT_TEST_UNSET_PASSWORD_VAR"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn a_store_is_refused_until_migrated_and_when_newer_than_this_weft()
    -> Result<(), Box<dyn std::error::Error>> {
        let Some(base) = test_url("a_store_is_refused_until_migrated")? else { return Ok(()) };
        let schema = ScratchSchema::create(&base).await?;
        // Migrating again finds nothing to do.
        assert_eq!(migrate(&schema.url).await?, (SCHEMA_VERSION, SCHEMA_VERSION));
        RunStore::open_postgres(&schema.url).await?;
        // A newer weft's migration.
        let pool = pool(&schema.url)?;
        let client = pool.get().await?;
        client
            .execute(
                "INSERT INTO weft_schema (version, description, applied_ms) VALUES ($1, 'future', 0)",
                &[&(SCHEMA_VERSION + 1)],
            )
            .await?;
        let err = RunStore::open_postgres(&schema.url).await.err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{err}");
        assert!(err.contains("newer"), "{err}");
        let err = migrate(&schema.url).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("newer"), "a migration does not touch a newer schema: {err}");
        // A database no weft migrated yet.
        client.batch_execute("DELETE FROM weft_schema").await?;
        let err = RunStore::open_postgres(&schema.url).await.err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("weft store migrate"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn pruning_a_fired_run_forgets_its_firing() -> Result<(), Box<dyn std::error::Error>> {
        let Some(base) = test_url("pruning_a_fired_run_forgets_its_firing")? else {
            return Ok(());
        };
        let schema = ScratchSchema::create(&base).await?;
        let store = RunStore::open_postgres(&schema.url).await?;
        let day = 86_400_000;
        let firings = || async {
            let client = pool(&schema.url)?.get().await?;
            let row = client.query_one("SELECT count(*) FROM weft_cron_firings", &[]).await?;
            Ok::<i64, Box<dyn std::error::Error>>(row.try_get(0)?)
        };
        for (n, age_days) in [(1u64, 40u64), (2, 39), (3, 1)] {
            // Run ids begin with their creation time, which listing reads.
            let created = now_ms() - age_days * day;
            let id = format!("{created:011x}-{n:05x}");
            let mut run = record(&id);
            run.trigger = RunTrigger::Cron;
            run.created_ms = created;
            store.create_fired_run(&run, &[], None, run.created_ms).await?;
            run.status = Status::Succeeded;
            run.finished_ms = Some(run.created_ms + 1);
            store.commit_run(&run).await?;
        }
        assert_eq!(firings().await?, 3);
        // run-3 is the workflow's newest success: the two old ones go.
        let report = store.prune_runs(now_ms() - 30 * day, false).await?;
        assert_eq!(report.removed, 2, "{report:?}");
        assert_eq!(firings().await?, 1, "the pruned runs' firings went with them");
        Ok(())
    }

    #[tokio::test]
    async fn one_delivery_sent_to_two_workers_at_once_starts_one_run()
    -> Result<(), Box<dyn std::error::Error>> {
        let Some(base) = test_url("one_delivery_sent_to_two_workers_at_once")? else {
            return Ok(());
        };
        let schema = ScratchSchema::create(&base).await?;
        // Two processes' stores: two pools on one database.
        let (a, b) = (
            RunStore::open_postgres(&schema.url).await?,
            RunStore::open_postgres(&schema.url).await?,
        );
        let delivery = Delivery {
            workflow: "w".into(),
            signature: "sig".into(),
            signed_at: Some(1),
            event: None,
        };
        let mut tasks = tokio::task::JoinSet::new();
        for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
            let delivery = delivery.clone();
            tasks.spawn(async move {
                let id = store.new_run_id().await?;
                store.create_run(&record(&id), &["s".into()], Some(&delivery)).await
            });
        }
        let (mut started, mut refused) = (0, 0);
        while let Some(result) = tasks.join_next().await {
            match result? {
                Ok(()) => started += 1,
                Err(StoreError::Replay { .. }) => refused += 1,
                Err(e) => return Err(e.into()),
            }
        }
        assert_eq!((started, refused), (1, 3));
        assert_eq!(b.runs().await?.len(), 1, "no run without its delivery");
        Ok(())
    }

    /// A store on `url` as a worker of its own, with leases of `lease`.
    async fn worker(url: &str, lease: Duration) -> Result<RunStore, Box<dyn std::error::Error>> {
        Ok(RunStore::open_postgres(url).await?.with_lease(lease))
    }

    fn step(index: u32) -> StepState {
        let mut step = StepState::pending("s", index);
        step.status = Status::Running;
        step
    }

    #[tokio::test]
    async fn a_worker_whose_lease_passed_to_another_cannot_commit_and_a_live_lease_is_not_taken()
    -> Result<(), Box<dyn std::error::Error>> {
        let Some(base) = test_url("a_worker_whose_lease_passed_to_another_cannot_commit")? else {
            return Ok(());
        };
        let schema = ScratchSchema::create(&base).await?;
        // `a` renews its lease rarely (every 15 s), so that the test can
        // let it pass; `b` and `c` every 75 ms.
        let a = worker(&schema.url, Duration::from_secs(60)).await?;
        let b = worker(&schema.url, Duration::from_millis(300)).await?;
        let c = worker(&schema.url, Duration::from_millis(300)).await?;
        let id = a.new_run_id().await?;
        a.create_run(&record(&id), &["s".into()], None).await?;
        a.commit_step(&id, &step(0)).await?;
        assert!(b.claim_runs(10).await?.is_empty(), "a live lease is not claimable");

        // `a` is cut off: its lease passes (as if a minute went by).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let admin = pool(&schema.url)?.get().await?;
        admin.execute("UPDATE weft_queue SET lease_until_ms = 0", &[]).await?;
        assert_eq!(b.claim_runs(10).await?, std::slice::from_ref(&id), "b takes the run");
        assert!(c.claim_runs(10).await?.is_empty(), "once");

        // `a` comes back: every commit of the run is refused, whatever it is.
        let mut late = step(0);
        late.items = 99;
        let refused = [
            a.commit_step(&id, &late).await.err(),
            a.commit_items(
                &id,
                &late,
                &[(
                    0,
                    ItemRecord { status: Status::Succeeded, action: None, id: None, error: None },
                )],
            )
            .await
            .err(),
            a.start_commit(&id, &late, None).wait().await.err(),
            a.commit_run(&record(&id)).await.err(),
        ];
        for err in refused {
            let err = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("lease passed to another worker")
                    && err.contains(b.worker().unwrap_or("?")),
                "{err}"
            );
        }
        assert_eq!(a.steps(&id).await?[0].items, 0, "nothing of a's landed");
        // The new holder commits.
        let mut ours = step(0);
        ours.items = 5;
        b.commit_step(&id, &ours).await?;
        assert_eq!(c.steps(&id).await?[0].items, 5);

        // A lease its worker renews is not taken by a resume elsewhere:
        // `c` waits two leases, then says who runs it.
        let started = std::time::Instant::now();
        let err = c.claim_run(&id).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("is being run by worker") && err.contains(b.worker().unwrap_or("?")),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());

        // `b` dies (its heartbeat stops with it): the lease passes within
        // its length and `c` resumes the run.
        drop(b);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let claimed = loop {
            let claimed = c.claim_runs(10).await?;
            if !claimed.is_empty() || std::time::Instant::now() > deadline {
                break claimed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(claimed, std::slice::from_ref(&id));
        let mut done = record(&id);
        done.status = Status::Succeeded;
        done.finished_ms = Some(now_ms());
        c.commit_run(&done).await?;
        let left: i64 = admin.query_one("SELECT count(*) FROM weft_queue", &[]).await?.get(0);
        assert_eq!(left, 0, "a finished run leaves the queue");
        Ok(())
    }

    #[tokio::test]
    async fn a_run_whose_task_stopped_unfinished_is_claimed_again_a_lease_later()
    -> Result<(), Box<dyn std::error::Error>> {
        let Some(base) = test_url("a_run_whose_task_stopped_unfinished_is_claimed_again")? else {
            return Ok(());
        };
        let schema = ScratchSchema::create(&base).await?;
        let store = worker(&schema.url, Duration::from_millis(400)).await?;
        let id = store.new_run_id().await?;
        store.create_run(&record(&id), &["s".into()], None).await?;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(store.claim_runs(10).await?.is_empty(), "renewed while its task runs");
        // The task stopped on an error that may pass.
        store.release_run(&id).await?;
        assert!(store.claim_runs(10).await?.is_empty(), "not at once: no retry loop");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(store.claim_runs(10).await?, std::slice::from_ref(&id), "a lease later");
        Ok(())
    }

    #[tokio::test]
    async fn workers_claiming_at_once_take_each_free_run_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let Some(base) = test_url("workers_claiming_at_once_take_each_free_run_once")? else {
            return Ok(());
        };
        let schema = ScratchSchema::create(&base).await?;
        let creator = worker(&schema.url, Duration::from_secs(60)).await?;
        let mut ids = Vec::new();
        for _ in 0..40 {
            let id = creator.new_run_id().await?;
            creator.create_run(&record(&id), &["s".into()], None).await?;
            ids.push(id);
        }
        // The creator died: every lease passed.
        drop(creator);
        let admin = pool(&schema.url)?.get().await?;
        admin.execute("UPDATE weft_queue SET lease_until_ms = 0", &[]).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let store = worker(&schema.url, Duration::from_secs(30)).await?;
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claimed = store.claim_runs(3).await?;
                    if claimed.is_empty() {
                        return Ok::<_, StoreError>(mine);
                    }
                    mine.extend(claimed);
                }
            });
        }
        let mut all = Vec::new();
        let mut workers_with_runs = 0;
        while let Some(mine) = tasks.join_next().await {
            let mine = mine??;
            workers_with_runs += usize::from(!mine.is_empty());
            all.extend(mine);
        }
        all.sort();
        ids.sort();
        assert_eq!(all, ids, "each run claimed exactly once");
        assert!(workers_with_runs >= 1);
        Ok(())
    }

    #[test]
    fn a_sorted_run_name_from_the_database_cannot_leave_the_scratch_directory() {
        assert!(valid_run_name("source-00000.jsonl"));
        assert!(valid_run_name("target-00012.jsonl"));
        for bad in ["", "../x", "a/b", "..", ".hidden", "a\\b", "x\0y"] {
            assert!(!valid_run_name(bad), "{bad:?}");
        }
    }
}
