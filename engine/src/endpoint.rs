//! A connection ready to call, as the executor sees it: a plugin on a
//! connection ([`PluginConnection`], warm instances behind the host's HTTP
//! policy), or (in benchmarks and tests) anything else that answers the
//! same ops.

use futures_util::future::BoxFuture;

use crate::connector::{
    BatchItem, ConnectorError, ListRequest, Manifest, Page, RemoveOutcome, UpsertOutcome,
    UpsertRequest,
};
use crate::http::within_call;
use crate::runtime::{Listed, PluginConnection, RuntimeError};
use crate::store::ConnectionTotals;

/// The outcome of each record of a batch upsert.
pub type BatchOutcomes = Vec<Result<UpsertOutcome, ConnectorError>>;

/// One connection's ops.
pub trait Endpoint: Send + Sync {
    /// The connector's manifest.
    fn manifest(&self) -> &Manifest;
    /// The plugin's name, for messages.
    fn name(&self) -> &str;
    /// Reads one page.
    fn list(&self, request: ListRequest) -> BoxFuture<'_, Result<Page, RuntimeError>>;
    /// Reads one page and leaves the check of its records to
    /// [`Listed::check`], for a caller with something to overlap it with.
    /// By default the page [`list`](Endpoint::list) returns, checked.
    fn list_unchecked(&self, request: ListRequest) -> BoxFuture<'_, Result<Listed, RuntimeError>> {
        Box::pin(async move { self.list(request).await.map(Listed::checked) })
    }
    /// Reads one record.
    fn get<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>>;
    /// Creates or updates one record.
    fn upsert(&self, request: UpsertRequest) -> BoxFuture<'_, Result<UpsertOutcome, RuntimeError>>;
    /// Creates or updates several records in one call.
    fn upsert_batch<'a>(
        &'a self,
        resource: &'a str,
        items: Vec<BatchItem>,
    ) -> BoxFuture<'a, Result<BatchOutcomes, RuntimeError>>;
    /// Removes one record.
    fn remove<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<RemoveOutcome, RuntimeError>>;
    /// Whether [`lookup`](Endpoint::lookup) can answer (the connector
    /// exports `weft:connector@0.2.0`'s `lookup`).
    fn offers_lookup(&self) -> bool {
        false
    }
    /// The record an upsert of `record` would update, without writing;
    /// `None` when it would create one. Unsupported unless overridden.
    fn lookup<'a>(
        &'a self,
        resource: &'a str,
        record: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
        let _ = record;
        let error = RuntimeError::Connector {
            plugin: self.name().to_owned(),
            op: "lookup",
            error: ConnectorError::Unsupported(format!(
                "no lookup of what an upsert on `{resource}` would match"
            )),
        };
        Box::pin(std::future::ready(Err(error)))
    }
    /// What it did so far: vendor requests (429s, retries, time waited,
    /// answers by class) and plugin calls by op.
    fn totals(&self) -> ConnectionTotals {
        ConnectionTotals::default()
    }
}

/// A plugin on one connection ([`PluginConnection`]: warm instances behind
/// the connection's HTTP policy, given its base URL and settings). Each op
/// is one call for the connection's per-call request budget
/// ([`crate::http::HttpLimits::max_requests_per_call`]).
impl Endpoint for PluginConnection {
    fn manifest(&self) -> &Manifest {
        self.plugin().manifest()
    }

    fn name(&self) -> &str {
        self.plugin().name()
    }

    fn list(&self, request: ListRequest) -> BoxFuture<'_, Result<Page, RuntimeError>> {
        Box::pin(within_call(PluginConnection::list(self, request)))
    }

    fn list_unchecked(&self, request: ListRequest) -> BoxFuture<'_, Result<Listed, RuntimeError>> {
        Box::pin(within_call(PluginConnection::list_unchecked(self, request)))
    }

    fn get<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(within_call(PluginConnection::get(self, resource, id)))
    }

    fn upsert(&self, request: UpsertRequest) -> BoxFuture<'_, Result<UpsertOutcome, RuntimeError>> {
        Box::pin(within_call(PluginConnection::upsert(self, request)))
    }

    fn upsert_batch<'a>(
        &'a self,
        resource: &'a str,
        items: Vec<BatchItem>,
    ) -> BoxFuture<'a, Result<BatchOutcomes, RuntimeError>> {
        Box::pin(within_call(PluginConnection::upsert_batch(self, resource, items)))
    }

    fn remove<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<RemoveOutcome, RuntimeError>> {
        Box::pin(within_call(PluginConnection::remove(self, resource, id)))
    }

    fn offers_lookup(&self) -> bool {
        self.plugin().offers_lookup()
    }

    fn lookup<'a>(
        &'a self,
        resource: &'a str,
        record: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(within_call(PluginConnection::lookup(self, resource, record)))
    }

    fn totals(&self) -> ConnectionTotals {
        PluginConnection::totals(self)
    }
}
