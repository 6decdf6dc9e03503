//! Serving an emulator's router on a local socket, and stopping it again.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Loopback on a port the OS picks: what tests and `weft sandbox` use
/// unless told otherwise.
pub const LOOPBACK_ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How long [`RunningServer::shutdown`] waits for requests in flight (an
/// injected latency, say) before it abandons them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An emulator being served on a socket.
///
/// Dropping it stops the server too, without waiting; call
/// [`RunningServer::shutdown`] to wait until it has stopped.
#[derive(Debug)]
#[must_use = "dropping a RunningServer stops the server"]
pub struct RunningServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

/// Binds `addr` and serves `router` on it in a background task.
///
/// Pass [`LOOPBACK_ANY_PORT`] for a private server on a free port.
///
/// # Errors
///
/// Fails if the socket cannot be bound.
pub async fn serve(router: Router, addr: SocketAddr) -> io::Result<RunningServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                // A dropped sender means the `RunningServer` was dropped:
                // stop then as well, so no test leaks a server.
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningServer { local_addr, stop, task })
}

impl RunningServer {
    /// The address the server is listening on, with the real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://host:port`, with no trailing slash.
    ///
    /// A server bound to an unspecified address (`0.0.0.0`) is reachable
    /// on loopback, so that is the URL given.
    pub fn base_url(&self) -> String {
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        // SocketAddr's Display brackets IPv6 addresses, as URLs need.
        format!("http://{}", SocketAddr::new(ip, self.local_addr.port()))
    }

    /// Stops accepting connections and waits for requests in flight, for
    /// at most a few seconds.
    pub async fn shutdown(self) {
        let RunningServer { stop, mut task, .. } = self;
        let _ = stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "emulator server failed"),
            Ok(Err(error)) => tracing::warn!(%error, "emulator server task panicked"),
            Err(_) => {
                tracing::warn!("emulator server still busy after {SHUTDOWN_GRACE:?}; aborting it");
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test]
    async fn serve_answers_on_the_reported_port_until_shut_down() {
        let router = Router::new().route("/", get(|| async { "hello" }));
        let server = serve(router, LOOPBACK_ANY_PORT).await.expect("binds");
        assert_ne!(server.local_addr().port(), 0);
        let url = server.base_url();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");

        let client = reqwest::Client::new();
        let text =
            client.get(&url).send().await.expect("request succeeds").text().await.expect("body");
        assert_eq!(text, "hello");

        server.shutdown().await;
        assert!(reqwest::Client::new().get(&url).send().await.is_err());
    }

    #[tokio::test]
    async fn base_url_of_an_unspecified_address_points_at_loopback() {
        let server = serve(Router::new(), "0.0.0.0:0".parse().expect("addr")).await.expect("binds");
        assert!(server.base_url().starts_with("http://127.0.0.1:"));
        server.shutdown().await;
    }
}
