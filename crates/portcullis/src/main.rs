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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
