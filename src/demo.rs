//! `ccgate demo`: the simulator and the proxy on loopback with throw-away certificates and
//! keys, a working token, and the commands to try. Everything it writes lives in one private
//! temporary directory that is removed on exit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::app::{self, Running};
use crate::config::{
    AdminConfig, AuthConfig, Config, CredentialsConfig, GatewayConfig, Secret, ServerConfig, StoreBackend, StoreConfig,
};
use crate::devkeys::{dev_pki, jwks, DevSigner};
use crate::server::{Served, Shutdown};
use crate::sim::{Sim, SimConfig};
use crate::tls;

pub const DEMO_ISSUER: &str = "https://issuer.demo.ccgate.invalid";
pub const DEMO_AUDIENCE: &str = "ccgate";
/// The demo's chairperson-to-be and a second agent to show refusals.
pub const DEMO_AGENT: &str = "153";
pub const DEMO_OTHER_AGENT: &str = "154";
/// Demo tokens last an hour: long enough to play, short enough to be obviously throw-away.
const DEMO_TOKEN_TTL_SECS: u64 = 3600;

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub json: bool,
    /// Proxy replicas sharing agents (more than one needs `redis`).
    pub replicas: usize,
    /// The shared store's URL: the replicas keep sessions, events and limits in Redis.
    pub redis: Option<String>,
    /// Contact centres, each its own simulated gateway (`[[gateways]]`, chosen by the token's
    /// `tenant` claim); the same agents in each.
    pub gateways: usize,
}

/// Most simulated gateways a demo starts.
pub const DEMO_MAX_GATEWAYS: usize = 8;

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            admin_listen: "127.0.0.1:0".parse().expect("literal address"),
            json: false,
            replicas: 1,
            redis: None,
            gateways: 1,
        }
    }
}

/// Everything a running demo consists of.
pub struct Demo {
    pub dir: PathBuf,
    pub proxy: Running,
    /// Replicas beyond the first (`--replicas`).
    pub more: Vec<Running>,
    pub sim: Sim,
    pub sim_served: Served,
    pub sim_shutdown: Shutdown,
    /// With `--gateways N`: the other contact centres' gateways, and each one's name.
    pub more_sims: Vec<(String, Sim, Served)>,
    pub ca_file: PathBuf,
    /// Agent 153's token (of the first contact centre, with several).
    pub token: String,
    pub other_token: String,
    /// With several contact centres: agent 153's token for each (name, token), the first's
    /// being `token`.
    pub gateway_tokens: Vec<(String, String)>,
}

impl Demo {
    pub async fn stop(self) {
        for r in self.more {
            r.stop().await;
        }
        self.proxy.stop().await;
        self.sim_shutdown.trigger();
        let _ = self.sim_served.task.await;
        for (_, _, served) in self.more_sims {
            let _ = served.task.await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn private_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("ccgate-demo-{}", uuid::Uuid::new_v4().simple()));
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts the simulator and the proxy. Used by `ccgate demo` and by the tests.
pub async fn start(opts: &DemoOptions) -> Result<Demo, String> {
    let dir = private_dir()?;
    match start_in(&dir, opts).await {
        Ok(d) => Ok(d),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

async fn start_in(dir: &Path, opts: &DemoOptions) -> Result<Demo, String> {
    if opts.replicas == 0 {
        return Err("--replicas must be at least 1".into());
    }
    if !(1..=DEMO_MAX_GATEWAYS).contains(&opts.gateways) {
        return Err(format!("--gateways must be 1 to {DEMO_MAX_GATEWAYS}"));
    }
    if opts.replicas > 1 && opts.redis.is_none() {
        return Err("--replicas needs --redis redis://HOST:PORT/DB: replicas share agents through Redis".into());
    }
    let pki = dev_pki(&["localhost", "127.0.0.1"])?;
    let ca_file = dir.join("ca.pem");
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server-key.pem");
    write_private(&ca_file, pki.ca_pem.as_bytes())?;
    write_private(&cert_file, pki.server_cert_pem.as_bytes())?;
    write_private(&key_file, pki.server_key_pem.as_bytes())?;

    let signer = DevSigner::es256("demo-es256")?;
    let jwks_file = dir.join("jwks.json");
    write_private(&jwks_file, jwks(&[&signer]).to_string().as_bytes())?;

    // Random per run: the demo's gateway passwords exist only in this process and its files.
    let password = format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let creds_file = dir.join("credentials.toml");
    let creds = format!(
        "[agents.\"{DEMO_AGENT}\"]\npassword = \"{password}\"\nphonenum = \"8880{DEMO_AGENT}\"\n\n\
         [agents.\"{DEMO_OTHER_AGENT}\"]\npassword = \"{password}\"\nphonenum = \"8880{DEMO_OTHER_AGENT}\"\n"
    );
    write_private(&creds_file, creds.as_bytes())?;

    let sim_cfg = SimConfig {
        agents: HashMap::from([(DEMO_AGENT.to_owned(), password.clone()), (DEMO_OTHER_AGENT.to_owned(), password)]),
        ..SimConfig::default()
    };
    let sim_tls = tls::server_config_from_files(&cert_file, &key_file)?;
    let sim_shutdown = Shutdown::new();
    // One simulated gateway per contact centre, the same agents (and passwords) in each.
    let mut sims = Vec::with_capacity(opts.gateways);
    for i in 1..=opts.gateways {
        let sim = Sim::new(sim_cfg.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("simulator: {e}"))?;
        let served =
            sim.serve(listener, sim_tls.clone(), sim_shutdown.subscribe()).map_err(|e| format!("simulator: {e}"))?;
        sims.push((format!("customer-{i}"), sim, served));
    }
    let gateway_of = |served: &Served, name: &str, tenants: Vec<String>, creds: Option<PathBuf>| GatewayConfig {
        name: name.to_owned(),
        url: format!("https://127.0.0.1:{}", served.addr.port()),
        ca_file: Some(ca_file.clone()),
        credentials_file: creds,
        tenants,
        ..GatewayConfig::default()
    };
    let several = opts.gateways > 1;
    let (gateway, gateways, credentials) = if several {
        let list = sims.iter().map(|(n, _, s)| gateway_of(s, n, vec![n.clone()], Some(creds_file.clone()))).collect();
        (GatewayConfig::default(), list, CredentialsConfig::default())
    } else {
        let only = GatewayConfig { name: String::new(), ..gateway_of(&sims[0].2, "", Vec::new(), None) };
        (only, Vec::new(), CredentialsConfig { file: Some(creds_file) })
    };

    let config = Config {
        server: ServerConfig {
            listen: opts.listen,
            tls_cert: Some(cert_file),
            tls_key: Some(key_file),
            // Nothing routes to a loopback demo, so there is nothing to drain.
            drain_delay_ms: 0,
            ..ServerConfig::default()
        },
        admin: AdminConfig { listen: opts.admin_listen, ..AdminConfig::default() },
        gateway,
        gateways,
        auth: AuthConfig {
            jwks_file: Some(jwks_file),
            issuer: DEMO_ISSUER.into(),
            audience: DEMO_AUDIENCE.into(),
            gateway_claim: if several { "tenant".into() } else { String::new() },
            ..AuthConfig::default()
        },
        credentials,
        store: match &opts.redis {
            Some(url) => StoreConfig {
                backend: StoreBackend::Redis,
                url: Some(Secret::new(url.clone())),
                ..StoreConfig::default()
            },
            None => StoreConfig::default(),
        },
        ..Config::default()
    };
    config.validate().map_err(|e| e.to_string())?;
    let proxy = match app::start(&config).await {
        Ok(p) => p,
        Err(e) => {
            sim_shutdown.trigger();
            let taken =
                matches!(&e, app::StartError::Listen { error, .. } if error.kind() == std::io::ErrorKind::AddrInUse);
            return Err(match taken {
                true => format!("{e}\n(hint: another ccgate demo may be running; pick free ports with --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0)"),
                false => e.to_string(),
            });
        }
    };
    // Further replicas: the same config on ports of their own.
    let mut more = Vec::new();
    for _ in 1..opts.replicas {
        let mut c = config.clone();
        c.server.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        c.admin.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        match app::start(&c).await {
            Ok(r) => more.push(r),
            Err(e) => {
                for r in more {
                    r.stop().await;
                }
                proxy.stop().await;
                sim_shutdown.trigger();
                return Err(e.to_string());
            }
        }
    }
    let names: Vec<String> = sims.iter().map(|(n, _, _)| n.clone()).collect();
    let token_for = |agent: &str, tenant: Option<&str>| -> Result<String, String> {
        match tenant {
            None => signer.token(DEMO_ISSUER, DEMO_AUDIENCE, agent, DEMO_TOKEN_TTL_SECS),
            Some(t) => {
                let now = crate::clock::unix_secs();
                signer.sign(&json!({
                    "iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": format!("agent-{agent}"), "agent_id": agent,
                    "tenant": t, "iat": now, "nbf": now, "exp": now + DEMO_TOKEN_TTL_SECS,
                }))
            }
        }
    };
    let first = several.then(|| names[0].as_str());
    let token = token_for(DEMO_AGENT, first)?;
    let other_token = token_for(DEMO_OTHER_AGENT, first)?;
    let mut gateway_tokens = Vec::new();
    if several {
        for n in &names {
            gateway_tokens.push((n.clone(), token_for(DEMO_AGENT, Some(n))?));
        }
    }
    let mut sims = sims.into_iter();
    let Some((_, sim, sim_served)) = sims.next() else { return Err("no simulator".into()) };
    Ok(Demo {
        dir: dir.to_owned(),
        proxy,
        more,
        sim,
        sim_served,
        sim_shutdown,
        more_sims: sims.collect(),
        ca_file,
        token,
        other_token,
        gateway_tokens,
    })
}

impl Demo {
    pub fn proxy_url(&self) -> String {
        format!("https://{}", self.proxy.proxy_addr)
    }
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.proxy.admin_addr)
    }

    fn replicas(&self) -> impl Iterator<Item = &Running> {
        std::iter::once(&self.proxy).chain(&self.more)
    }

    /// Every replica's proxy URL, the first one first.
    pub fn proxy_urls(&self) -> Vec<String> {
        self.replicas().map(|r| format!("https://{}", r.proxy_addr)).collect()
    }

    pub fn admin_urls(&self) -> Vec<String> {
        self.replicas().map(|r| format!("http://{}", r.admin_addr)).collect()
    }

    /// The one JSON line for scripts.
    pub fn json_line(&self) -> String {
        json!({
            "proxy_url": self.proxy_url(),
            "admin_url": self.admin_url(),
            "proxy_urls": self.proxy_urls(),
            "admin_urls": self.admin_urls(),
            "ca_file": self.ca_file,
            "token": self.token,
            "agent_id": DEMO_AGENT,
            "gateway_tokens": self.gateway_tokens.iter().map(|(n, t)| json!({"gateway": n, "token": t})).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// What a person reads: where things are and what to paste.
    pub fn instructions(&self) -> String {
        let p = self.proxy_url();
        let a = self.admin_url();
        let ca = self.ca_file.display();
        let sim = self.sim_served.addr;
        let gateways: String = self
            .more_sims
            .iter()
            .map(|(name, _, served)| {
                format!("  simulator  https://{}   ({name}'s gateway; the same agents)\n", served.addr)
            })
            .collect();
        let customers = self.customers_section(&p, &a);
        let replicas: String = self
            .proxy_urls()
            .iter()
            .zip(self.admin_urls())
            .skip(1)
            .map(|(p, a)| format!("  replica    {p}   admin {a}   (same agents, through Redis)\n"))
            .collect();
        format!(
            r#"ccgate demo is running (Ctrl-C stops it and deletes its temporary files).
  proxy      {p}   (TLS; certificate from the throw-away CA below)
  admin      {a}   (/ the status page, /agents, /config, /limits, /metrics /livez /readyz /gatewayz)
{replicas}
  simulator  https://{sim}   (CC-Gateway stand-in; agents {DEMO_AGENT} and {DEMO_OTHER_AGENT})
{gateways}  CA file    {ca}

Paste into another shell:

  export CA={ca}
  export TOKEN={token}
  export OTHER={other}

  # 1. Sign agent {DEMO_AGENT} in. ccgate holds its Guid and polls its events from now on.
  curl --cacert "$CA" -X POST -H "Authorization: Bearer $TOKEN" {p}/v1/session

  # 2. Create a conference; {DEMO_AGENT} becomes its chairperson.
  curl --cacert "$CA" -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{"memberNum":3}}' {p}/v1/conference

  # 3. Stop the conference announcement (stopVoiceToConf): 200 {{"stopped":true}}.
  curl --cacert "$CA" -X POST -H "Authorization: Bearer $TOKEN" {p}/v1/conference/announcement/stop

  # 4. Agent {DEMO_OTHER_AGENT} has no conference: ccgate refuses (409, retcode 101-001) without calling the gateway.
  curl --cacert "$CA" -X POST -H "Authorization: Bearer $OTHER" {p}/v1/session
  curl --cacert "$CA" -X POST -H "Authorization: Bearer $OTHER" {p}/v1/conference/announcement/stop

  # 5. A bad token gets 401 with a reason.
  curl --cacert "$CA" -X POST -H "Authorization: Bearer not-a-jwt" {p}/v1/conference/announcement/stop

  # 6. Read the metrics.
  curl -s {a}/metrics | grep -E 'ccgate_(requests_total|upstream_responses_total)'

  # 7. The operator's view: the status page at {a}/ in a browser, and the agents from a shell.
  cargo run --release -- agents --admin {admin_addr}
  cargo run --release -- agents {DEMO_AGENT} --admin {admin_addr}
{customers}"#,
            token = self.token,
            other = self.other_token,
            admin_addr = self.proxy.admin_addr,
        )
    }

    /// With several contact centres: agent 153 of each, signed in at its own gateway.
    fn customers_section(&self, p: &str, a: &str) -> String {
        let Some((first, _)) = self.gateway_tokens.first() else { return String::new() };
        let mut out = format!(
            "\n  # 7. Several contact centres (gateways {}): the token's `tenant` claim picks one.\n  #    $TOKEN is agent {DEMO_AGENT} of {first}; agent {DEMO_AGENT} of each other one is another agent:\n",
            self.gateway_tokens.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        );
        for (i, (name, token)) in self.gateway_tokens.iter().enumerate().skip(1) {
            let var = format!("TOKEN_{}", i + 1);
            out += &format!("  export {var}={token}   # {DEMO_AGENT} of {name}\n");
            out += &format!("  curl --cacert \"$CA\" -X POST -H \"Authorization: Bearer ${var}\" {p}/v1/session\n");
        }
        out += &format!("  curl -s {a}/agents   # one row per (gateway, agent)\n");
        out
    }
}

/// `ccgate demo`: start, print, serve until Ctrl-C.
pub async fn run(opts: DemoOptions) -> Result<(), String> {
    let demo = start(&opts).await?;
    if opts.json {
        println!("{}", demo.json_line());
    }
    println!("{}", demo.instructions());
    wait_for_signal().await;
    eprintln!("stopping…");
    demo.stop().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
