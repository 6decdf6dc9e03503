//! `weft tokens`: the tokens that open a `weft serve`, kept in its run
//! store (the SHA-256 of each secret, never the secret). The store is
//! opened directly, so these commands work while no server holds it; a
//! running server's admin manages tokens through its API or console.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use weft::serve::auth;
use weft::store::{Role, RunStore, StoreError, StoreLocation};

/// `weft tokens …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token and print it once (the store keeps only its hash).
    Create {
        /// The name actions taken with the token are recorded under.
        name: String,
        /// viewer (reads), operator (also starts, resumes and cancels
        /// runs) or admin (also manages tokens).
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name or id: it and its console sessions stop
    /// working at once.
    Revoke {
        /// The token's name or id.
        name: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not a role: viewer, operator or admin"))
}

async fn open(location: &StoreLocation) -> Result<RunStore> {
    let StoreLocation::Sled(dir) = location else {
        return super::open_location(location).await;
    };
    match RunStore::open(dir) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { .. }) => anyhow::bail!(
            "the run store at {} is held by a running weft serve; manage tokens through it: \
             POST /api/tokens {{\"name\": …, \"role\": …}} with an admin token, or its console's Tokens page \
             (or stop it and run this again)",
            dir.display()
        ),
        Err(e) => {
            Err(e).with_context(|| format!("failed to open the run store at {}", dir.display()))
        }
    }
}

/// Runs a `weft tokens` command against the store at `location`.
pub(crate) async fn tokens(location: &StoreLocation, command: TokensCommand) -> Result<ExitCode> {
    let store = open(location).await?;
    let mut out = std::io::stdout();
    use std::io::Write as _;
    match command {
        TokensCommand::Create { name, role } => {
            let issued = auth::issue(&name, role, Some("cli".into()));
            store.create_token(&issued.record).await?;
            writeln!(out, "{}", issued.token.expose())?;
            eprintln!(
                "token {name:?} ({}) created; copy it now, it is not shown again. \
                 Use it as `Authorization: Bearer <token>` or sign in to the console with it.",
                role.as_str()
            );
        }
        TokensCommand::List { json } => {
            let tokens = store.tokens().await?;
            if json {
                let rows: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "id": t.id, "name": t.name, "role": t.role, "created_ms": t.created_ms,
                            "created_by": t.created_by, "revoked_ms": t.revoked_ms,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else if tokens.is_empty() {
                writeln!(out, "no tokens in {location}")?;
            } else {
                writeln!(out, "{:<24} {:<9} {:<17} {:<8}", "name", "role", "id", "state")?;
                for t in &tokens {
                    let state = if t.is_active() { "active" } else { "revoked" };
                    writeln!(
                        out,
                        "{:<24} {:<9} {:<17} {:<8}",
                        t.name,
                        t.role.as_str(),
                        t.id,
                        state
                    )?;
                }
            }
        }
        TokensCommand::Revoke { name } => {
            let token = store.revoke_token(&name).await?;
            writeln!(out, "token {:?} ({}) revoked", token.name, token.id)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
