//! [`ConfigError`], the one error of loading and checking a config: below every section, whose
//! checks return it, and below the override engine, which reads and parses.

use std::path::PathBuf;

/// A configuration problem, naming the key where one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: check the path and permissions.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML did not parse or a value has the wrong type; the message shows the key.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("invalid config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}
