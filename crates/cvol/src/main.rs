//! The `cvol` binary: parses the command line and runs one command.

mod agent;
mod cli;
mod commands;
mod image;
mod libvirt;
mod metrics;
mod output;
mod progress;
mod tls;

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
    // one) as an error: only worth seeing when debugging. rustls warns of every client
    // that sends an IP address as its TLS server name (libnbd does): harmless, ignored.
    let default = match verbose {
        0 => "warn,nfs3_server=off,rustls=error",
        1 => "info,nfs3_server=off,rustls=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(filter)
        .with(QuietDroppedReplies)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
}

/// Drops fuser's error for an answer the kernel no longer wanted (ENOENT): fuser answers
/// the kernel's INTERRUPT of a request with ENOSYS, and when the request itself was
/// answered first (a caller got a signal while its request was being served, as QEMU's
/// threads do), the kernel refuses that second answer. Nothing is lost.
struct QuietDroppedReplies;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietDroppedReplies {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // fuser logs through the `log` crate: its target arrives as a field.
        #[derive(Default)]
        struct Fields {
            target: String,
            message: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "log.target" {
                    self.target = value.to_string();
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let fuser_reply =
            [event.metadata().target(), fields.target.as_str()].contains(&"fuser::reply");
        !(fuser_reply && fields.message.contains("No such file or directory"))
    }
}
