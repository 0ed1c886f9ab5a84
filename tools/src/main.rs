//! The `herald` command line (SPEC §2).

mod config;
mod push;
mod wakeup_proxy;
mod webpush_crypto;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc rather than glibc's malloc: each notification allocates dozens
/// of small buffers on one shard and frees some on another, and glibc's
/// allocator took about a fifth of the server's CPU at peak
/// (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `--version` prints: the release and the commit it was built from
/// (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HERALD_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version = VERSION,
    about = "Herald: a thread-per-core push notification server (SimplePush and Web Push, with UDP wakeup)"
)]
struct Cli {
    /// Log lines on stderr as text (coloured only on a terminal) or as one
    /// JSON object each
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default when no command is given). Boxed: the
    /// largest of the commands' arguments by far.
    Serve(Box<config::ServeArgs>),
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
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command.unwrap_or(Command::Serve(Box::default())) {
        Command::Serve(args) => config::resolve(*args).and_then(|(config, data_dir_lock)| {
            if config.fsync == herald_net::FsyncMode::Never {
                tracing::warn!("--fsync never: acknowledged notifications can be lost in a crash (benchmarks only)");
            }
            herald_net::serve(config, data_dir_lock, build())
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

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`). Colour
/// codes only when stderr is a terminal: in a journal or a file they are
/// noise.
fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// The build, for the server's metrics and pages.
fn build() -> herald_net::Build {
    herald_net::Build {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("HERALD_COMMIT"),
    }
}

fn inspect(dir: &std::path::Path) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    herald_store::inspect(dir, &mut out)
        .map(|_| ())
        .map_err(|error| format!("wal inspect {}: {error}", dir.display()))
}
