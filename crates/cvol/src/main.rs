//! The `cvol` binary: parses the command line and runs one command.

mod agent;
mod cli;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // A command that prints dies quietly when its pipe reader goes away (`cvol vm list |
    // head`), as Unix tools do. A server keeps Rust's default (ignored): a peer that
    // resets a connection mid-write (an S3 server going away) must be an error on that
    // connection, not the death of every VM disk the daemon serves.
    if !cli.command.is_server() {
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging(cli.verbose);
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cvol: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    // nfs3_server logs every error status it answers (a LOOKUP of a missing name is
    // one) as an error: only worth seeing when debugging.
    let default = match verbose {
        0 => "warn,nfs3_server=off",
        1 => "info,nfs3_server=off",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
