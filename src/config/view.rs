//! The running configuration as operators see it (`GET /config`, the status page, the old →
//! new values of a reload): the effective config (environment overrides and defaults applied,
//! the one-gateway shorthand under the name it runs as) as JSON with every secret masked, its
//! leaves flattened for a diff, and two hashes.
//!
//! What counts as a secret, and how it is masked, is decided in one place each: a field typed
//! [`Secret`](super::Secret) serializes as its mask (`***`, or a URL with its user info and
//! query masked), and every other string goes through [`mask_url_secrets`], so a URL with a
//! password or a token in it (`jwks_url`, `log.otlp_endpoint`) is masked whatever field holds
//! it. File paths are shown: the secret is in the file, not its name.
//!
//! The hashes. `masked_hash` is SHA-256 over the masked config in canonical JSON (keys
//! sorted): equal on every replica and across restarts that run the same non-secret values,
//! so replicas can be compared. `hash` also covers the secrets, through each secret leaf's
//! keyed fingerprint (HMAC-SHA-256 under a key drawn at random when the process starts,
//! [`fingerprint`]): it changes whenever any effective value changes, a password included,
//! yet it cannot be used to test guesses of a password, as a hash over the unmasked values
//! could (Redis passwords are often short). The price: with a secret set, `hash` is comparable
//! only within one process; compare replicas by `masked_hash`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::net::mask_url_secrets;
use super::secret::{fingerprint, fingerprinted};
use super::Config;

/// One leaf of the flattened config (`section.key`; an array is one leaf, whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The value as TOML text, secrets masked.
    pub shown: String,
    /// Set for a leaf that holds a secret (a `Secret`, or a URL's user info or query): its
    /// keyed fingerprint, which differs when the secret does.
    pub fingerprint: Option<String>,
}

/// Every leaf of a config by dotted key.
pub type Flat = BTreeMap<String, Leaf>;

/// The effective config of a running instance, ready to show.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The config as JSON, every secret masked.
    pub config: Value,
    /// Keys of the leaves whose shown value is masked.
    pub masked: Vec<String>,
    /// `sha256:` over the masked config and each secret's keyed fingerprint.
    pub hash: String,
    /// `sha256:` over the masked config alone.
    pub masked_hash: String,
}

impl Config {
    /// The effective config as `/config` shows it (see the module comment for the hashes).
    pub fn effective(&self) -> Effective {
        let named = self.with_effective_names();
        let mut config = serde_json::to_value(&named).unwrap_or(Value::Null);
        mask_strings(&mut config);
        let canonical = canonical_json(&config);
        let leaves = flatten(&named);
        let masked: Vec<String> =
            leaves.iter().filter(|(_, l)| l.fingerprint.is_some()).map(|(k, _)| k.clone()).collect();
        let mut covered = canonical.clone();
        for (key, leaf) in &leaves {
            if let Some(fp) = &leaf.fingerprint {
                covered.push_str(&format!("\n{key}={fp}"));
            }
        }
        Effective { config, masked, hash: sha256(&covered), masked_hash: sha256(&canonical) }
    }
}

/// Every leaf of `c` as `section.key` → its TOML text (arrays whole), masked, with the
/// fingerprint of any secret it holds.
pub fn flatten(c: &Config) -> Flat {
    let plain = flat_text(c);
    let keyed = fingerprinted(|| flat_text(c));
    plain
        .into_iter()
        .map(|(key, text)| {
            let shown = mask_url_secrets(&text);
            let raw = keyed.get(&key).cloned().unwrap_or_default();
            // A `Secret` prints differently when fingerprinted; a URL secret is masked here.
            let secret = raw != text || shown != text;
            let fingerprint = secret.then(|| fingerprint(&raw));
            (key, Leaf { shown, fingerprint })
        })
        .collect()
}

fn flat_text(c: &Config) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(c) {
        walk("", &v, &mut out);
    }
    out
}

/// A key whose value differs between two configs, as it may be printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    /// The masked value before; `None`: unset.
    pub old: Option<String>,
    /// The masked value after; `None`: unset.
    pub new: Option<String>,
    /// A secret is involved: its values are masked, and may look equal when only the secret
    /// part changed.
    pub secret: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        write!(f, "{}: {} -> {}", self.key, show(&self.old), show(&self.new))?;
        if self.secret {
            f.write_str(" (a secret: values masked)")?;
        }
        Ok(())
    }
}

/// Every key whose value differs between `old` and `new`, a secret's change included, in key
/// order.
pub fn changes(old: &Flat, new: &Flat) -> Vec<Change> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| {
            let (a, b) = (old.get(k), new.get(k));
            Change {
                key: k.clone(),
                old: a.map(|l| l.shown.clone()),
                new: b.map(|l| l.shown.clone()),
                secret: a.is_some_and(|l| l.fingerprint.is_some()) || b.is_some_and(|l| l.fingerprint.is_some()),
            }
        })
        .collect()
}

/// Every string in `v` with the secrets a URL may carry masked.
fn mask_strings(v: &mut Value) {
    match v {
        Value::String(s) => *s = mask_url_secrets(s),
        Value::Array(a) => a.iter_mut().for_each(mask_strings),
        Value::Object(o) => o.values_mut().for_each(mask_strings),
        _ => {}
    }
}

/// `v` as JSON with every object's keys sorted, whatever map serde_json was built with.
fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), canonical_json(&o[*k]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn sha256(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{env, MINIMAL};
    use crate::config::Secret;

    #[test]
    fn secrets_are_masked_fingerprinted_and_change_the_hash_but_not_the_masked_hash() {
        let mut c = Config::from_toml_with_env(MINIMAL, env(&[])).unwrap();
        c.store.url = Some(Secret::new("redis://:pw-one@r:6379/0"));
        c.auth.jwks_url = Some("https://user:jwks-pw@idp/keys?token=jwks-tok".into());
        let a = c.effective();
        let text = a.config.to_string();
        for secret in ["pw-one", "jwks-pw", "jwks-tok"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(a.config["store"]["url"], "redis://***@r:6379/0");
        assert_eq!(a.config["auth"]["jwks_url"], "https://***@idp/keys?***");
        assert_eq!(a.config["gateway"]["name"], "default", "the effective name");
        assert_eq!(a.masked, ["auth.jwks_url", "store.url"]);
        assert_eq!(c.effective().hash, a.hash, "stable within the process");

        let mut d = c.clone();
        d.store.url = Some(Secret::new("redis://:pw-two@r:6379/0"));
        let b = d.effective();
        assert_ne!(a.hash, b.hash, "a secret changed");
        assert_eq!(a.masked_hash, b.masked_hash, "what is shown did not");
        let diff = changes(&flatten(&c), &flatten(&d));
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert_eq!(diff[0].key, "store.url");
        assert!(diff[0].secret && diff[0].old == diff[0].new, "{diff:?}");
        assert!(!format!("{}", diff[0]).contains("pw-"), "{}", diff[0]);

        let mut e = c.clone();
        e.auth.leeway_secs += 1;
        let ch = changes(&flatten(&c), &flatten(&e));
        assert_eq!(format!("{}", ch[0]), "auth.leeway_secs: 30 -> 31");
        assert_ne!(e.effective().masked_hash, a.masked_hash);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = serde_json::json!({"b": [{"z": 1, "a": 2}], "a": null});
        assert_eq!(canonical_json(&v), r#"{"a":null,"b":[{"a":2,"z":1}]}"#);
    }

    /// Secret-sounding key names: such a field must be a `Secret` (masked whatever its value),
    /// unless it names a file (`_file`) or a key's place (`key_prefix`).
    const SECRET_WORDS: &[&str] =
        &["password", "passwd", "secret", "token", "apikey", "api_key", "cookie", "headers", "credential", "private"];

    /// The fields that hold a secret inline: the only ones masked whatever their value.
    const SECRET_FIELDS: &[&str] = &["store.sentinel_url", "store.url"];

    /// Every string the config can hold (also unset options and empty lists), set in turn to a
    /// URL carrying a password and a token, then to a plain word: the URL's secrets are masked
    /// wherever it goes, and a plain word is masked exactly in the `Secret` fields, which
    /// include every field whose name sounds like a secret. A new field cannot leak unseen: it
    /// is found here by walking the config, not by a list.
    #[test]
    fn every_string_the_config_can_hold_is_checked_for_secrets() {
        let mut base = Config { gateways: vec![crate::config::GatewayConfig::default()], ..Config::default() };
        base.auth.providers =
            vec![serde_json::from_value(serde_json::json!({"issuer": "i", "audiences": ["a"]})).unwrap()];
        let base = serde_json::to_value(&base).unwrap();
        let mut paths = Vec::new();
        leaves(&base, &mut Vec::new(), &mut paths);
        assert!(paths.len() > 40, "{paths:?}");
        let mut plain_masked = Vec::new();
        let mut strings = 0;
        for (i, path) in paths.iter().enumerate() {
            let url = format!("https://user:pw-{i}-x@h{i}.example/p?t=tok-{i}-x");
            let Some(c) = with(&base, path, &url) else { continue };
            strings += 1;
            let shown = format!("{} {:?}", c.effective().config, flatten(&c));
            for secret in [format!("pw-{i}-x"), format!("tok-{i}-x")] {
                assert!(!shown.contains(&secret), "{}: {secret} shown: {shown}", path.join("."));
            }
            assert!(shown.contains(&format!("h{i}.example")), "{}: the host is not a secret", path.join("."));
            let plain = format!("plain-{i}-x");
            let c = with(&base, path, &plain).expect("a string field takes any string");
            let (json, flat) = (c.effective().config.to_string(), format!("{:?}", flatten(&c)));
            assert_eq!(json.contains(&plain), flat.contains(&plain), "{}", path.join("."));
            if !json.contains(&plain) {
                plain_masked
                    .push(path.iter().filter(|p| p.parse::<usize>().is_err()).cloned().collect::<Vec<_>>().join("."));
            }
        }
        assert!(strings > 20, "{strings} string fields");
        plain_masked.sort();
        plain_masked.dedup();
        assert_eq!(plain_masked, SECRET_FIELDS, "the fields masked whatever their value");
        for path in &paths {
            let name = path.iter().rev().find(|p| p.parse::<usize>().is_err()).map_or("", String::as_str);
            let sounds = SECRET_WORDS.iter().any(|w| name.contains(w)) && !name.ends_with("_file");
            assert!(!sounds || SECRET_FIELDS.contains(&path.join(".").as_str()), "{name}: make it a Secret");
        }
    }

    /// Paths of every leaf (strings, nulls, empty lists, and each list's first element).
    fn leaves(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    at.push(k.clone());
                    leaves(v, at, out);
                    at.pop();
                }
            }
            Value::Array(a) if !a.is_empty() => {
                at.push("0".into());
                leaves(&a[0], at, out);
                at.pop();
            }
            _ => out.push(at.clone()),
        }
    }

    /// `base` with the leaf at `path` set to `s` (in a list where the leaf is an empty list),
    /// if the config takes a string there.
    fn with(base: &Value, path: &[String], s: &str) -> Option<Config> {
        let mut doc = base.clone();
        let mut at = &mut doc;
        for p in path {
            at = match p.parse::<usize>() {
                Ok(i) => at.get_mut(i)?,
                Err(_) => at.get_mut(p)?,
            };
        }
        *at = match at {
            Value::Array(_) => Value::Array(vec![s.into()]),
            _ => s.into(),
        };
        serde_json::from_value(doc).ok()
    }
}
