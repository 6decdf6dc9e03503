//! What checking a request against the vendor's description costs the
//! Stripe emulator, next to what serving it costs: in process (the router
//! called directly, no sockets), on an account of 100,000 customers, three
//! kinds of request interleaved, medians of many.
//!
//! - a list page, `GET /v1/customers?limit=100&starting_after=…`: checked,
//!   then served (100 customers rendered);
//! - the same with an unknown parameter: checked in full and refused
//!   before the handler, so it costs the check plus Stripe's error body;
//! - a path with no operation: routed to the 404, nothing checked.
//!
//! The refused request minus the 404 bounds what the check adds to a list
//! page from above (a refusal walks the validator's slower error path).
//!
//! `cargo bench -p weft-sandbox --bench request_check`;
//! `WEFT_BENCH_CUSTOMERS` and `WEFT_BENCH_ROUNDS` scale it.

use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, header};
use tower::ServiceExt as _;
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let customers = env_number("WEFT_BENCH_CUSTOMERS", 100_000);
    let rounds = env_number("WEFT_BENCH_ROUNDS", 30);
    let per_round = 100;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let emulator =
            StripeEmulator::new(StripeConfig { seed: customers, ..StripeConfig::default() });
        let router = emulator.router();
        // A cursor from the API itself: rendering every customer to find
        // one would churn the heap the measured requests then run on.
        let first = Request::get("/v1/customers?limit=100")
            .header(header::AUTHORIZATION, format!("Bearer {SANDBOX_API_KEY}"))
            .body(Body::empty())?;
        let page =
            axum::body::to_bytes(router.clone().oneshot(first).await?.into_body(), usize::MAX)
                .await?;
        let page: serde_json::Value = serde_json::from_slice(&page)?;
        let middle = page["data"][99]["id"].as_str().ok_or("a cursor")?.to_owned();
        let kinds = [
            (
                "list page of 100, checked and served",
                format!("/v1/customers?limit=100&starting_after={middle}"),
                200,
            ),
            (
                "the same with an unknown parameter, refused by the check",
                format!("/v1/customers?limit=100&starting_after={middle}&colour=red"),
                400,
            ),
            ("a path without an operation (404, not checked)", "/v1/nowhere".to_owned(), 404),
        ];
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        for round in 0..=rounds {
            for offset in 0..kinds.len() {
                let kind = (round + offset) % kinds.len();
                let (_, path, status) = &kinds[kind];
                for _ in 0..per_round {
                    let request = Request::get(path.as_str())
                        .header(header::AUTHORIZATION, format!("Bearer {SANDBOX_API_KEY}"))
                        .body(Body::empty())?;
                    let started = Instant::now();
                    let response = router.clone().oneshot(request).await?;
                    let answered = response.status().as_u16();
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
                    let micros = started.elapsed().as_secs_f64() * 1e6;
                    if answered != *status {
                        return Err(format!(
                            "{path}: {answered}, expected {status}: {}",
                            String::from_utf8_lossy(&body)
                        )
                        .into());
                    }
                    // Round 0 warms up.
                    if round > 0 {
                        samples[kind].push(micros);
                    }
                }
            }
        }
        let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        println!(
            "Stripe emulator, {customers} customers, {} requests of each kind, medians:",
            rounds * per_round
        );
        for ((what, _, _), median) in kinds.iter().zip(&medians) {
            println!("  {median:>9.1} µs  {what}");
        }
        let check = medians[1] - medians[2];
        println!(
            "  the check adds at most {check:.1} µs to a {:.1} µs list page ({:.1}%)",
            medians[0],
            100.0 * check / medians[0]
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
