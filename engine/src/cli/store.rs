//! `weft store migrate`: brings the run store's schema up to this weft's.
//! A PostgreSQL store is migrated only by this command (every worker checks
//! the version when it opens the store and refuses one it does not know);
//! a sled store upgrades itself when opened, so for sled this opens it.

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
}

/// Runs a `weft store` command.
pub(crate) async fn store(global: &Global, command: StoreCommand) -> Result<ExitCode> {
    match command {
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
