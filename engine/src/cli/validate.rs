//! `weft validate`: check workflow files, against their plugins too,
//! without running them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use weft::executor::Executor;
use weft::store::RunStore;
use weft::workflow::Workflow;

use super::{Global, wasm_runtime};
use crate::exit;

// No `///` here: clap would take it for the command's about, which the
// `Command::Validate` variant in main.rs gives.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// Workflow files.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
}

/// `weft validate`.
pub(crate) async fn validate(global: &Global, files: &[PathBuf]) -> Result<ExitCode> {
    let runtime = wasm_runtime(global)?;
    let scratch = tempfile::tempdir()?;
    let executor = Executor::new(runtime, RunStore::open(scratch.path())?);
    let mut failed = 0;
    for file in files {
        let outcome = match Workflow::load(file) {
            Ok(workflow) => {
                executor.check(&workflow).await.map(|_| ()).map_err(anyhow::Error::from)
            }
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(()) => outln!("ok: {}", file.display())?,
            Err(e) => {
                failed += 1;
                eprintln!("{e:#}\n");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} workflow(s) invalid", files.len());
        return Ok(ExitCode::from(exit::INVALID));
    }
    Ok(ExitCode::SUCCESS)
}
