//! The environment-override engine: `CCGATE__SECTION__KEY=value` written into the parsed TOML
//! before it is deserialized, with errors that name the variable. Generic over the config
//! type, so the simulator's config (`CCGATE_SIM__`) shares it.

use std::path::Path;

use serde::Serialize;

use super::error::ConfigError;

/// Environment prefix for per-key overrides (`CCGATE__GATEWAY__URL=...`).
pub const ENV_PREFIX: &str = "CCGATE__";

/// Parses TOML text into `T` after applying `{prefix}SECTION__KEY` overrides from `env`.
/// Shared by the proxy's and the simulator's config so both behave alike.
pub fn parse_with_env<T: serde::de::DeserializeOwned + Serialize + Default>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<T, ConfigError> {
    let file: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let schema = toml::Table::try_from(T::default()).unwrap_or_default();
    let overrides: Vec<(String, String)> = env.into_iter().filter(|(name, _)| name.starts_with(prefix)).collect();
    let mut doc = file.clone();
    apply_env_overrides(&mut doc, &schema, overrides.iter().cloned(), prefix)?;
    let merged = toml::to_string(&doc).map_err(|e| ConfigError::Parse(e.to_string()))?;
    toml::from_str(&merged).map_err(|e: toml::de::Error| {
        // A message quoting a line of the merged document would show text the user never
        // wrote: when a variable is what breaks it, name the variable instead.
        blame_override::<T>(&file, &schema, &overrides, prefix).unwrap_or_else(|| ConfigError::Parse(e.to_string()))
    })
}

/// The first override that on its own makes the file fail to deserialize as `T`, as an error
/// naming the variable, its key and what is wrong (`None` when the file fails by itself).
fn blame_override<T: serde::de::DeserializeOwned>(
    file: &toml::Table,
    schema: &toml::Table,
    overrides: &[(String, String)],
    prefix: &str,
) -> Option<ConfigError> {
    let parses = |doc: &toml::Table| -> Result<(), toml::de::Error> {
        let text = toml::to_string(doc).unwrap_or_default();
        toml::from_str::<T>(&text).map(|_| ())
    };
    parses(file).ok()?;
    overrides.iter().find_map(|(name, value)| {
        let mut doc = file.clone();
        apply_env_overrides(&mut doc, schema, [(name.clone(), value.clone())], prefix).ok()?;
        let e = parses(&doc).err()?;
        let key = name[prefix.len()..].split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
        Some(ConfigError::Parse(format!("environment variable {name} (config key `{key}`): {}", e.message())))
    })
}

/// Reads `path` (missing is fine unless `must_exist`) and parses it with overrides.
pub fn load_with_env<T: serde::de::DeserializeOwned + Serialize + Default>(
    path: &Path,
    must_exist: bool,
    prefix: &str,
) -> Result<T, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
        Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
    };
    parse_with_env(&text, std::env::vars(), prefix)
}

/// Variables that start like ccgate's but set nothing: `CCGATE_GATEWAY_URL` (one underscore)
/// or any other `CCGATE_` name that is neither an override (`CCGATE__...`), the simulator's
/// (`CCGATE_SIM__...`) nor one ccgate reads by name. Each comes with a hint. A typo'd
/// override key (`CCGATE__GATEWAY__URLL`) is not listed here: it fails the parse, naming the key.
pub fn stray_env_vars(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    /// Variables read by name (clap's `env`, the test harness's tool directory).
    const KNOWN: &[&str] = &["CCGATE_CONFIG", "CCGATE_TOOLS_DIR"];
    let mut stray: Vec<String> = env
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with("CCGATE_") && !n.starts_with(ENV_PREFIX) && !n.starts_with("CCGATE_SIM__"))
        .filter(|n| !KNOWN.contains(&n.as_str()))
        .map(|n| {
            let guess = n["CCGATE_".len()..].replacen('_', "__", 1);
            format!("{n} sets nothing (overrides are spelled {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}{guess})")
        })
        .collect();
    stray.sort();
    stray
}

/// Writes `CCGATE__A__B=v` into `doc["a"]["b"]`. A key whose default (in `schema`, the
/// defaults as TOML) is a string, or which has no default, takes the value as a string, so
/// `CCGATE__AUTH__AUDIENCE=12345` is the audience "12345"; other keys read it as a TOML value
/// (numbers, booleans, arrays).
fn apply_env_overrides(
    doc: &mut toml::Table,
    schema: &toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Parse(format!("environment variable {name}: empty key segment")));
        }
        let mut default = Some(schema);
        let mut default_value = None;
        for (i, key) in path.iter().enumerate() {
            let v = default.and_then(|t| t.get(key));
            if i + 1 == path.len() {
                default_value = v;
            }
            default = v.and_then(toml::Value::as_table);
        }
        let value = match (default_value, parse_env_value(&raw)) {
            // A quoted TOML string stays possible (`""` for empty).
            (Some(toml::Value::String(_)) | None, quoted @ toml::Value::String(_)) => quoted,
            (Some(toml::Value::String(_)) | None, _) => toml::Value::String(raw.clone()),
            (Some(_), parsed) => parsed,
        };
        let mut table = &mut *doc;
        let (last, parents) =
            path.split_last().ok_or_else(|| ConfigError::Parse(format!("environment variable {name}: no key")))?;
        for key in parents {
            let entry = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| ConfigError::Parse(format!("environment variable {name}: `{key}` is not a section")))?;
        }
        table.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{env, MINIMAL};
    use crate::config::{Config, UnknownChair};

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let c = Config::from_toml_with_env(
            MINIMAL,
            env(&[
                ("CCGATE__GATEWAY__URL", "https://10.0.0.5:8043"),
                ("CCGATE__GATEWAY__CONNECT_TIMEOUT_MS", "250"),
                ("CCGATE__POLICY__ON_UNKNOWN_CHAIR", "deny"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.gateway.url, "https://10.0.0.5:8043");
        assert_eq!(c.gateway.connect_timeout_ms, 250);
        assert_eq!(c.policy.on_unknown_chair, UnknownChair::Deny);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_with_env(MINIMAL, env(&[("CCGATE__GATEWAY__URLL", "x")])).unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml_with_env(&format!("{MINIMAL}\n[sessions]\npoll_timeout_ms = \"soon\"\n"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_timeout_ms"), "{err}");
    }

    #[test]
    fn numeric_looking_env_values_of_string_settings_stay_strings() {
        let c = Config::from_toml_with_env(
            MINIMAL,
            env(&[
                ("CCGATE__AUTH__AUDIENCE", "12345"),
                ("CCGATE__AUTH__TENANT_CLAIM", "true"),
                ("CCGATE__LOG__LEVEL", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.auth.audience, "12345");
        assert_eq!(c.auth.tenant_claim, "true");
        assert_eq!(c.log.level, "1");
        // A setting with no default (an optional path) is a string too; numbers stay numbers.
        let c = Config::from_toml_with_env(
            MINIMAL,
            env(&[("CCGATE__GATEWAY__TLS_SERVER_NAME", "10.0.0.1"), ("CCGATE__SERVER__MAX_CONNECTIONS", "7")]),
        )
        .unwrap();
        assert_eq!(c.gateway.tls_server_name.as_deref(), Some("10.0.0.1"));
        assert_eq!(c.server.max_connections, 7);
    }

    #[test]
    fn stray_ccgate_variables_are_reported_with_a_hint() {
        let stray = stray_env_vars(env(&[
            ("CCGATE_GATEWAY_URL", "x"),
            ("CCGATE_CONFIG", "c.toml"),
            ("CCGATE__GATEWAY__URL", "x"),
            ("CCGATE_SIM__LISTEN", "x"),
            ("HOME", "/root"),
        ]));
        assert_eq!(stray.len(), 1, "{stray:?}");
        assert!(stray[0].contains("CCGATE_GATEWAY_URL") && stray[0].contains("CCGATE__GATEWAY__URL"), "{stray:?}");
    }
}
