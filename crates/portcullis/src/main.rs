//! `portcullis`: the gateway binary. A thin shell over the library crates:
//! it parses the command line, loads config, wires listeners, and prints.
//! `anyhow` lives here and nowhere else.

mod admin;
mod cli;
mod commands;
mod listen;
mod logging;
mod tls;

use std::process::ExitCode;

use clap::Parser;

/// Every relayed statement allocates a few small, short-lived buffers on
/// whichever runtime worker handles it, and glibc's allocator showed up at
/// about a tenth of the gateway's CPU under load; mimalloc's per-thread
/// free lists make those allocations cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_json);
    let outcome = match cli.command {
        // The gateway sizes its runtime from its config.
        cli::Command::Serve { config } => commands::serve::main(&config),
        command => runtime(None).and_then(|rt| rt.block_on(commands::dispatch(command))),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime with `workers` threads (one per CPU when `None`).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        // At most 15 characters: what `top -H` and /proc show of a thread's name.
        .thread_name("gateway-worker")
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}
