//! A connection ready to call, as the executor sees it: a plugin instance
//! behind the host's HTTP policy, or (in benchmarks and tests) anything
//! else that answers the same ops.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::connector::{
    BatchItem, CallContext, ConnectorError, ListRequest, Manifest, Page, RemoveOutcome,
    UpsertOutcome, UpsertRequest,
};
use crate::http::{ConnectionHttp, StatsSnapshot, within_call};
use crate::runtime::{Plugin, PluginConnection, RuntimeError};

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
    /// Requests sent, 429s, retries, time waited.
    fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::default()
    }
}

/// A plugin behind a connection's HTTP policy and settings, whose calls
/// reuse warm instances of this connection (see [`PluginConnection`]).
/// Each op is one call for the connection's per-call request budget
/// ([`crate::http::HttpLimits::max_requests_per_call`]).
pub struct PluginEndpoint {
    connection: PluginConnection,
    context: CallContext,
}

impl PluginEndpoint {
    /// The connection's endpoint: `plugin` behind `http`, every call given
    /// `context` (base URL and settings).
    pub fn new(plugin: Arc<Plugin>, http: Arc<ConnectionHttp>, context: CallContext) -> Self {
        PluginEndpoint { connection: PluginConnection::new(plugin, http), context }
    }

    /// The loaded plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        self.connection.plugin()
    }

    /// The connection's HTTP policy: base URL, hosts, credential, limiter.
    pub fn http(&self) -> &Arc<ConnectionHttp> {
        self.connection.http()
    }

    /// Base URL and settings handed to every call.
    pub fn context(&self) -> &CallContext {
        &self.context
    }
}

impl std::fmt::Debug for PluginEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEndpoint")
            .field("plugin", &self.plugin().name())
            .field("base_url", &self.context.base_url)
            .finish()
    }
}

impl Endpoint for PluginEndpoint {
    fn manifest(&self) -> &Manifest {
        self.plugin().manifest()
    }

    fn name(&self) -> &str {
        self.plugin().name()
    }

    fn list(&self, request: ListRequest) -> BoxFuture<'_, Result<Page, RuntimeError>> {
        Box::pin(within_call(self.connection.list(self.context.clone(), request)))
    }

    fn get<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(within_call(self.connection.get(self.context.clone(), resource, id)))
    }

    fn upsert(&self, request: UpsertRequest) -> BoxFuture<'_, Result<UpsertOutcome, RuntimeError>> {
        Box::pin(within_call(self.connection.upsert(self.context.clone(), request)))
    }

    fn upsert_batch<'a>(
        &'a self,
        resource: &'a str,
        items: Vec<BatchItem>,
    ) -> BoxFuture<'a, Result<BatchOutcomes, RuntimeError>> {
        Box::pin(within_call(self.connection.upsert_batch(self.context.clone(), resource, items)))
    }

    fn remove<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<RemoveOutcome, RuntimeError>> {
        Box::pin(within_call(self.connection.remove(self.context.clone(), resource, id)))
    }

    fn stats(&self) -> StatsSnapshot {
        self.http().stats().snapshot()
    }
}
