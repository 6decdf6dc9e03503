//! The `weft` command line: the clap definitions of the commands, and the
//! dispatch from a parsed command line to the module under [`cli`] that
//! carries the command out.
//!
//! A new command gets a variant of [`Command`] whose arguments are a clap
//! `Args` struct in its own module `cli/NAME.rs`, beside its code, and one
//! line in [`dispatch`].

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use weft::executor::ExecError;
use weft::store::StoreError;
use weft::workflow::LoadError;

/// `println!` that returns the write's error instead of panicking, so that
/// `weft runs list | head` ends quietly when `head` closes the pipe (see
/// [`is_broken_pipe`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

mod cli;

use cli::Global;

/// weft runs customer-lifecycle workflows written in TOML, with vendor
/// connectors sandboxed as WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workflow once, now.
    Run(cli::run::RunArgs),
    /// Serve workflows: cron schedules, webhooks, a status API; resumes
    /// unfinished runs at start.
    Serve(cli::serve::ServeArgs),
    /// Check workflow files without running them.
    Validate(cli::validate::ValidateArgs),
    /// Work with connector plugins.
    Plugin {
        #[command(subcommand)]
        command: cli::plugin::PluginCommand,
    },
    /// Inspect the runs in the run store.
    Runs {
        #[command(subcommand)]
        command: cli::runs::RunsCommand,
    },
    /// Start the local vendor emulators and print their URLs and test keys.
    Sandbox(cli::sandbox::SandboxArgs),
    /// Manage the tokens that open a `weft serve` (its API and console).
    Tokens {
        #[command(subcommand)]
        command: cli::tokens::TokensCommand,
    },
    /// Inspect or repair a workflow's state across runs (`[state.NAME]`).
    State {
        #[command(subcommand)]
        command: cli::state::StateCommand,
    },
    /// Manage the run store itself (`weft store migrate`).
    Store {
        #[command(subcommand)]
        command: cli::store::StoreCommand,
    },
}

/// Exit codes: what kind of failure, for scripts.
mod exit {
    pub const RUN_FAILED: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const INTERNAL: u8 = 3;
    pub const INTERRUPTED: u8 = 4;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match cli::telemetry::init(&cli.global) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(exit::INVALID);
        }
    };
    let code = run(cli);
    // After the runtime is gone: the exporter's blocking client may not
    // be dropped inside it.
    telemetry.shutdown();
    code
}

/// The stack of the runtime's workers: what Linux gives a main thread.
const MAIN_STACK: usize = 8 << 20;

/// Runs the command on a new async runtime.
fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // The command runs on a worker (below): give the workers the stack
        // the main thread had, for whatever recursion parsing a hostile
        // workflow meets.
        .thread_stack_size(MAIN_STACK)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    // The command runs as a task on a worker thread, not on this one:
    // the HTTP connections' tasks run on the workers, and a response then
    // wakes the task that waits for it on the same thread instead of
    // waking this one through the kernel. On the 100k export that is a
    // quarter of weft's CPU time (BENCHMARKS.md).
    let outcome = runtime.block_on(async {
        match tokio::spawn(dispatch(cli)).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("the command's task stopped: {e}")),
        }
    });
    match outcome {
        Ok(code) => code,
        // The reader went away (`| head`): nothing is wrong, and nobody is
        // left to read a message.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // A workflow's diagnostics print rustc-style, `error:` first.
            let text = format!("{error:#}");
            if text.starts_with("error:") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            let code = match error.downcast_ref::<ExecError>() {
                Some(ExecError::Store(StoreError::UnknownRun(_))) => exit::INVALID,
                Some(ExecError::Store(_)) => exit::INTERNAL,
                Some(_) => exit::INVALID,
                None if error.downcast_ref::<LoadError>().is_some() => exit::INVALID,
                None if error.downcast_ref::<cli::plugin::PinMismatch>().is_some() => exit::INVALID,
                None if error.downcast_ref::<weft::emulators::EmulatorError>().is_some() => {
                    exit::INVALID
                }
                None if matches!(
                    error.downcast_ref::<StoreError>(),
                    Some(StoreError::UnknownRun(_))
                ) =>
                {
                    exit::INVALID
                }
                None => exit::INTERNAL,
            };
            ExitCode::from(code)
        }
    }
}

/// Whether `error` comes from writing to a pipe whose reader has closed.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Hands the parsed command to the module that carries it out.
async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let global = &cli.global;
    match cli.command {
        Command::Run(args) => cli::run::run(global, args).await,
        Command::Serve(args) => cli::serve::serve(global, args).await,
        Command::Validate(args) => cli::validate::validate(global, &args.files).await,
        Command::Plugin { command } => cli::plugin::plugin(global, command).await,
        Command::Runs { command } => cli::runs::runs(global, command).await,
        Command::Sandbox(args) => cli::sandbox::sandbox(args).await,
        Command::Tokens { command } => {
            cli::tokens::tokens(&cli::store_location(global)?, command).await
        }
        Command::State { command } => cli::state::state(global, command).await,
        Command::Store { command } => cli::store::store(global, command).await,
    }
}
