//! The `herald` command line (SPEC §2).

mod config;
mod push;
mod wakeup_proxy;
mod webpush_crypto;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Herald: a thread-per-core push notification server (SimplePush and Web Push, with UDP wakeup)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(config::ServeArgs),
    /// Send one test notification to a push endpoint and print the answer.
    Push(push::PushArgs),
    /// Relay wakeups inside an operator network: HTTP `POST /wakeup` in, UDP datagram out.
    WakeupProxy(wakeup_proxy::ProxyArgs),
    /// Inspect the write-ahead log.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Subcommand, Debug)]
enum WalCommand {
    /// Print every record, segment by segment, with checksums verified.
    Inspect {
        /// The data dir (or one shard's directory inside it).
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(config::ServeArgs::default())) {
        Command::Serve(args) => config::resolve(args).and_then(|(config, data_dir_lock)| {
            if config.fsync == herald_net::FsyncMode::Never {
                tracing::warn!("--fsync never: acknowledged notifications can be lost in a crash (benchmarks only)");
            }
            herald_net::serve(config, data_dir_lock)
        }),
        Command::Push(args) => push::run(args),
        Command::WakeupProxy(args) => wakeup_proxy::run(args),
        Command::Wal { command: WalCommand::Inspect { dir } } => inspect(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("herald: {message}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(dir: &std::path::Path) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    herald_store::inspect(dir, &mut out)
        .map(|_| ())
        .map_err(|error| format!("wal inspect {}: {error}", dir.display()))
}
