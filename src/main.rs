//! The `claimsmith` command line (README, "Command line"). Parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "claimsmith", version, about = "Token-enrichment reverse proxy")]
struct Cli {
    /// Log format: text or json (also CLAIMSMITH_LOG_FORMAT).
    #[arg(long, global = true, env = "CLAIMSMITH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy and admin listeners until SIGTERM/SIGINT.
    Run {
        #[arg(long, env = "CLAIMSMITH_CONFIG")]
        config: PathBuf,
        /// Reload on SIGHUP only; by default a change to the config file or a file it
        /// names (keys, secrets, certificates) reloads too.
        #[arg(long, env = "CLAIMSMITH_NO_WATCH")]
        no_watch: bool,
    },
    /// Load and validate a config; print a summary or every error.
    Check {
        #[arg(long, env = "CLAIMSMITH_CONFIG")]
        config: PathBuf,
    },
    /// Write a new PKCS#8 PEM signing key (--alg), or a shared-cache key (--shared).
    Keygen {
        #[arg(long, value_parser = ["EdDSA", "ES256", "RS256"], required_unless_present = "shared", conflicts_with = "shared")]
        alg: Option<String>,
        /// A key for `[shared].key_files`: 32 random bytes, base64 on one line.
        #[arg(long)]
        shared: bool,
        /// Write here (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A complete local loop: issuer, proxy, metadata and backend on loopback.
    Demo {
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_addr: std::net::SocketAddr,
    },
}

/// Where tracing's lines go (`claimsmith::log_writer`); messages printed straight to
/// standard error wait for it first, so they come after the lines that led to them.
static LOG: std::sync::OnceLock<claimsmith::log_writer::LogWriter> = std::sync::OnceLock::new();

/// Prints `msg` to standard error after the log lines before it.
fn say(msg: std::fmt::Arguments<'_>) {
    if let Some(log) = LOG.get() {
        log.flush(std::time::Duration::from_secs(1));
    }
    eprintln!("{msg}");
}

fn main() -> ExitCode {
    // A panic must not print a backtrace at a user; say it plainly and exit 1.
    std::panic::set_hook(Box::new(|info| {
        say(format_args!("claimsmith: internal error: {info}"));
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            };
        }
    };
    let flusher = init_logging(cli.log_format, matches!(cli.command, Command::Demo { .. }));
    let code = dispatch(cli.command);
    if let Some(f) = flusher {
        f.finish();
    }
    code
}

fn dispatch(command: Command) -> ExitCode {
    claimsmith::install_crypto_provider();
    match command {
        Command::Check { config } => match claimsmith::load_config(&config).and_then(check_build) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("claimsmith: invalid config {}:", config.display());
                for e in &errs.0 {
                    eprintln!("  {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Run { config, no_watch } => {
            let cfg = match claimsmith::load_config(&config) {
                Ok(c) => c,
                Err(errs) => {
                    eprintln!("claimsmith: invalid config {}:", config.display());
                    for e in &errs.0 {
                        eprintln!("  {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            let workers = worker_threads();
            // The calling runtime keeps the admin listener, signals and background
            // work; the proxy's workers have runtimes of their own (`server::start_with`).
            let control = match workers {
                1 => runtime_builder(),
                _ => tokio::runtime::Builder::new_current_thread(),
            };
            runtime_with(control, |rt| {
                rt.block_on(claimsmith::server::run(cfg, !no_watch, workers)).map_err(|e| {
                    let code = if matches!(
                        e,
                        claimsmith::server::StartError::Build(_) | claimsmith::server::StartError::Tls(_)
                    ) {
                        2
                    } else {
                        1
                    };
                    (code, e.to_string())
                })
            })
        }
        Command::Keygen { alg, shared, out } => keygen(alg.as_deref(), shared, out),
        Command::Demo { addr, admin_addr } => {
            runtime_then(|rt| rt.block_on(claimsmith::demo::run(addr, admin_addr)).map_err(|e| (1, e.to_string())))
        }
    }
}

/// `check` also builds the runtime state, so unreadable sources and bad CA files show.
fn check_build(cfg: claimsmith::Config) -> Result<String, claimsmith::config::ConfigErrors> {
    let summary = cfg.summary();
    match claimsmith::app::App::build(cfg) {
        Ok(_) => Ok(summary),
        Err(claimsmith::app::BuildError::Invalid { key, reason }) => {
            Err(claimsmith::config::ConfigErrors(vec![claimsmith::config::ConfigError { key, reason }]))
        }
    }
}

/// How many threads serve requests: `TOKIO_WORKER_THREADS` when set to a number
/// above zero, else the CPUs this process may use (its affinity and cgroup quota, as
/// `available_parallelism` reads them).
fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// With one worker thread (`TOKIO_WORKER_THREADS=1`, or a single CPU, as a sidecar
/// often gets) one thread does all the work either way; tokio's single-threaded
/// scheduler does it without the work-stealing machinery, for about a tenth less CPU
/// per request (docs/performance.md).
fn runtime_builder() -> tokio::runtime::Builder {
    if worker_threads() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

fn runtime_then(f: impl FnOnce(&tokio::runtime::Runtime) -> Result<(), (u8, String)>) -> ExitCode {
    runtime_with(runtime_builder(), f)
}

fn runtime_with(
    mut builder: tokio::runtime::Builder,
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<(), (u8, String)>,
) -> ExitCode {
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say(format_args!("claimsmith: cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match f(&rt) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            say(format_args!("claimsmith: {msg}"));
            ExitCode::from(code)
        }
    }
}

fn keygen(alg: Option<&str>, shared: bool, out: Option<PathBuf>) -> ExitCode {
    let (pem, what) = if shared {
        (claimsmith::metadata::shared::generate_key(), "shared-cache".to_string())
    } else {
        let alg = match alg {
            Some("EdDSA") => jsonwebtoken::Algorithm::EdDSA,
            Some("ES256") => jsonwebtoken::Algorithm::ES256,
            _ => jsonwebtoken::Algorithm::RS256,
        };
        match claimsmith::keys::SigningKey::generate(alg) {
            Ok((_, pem)) => (pem, format!("{alg:?}")),
            Err(e) => {
                eprintln!("claimsmith: {e}");
                return ExitCode::from(1);
            }
        }
    };
    match out {
        None => {
            print!("{pem}");
            ExitCode::SUCCESS
        }
        Some(path) => match write_private(&path, pem.as_bytes()) {
            Ok(()) => {
                eprintln!("wrote {what} key to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("claimsmith: cannot write {}: {e}", path.display());
                ExitCode::from(1)
            }
        },
    }
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

/// Logs to standard error through `claimsmith::log_writer` (a thread of its own
/// writes them, so a request never waits on the log); returns what must be finished
/// before exit, `None` if that thread could not start (then lines go straight out).
fn init_logging(format: LogFormat, demo: bool) -> Option<claimsmith::log_writer::Flusher> {
    use tracing_subscriber::EnvFilter;
    let default = if demo { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only for a person at a terminal: in a file, a pipe or a log
    // collector they are noise (and break JSON-in-text parsers).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let (writer, flusher) = match claimsmith::log_writer::start(Box::new(std::io::stderr())) {
        Ok((w, f)) => (Some(w), Some(f)),
        Err(e) => {
            eprintln!("claimsmith: cannot start the log writer ({e}); logging directly");
            (None, None)
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match (writer, format) {
        (Some(w), LogFormat::Json) => {
            let _ = LOG.set(w.clone());
            claimsmith::log_writer::write_json_lines_to(w.clone());
            builder.with_writer(w).json().flatten_event(true).init()
        }
        (Some(w), LogFormat::Text) => {
            let _ = LOG.set(w.clone());
            builder.with_writer(w).init()
        }
        (None, LogFormat::Json) => builder.with_writer(std::io::stderr).json().flatten_event(true).init(),
        (None, LogFormat::Text) => builder.with_writer(std::io::stderr).init(),
    }
    flusher
}
