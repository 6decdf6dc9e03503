//! `GET /metrics`: the process's [`Metrics`] for Prometheus, on the main
//! address behind the gate (a viewer's route), and optionally on a
//! listener of its own (`--metrics-bind`) that serves that one route to
//! anyone who reaches it, the way Prometheus scrapes by default.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::ServeError;
use crate::metrics::{CONTENT_TYPE, Metrics, PROMETHEUS_TEXT_CONTENT_TYPE};

/// The exposition: OpenMetrics when the client asks for it (Prometheus
/// does), else Prometheus's text format 0.0.4 (`curl`, `promtool`).
pub(super) fn exposition(metrics: &Metrics, headers: &HeaderMap) -> Response {
    let open = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (text, content_type) = if open {
        (metrics.encode(), CONTENT_TYPE)
    } else {
        (metrics.encode_prometheus_text(), PROMETHEUS_TEXT_CONTENT_TYPE)
    };
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn metrics_only(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    exposition(&metrics, &headers)
}

/// Binds `addr` and serves `/metrics` there (and nothing else) until
/// `shutdown`. Returns the bound address.
pub(super) async fn listen(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    let app = Router::new().route("/metrics", get(metrics_only)).with_state(metrics);
    tokio::spawn(async move {
        let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    Ok(bound)
}
