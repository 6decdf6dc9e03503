//! Stateful local emulators of the vendor APIs weft's connectors talk to.
//!
//! `weft sandbox`, the end-to-end tests and the benchmarks all run
//! connectors against these emulators instead of the real vendors. Each
//! vendor lives in its own module ([`stripe`] today; Baremetrics, Metronome,
//! GrowPanel and Stripe SCIM later) and builds an [`axum::Router`] from
//! shared parts:
//!
//! - [`server`] serves a router on loopback and shuts it down again;
//! - [`requests`] records every request an emulator answered, so tests can
//!   assert what a connector actually sent;
//! - [`limits`] is the seam for rate-limit enforcement and fault injection
//!   (429 storms, 5xx, latency, truncated bodies), off unless configured.
//!
//! [`Sandbox::start`] starts every emulator with demo data and prints
//! nothing: the `weft sandbox` command decides what to show.

#![deny(missing_docs)]

mod credentials;
pub mod limits;
pub mod requests;
pub mod server;
pub mod stripe;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::server::RunningServer;
use crate::stripe::{StripeConfig, StripeEmulator};

/// The random seed `Sandbox::start` uses, so two sandboxes started with the
/// same options serve the same demo customers with the same ids.
pub const SANDBOX_RNG_SEED: u64 = 0x5EED_F00D;

/// How [`Sandbox::start`] sets the emulators up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOptions {
    /// Demo customers to create in each vendor's emulator.
    pub seed: usize,
    /// Address to listen on; loopback unless you mean to share the sandbox.
    pub bind: IpAddr,
    /// Port for the Stripe emulator; 0 picks a free one.
    pub stripe_port: u16,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            seed: 25,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stripe_port: 0,
        }
    }
}

/// Every vendor emulator, each serving on its own port.
#[derive(Debug)]
#[must_use = "dropping a Sandbox stops its emulators"]
pub struct Sandbox {
    /// The Stripe Customers API emulator.
    pub stripe: StripeHandle,
}

/// A running Stripe emulator: its state and the server answering for it.
#[derive(Debug)]
pub struct StripeHandle {
    /// The emulator's state, for inspection and test setup.
    pub emulator: StripeEmulator,
    /// The HTTP server serving [`StripeHandle::emulator`].
    pub server: RunningServer,
}

impl StripeHandle {
    /// Base URL to use in place of `https://api.stripe.com`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }
}

/// Where to reach one vendor emulator and which credential it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Vendor name as connectors spell it (`"stripe"`).
    pub vendor: &'static str,
    /// Base URL standing in for the vendor's production one.
    pub base_url: String,
    /// An API key the emulator accepts.
    pub api_key: String,
}

impl Sandbox {
    /// Starts every emulator, seeded with `options.seed` demo customers each.
    ///
    /// Prints nothing; call [`Sandbox::endpoints`] to show where they are.
    ///
    /// # Errors
    ///
    /// Fails if a listening socket cannot be bound (port taken, address
    /// not local).
    pub async fn start(options: SandboxOptions) -> std::io::Result<Sandbox> {
        let emulator = StripeEmulator::new(StripeConfig {
            api_keys: vec![stripe::SANDBOX_API_KEY.to_owned()],
            seed: options.seed,
            rng_seed: SANDBOX_RNG_SEED,
            ..StripeConfig::default()
        });
        let server = server::serve(
            emulator.router(),
            SocketAddr::new(options.bind, options.stripe_port),
        )
        .await?;
        Ok(Sandbox {
            stripe: StripeHandle { emulator, server },
        })
    }

    /// Where each emulator listens and the key it accepts.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        vec![Endpoint {
            vendor: "stripe",
            base_url: self.stripe.base_url(),
            api_key: stripe::SANDBOX_API_KEY.to_owned(),
        }]
    }

    /// Stops every emulator, letting requests in flight finish.
    pub async fn shutdown(self) {
        self.stripe.server.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sandbox_serves_seeded_stripe_customers_at_its_endpoint() {
        let sandbox = Sandbox::start(SandboxOptions {
            seed: 3,
            ..SandboxOptions::default()
        })
        .await
        .expect("sandbox starts");
        let endpoints = sandbox.endpoints();
        assert_eq!(endpoints.len(), 1);
        let stripe = &endpoints[0];
        assert_eq!(stripe.vendor, "stripe");
        assert!(stripe.base_url.starts_with("http://127.0.0.1:"));
        assert_eq!(sandbox.stripe.emulator.customer_count(), 3);

        let response = reqwest::Client::new()
            .get(format!("{}/v1/customers", stripe.base_url))
            .bearer_auth(&stripe.api_key)
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
        assert_eq!(body["data"].as_array().map(Vec::len), Some(3));
        sandbox.shutdown().await;
    }

    #[tokio::test]
    async fn two_sandboxes_with_the_same_options_serve_the_same_customers() {
        let options = SandboxOptions {
            seed: 5,
            ..SandboxOptions::default()
        };
        let first = Sandbox::start(options.clone()).await.expect("first starts");
        let second = Sandbox::start(options).await.expect("second starts");
        assert_eq!(
            first.stripe.emulator.customers(),
            second.stripe.emulator.customers()
        );
        first.shutdown().await;
        second.shutdown().await;
    }
}
