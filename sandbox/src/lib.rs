//! Stateful local emulators of the vendor APIs weft's connectors talk to.
//!
//! `weft sandbox`, the end-to-end tests and the benchmarks all run
//! connectors against these emulators instead of the real vendors. Each
//! vendor lives in its own module ([`stripe`], [`stripe_scim`],
//! [`baremetrics`], [`metronome`], [`growpanel`]) and builds an
//! [`axum::Router`] from shared parts:
//!
//! - [`server`] serves a router on loopback and shuts it down again;
//! - [`requests`] records every request an emulator answered, so tests can
//!   assert what a connector actually sent;
//! - [`limits`] is the seam for rate-limit enforcement and fault injection
//!   (429 storms, 5xx, latency, truncated bodies), off unless configured.
//!
//! [`vendors`] says which vendor each emulator stands in for, and holds
//! the sample records and settings a connector checked against it needs.
//!
//! [`Sandbox::start`] starts every emulator with demo data and prints
//! nothing: the `weft sandbox` command decides what to show.

#![deny(missing_docs)]

pub mod baremetrics;
mod credentials;
pub mod growpanel;
pub mod limits;
pub mod metronome;
pub mod requests;
pub mod server;
mod spec;
pub mod stripe;
pub mod stripe_scim;
mod support;
pub mod vendors;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::baremetrics::{BaremetricsConfig, BaremetricsEmulator};
use crate::growpanel::{GrowPanelConfig, GrowPanelEmulator};
use crate::metronome::{MetronomeConfig, MetronomeEmulator};
use crate::server::RunningServer;
use crate::stripe::{StripeConfig, StripeEmulator};
use crate::stripe_scim::{StripeScimConfig, StripeScimEmulator};

/// The random seed `Sandbox::start` uses, so two sandboxes started with the
/// same options serve the same demo customers with the same ids.
pub const SANDBOX_RNG_SEED: u64 = 0x5EED_F00D;

/// How [`Sandbox::start`] sets the emulators up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOptions {
    /// Demo customers (team members, for SCIM) to create in each vendor's
    /// emulator.
    pub seed: usize,
    /// Address to listen on; loopback unless you mean to share the sandbox.
    pub bind: IpAddr,
    /// Port for the Stripe emulator; 0 picks a free one.
    pub stripe_port: u16,
    /// Port for the Baremetrics emulator; 0 picks a free one.
    pub baremetrics_port: u16,
    /// Port for the Metronome emulator; 0 picks a free one.
    pub metronome_port: u16,
    /// Port for the GrowPanel emulator; 0 picks a free one.
    pub growpanel_port: u16,
    /// Port for the Stripe SCIM emulator; 0 picks a free one.
    pub stripe_scim_port: u16,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            seed: 25,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stripe_port: 0,
            baremetrics_port: 0,
            metronome_port: 0,
            growpanel_port: 0,
            stripe_scim_port: 0,
        }
    }
}

/// Every vendor emulator, each serving on its own port.
#[derive(Debug)]
#[must_use = "dropping a Sandbox stops its emulators"]
pub struct Sandbox {
    /// The Stripe Customers API emulator.
    pub stripe: StripeHandle,
    /// The Baremetrics emulator.
    pub baremetrics: BaremetricsHandle,
    /// The Metronome emulator.
    pub metronome: MetronomeHandle,
    /// The GrowPanel emulator.
    pub growpanel: GrowPanelHandle,
    /// The Stripe SCIM (Dashboard team members) emulator.
    pub stripe_scim: StripeScimHandle,
}

/// Declares the handle of a running emulator: its state and its server.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident, $emulator:ty, $stands_for:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            /// The emulator's state, for inspection and test setup.
            pub emulator: $emulator,
            /// The HTTP server serving the emulator.
            pub server: RunningServer,
        }

        impl $name {
            #[doc = concat!("Base URL to use in place of `", $stands_for, "`.")]
            pub fn base_url(&self) -> String {
                self.server.base_url()
            }
        }
    };
}

handle!(
    /// A running Stripe emulator: its state and the server answering for it.
    StripeHandle,
    StripeEmulator,
    "https://api.stripe.com"
);
handle!(
    /// A running Baremetrics emulator; connectors append `/v1/...`.
    BaremetricsHandle,
    BaremetricsEmulator,
    "https://api.baremetrics.com"
);
handle!(
    /// A running Metronome emulator.
    MetronomeHandle,
    MetronomeEmulator,
    "https://api.metronome.com"
);
handle!(
    /// A running GrowPanel emulator.
    GrowPanelHandle,
    GrowPanelEmulator,
    "https://api.growpanel.io"
);
handle!(
    /// A running Stripe SCIM emulator; connectors append `/scim/v2/...`.
    StripeScimHandle,
    StripeScimEmulator,
    "https://dashboard.stripe.com"
);

impl MetronomeHandle {
    /// Base URL to use in place of `https://api.metronome.com/v1`: the
    /// vendor's base URL includes the version.
    pub fn api_base_url(&self) -> String {
        format!("{}/v1", self.server.base_url())
    }
}

/// Where to reach one vendor emulator and which credential it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Vendor name as connectors spell it (`"stripe"`, `"baremetrics"`,
    /// `"metronome"`, `"growpanel"`, `"stripe-scim"`).
    pub vendor: &'static str,
    /// Base URL standing in for the vendor's production one.
    pub base_url: String,
    /// An API key (for SCIM, the bearer token) the emulator accepts.
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
        let at = |port| SocketAddr::new(options.bind, port);
        let stripe = StripeEmulator::new(StripeConfig {
            api_keys: vec![stripe::SANDBOX_API_KEY.to_owned()],
            seed: options.seed,
            rng_seed: SANDBOX_RNG_SEED,
            ..StripeConfig::default()
        });
        let stripe_server = server::serve(stripe.router(), at(options.stripe_port)).await?;
        let baremetrics = BaremetricsEmulator::new(BaremetricsConfig {
            seed: options.seed,
            rng_seed: SANDBOX_RNG_SEED,
            ..BaremetricsConfig::default()
        });
        let baremetrics_server =
            server::serve(baremetrics.router(), at(options.baremetrics_port)).await?;
        let metronome = MetronomeEmulator::new(MetronomeConfig {
            seed: options.seed,
            rng_seed: SANDBOX_RNG_SEED,
            ..MetronomeConfig::default()
        });
        let metronome_server =
            server::serve(metronome.router(), at(options.metronome_port)).await?;
        let growpanel = GrowPanelEmulator::new(GrowPanelConfig {
            seed: options.seed,
            rng_seed: SANDBOX_RNG_SEED,
            ..GrowPanelConfig::default()
        });
        let growpanel_server =
            server::serve(growpanel.router(), at(options.growpanel_port)).await?;
        let stripe_scim = StripeScimEmulator::new(StripeScimConfig {
            seed: options.seed,
            rng_seed: SANDBOX_RNG_SEED,
            ..StripeScimConfig::default()
        });
        let stripe_scim_server =
            server::serve(stripe_scim.router(), at(options.stripe_scim_port)).await?;
        Ok(Sandbox {
            stripe: StripeHandle { emulator: stripe, server: stripe_server },
            baremetrics: BaremetricsHandle { emulator: baremetrics, server: baremetrics_server },
            metronome: MetronomeHandle { emulator: metronome, server: metronome_server },
            growpanel: GrowPanelHandle { emulator: growpanel, server: growpanel_server },
            stripe_scim: StripeScimHandle { emulator: stripe_scim, server: stripe_scim_server },
        })
    }

    /// Where each emulator listens and the key it accepts, Stripe first.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint {
                vendor: "stripe",
                base_url: self.stripe.base_url(),
                api_key: stripe::SANDBOX_API_KEY.to_owned(),
            },
            Endpoint {
                vendor: "baremetrics",
                base_url: self.baremetrics.base_url(),
                api_key: baremetrics::SANDBOX_API_KEY.to_owned(),
            },
            Endpoint {
                vendor: "metronome",
                base_url: self.metronome.api_base_url(),
                api_key: metronome::SANDBOX_API_KEY.to_owned(),
            },
            Endpoint {
                vendor: "growpanel",
                base_url: self.growpanel.base_url(),
                api_key: growpanel::SANDBOX_API_KEY.to_owned(),
            },
            Endpoint {
                vendor: "stripe-scim",
                base_url: self.stripe_scim.base_url(),
                api_key: stripe_scim::SANDBOX_SCIM_TOKEN.to_owned(),
            },
        ]
    }

    /// Stops every emulator, letting requests in flight finish.
    pub async fn shutdown(self) {
        tokio::join!(
            self.stripe.server.shutdown(),
            self.baremetrics.server.shutdown(),
            self.metronome.server.shutdown(),
            self.growpanel.server.shutdown(),
            self.stripe_scim.server.shutdown(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sandbox_serves_seeded_stripe_customers_at_its_endpoint() {
        let sandbox = Sandbox::start(SandboxOptions { seed: 3, ..SandboxOptions::default() })
            .await
            .expect("sandbox starts");
        let endpoints = sandbox.endpoints();
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
        let options = SandboxOptions { seed: 5, ..SandboxOptions::default() };
        let first = Sandbox::start(options.clone()).await.expect("first starts");
        let second = Sandbox::start(options).await.expect("second starts");
        assert_eq!(first.stripe.emulator.customers(), second.stripe.emulator.customers());
        assert_eq!(first.metronome.emulator.customers(), second.metronome.emulator.customers());
        assert_eq!(first.growpanel.emulator.customers(), second.growpanel.emulator.customers());
        assert_eq!(first.stripe_scim.emulator.users(), second.stripe_scim.emulator.users());
        assert_eq!(
            first.baremetrics.emulator.customers(baremetrics::NATIVE_SOURCE_ID),
            second.baremetrics.emulator.customers(baremetrics::NATIVE_SOURCE_ID)
        );
        first.shutdown().await;
        second.shutdown().await;
    }

    #[tokio::test]
    async fn sandbox_endpoints_name_every_vendor_with_its_base_url_and_key() {
        let sandbox = Sandbox::start(SandboxOptions { seed: 4, ..SandboxOptions::default() })
            .await
            .expect("sandbox starts");
        let endpoints = sandbox.endpoints();
        let vendors: Vec<&str> = endpoints.iter().map(|e| e.vendor).collect();
        assert_eq!(vendors, ["stripe", "baremetrics", "metronome", "growpanel", "stripe-scim"]);
        let find =
            |vendor: &str| endpoints.iter().find(|e| e.vendor == vendor).expect("listed").clone();
        assert_ne!(find("stripe").api_key, find("stripe-scim").api_key);
        assert!(find("metronome").base_url.ends_with("/v1"));

        let client = reqwest::Client::new();
        let status = |url: String, key: String| {
            let client = client.clone();
            async move {
                client
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .expect("request succeeds")
                    .status()
                    .as_u16()
            }
        };
        let baremetrics = find("baremetrics");
        assert_eq!(
            status(format!("{}/v1/sources", baremetrics.base_url), baremetrics.api_key).await,
            200
        );
        let metronome = find("metronome");
        assert_eq!(
            status(format!("{}/customers", metronome.base_url), metronome.api_key).await,
            200
        );
        let growpanel = find("growpanel");
        assert_eq!(
            status(
                format!(
                    "{}/data/customers?source={}",
                    growpanel.base_url,
                    growpanel::DEMO_DATA_SOURCE
                ),
                growpanel.api_key
            )
            .await,
            200
        );
        let scim = find("stripe-scim");
        assert_eq!(status(format!("{}/scim/v2/Users", scim.base_url), scim.api_key).await, 200);
        assert_eq!(sandbox.baremetrics.emulator.customer_count(), 4);
        assert_eq!(sandbox.metronome.emulator.customer_count(), 4);
        assert_eq!(sandbox.growpanel.emulator.customer_count(), 4);
        assert_eq!(sandbox.stripe_scim.emulator.user_count(), 4);
        sandbox.shutdown().await;
    }
}
