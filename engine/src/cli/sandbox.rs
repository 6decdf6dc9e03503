//! `weft sandbox`: the vendor emulators on loopback, until ctrl-c.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;

// No `///` here: clap would take it for the command's about, which the
// `Command::Sandbox` variant in main.rs gives.
#[derive(Debug, Args)]
pub(crate) struct SandboxArgs {
    /// Demo records per emulator.
    #[arg(long, default_value_t = 250)]
    seed: usize,
    /// Port of the Stripe emulator (0 picks a free one).
    #[arg(long, default_value_t = 12111)]
    stripe_port: u16,
}

/// `weft sandbox`.
pub(crate) async fn sandbox(args: SandboxArgs) -> Result<ExitCode> {
    let SandboxArgs { seed, stripe_port } = args;
    let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed,
        stripe_port,
        ..Default::default()
    })
    .await
    .context("failed to start the vendor emulators")?;
    outln!(
        "weft sandbox: vendor emulators on loopback ({seed} demo records each); ctrl-c stops them"
    )?;
    for endpoint in running.endpoints() {
        outln!("  {:<12} {:<28} key {}", endpoint.vendor, endpoint.base_url, endpoint.api_key)?;
    }
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await.context("failed to wait for ctrl-c")?;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
