//! The conformance kit: a standard suite any connector must pass against a
//! live endpoint (normally an emulator). `weft plugin check` runs it for
//! first-party and third-party connectors alike, and the test suite runs it
//! against every built-in connector.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use crate::connector::{
    CallContext, ConnectorError, ListRequest, Op, RemoveOutcome, ResourceSpec, UpsertAction,
    UpsertRequest,
};
use crate::credentials::Secret;
use crate::http::{ConnectionHttp, HttpLimits};
use crate::limiter::{LimitedPolicy, Limiter, Publisher, RetryPolicy};
use crate::runtime::{Plugin, RuntimeError};

/// Pages the pagination check reads at most before it calls the listing endless.
const MAX_PAGES: usize = 100_000;

/// What the suite needs besides the plugin.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    /// Base URL of the endpoint under test.
    pub base_url: String,
    /// A credential the endpoint accepts.
    pub secret: Option<Secret>,
    /// Connection settings.
    pub settings: Vec<(String, String)>,
    /// Only check this resource; all when `None`.
    pub resource: Option<String>,
    /// A record the write checks may create, per resource; writes are
    /// skipped for a resource without one.
    pub samples: Vec<(String, serde_json::Value)>,
    /// Allow irreversible ops (remove) in the checks; only against an emulator.
    pub allow_irreversible: bool,
    /// Page size for the pagination check (capped at each resource's
    /// maximum); each resource's default when `None`. Small pages make a
    /// seeded emulator's listing span several.
    pub page_size: Option<u32>,
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It held.
    Pass,
    /// It did not.
    Fail,
    /// It could not run here (op not offered, no sample record).
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The resource checked.
    pub resource: String,
    /// What was checked, as a sentence.
    pub check: &'static str,
    /// How it ended.
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
}

/// Runs the suite; one result per check and resource.
pub async fn check(
    plugin: &Plugin,
    target: &CheckTarget,
) -> Result<Vec<CheckResult>, crate::http::HttpError> {
    let manifest = plugin.manifest().clone();
    let connect = |secret: Option<Secret>| -> Result<Arc<ConnectionHttp>, crate::http::HttpError> {
        let limiter = Arc::new(Limiter::new(
            Publisher::of_digest(plugin.digest()),
            &manifest.rate_limits,
            secret.as_ref(),
            &[],
        ));
        Ok(Arc::new(ConnectionHttp::new(
            crate::http::shared_client(),
            &target.base_url,
            &manifest.extra_hosts,
            secret.map(|s| (manifest.auth.clone(), s)),
            HttpLimits::default(),
            Arc::new(LimitedPolicy::new(limiter, RetryPolicy::default())),
        )?))
    };
    let http = connect(target.secret.clone())?;
    let ctx = CallContext { base_url: http.base_url(), settings: target.settings.clone() };
    let mut results = Vec::new();
    for resource in manifest
        .resources
        .iter()
        .filter(|r| target.resource.as_ref().is_none_or(|only| *only == r.name))
    {
        let suite = Suite {
            page_size: target.page_size,
            plugin,
            http: &http,
            ctx: &ctx,
            resource,
            results: &mut results,
        };
        suite.run(target).await;
    }
    // A wrong credential must read as unauthorized, not as an empty page or a crash.
    if manifest.auth != crate::connector::AuthScheme::None
        && let Some(resource) = manifest.resources.iter().find(|r| {
            r.offers(Op::List) && target.resource.as_ref().is_none_or(|only| *only == r.name)
        })
    {
        let wrong = connect(Some(Secret::new("weft_conformance_wrong_key")))?;
        let request = ListRequest {
            resource: resource.name.clone(),
            cursor: None,
            page_size: 1,
            filter: None,
        };
        let (verdict, detail) = match plugin.list(&wrong, ctx.clone(), request).await {
            Err(RuntimeError::Connector { error: ConnectorError::Unauthorized(m), .. }) => {
                (Verdict::Pass, m)
            }
            Err(e) => (Verdict::Fail, format!("expected unauthorized, got: {e}")),
            Ok(page) => {
                (Verdict::Fail, format!("a wrong key listed {} records", page.records.len()))
            }
        };
        results.push(CheckResult {
            resource: resource.name.clone(),
            check: "a wrong credential is unauthorized",
            verdict,
            detail,
        });
    }
    Ok(results)
}

struct Suite<'a> {
    page_size: Option<u32>,
    plugin: &'a Plugin,
    http: &'a Arc<ConnectionHttp>,
    ctx: &'a CallContext,
    resource: &'a ResourceSpec,
    results: &'a mut Vec<CheckResult>,
}

impl Suite<'_> {
    fn record(&mut self, check: &'static str, verdict: Verdict, detail: impl Into<String>) {
        self.results.push(CheckResult {
            resource: self.resource.name.clone(),
            check,
            verdict,
            detail: detail.into(),
        });
    }

    fn id_of(&self, record: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(record).ok()?;
        match &value[&self.resource.id_field] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    async fn run(mut self, target: &CheckTarget) {
        let name = self.resource.name.clone();
        if self.resource.offers(Op::List) {
            self.pagination().await;
        } else {
            self.record(
                "full pagination returns each record once",
                Verdict::Skip,
                "list not offered",
            );
        }
        if self.resource.offers(Op::Get) {
            let missing = "weft-conformance-missing-0000";
            match self.plugin.get(self.http, self.ctx.clone(), &name, missing).await {
                Ok(None) => self.record("get of an unknown id is absent", Verdict::Pass, "none"),
                Ok(Some(r)) => self.record(
                    "get of an unknown id is absent",
                    Verdict::Fail,
                    format!("returned {r}"),
                ),
                Err(e) => {
                    self.record("get of an unknown id is absent", Verdict::Fail, e.to_string())
                }
            }
        }
        let sample = target.samples.iter().find(|(r, _)| *r == name).map(|(_, s)| s.clone());
        let Some(sample) = sample.filter(|_| self.resource.offers(Op::Upsert)) else {
            let why = if self.resource.offers(Op::Upsert) {
                "no sample record for this resource"
            } else {
                "upsert not offered"
            };
            self.record("upsert twice is idempotent", Verdict::Skip, why);
            return;
        };
        let Some(id) = self.idempotent_upsert(&sample).await else { return };
        self.lookup_agrees(&sample, &id).await;
        if !self.resource.offers(Op::Remove) {
            return;
        }
        if self.resource.is_irreversible(Op::Remove) && !target.allow_irreversible {
            self.record(
                "remove then get is absent",
                Verdict::Skip,
                "remove is irreversible; pass --allow-irreversible against an emulator",
            );
            return;
        }
        self.remove_round_trip(&id).await;
    }

    async fn pagination(&mut self) {
        const CHECK: &str = "full pagination returns each record once";
        let page_size = self
            .page_size
            .unwrap_or(self.resource.default_page_size)
            .clamp(1, self.resource.max_page_size.max(1));
        let mut seen = HashSet::new();
        let mut cursor = None;
        for pages in 1..=MAX_PAGES {
            let request = ListRequest {
                resource: self.resource.name.clone(),
                cursor: cursor.clone(),
                page_size,
                filter: None,
            };
            let page = match self.plugin.list(self.http, self.ctx.clone(), request).await {
                Ok(page) => page,
                Err(e) => return self.record(CHECK, Verdict::Fail, e.to_string()),
            };
            for record in &page.records {
                let Some(id) = self.id_of(record) else {
                    return self.record(
                        CHECK,
                        Verdict::Fail,
                        format!("a record has no {:?} field: {record}", self.resource.id_field),
                    );
                };
                if !seen.insert(id.clone()) {
                    return self.record(
                        CHECK,
                        Verdict::Fail,
                        format!("record {id} came twice (page {pages})"),
                    );
                }
            }
            if page.next_cursor.is_some() && page.next_cursor == cursor {
                return self.record(
                    CHECK,
                    Verdict::Fail,
                    "the next cursor equals the one given: the listing would never end",
                );
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                return self.record(
                    CHECK,
                    Verdict::Pass,
                    format!("{} records in {pages} pages of {page_size}", seen.len()),
                );
            }
        }
        self.record(CHECK, Verdict::Fail, format!("still not done after {MAX_PAGES} pages"));
    }

    /// Upserts `sample` twice with different keys; returns the record id.
    async fn idempotent_upsert(&mut self, sample: &serde_json::Value) -> Option<String> {
        const CHECK: &str = "upsert twice is idempotent";
        let upsert = |key: &str| UpsertRequest {
            resource: self.resource.name.clone(),
            record: sample.to_string(),
            idempotency_key: key.to_owned(),
        };
        let first = match self
            .plugin
            .upsert(self.http, self.ctx.clone(), upsert("weft-conformance-1"))
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                self.record(CHECK, Verdict::Fail, format!("first upsert: {e}"));
                return None;
            }
        };
        let second = match self
            .plugin
            .upsert(self.http, self.ctx.clone(), upsert("weft-conformance-2"))
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                self.record(CHECK, Verdict::Fail, format!("second upsert: {e}"));
                return None;
            }
        };
        let (a, b) = (self.id_of(&first.record), self.id_of(&second.record));
        if second.action == UpsertAction::Created || a != b || a.is_none() {
            self.record(
                CHECK,
                Verdict::Fail,
                format!(
                    "first {:?} {a:?}, second {:?} {b:?}: a duplicate",
                    first.action, second.action
                ),
            );
            return None;
        }
        self.record(
            CHECK,
            Verdict::Pass,
            format!("first {:?}, second {:?}, same id", first.action, second.action),
        );
        a
    }

    /// A connector that answers `lookup` (weft:connector@0.2.0) finds the
    /// record its upsert of `sample` wrote: a dry run plans with it, so a
    /// lookup that disagrees with the upsert plans the wrong record.
    async fn lookup_agrees(&mut self, sample: &serde_json::Value, id: &str) {
        const CHECK: &str = "lookup finds what the upsert wrote";
        if !self.plugin.offers_lookup() {
            return self.record(CHECK, Verdict::Skip, "built for weft:connector@0.1.0");
        }
        let name = self.resource.name.clone();
        let record = sample.to_string();
        match self.plugin.lookup(self.http, self.ctx.clone(), &name, &record).await {
            Ok(Some(found)) if self.id_of(&found).as_deref() == Some(id) => {
                self.record(CHECK, Verdict::Pass, format!("found {id}"))
            }
            Ok(Some(found)) => self.record(
                CHECK,
                Verdict::Fail,
                format!("found {found}, but the upsert wrote {id}"),
            ),
            Ok(None) => self.record(
                CHECK,
                Verdict::Fail,
                format!("found nothing, but the upsert of the same record wrote {id}"),
            ),
            Err(e) if matches!(e.connector_error(), Some(ConnectorError::Unsupported(_))) => {
                self.record(CHECK, Verdict::Skip, e.to_string())
            }
            Err(e) => self.record(CHECK, Verdict::Fail, e.to_string()),
        }
    }

    async fn remove_round_trip(&mut self, id: &str) {
        const CHECK: &str = "remove then get is absent";
        const AGAIN: &str = "remove of an absent id is already-absent";
        let name = self.resource.name.clone();
        match self.plugin.remove(self.http, self.ctx.clone(), &name, id).await {
            Ok(RemoveOutcome::Removed) => {}
            Ok(other) => {
                return self.record(
                    CHECK,
                    Verdict::Fail,
                    format!("remove of {id} answered {other:?}"),
                );
            }
            Err(e) => return self.record(CHECK, Verdict::Fail, e.to_string()),
        }
        if self.resource.offers(Op::Get) {
            match self.plugin.get(self.http, self.ctx.clone(), &name, id).await {
                Ok(None) => self.record(CHECK, Verdict::Pass, format!("{id} removed and absent")),
                Ok(Some(r)) => self.record(CHECK, Verdict::Fail, format!("still there: {r}")),
                Err(e) => self.record(CHECK, Verdict::Fail, e.to_string()),
            }
        }
        match self.plugin.remove(self.http, self.ctx.clone(), &name, id).await {
            Ok(RemoveOutcome::AlreadyAbsent) => self.record(AGAIN, Verdict::Pass, "already-absent"),
            Ok(other) => self.record(AGAIN, Verdict::Fail, format!("answered {other:?}")),
            Err(e) => self.record(AGAIN, Verdict::Fail, e.to_string()),
        }
    }
}
