//! Changing what a running ccgate uses without a restart (SIGHUP, `ccgate reload`,
//! `POST /-/reload`, and a renewed certificate file).
//!
//! A reload reads the config as start-up does ([`Config::load`]), then builds every live part
//! through the same functions start-up uses ([`Live::build`]): the authenticator (JWKS files
//! re-read; remote key sets kept when their settings did not change), the credentials, the
//! server certificate, the rate limits and the core's settings. Only when all of them built
//! does it swap them in, each atomically; a request in flight finishes with what it started
//! with, and sessions, pollers, connections and event streams are not touched. Anything that
//! fails to build refuses the whole reload: the old config keeps running, a log line says why
//! and `ccgate_config_reloads_total{result="failed"}` counts it.
//!
//! Settings that cannot change while running (listen addresses, the gateway, the store, the
//! poller's timing...) are compared and reported as needing a restart; their old values stay
//! in force.
//!
//! The reloader also keeps what operators ask about the running configuration (`GET
//! /config`, the status page, `ccgate reload`): the config in force as shown (masked, hashed,
//! when it was loaded) and the last reload's outcome with each changed key's old → new value
//! (a secret's values masked: only that it changed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Change, Config, Effective, GatewayConfig};
use crate::edge::auth::Authenticator;
use crate::jwks::remote::OnChange;
use crate::labels::ReloadResult;
use crate::metrics::Metrics;
use crate::ops::limits::Limits;
use crate::ops::CoreSettings;
use crate::session::{CredentialStore, Gateways};
use crate::shared::SharedStore;
use crate::tls::{self, CertResolver};

/// Config keys (dotted, or prefixes ending in `.`) of the parts a reload rebuilds whole from
/// the new config ([`Live::build`]): the authenticator, the credentials, the limits and the
/// server certificate. With [`CoreSettings::KEYS`], what a reload applies; everything else
/// needs a restart.
const REBUILT_KEYS: &[&str] = &[
    "auth.",
    "credentials.",
    "gateway.credentials_file",
    "rate_limits.",
    "server.tls_cert",
    "server.tls_key",
    "server.tls_watch_interval_ms",
    "webhooks",
];

/// What may change in a `[[gateways]]` entry without a restart: its credentials file and
/// tenants. Adding, removing, renaming or moving one, or changing its URL, TLS, timeouts or
/// pool, needs a restart.
fn without_live_fields(gateways: &[GatewayConfig]) -> Vec<GatewayConfig> {
    gateways.iter().map(restart_fields).collect()
}

/// One gateway entry without its live fields: what only a restart can change.
fn restart_fields(g: &GatewayConfig) -> GatewayConfig {
    GatewayConfig { credentials_file: None, tenants: Vec::new(), ..g.clone() }
}

/// The running gateways whose restart-only fields (URL, TLS, timeouts, pool...) differ in
/// `new`. A reload holds such a gateway whole: its credentials and tenants stay as running
/// too, so the passwords meant for a new URL never go to the old one (issue 37).
fn held_gateways(running: &Config, new: &Config) -> Vec<String> {
    let next = new.gateway_list();
    running
        .gateway_list()
        .iter()
        .filter(|g| next.iter().find(|n| n.name == g.name).is_some_and(|n| restart_fields(n) != restart_fields(g)))
        .map(|g| g.name.clone())
        .collect()
}

/// `new` with the held gateways' credentials files and tenants put back to the running ones.
fn holding(running: &Config, new: &Config, held: &[String]) -> Config {
    let mut effective = new.clone();
    let was = running.gateway_list();
    for name in held {
        let Some(old) = was.iter().find(|g| &g.name == name) else { continue };
        if effective.gateways.is_empty() {
            // The one-gateway shorthand: its credentials may come from `credentials.file`.
            effective.gateway.credentials_file = old.credentials_file.clone();
            effective.credentials.file = old.credentials_file.clone();
            effective.gateway.tenants = old.tenants.clone();
        } else if let Some(g) = effective.gateways.iter_mut().find(|g| &g.name == name) {
            g.credentials_file = old.credentials_file.clone();
            g.tenants = old.tenants.clone();
        }
    }
    effective
}

/// `config`'s gateways in the running order (`names`): a running gateway the new config lacks
/// keeps no tenants and no credentials file until the restart that removes it; a new one waits
/// for the restart that adds it. Indices stay those of the running gateways.
pub fn arranged(config: &Config, names: &[String]) -> Vec<Option<GatewayConfig>> {
    let list = config.gateway_list();
    names.iter().map(|n| list.iter().find(|g| &g.name == n).cloned()).collect()
}

fn is_live(key: &str) -> bool {
    let matches = |k: &&str| if k.ends_with('.') { key.starts_with(*k) } else { key == *k };
    REBUILT_KEYS.iter().any(matches) || CoreSettings::KEYS.iter().any(matches)
}

/// Where the config came from, to read it again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// As at start: a missing file is an error only when it was named explicitly.
    pub must_exist: bool,
}

/// The parts of a running ccgate a reload replaces, each built from a config.
pub struct Live {
    pub auth: Authenticator,
    /// Each running gateway's credentials, in its order (`None`: the new config lacks it).
    pub creds: Vec<Option<CredentialStore>>,
    pub cert: Option<rustls::sign::CertifiedKey>,
    pub limits: Limits,
    pub settings: CoreSettings,
    /// Each webhook endpoint's secrets and client, in config order.
    pub webhooks: Vec<crate::webhooks::Parts>,
}

impl Live {
    /// Builds every live part from `config`; the one path of start-up and reload. `previous`
    /// lends its remote key sets.
    /// `names`: the running gateways (at start, `config`'s own).
    pub fn build(
        config: &Config,
        names: &[String],
        metrics: &Metrics,
        shared: Option<&Arc<dyn SharedStore>>,
        previous: Option<&Authenticator>,
        on_keys: Option<OnChange>,
    ) -> Result<Self, String> {
        let gateways = arranged(config, names);
        let several = names.len() > 1;
        let mut creds = Vec::with_capacity(gateways.len());
        for g in &gateways {
            creds.push(match g {
                None => None,
                Some(g) => match &g.credentials_file {
                    Some(p) => Some(CredentialStore::load(p).map_err(|e| match several {
                        true => format!("gateway {}: {e}", g.name),
                        false => e,
                    })?),
                    None => return Err(format!("gateway {}: a credentials file is required", g.name)),
                },
            });
        }
        let cert = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(c), Some(k)) => Some(tls::certified_key(c, k)?),
            _ => None,
        };
        let webhooks = crate::webhooks::Parts::build_all(&config.webhooks)?;
        let mut limits = Limits::new(&config.rate_limits, names, metrics.clone())?;
        if let Some(shared) = shared {
            limits = limits.shared(shared.clone(), config.store.limits_fallback);
        }
        // Last: it starts fetchers for new providers and sets the key gauges, which a failure
        // above should not leave behind.
        // Routed by the running gateways' indices; one the new config lacks gets no tokens.
        let routed: Vec<GatewayConfig> = gateways
            .iter()
            .zip(names)
            .map(|(g, n)| g.clone().unwrap_or_else(|| GatewayConfig { name: n.clone(), ..GatewayConfig::default() }))
            .collect();
        let auth = Authenticator::from_config(&config.auth, &routed, metrics, previous, on_keys)?;
        Ok(Self { auth, creds, cert, limits, settings: CoreSettings::from_config(config), webhooks })
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    pub reloaded: bool,
    /// Keys whose new values are in force.
    pub changed: Vec<String>,
    /// Keys whose new values wait for a restart (the old ones stay in force).
    pub restart_required: Vec<String>,
    /// Issuers whose keys could not be fetched yet (their tokens get 503 until they can).
    pub missing_keys: Vec<String>,
    /// Old → new of every key in `changed` and `restart_required`, secrets masked.
    pub values: Vec<Change>,
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadTrigger {
    /// SIGHUP (`systemctl reload`, `kill -HUP`).
    Sighup,
    /// `POST /-/reload` on the admin listener (what `ccgate reload` sends).
    Admin,
    /// A call in the process ([`Reloader::reload_with`]: tests, an embedding program).
    Call,
}

/// How the last reload ended, kept for `/config`, the status page and `ccgate reload`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    /// RFC 3339, UTC.
    pub at: String,
    pub trigger: ReloadTrigger,
    pub ok: bool,
    /// Why it was refused (the running config stayed in force); URL secrets masked.
    pub error: Option<String>,
    /// Old → new of the keys now in force.
    pub changed: Vec<Change>,
    /// Old → new of the keys that wait for a restart (the old value stays in force).
    pub restart_required: Vec<Change>,
    pub missing_keys: Vec<String>,
}

/// The config in force, as `/config` shows it.
struct Shown {
    loaded_at_ms: u64,
    effective: Effective,
}

/// The swappable parts of a running ccgate, and the config they came from.
pub struct Reloader {
    source: Option<ConfigSource>,
    /// The config in force (live keys from the last reload, the rest from start-up); the lock
    /// also makes reloads one at a time.
    running: tokio::sync::Mutex<Config>,
    pub(crate) auth: Arc<ArcSwap<Authenticator>>,
    gateways: Arc<Gateways>,
    limits: Arc<ArcSwap<Limits>>,
    settings: Arc<ArcSwap<CoreSettings>>,
    cert: Option<Arc<CertResolver>>,
    /// The certificate files as last loaded, to notice a renewal.
    cert_stamp: Mutex<Option<FileStamp>>,
    shared: Option<Arc<dyn SharedStore>>,
    metrics: Metrics,
    on_keys: Option<OnChange>,
    webhooks: Arc<crate::webhooks::Webhooks>,
    /// The config in force as shown, replaced at each successful reload.
    shown: Mutex<Arc<Shown>>,
    /// The last reload's outcome; `None` until one was tried.
    last: Mutex<Option<ReloadOutcome>>,
}

/// The parts a [`Reloader`] swaps, as `app::start` built them.
pub struct Parts {
    pub auth: Arc<ArcSwap<Authenticator>>,
    pub gateways: Arc<Gateways>,
    pub limits: Arc<ArcSwap<Limits>>,
    pub settings: Arc<ArcSwap<CoreSettings>>,
    pub cert: Option<Arc<CertResolver>>,
    pub shared: Option<Arc<dyn SharedStore>>,
    pub metrics: Metrics,
    pub on_keys: Option<OnChange>,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl Reloader {
    pub fn new(config: Config, source: Option<ConfigSource>, parts: Parts) -> Self {
        let stamp = FileStamp::of(&config);
        let shown = Shown { loaded_at_ms: crate::clock::unix_ms(), effective: config.effective() };
        Self {
            shown: Mutex::new(Arc::new(shown)),
            last: Mutex::new(None),
            source,
            running: tokio::sync::Mutex::new(config),
            auth: parts.auth,
            gateways: parts.gateways,
            limits: parts.limits,
            settings: parts.settings,
            cert: parts.cert,
            cert_stamp: Mutex::new(stamp),
            shared: parts.shared,
            metrics: parts.metrics,
            on_keys: parts.on_keys,
            webhooks: parts.webhooks,
        }
    }

    /// Reads the config file again (with the environment's overrides) and applies it.
    pub async fn reload(&self, trigger: ReloadTrigger) -> Result<ReloadReport, String> {
        let Some(source) = &self.source else {
            return self.refused(trigger, "this instance was not started from a config file".into());
        };
        match Config::load(&source.path, source.must_exist) {
            Ok(config) => self.apply(config, trigger).await,
            Err(e) => self.refused(trigger, e.to_string()),
        }
    }

    /// Applies `new` (already parsed and validated).
    pub async fn reload_with(&self, new: Config) -> Result<ReloadReport, String> {
        self.apply(new, ReloadTrigger::Call).await
    }

    /// `GET /config` without the rate limits' state: when and where from the config in force
    /// was loaded, its hashes, the config itself (masked) and the last reload's outcome.
    pub fn config_document(&self) -> serde_json::Value {
        let shown = crate::sync::lock(&self.shown).clone();
        let last = crate::sync::lock(&self.last).clone();
        serde_json::json!({
            "loaded_at": crate::session::view::rfc3339(shown.loaded_at_ms),
            "source": self.source.as_ref().map(|s| s.path.display().to_string()),
            "hash": shown.effective.hash,
            "masked_hash": shown.effective.masked_hash,
            "masked": shown.effective.masked,
            "config": shown.effective.config,
            "last_reload": last,
        })
    }

    /// The last reload's outcome; `None` until one was tried.
    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        crate::sync::lock(&self.last).clone()
    }

    async fn apply(&self, new: Config, trigger: ReloadTrigger) -> Result<ReloadReport, String> {
        let mut running = self.running.lock().await;
        let previous = self.auth.load_full();
        let names: Vec<String> = self.gateways.iter().map(|s| s.identity.name.to_string()).collect();
        let held = held_gateways(&running, &new);
        let effective = holding(&running, &new, &held);
        let built =
            Live::build(&effective, &names, &self.metrics, self.shared.as_ref(), Some(&previous), self.on_keys.clone());
        let live = match built {
            Ok(l) => l,
            Err(e) => return self.refused(trigger, e),
        };
        if live.cert.is_some() != self.cert.is_some() {
            return self.refused(
                trigger,
                "server.tls_cert/tls_key: switching between TLS and plain HTTP needs a restart".into(),
            );
        }
        let values = crate::config::changes(&crate::config::flatten(&running), &crate::config::flatten(&new));
        let (mut changed, mut restart_required) = diff(&running, &new);
        // A held gateway's credentials and tenants wait for the restart with the rest of it.
        if !held.is_empty() && new.gateways.is_empty() {
            let (waiting, applied): (Vec<String>, Vec<String>) = changed.into_iter().partition(|k| {
                matches!(k.as_str(), "credentials.file" | "gateway.credentials_file" | "gateway.tenants")
            });
            changed = applied;
            restart_required.extend(waiting);
            restart_required.sort();
        }
        // New remote providers get the start-up's bounded wait; not fatal either way.
        let missing_keys = live.auth.wait_for_keys(crate::config::ms(new.auth.jwks_startup_wait_ms)).await;

        // Everything built: swap, each part at once.
        self.auth.store(Arc::new(live.auth));
        for ((store, creds), name) in self.gateways.iter().zip(live.creds).zip(&names) {
            // A held gateway keeps the credentials in force, even from an unchanged path.
            if let Some(creds) = creds.filter(|_| !held.contains(name)) {
                store.replace_credentials(creds);
            }
        }
        if let (Some(resolver), Some(cert)) = (&self.cert, live.cert) {
            resolver.replace(cert);
        }
        if running.rate_limits != new.rate_limits {
            // Buckets start full again: a changed limit is a new limit.
            self.limits.store(Arc::new(live.limits));
        }
        self.settings.store(Arc::new(live.settings));
        self.webhooks.apply(live.webhooks);
        *crate::sync::lock(&self.cert_stamp) = FileStamp::of(&new);

        running.auth = new.auth;
        let shorthand_held = running.gateways.is_empty() && !held.is_empty();
        if !shorthand_held {
            running.credentials = new.credentials;
            running.gateway.credentials_file = new.gateway.credentials_file;
        }
        // Tenants and credentials files of the gateways running and not held (the rest waits
        // for a restart).
        for g in &mut running.gateways {
            if held.contains(&g.name) {
                continue;
            }
            if let Some(n) = new.gateways.iter().find(|n| n.name == g.name) {
                g.credentials_file = n.credentials_file.clone();
                g.tenants = n.tenants.clone();
            }
        }
        running.rate_limits = new.rate_limits;
        running.policy = new.policy;
        running.webhooks = new.webhooks;
        running.server.tls_cert = new.server.tls_cert;
        running.server.tls_key = new.server.tls_key;
        running.server.tls_watch_interval_ms = new.server.tls_watch_interval_ms;
        running.sessions.resume = new.sessions.resume;
        running.sessions.conference_wait_ms = new.sessions.conference_wait_ms;
        running.sessions.face_event_wait_ms = new.sessions.face_event_wait_ms;

        *crate::sync::lock(&self.shown) =
            Arc::new(Shown { loaded_at_ms: crate::clock::unix_ms(), effective: running.effective() });
        let of = |keys: &[String]| values.iter().filter(|c| keys.contains(&c.key)).cloned().collect::<Vec<_>>();
        *crate::sync::lock(&self.last) = Some(ReloadOutcome {
            at: crate::session::view::rfc3339(crate::clock::unix_ms()),
            trigger,
            ok: true,
            error: None,
            changed: of(&changed),
            restart_required: of(&restart_required),
            missing_keys: missing_keys.clone(),
        });
        self.metrics.count_config_reload(ReloadResult::Ok);
        tracing::info!(changed = ?changed, restart_required = ?restart_required, missing_keys = ?missing_keys,
            "config reloaded");
        if !restart_required.is_empty() {
            tracing::warn!(keys = ?restart_required, "these settings changed but need a restart; the old values stay in force");
        }
        for name in &held {
            tracing::warn!(gateway = %name, "this gateway's URL, TLS or connection settings changed, which needs a restart; its credentials and tenants stay as running too, so one configuration of it is in force");
        }
        let values = values.into_iter().filter(|c| changed.contains(&c.key) || restart_required.contains(&c.key));
        let values = values.collect();
        Ok(ReloadReport { reloaded: true, changed, restart_required, missing_keys, values })
    }

    fn refused(&self, trigger: ReloadTrigger, why: String) -> Result<ReloadReport, String> {
        // The message may quote a config line, and the store URL may hold a password.
        let why = crate::config::mask_url_secrets(&why);
        *crate::sync::lock(&self.last) = Some(ReloadOutcome {
            at: crate::session::view::rfc3339(crate::clock::unix_ms()),
            trigger,
            ok: false,
            error: Some(why.clone()),
            changed: Vec::new(),
            restart_required: Vec::new(),
            missing_keys: Vec::new(),
        });
        self.metrics.count_config_reload(ReloadResult::Failed);
        tracing::error!(error = %why, "reload refused; the running config stays in force");
        Err(why)
    }

    /// How often the certificate files are checked (`server.tls_watch_interval_ms`), if at all.
    pub async fn watch_interval(&self) -> Option<std::time::Duration> {
        let r = self.running.lock().await;
        (self.cert.is_some() && r.server.tls_watch_interval_ms > 0)
            .then(|| crate::config::ms(r.server.tls_watch_interval_ms))
    }

    /// Loads the certificate again if its files changed since last loaded; whether it did.
    /// A pair that does not load (a renewal caught half-written) is retried at the next check.
    pub async fn check_certificate(&self) -> bool {
        let Some(resolver) = &self.cert else { return false };
        let running = self.running.lock().await;
        let now = FileStamp::of(&running);
        if now == *crate::sync::lock(&self.cert_stamp) {
            return false;
        }
        let (Some(c), Some(k)) = (&running.server.tls_cert, &running.server.tls_key) else { return false };
        match tls::certified_key(c, k) {
            Ok(cert) => {
                resolver.replace(cert);
                *crate::sync::lock(&self.cert_stamp) = now;
                self.metrics.count_certificate_reload(ReloadResult::Ok);
                tracing::info!(cert = %c.display(), "server certificate files changed; new connections get the new certificate");
                true
            }
            Err(e) => {
                self.metrics.count_certificate_reload(ReloadResult::Failed);
                tracing::warn!(error = %e, "server certificate files changed but do not load; still serving the old certificate");
                *crate::sync::lock(&self.cert_stamp) = now;
                false
            }
        }
    }
}

/// What identifies the contents of the certificate and key files without reading them:
/// size, modification time and inode of each (through symlinks, so a Kubernetes Secret's
/// `..data` swap counts).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Vec<(u64, Option<std::time::SystemTime>, u64)>);

impl FileStamp {
    fn of(config: &Config) -> Option<Self> {
        let files = [config.server.tls_cert.as_ref()?, config.server.tls_key.as_ref()?];
        Some(Self(
            files
                .iter()
                .map(|p| match std::fs::metadata(p) {
                    Ok(m) => {
                        #[cfg(unix)]
                        let ino = std::os::unix::fs::MetadataExt::ino(&m);
                        #[cfg(not(unix))]
                        let ino = 0;
                        (m.len(), m.modified().ok(), ino)
                    }
                    Err(_) => (0, None, 0),
                })
                .collect(),
        ))
    }
}

/// Keys whose values differ between `old` and `new`, a secret's included: (applied live,
/// needing a restart).
fn diff(old: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    let changed = crate::config::changes(&crate::config::flatten(old), &crate::config::flatten(new));
    changed.into_iter().map(|c| c.key).partition(|k| match k.as_str() {
        // Live only when what changed is credentials files and tenants.
        "gateways" => without_live_fields(&old.gateways) == without_live_fields(&new.gateways),
        k => is_live(k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_split_into_live_and_restart_required() {
        let old = Config::default();
        let mut new = old.clone();
        new.auth.leeway_secs += 1;
        new.policy.on_unknown_chair = crate::config::UnknownChair::Deny;
        new.server.listen = "127.0.0.1:1".parse().unwrap();
        new.sessions.poll_pause_ms += 1;
        new.sessions.resume = true;
        let (live, restart) = diff(&old, &new);
        assert_eq!(live, vec!["auth.leeway_secs", "policy.on_unknown_chair", "sessions.resume"]);
        assert_eq!(restart, vec!["server.listen", "sessions.poll_pause_ms"]);
        assert_eq!(diff(&old, &old.clone()), (vec![], vec![]));
    }

    /// Two gateways, each with its own credentials file and one tenant of its name.
    fn acme_and_globex() -> Config {
        let gw = |name: &str| GatewayConfig {
            name: name.into(),
            credentials_file: Some(format!("{name}.toml").into()),
            tenants: vec![name.into()],
            ..GatewayConfig::default()
        };
        Config { gateways: vec![gw("acme"), gw("globex")], ..Config::default() }
    }

    #[test]
    fn a_gateways_credentials_and_tenants_reload_and_the_rest_needs_a_restart() {
        let old = acme_and_globex();
        let mut new = old.clone();
        new.gateways[0].credentials_file = Some("acme-2.toml".into());
        new.gateways[1].tenants.push("globex-eu".into());
        assert_eq!(diff(&old, &new), (vec!["gateways".into()], vec![]));
        for change in [
            |c: &mut Config| c.gateways.push(GatewayConfig { name: "initech".into(), ..c.gateways[0].clone() }),
            |c: &mut Config| drop(c.gateways.pop()),
            |c: &mut Config| c.gateways[1].url = "https://10.0.0.9:8043".into(),
            |c: &mut Config| c.gateways.swap(0, 1),
        ] {
            let mut new = old.clone();
            change(&mut new);
            assert_eq!(diff(&old, &new), (vec![], vec!["gateways".into()]));
        }
        // The running order stays: a gateway the new config lacks keeps its place, unrouted.
        let names = ["acme".to_string(), "globex".to_string()];
        let mut moved = old.clone();
        moved.gateways.swap(0, 1);
        moved.gateways.pop();
        let arranged = arranged(&moved, &names);
        assert_eq!(arranged[0].as_ref().map(|g| g.name.as_str()), None);
        assert_eq!(arranged[1].as_ref().map(|g| g.name.as_str()), Some("globex"));
    }

    #[test]
    fn a_gateway_whose_url_changed_is_held_whole() {
        let old = acme_and_globex();
        let mut new = old.clone();
        // acme moves to another customer's gateway, with that customer's passwords and tenants;
        // globex only rotates its passwords.
        new.gateways[0].url = "https://10.0.0.9:8043".into();
        new.gateways[0].credentials_file = Some("initech.toml".into());
        new.gateways[0].tenants = vec!["initech".into()];
        new.gateways[1].credentials_file = Some("globex-2.toml".into());
        let held = held_gateways(&old, &new);
        assert_eq!(held, ["acme"]);
        let effective = holding(&old, &new, &held);
        assert_eq!(effective.gateways[0].credentials_file, old.gateways[0].credentials_file);
        assert_eq!(effective.gateways[0].tenants, old.gateways[0].tenants);
        assert_eq!(effective.gateways[1].credentials_file, new.gateways[1].credentials_file, "globex applies");
        // Credentials and tenants alone hold nothing.
        let mut rotated = old.clone();
        rotated.gateways[0].credentials_file = Some("acme-2.toml".into());
        assert!(held_gateways(&old, &rotated).is_empty());
    }

    /// A leaf changed to another value its type allows, if one deserializes.
    fn changed(v: &toml::Value) -> Vec<toml::Value> {
        match v {
            toml::Value::Boolean(b) => vec![toml::Value::Boolean(!b)],
            toml::Value::Integer(i) => vec![toml::Value::Integer(i + 1)],
            toml::Value::Float(f) => vec![toml::Value::Float(f * 2.0 + 1.0)],
            // Enum settings: one of these is another variant.
            toml::Value::String(_) => ["deny", "forward", "sign_out", "handover", "closed", "open", "redis", "memory"]
                .iter()
                .map(|s| toml::Value::String((*s).into()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The live keys the core's settings are made of are exactly those `from_config` reads:
    /// every other `sessions.` and `policy.` key leaves them unchanged (it needs a restart).
    #[test]
    fn the_settings_a_reload_applies_are_those_the_settings_read() {
        let base = toml::Value::try_from(Config::default()).unwrap();
        let before = CoreSettings::from_config(&Config::default());
        let mut checked = Vec::new();
        for section in ["sessions", "policy"] {
            let Some(toml::Value::Table(t)) = base.get(section) else { panic!("no [{section}]") };
            for (k, v) in t {
                let key = format!("{section}.{k}");
                let mut differs = false;
                for new in changed(v) {
                    let mut doc = base.clone();
                    doc[section][k.as_str()] = new;
                    if let Ok(c) = doc.try_into::<Config>() {
                        differs |= CoreSettings::from_config(&c) != before;
                    }
                }
                assert_eq!(differs, is_live(&key), "{key}: read by the settings vs listed live");
                checked.push(key);
            }
        }
        for key in CoreSettings::KEYS {
            assert!(checked.iter().any(|c| c == key), "{key} is not a config key");
        }
    }
}
