//! `weft store migrate`: brings the run store's schema up to this weft's.
//! A PostgreSQL store is migrated only by this command (every worker checks
//! the version when it opens the store and refuses one it does not know);
//! a sled store upgrades itself when opened, so for sled this opens it.
//!
//! `weft store copy --from sled:DIR --to postgres://…`: moves a sled
//! store's history into PostgreSQL (see [`weft::store::copy`]).

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use weft::store::StoreLocation;

use super::{Global, open_location, store_location};

/// `weft store …`.
#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Apply the schema migrations this weft knows to the store (--store).
    /// Safe to run from several machines at once, and again: a store
    /// already up to date is left as it is.
    Migrate,
    /// Copy a sled store's runs, tokens, remembered webhook deliveries and
    /// workflow states into a PostgreSQL store (migrated first). Runs the database has are
    /// left as they are, so it can be run again; unfinished runs are queued
    /// for the workers. Stop the `weft serve` on the sled store first.
    Copy {
        /// The sled store: sled:DIR.
        #[arg(long)]
        from: String,
        /// The PostgreSQL store: postgres://USER@HOST:PORT/DATABASE.
        #[arg(long)]
        to: String,
    },
}

/// Runs a `weft store` command.
pub(crate) async fn store(global: &Global, command: StoreCommand) -> Result<ExitCode> {
    match command {
        StoreCommand::Copy { from, to } => {
            let from = StoreLocation::parse(&from)?;
            let to = StoreLocation::parse(&to)?;
            let (StoreLocation::Sled(_), StoreLocation::Postgres(_)) = (&from, &to) else {
                anyhow::bail!(
                    "a copy goes from a sled store to a PostgreSQL one: --from sled:DIR --to postgres://…"
                );
            };
            let source = open_location(&from).await?;
            let target = open_location(&to).await?;
            let report = source
                .copy_into(&target)
                .await
                .with_context(|| format!("failed to copy the run store at {from} into {to}"))?;
            eprintln!("copied {from} into {to}: {report}");
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Migrate => {
            let location = store_location(global)?;
            match &location {
                StoreLocation::Postgres(url) => {
                    let (from, to) =
                        weft::store::postgres::migrate(url).await.with_context(|| {
                            format!("failed to migrate the run store at {location}")
                        })?;
                    if from == to {
                        eprintln!("run store at {location}: schema version {to}, up to date");
                    } else {
                        eprintln!(
                            "run store at {location}: schema migrated from version {from} to {to}"
                        );
                    }
                }
                StoreLocation::Sled(_) => {
                    open_location(&location).await?;
                    eprintln!(
                        "run store at {location}: sled, schema version {} (a sled store upgrades itself when opened)",
                        weft::store::SCHEMA_VERSION
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
