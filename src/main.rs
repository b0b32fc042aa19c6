//! The `ccgate` command line. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ccgate::config::{self, Config, LogFormat};
use ccgate::sim::{Sim, SimConfig};
use ccgate::{app, demo, devkeys, tls};

#[derive(Parser)]
#[command(name = "ccgate", version, about = "Authenticating sidecar for the Huawei CEC CC-Gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (default: $CCGATE_CONFIG, else config/ccgate.toml).
        #[arg(long, env = "CCGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the config and print it (secrets live in the files it names, never here).
    CheckConfig {
        #[arg(long, env = "CCGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start the simulator and the proxy on loopback with throw-away keys, print what to try.
    Demo {
        /// Print one JSON line {proxy_url, admin_url, ca_file, token, agent_id} first.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// Start this many proxy replicas sharing agents through --redis (the first on
        /// --listen, the others on free ports; the JSON line lists them all).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// The shared store for the replicas, e.g. redis://127.0.0.1:6379/0.
        #[arg(long)]
        redis: Option<String>,
    },
    /// Run the CC-Gateway simulator alone.
    Sim {
        /// Simulator config (default: config/sim.toml if present). Keys can be overridden
        /// with CCGATE_SIM__KEY=value.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Environment prefix for the simulator's config overrides.
const SIM_ENV_PREFIX: &str = "CCGATE_SIM__";
const DEFAULT_SIM_CONFIG: &str = "config/sim.toml";

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sizes its runtime from the config, so the config is read first.
    let (command, threads) = match cli.command {
        Command::Serve { config } => match load_config(config) {
            Ok(c) => {
                let threads = c.server.worker_threads;
                (Command::Serve { config: None }, Some((c, threads)))
            }
            Err(e) => {
                eprintln!("ccgate: {e}");
                return ExitCode::FAILURE;
            }
        },
        other => (other, None),
    };
    let rt = match runtime(threads.as_ref().map_or(0, |t| t.1)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match (command, threads) {
        (Command::Serve { .. }, Some((config, _))) => rt.block_on(serve(config)),
        (command, _) => rt.block_on(run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, String> {
    let explicit = path.is_some();
    let path = path.unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    Config::load(&path, explicit).map_err(|e| e.to_string())
}

async fn run(cmd: Command) -> Result<(), String> {
    match cmd {
        Command::Serve { config } => serve(load_config(config)?).await,
        Command::CheckConfig { config } => {
            let config = load_config(config)?;
            // Load keys and credentials too: a config that parses but names unreadable files
            // is not a valid config.
            ccgate::edge::auth::Authenticator::from_config(&config.auth)?;
            if let Some(p) = &config.credentials.file {
                ccgate::session::CredentialStore::load(p)?;
            }
            ccgate::ops::limits::Limits::new(&config.rate_limits, ccgate::metrics::Metrics::new())?;
            if config.store.backend == config::StoreBackend::Redis {
                // The URL and CA file, as `serve` reads them (Redis itself may be down now).
                ccgate::shared::Shared::new(&config.store, ccgate::metrics::Metrics::new())?;
            }
            print!("{}", config.to_masked_toml());
            eprintln!("config OK");
            Ok(())
        }
        Command::Demo { json, listen, admin_listen, replicas, redis } => {
            init_logging(LogFormat::Human, "warn,ccgate=info");
            demo::run(demo::DemoOptions { listen, admin_listen, json, replicas, redis }).await
        }
        Command::Sim { config } => {
            init_logging(LogFormat::Human, "info");
            let explicit = config.is_some();
            let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_SIM_CONFIG));
            let cfg: SimConfig = config::load_with_env(&path, explicit, SIM_ENV_PREFIX).map_err(|e| e.to_string())?;
            run_sim(cfg).await
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    init_logging(config.log.format, &config.log.level);
    let running = app::start(&config).await?;
    tracing::info!(proxy = %running.proxy_addr, admin = %running.admin_addr, "ccgate serving");
    demo::wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn run_sim(cfg: SimConfig) -> Result<(), String> {
    let (server_tls, ca_note, tmp) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (tls::server_config_from_files(c, k)?, None, None),
        _ => {
            let pki = devkeys::dev_pki(&["localhost", "127.0.0.1"])?;
            let dir = std::env::temp_dir().join(format!("ccgate-sim-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, &pki.ca_pem).map_err(|e| e.to_string())?;
            let certs = rustls_pki_types::pem::PemObject::pem_slice_iter(pki.server_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = rustls_pki_types::pem::PemObject::from_pem_slice(pki.server_key_pem.as_bytes())
                .map_err(|e| e.to_string())?;
            (tls::server_config(certs, key)?, Some(ca), Some(dir))
        }
    };
    if cfg.agents.is_empty() && cfg.default_password.is_none() {
        return Err("the simulator has no agents: set [agents] \"153\" = \"password\" or default_password".into());
    }
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.map_err(|e| format!("listen {}: {e}", cfg.listen))?;
    let shutdown = ccgate::server::Shutdown::new();
    let sim = Sim::new(cfg);
    let served = sim.serve(listener, server_tls, shutdown.subscribe()).map_err(|e| e.to_string())?;
    println!("CC-Gateway simulator on https://{}", served.addr);
    if let Some(ca) = &ca_note {
        println!("throw-away CA certificate: {}", ca.display());
    }
    demo::wait_for_signal().await;
    shutdown.trigger();
    let _ = served.task.await;
    if let Some(dir) = tmp {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}
