//! The `ccgate` command line. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ccgate::config::{self, Config, LogFormat};
use ccgate::reload::ConfigSource;
use ccgate::sim::{Sim, SimConfig};
use ccgate::{app, demo, devkeys, tls};

/// jemalloc, not the system allocator: see Cargo.toml. Not on MSVC, where the binding does not
/// build (ccgate is not built for Windows; this keeps `cargo check` working there).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "ccgate", version = VERSION, about = "Authenticating sidecar for the Huawei CEC CC-Gateway")]
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
    /// Check the config as `serve` would (files, keys, certificates, CAs, the store URL) and
    /// print it (secrets live in the files it names, never here).
    CheckConfig {
        #[arg(long, env = "CCGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a running ccgate re-read its config, credentials, keys and certificate (as
    /// SIGHUP does), through its admin listener on loopback; prints each changed key's old →
    /// new value (secrets masked), or why the reload was refused (and exits 1).
    Reload {
        /// The config of the running instance, to find its admin listener.
        #[arg(long, env = "CCGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of reading it from the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Print the admin listener's JSON answer instead of lines for people.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the local ccgate is ready (`/readyz` on its admin listener answers 200), 1
    /// otherwise: an exec probe for images without curl (a distroless container's
    /// HEALTHCHECK, or a Kubernetes probe that cannot reach the pod's port).
    Healthcheck {
        /// The config of the running instance, to find its admin listener.
        #[arg(long, env = "CCGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of reading it from the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Ask `/livez` (the process answers) instead of `/readyz` (it can take traffic).
        #[arg(long)]
        live: bool,
    },
    /// Print every agent the local ccgate knows (with Redis: the cluster), or one agent with
    /// its recent events, from its admin listener (`GET /agents`): state, conference, who
    /// polls it, last event and error. Never a Guid, cookie or password.
    Agents {
        /// One agent: its work number, or `GATEWAY/NUMBER` when several gateways have it.
        id: Option<String>,
        /// The config of the running instance, to find its admin listener.
        #[arg(long, env = "CCGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of reading it from the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Print the JSON the admin listener answered instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the webhook endpoints of the local ccgate from its admin listener (`GET
    /// /webhooks`): state, pending events, last success and failure, next retry, given-up
    /// events. With `--replay NAME --since RFC3339`, send NAME's given-up events since then
    /// again (and enable it if a 410 disabled it).
    Webhooks {
        /// The config of the running instance, to find its admin listener.
        #[arg(long, env = "CCGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of reading it from the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Replay this endpoint's given-up events (`POST /webhooks/{name}/replay`).
        #[arg(long, requires = "since")]
        replay: Option<String>,
        /// With --replay: events taken at or after this RFC 3339 time, e.g. 2026-12-07T08:00:00Z.
        #[arg(long, requires = "replay")]
        since: Option<String>,
        /// Print the JSON the admin listener answered instead of a table.
        #[arg(long)]
        json: bool,
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
        /// Contact centres: this many simulated gateways behind the one proxy (`[[gateways]]`,
        /// chosen by the token's `tenant` claim), the same work numbers in each.
        #[arg(long, default_value_t = 1)]
        gateways: usize,
    },
    /// Run the CC-Gateway simulator alone.
    Sim {
        /// Simulator config (default: config/sim.toml if present). Keys can be overridden
        /// with CCGATE_SIM__KEY=value.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `ccgate --version`: the crate version and the commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CCGATE_COMMIT"), ")");

/// Environment prefix for the simulator's config overrides.
const SIM_ENV_PREFIX: &str = "CCGATE_SIM__";
const DEFAULT_SIM_CONFIG: &str = "config/sim.toml";

/// One precedence for the log filter: `RUST_LOG`, when set and valid, wins over `log.level`
/// (the Rust convention, for a one-off debug session without editing the config); a start-up
/// line says so, so an override left in a unit file or manifest is not silent. Colours only
/// when stderr is a terminal and `NO_COLOR` is unset: journald and `kubectl logs` get plain
/// text.
fn init_logging(format: LogFormat, level: &str) {
    // Only serve exports spans, and an exporter that fails to build is serve's error.
    let _ = init_logging_with(format, level, None);
}

/// As [`init_logging`], with the request spans also exported over OTLP/HTTP when `otlp`
/// names an endpoint (and a service name). The log filter applies to the log lines only:
/// the exported spans are ccgate's request spans whatever the level.
fn init_logging_with(
    format: LogFormat,
    level: &str,
    otlp: Option<(&str, &str)>,
) -> Result<Option<ccgate::otel::Exporter>, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let (filter, overridden) = match from_env.as_deref().map(tracing_subscriber::EnvFilter::try_new) {
        Some(Ok(f)) => (f, from_env.clone()),
        _ => (tracing_subscriber::EnvFilter::new(configured_filter(level)), None),
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let lines = match format {
        LogFormat::Human => lines.with_filter(filter).boxed(),
        LogFormat::Json => lines.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let (spans, exporter) = match otlp {
        Some((endpoint, service)) => {
            let (layer, exporter) = ccgate::otel::layer(endpoint, service)?;
            (Some(layer), Some(exporter))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(lines).with(spans).init();
    match (overridden, from_env) {
        (Some(v), _) => tracing::info!(rust_log = %v, log_level = level, "RUST_LOG is set and overrides log.level"),
        (None, Some(v)) => tracing::warn!(rust_log = %v, "RUST_LOG is not a valid filter; using log.level"),
        (None, None) => {}
    }
    if let Some((endpoint, _)) = otlp {
        // A collector URL may carry credentials in its user info.
        tracing::info!(endpoint = %config::mask_url_secrets(endpoint), "exporting request spans over OTLP/HTTP");
    }
    Ok(exporter)
}

/// rustls logs what a peer does wrong at warn, one line per connection: an IP address sent as
/// the server name (wrk and some SDKs do), the fatal alert it sends a port scanner. Any
/// client could fill the log with them, and ccgate logs its own failed handshakes at debug.
/// So `log.level` leaves rustls's lines below error out unless it names rustls itself (or is
/// `off` or `error`, which this would not quieten); `RUST_LOG` is taken as written.
const QUIET_RUSTLS: &str = "rustls=error";

/// The audit trail (README "Audit log") has a level of its own: on at INFO whatever
/// `log.level` says of the rest, unless `log.level` names `ccgate::audit` itself (e.g.
/// `ccgate::audit=off`) or is `off`.
const AUDIT_ON: &str = "ccgate::audit=info";

fn configured_filter(level: &str) -> String {
    let plain = level.trim();
    if plain.eq_ignore_ascii_case("off") {
        return level.to_owned();
    }
    let mut filter = plain.to_owned();
    if !(plain.contains("rustls") || plain.eq_ignore_ascii_case("error")) {
        filter = format!("{filter},{QUIET_RUSTLS}");
    }
    if !plain.contains("ccgate::audit") {
        filter = format!("{filter},{AUDIT_ON}");
    }
    filter
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
        Command::Serve { config } => match load_config(config.clone()) {
            Ok(c) => {
                let threads = c.server.worker_threads;
                (Command::Serve { config }, Some((c, threads)))
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
        (Command::Serve { config: path }, Some((config, _))) => match rt.block_on(serve(config, source_of(path))) {
            Ok(Stopped::Clean) => Ok(()),
            Ok(Stopped::AgentsLeftSignedIn(n)) => {
                eprintln!("ccgate: stopped; {n} agent(s) could not be signed out at the gateway (see the log)");
                return ExitCode::from(EXIT_AGENTS_LEFT_SIGNED_IN);
            }
            Ok(Stopped::Interrupted) => {
                eprintln!("ccgate: second stop signal: exited without finishing the shutdown");
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            Err(e) => Err(e),
        },
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

fn source_of(path: Option<PathBuf>) -> ConfigSource {
    let must_exist = path.is_some();
    ConfigSource { path: path.unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH)), must_exist }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, String> {
    let source = source_of(path);
    let missing = !source.path.exists();
    // A parse error quotes the offending line; the store URL may carry a password.
    Config::load(&source.path, source.must_exist).map_err(|e| {
        let e = config::mask_url_secrets(&e.to_string());
        if missing {
            // Without a file every setting is a default or a CCGATE__ variable, which is rarely
            // what was meant: say so before what the defaults lack.
            format!(
                "config file not found: {} (the default, looked for because neither --config nor CCGATE_CONFIG \
                 names one); with no file, {e}",
                std::path::absolute(&source.path).unwrap_or(source.path.clone()).display()
            )
        } else {
            e
        }
    })
}

async fn run(cmd: Command) -> Result<(), String> {
    match cmd {
        // `main` runs `serve` itself (its runtime is sized from the config); this arm keeps
        // the match whole.
        Command::Serve { config } => match serve(load_config(config.clone())?, source_of(config)).await? {
            Stopped::Clean => Ok(()),
            Stopped::AgentsLeftSignedIn(n) => Err(format!("stopped; {n} agent(s) left signed in at the gateway")),
            Stopped::Interrupted => Err("second stop signal: exited without finishing the shutdown".into()),
        },
        Command::CheckConfig { config } => check_config(load_config(config)?).await,
        Command::Reload { config, admin, json } => reload(config, admin, json).await,
        Command::Healthcheck { config, admin, live } => healthcheck(config, admin, live).await,
        Command::Agents { id, config, admin, json } => agents(id, config, admin, json).await,
        Command::Webhooks { config, admin, replay, since, json } => webhooks(config, admin, replay, since, json).await,
        Command::Demo { json, listen, admin_listen, replicas, redis, gateways } => {
            init_logging(LogFormat::Human, "warn,ccgate=info");
            demo::run(demo::DemoOptions { listen, admin_listen, json, replicas, redis, gateways }).await
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

/// Everything `serve` would load, loaded; then the config, masked.
async fn check_config(config: Config) -> Result<(), String> {
    init_logging(LogFormat::Human, "warn");
    for stray in config::stray_env_vars(std::env::vars()) {
        eprintln!("warning: {stray}");
    }
    let metrics = ccgate::metrics::Metrics::default();
    let shared = match config.store.backend {
        // The URL and CA file, as `serve` reads them (Redis itself may be down now).
        config::StoreBackend::Redis => {
            let store: std::sync::Arc<dyn ccgate::shared::SharedStore> =
                ccgate::shared::redis::RedisStore::new(&config.store, metrics.clone(), ccgate::shared::TOMBSTONE)?;
            Some(store)
        }
        config::StoreBackend::Memory => None,
    };
    // Keys (files read, remote ones fetched), credentials, the TLS certificate and key, limits.
    let gateways = config.gateway_list();
    let names: Vec<String> = gateways.iter().map(|g| g.name.clone()).collect();
    let live = ccgate::reload::Live::build(&config, &names, &metrics, shared.as_ref(), None, None)?;
    // Each gateway's CA file and TLS server name.
    for g in &gateways {
        ccgate::gateway::GatewayClient::new(g).map_err(|e| match config.gateways.is_empty() {
            true => e,
            false => format!("gateway {}: {e}", g.name),
        })?;
    }
    for issuer in live.auth.wait_for_keys(config::ms(config.auth.jwks_startup_wait_ms)).await {
        eprintln!("warning: the keys of {issuer} cannot be fetched now; serve would start not ready and keep trying");
    }
    // `serve` raises its soft limit to the hard one: the hard limit is what it would have.
    if let Some(why) = ccgate::descriptors::Budget::at_hard_limit(&config)
        .and_then(|b| b.shortfall("this shell's hard open-file limit"))
    {
        eprintln!("warning: {why}");
    }
    print!("{}", config.to_masked_toml());
    eprintln!("config OK");
    Ok(())
}

/// The local admin listener's URL for `path`: from `--admin`, else the config's
/// `admin.listen`; an all-addresses listener is reached on loopback.
fn local_admin_url(config: Option<PathBuf>, admin: Option<SocketAddr>, path: &str) -> Result<String, String> {
    let addr = match admin {
        Some(a) => a,
        None => {
            load_config(config)
                .map_err(|e| format!("{e}\n(pass the admin listener's address with --admin)"))?
                .admin
                .listen
        }
    };
    if addr.port() == 0 {
        return Err(
            "admin.listen has port 0 (chosen at start); pass the running instance's address with --admin".into()
        );
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    };
    Ok(format!("http://{}{path}", SocketAddr::new(ip, addr.port())))
}

/// One request to the local admin listener: status and body, within `wait`.
async fn ask_admin(method: http::Method, url: &str, wait: std::time::Duration) -> Result<(u16, String), String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{url}: {e} (is ccgate running?)"))?;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(wait, exchange).await.map_err(|_| format!("{url}: no answer within {} s", wait.as_secs()))?
}

/// `ccgate reload`: asks the running instance's admin listener, on loopback (where reloads
/// are accepted).
async fn reload(config: Option<PathBuf>, admin: Option<SocketAddr>, json: bool) -> Result<(), String> {
    let url = local_admin_url(config, admin, "/-/reload")
        .map_err(|e| format!("{e}\n(the running instance keeps its config; fix this and run reload again)"))?;
    let (status, body) =
        ask_admin(http::Method::POST, &url, RELOAD_WAIT).await.map_err(|e| format!("{e} (else send it SIGHUP)"))?;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if json {
        println!("{body}");
    } else if (200..300).contains(&status) {
        print!("{}", reload_text(&answer));
    }
    if (200..300).contains(&status) {
        return Ok(());
    }
    match answer["error"].as_str() {
        // 422: the reload ran and was refused; the error names the key or file.
        Some(e) if status == 422 => Err(format!("reload refused: {e}\n(the running config stays in force)")),
        Some(e) => Err(format!("reload refused (HTTP {status}): {e}")),
        None => Err(format!("reload refused (HTTP {status})")),
    }
}

/// A reload's report for people: each key's old → new value, applied or waiting for a
/// restart, and the providers whose keys are not fetched yet.
fn reload_text(report: &serde_json::Value) -> String {
    use ccgate::config::Change;
    let values: Vec<Change> = serde_json::from_value(report["values"].clone()).unwrap_or_default();
    let keys = |field: &str| -> Vec<String> { serde_json::from_value(report[field].clone()).unwrap_or_default() };
    let mut out = String::from("reloaded\n");
    for (field, title) in
        [("changed", "applied"), ("restart_required", "waits for a restart (the old value stays in force)")]
    {
        let keys = keys(field);
        if keys.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}:\n"));
        for key in &keys {
            match values.iter().find(|c| &c.key == key) {
                Some(c) => out.push_str(&format!("  {c}\n")),
                None => out.push_str(&format!("  {key}\n")),
            }
        }
    }
    if keys("changed").is_empty() && keys("restart_required").is_empty() {
        out.push_str("no setting changed (the files it names were read again)\n");
    }
    for issuer in keys("missing_keys") {
        out.push_str(&format!("keys not fetched yet (its tokens get 503 until they are): {issuer}\n"));
    }
    out
}

/// `ccgate healthcheck`: exit 0 when the admin listener says ready (or live), else 1 with
/// the reason on stderr (the body names what is not ready).
async fn healthcheck(config: Option<PathBuf>, admin: Option<SocketAddr>, live: bool) -> Result<(), String> {
    let url = local_admin_url(config, admin, if live { "/livez" } else { "/readyz" })?;
    let (status, body) = ask_admin(http::Method::GET, &url, HEALTHCHECK_WAIT).await?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("not {} (HTTP {status}): {}", if live { "live" } else { "ready" }, body.trim()))
    }
}

/// `ccgate agents [ID]`: the admin listener's agents view, as a table (or its JSON).
async fn agents(
    id: Option<String>,
    config: Option<PathBuf>,
    admin: Option<SocketAddr>,
    json: bool,
) -> Result<(), String> {
    let path = id.as_ref().map_or_else(|| "/agents".to_owned(), |id| format!("/agents/{id}"));
    let url = local_admin_url(config, admin, &path)?;
    let (v, body) = admin_json(http::Method::GET, &url).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body));
        return Ok(());
    }
    match id {
        None => {
            print!("{}", agents_table(v["agents"].as_array().map(Vec::as_slice).unwrap_or_default()));
            if v["partial"] == true {
                println!("partial view: the shared store could not be read; these are this replica's agents only");
            }
            if let Some(store) = v["store"]["summary"].as_str() {
                println!("store: {}", ccgate::session::view::printable(store));
            }
        }
        Some(_) => print!("{}", agent_detail(&v)),
    }
    Ok(())
}

/// `ccgate webhooks`: the admin listener's webhooks view as a table (or its JSON), or a replay.
async fn webhooks(
    config: Option<PathBuf>,
    admin: Option<SocketAddr>,
    replay: Option<String>,
    since: Option<String>,
    json: bool,
) -> Result<(), String> {
    if let (Some(name), Some(since)) = (replay, since) {
        if ccgate::webhooks::parse_rfc3339(&since).is_none() {
            return Err(format!("--since {since:?}: not an RFC 3339 time such as 2026-12-07T08:00:00Z"));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(format!("--replay {name:?}: not an endpoint name (a-z, 0-9 and -)"));
        }
        let url = local_admin_url(config, admin, &format!("/webhooks/{name}/replay?since={since}"))?;
        let (v, body) = admin_json(http::Method::POST, &url).await?;
        match json {
            true => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body)),
            false => println!("{}: {} event(s) queued again", text(&v["endpoint"]), text(&v["replayed"])),
        }
        return Ok(());
    }
    let url = local_admin_url(config, admin, "/webhooks")?;
    let (v, body) = admin_json(http::Method::GET, &url).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body));
        return Ok(());
    }
    print!("{}", webhooks_table(v["webhooks"].as_array().map(Vec::as_slice).unwrap_or_default()));
    Ok(())
}

fn webhooks_table(list: &[serde_json::Value]) -> String {
    if list.is_empty() {
        return "(no webhook endpoints: [[webhooks]] in the config)\n".into();
    }
    let mut out = String::new();
    for w in list {
        let failure = match w["last_failure"].is_object() {
            true => format!("{} ({})", text(&w["last_failure"]["at"]), text(&w["last_failure"]["why"])),
            false => "-".into(),
        };
        let disabled = match w["disabled"].is_object() {
            true => format!("since {} ({})", text(&w["disabled"]["at"]), text(&w["disabled"]["why"])),
            false => "no".into(),
        };
        for (label, value) in [
            ("endpoint", text(&w["name"])),
            ("url", text(&w["url"])),
            ("state", text(&w["state"])),
            ("disabled", disabled),
            (
                "pending",
                format!(
                    "{} ({} in flight, oldest {} s)",
                    text(&w["pending"]),
                    text(&w["in_flight"]),
                    text(&w["oldest_pending_age_seconds"])
                ),
            ),
            ("last success", text(&w["last_success"])),
            ("last failure", failure),
            ("failing since", text(&w["failing_since"])),
            ("next retry", text(&w["next_retry"])),
            ("given up", text(&w["failed"])),
        ] {
            out.push_str(&format!("{label:<14} {value}\n"));
        }
        for f in w["recent_failed"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.push_str(&format!(
                "  {}  {}  {}/{} seq {}  {} attempts: {}\n",
                text(&f["at"]),
                text(&f["id"]),
                text(&f["gateway"]),
                text(&f["agent"]),
                text(&f["seq"]),
                text(&f["attempts"]),
                text(&f["why"]),
            ));
        }
        out.push('\n');
    }
    out
}

/// `url` on the admin listener, answered 200 with JSON: the JSON and its text; else the
/// admin's own error.
async fn admin_json(method: http::Method, url: &str) -> Result<(serde_json::Value, String), String> {
    let (status, body) = ask_admin(method, url, AGENTS_WAIT).await?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}: {}", text(&v["error"])));
    }
    Ok((v, body))
}

/// How long `ccgate agents` waits: a cluster view reads one record per agent from Redis.
const AGENTS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A value for the terminal: control characters and bidi overrides made visible as `?`.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => ccgate::session::view::printable(s),
        other => ccgate::session::view::printable(&other.to_string()),
    }
}

fn agents_table(agents: &[serde_json::Value]) -> String {
    use ccgate::session::view;
    let header = view::COLUMNS.map(str::to_uppercase);
    let rows: Vec<_> = agents.iter().map(view::row).collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    if rows.is_empty() {
        out.push_str("(no agents)\n");
    }
    out
}

fn agent_detail(a: &serde_json::Value) -> String {
    let [agent, gateway, state, signed_in, conference, chair, _, last_event, last_error, limit] =
        ccgate::session::view::row(a);
    // The detail names the polling replica even when it is this one, and when the limit was read.
    // Where that replica runs, as it registered itself (issue 40).
    let host = match a["polled_by_host"].is_string() {
        true => format!(" on {} ({})", text(&a["polled_by_host"]), text(&a["polled_by_admin"])),
        false => String::new(),
    };
    let polled = format!("{}{host}{}", text(&a["polled_by"]), if a["polled_here"] == true { " (here)" } else { "" });
    let limit = if a["limit"].is_object() { format!("{limit} at {}", text(&a["limit"]["at"])) } else { limit };
    let mut out = String::new();
    for (label, value) in [
        ("agent", agent),
        ("gateway", gateway),
        ("state", state),
        ("ended", text(&a["ended_at"])),
        ("signed in", signed_in),
        ("conference", conference),
        ("chairperson", chair),
        ("polled by", polled),
        ("last event", last_event),
        ("last error", last_error),
        ("limit", limit),
    ] {
        out.push_str(&format!("{label:<12} {value}\n"));
    }
    let events = a["recent_events"].as_array().map(Vec::as_slice).unwrap_or_default();
    out.push_str(&format!("recent events ({}):\n", events.len()));
    for e in events {
        out.push_str(&format!("  {}  {}  {}\n", text(&e["at"]), text(&e["id"]), text(&e["type"])));
    }
    let requests = a["recent_requests"].as_array().map(Vec::as_slice).unwrap_or_default();
    out.push_str(&format!("recent requests ({}, newest first):\n", requests.len()));
    for r in requests {
        let conference = r["conference"].as_u64().map(|c| format!("  conference {c}")).unwrap_or_default();
        out.push_str(&format!(
            "  {}  {}  {} {}  request {}{conference}\n",
            text(&r["at"]),
            text(&r["method"]),
            text(&r["status"]),
            text(&r["outcome"]),
            text(&r["request_id"]),
        ));
    }
    let endings = a["endings"].as_array().map(Vec::as_slice).unwrap_or_default();
    out.push_str(&format!("endings ({}, newest first):\n", endings.len()));
    for e in endings {
        let replica = e["replica"].as_str().map(|_| format!("  on {}", text(&e["replica"]))).unwrap_or_default();
        out.push_str(&format!("  {}  {} ({}){replica}\n", text(&e["at"]), text(&e["state"]), text(&e["reason"])));
    }
    out
}

/// Inside the callers' own deadlines (the image's `HEALTHCHECK --timeout=3s`, the probes'
/// `timeoutSeconds: 3` in deploy/kubernetes), so a slow answer is reported by ccgate with
/// its reason rather than cut off by the prober.
const HEALTHCHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long `ccgate reload` waits: a reload may wait for new providers' keys.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `serve`'s exit status when it stopped but could not sign every agent out at the gateway
/// (with `sessions.sign_out_on_shutdown`): those agents stay signed in there. README, "CLI".
const EXIT_AGENTS_LEFT_SIGNED_IN: u8 = 3;
/// `serve`'s exit status when a second SIGTERM/SIGINT cut the graceful shutdown short.
const EXIT_INTERRUPTED: u8 = 4;

/// How `serve` ended.
enum Stopped {
    Clean,
    AgentsLeftSignedIn(usize),
    Interrupted,
}

async fn serve(config: Config, source: ConfigSource) -> Result<Stopped, String> {
    let otlp = config.log.otlp_endpoint.as_deref().map(|e| (e, config.log.otlp_service_name.as_str()));
    let exporter = init_logging_with(config.log.format, &config.log.level, otlp)?;
    for stray in config::stray_env_vars(std::env::vars()) {
        tracing::warn!("{stray}");
    }
    // Installed before anything else, so a SIGHUP during start-up does not end the process.
    let mut signals = Signals::new()?;
    let running = app::start_from(&config, Some(source)).await.map_err(|e| e.to_string())?;
    tracing::info!(proxy = %running.proxy_addr, admin = %running.admin_addr, "ccgate serving");
    while let Signal::Reload = signals.next().await {
        tracing::info!("SIGHUP: reloading the config");
        // The outcome is logged and counted by the reloader.
        let _ = running.reloader.reload(ccgate::reload::ReloadTrigger::Sighup).await;
    }
    tracing::info!("shutting down (a second SIGTERM or Ctrl-C exits at once)");
    // A second stop signal ends the process now: an operator who asks twice means it.
    let stopped = tokio::select! {
        left = running.stop() => if left == 0 { Stopped::Clean } else { Stopped::AgentsLeftSignedIn(left) },
        () = signals.next_stop() => {
            tracing::warn!("second stop signal: exiting without finishing the shutdown");
            Stopped::Interrupted
        }
    };
    if let Some(e) = exporter {
        // The exporter's thread blocks while it sends what is queued.
        let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
    }
    Ok(stopped)
}

enum Signal {
    Reload,
    Stop,
}

/// SIGTERM/SIGINT stop, SIGHUP reloads; registered once for the process's life.
struct Signals {
    #[cfg(unix)]
    streams: (tokio::signal::unix::Signal, tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl Signals {
    fn new() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let s = |k| signal(k).map_err(|e| format!("cannot install signal handlers: {e}"));
            Ok(Self { streams: (s(SignalKind::terminate())?, s(SignalKind::interrupt())?, s(SignalKind::hangup())?) })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next stop signal (reloads asked meanwhile are ignored: the process is stopping).
    async fn next_stop(&mut self) {
        while let Signal::Reload = self.next().await {
            tracing::info!("SIGHUP while stopping: ignored");
        }
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let (term, int, hup) = &mut self.streams;
            tokio::select! {
                _ = term.recv() => Signal::Stop,
                _ = int.recv() => Signal::Stop,
                _ = hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
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

#[cfg(test)]
mod tests {
    use super::configured_filter;

    /// `ccgate reload` prints each key's old → new value under what happened to it.
    #[test]
    fn a_reload_report_reads_as_old_and_new_values() {
        let report = serde_json::json!({"reloaded": true, "changed": ["policy.on_unknown_chair"],
        "restart_required": ["store.url"], "missing_keys": [],
        "values": [
            {"key": "policy.on_unknown_chair", "old": "\"forward\"", "new": "\"deny\"", "secret": false},
            {"key": "store.url", "old": "\"redis://***@a:6379/0\"", "new": "\"redis://***@b:6379/0\"", "secret": true}
        ]});
        assert_eq!(
            super::reload_text(&report),
            "reloaded\napplied:\n  policy.on_unknown_chair: \"forward\" -> \"deny\"\n\
             waits for a restart (the old value stays in force):\n  \
             store.url: \"redis://***@a:6379/0\" -> \"redis://***@b:6379/0\" (a secret: values masked)\n"
        );
        let nothing = serde_json::json!({"reloaded": true, "changed": [], "restart_required": [], "values": []});
        assert!(super::reload_text(&nothing).contains("no setting changed"));
    }

    #[test]
    fn rustls_peer_faults_stay_out_of_the_log_unless_asked_for() {
        assert_eq!(configured_filter("info"), "info,rustls=error,ccgate::audit=info");
        assert_eq!(configured_filter("warn,ccgate=debug"), "warn,ccgate=debug,rustls=error,ccgate::audit=info");
        assert_eq!(
            configured_filter("debug,rustls=debug"),
            "debug,rustls=debug,ccgate::audit=info",
            "the operator's own word"
        );
        assert_eq!(configured_filter("off"), "off", "never louder than asked");
        assert_eq!(configured_filter("error"), "error,ccgate::audit=info", "the audit trail has its own level");
        assert_eq!(configured_filter("warn,ccgate::audit=off"), "warn,ccgate::audit=off,rustls=error");
        for f in ["info", "warn,ccgate=debug", "trace", "warn,ccgate::audit=off"] {
            assert!(tracing_subscriber::EnvFilter::try_new(configured_filter(f)).is_ok(), "{f}");
        }
    }
}
