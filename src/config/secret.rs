//! [`Secret`]: a config string that must never reach a log, `check-config` or `GET /config`
//! (the Redis URLs with their passwords). Its own file because the store section and the rest
//! of the crate use it.
//!
//! A secret has one printed form, its mask ([`mask_secret`]): `***`, or for a URL the URL with
//! its user info and query masked (`redis://***@redis:6379/0?***`), because which host is
//! meant is not secret and an operator needs it. `Serialize` writes that mask, so every path
//! that prints the config through serde (`check-config`, `/config`, the reload's old → new
//! values) masks a new secret field the day it is declared as a `Secret`.
//!
//! To notice that a secret changed without printing it, a serialization inside
//! [`fingerprinted`] writes a keyed fingerprint instead ([`fingerprint`]: HMAC-SHA-256 under a
//! key drawn at random when the process starts). The raw value never leaves this file except
//! through [`Secret::expose`], for the code that connects with it.

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// What a secret, or the secret part of a URL, prints as.
pub const MASK: &str = "***";

/// Hex digits of a fingerprint kept: 128 bits tell two values apart as well as the whole tag.
const FINGERPRINT_HEX: usize = 32;

/// A secret string: never printed by `Debug`, serialized masked.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if FINGERPRINTING.get() {
            s.serialize_str(&fingerprint(&self.0))
        } else {
            s.serialize_str(&mask_secret(&self.0))
        }
    }
}

/// `value` as it may be printed: a URL (`scheme://…`) with everything before its authority's
/// last `@` masked (a password may hold any character, `/`, `?`, `#` and quotes included) and
/// its query masked; anything else masked whole.
pub fn mask_secret(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else { return MASK.to_owned() };
    let (user, host) = match rest.rsplit_once('@') {
        Some((_, host)) => (format!("{MASK}@"), host),
        None => (String::new(), rest),
    };
    format!("{scheme}://{user}{}", super::net::mask_query(host))
}

/// A URL that may carry a secret in its path as well (a webhook receiver's: Slack-style
/// `…/services/T/B/SECRET`), as it may be printed: scheme and host, the rest masked.
pub fn mask_url_path(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else { return MASK.to_owned() };
    // The authority ends at the path, query or fragment; an `@` after it is the path's.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (user, host) = match authority.rsplit_once('@') {
        Some((_, host)) => (format!("{MASK}@"), host),
        None => (String::new(), authority),
    };
    let tail = if rest.len() > authority.len() { format!("/{MASK}") } else { String::new() };
    format!("{scheme}://{user}{host}{tail}")
}

/// `serialize_with` for a URL held as a plain string whose path may be secret: printed as
/// [`mask_url_path`] says, fingerprinted (to tell a change) as a [`Secret`] is.
pub fn serialize_url_path_masked<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    if FINGERPRINTING.get() {
        s.serialize_str(&fingerprint(value))
    } else {
        s.serialize_str(&mask_url_path(value))
    }
}

thread_local! {
    /// Set while [`fingerprinted`] runs its closure on this thread.
    static FINGERPRINTING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every [`Secret`] serializing as its [`fingerprint`] (on this thread; serde
/// serializes on the caller's). Restored on return and on unwind.
pub fn fingerprinted<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FINGERPRINTING.set(self.0);
        }
    }
    let _restore = Restore(FINGERPRINTING.replace(true));
    f()
}

/// A keyed fingerprint of `value`: `hmac-sha256:` and the first 128 bits of HMAC-SHA-256 under
/// this process's random key, in hex. Equal values give equal fingerprints within one process;
/// without the key, which never leaves memory, a fingerprint cannot be used to test guesses
/// of the value (a plain hash of a short password could be brute-forced offline).
pub fn fingerprint(value: &str) -> String {
    use aws_lc_rs::hmac;
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        // Without randomness the process has worse problems (TLS needs it too); a key from the
        // clock still keeps fingerprints from being a bare hash.
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            hmac::Key::new(hmac::HMAC_SHA256, &seed.as_nanos().to_le_bytes())
        })
    });
    let tag = hmac::sign(key, value.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac-sha256:{}", &hex[..FINGERPRINT_HEX])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_whose_path_may_be_secret_shows_its_host_only() {
        assert_eq!(
            super::mask_url_path("https://hooks.example.com/services/T0/B1/s3cr3t?x=1"),
            "https://hooks.example.com/***"
        );
        assert_eq!(super::mask_url_path("https://u:p@h:8443/a"), "https://***@h:8443/***");
        assert_eq!(super::mask_url_path("https://h:8443"), "https://h:8443");
        assert_eq!(super::mask_url_path("not a url"), "***");
        assert_eq!(super::mask_url_path("https://h/services/T/B/abc@SECRETPART"), "https://h/***");
    }

    use super::*;

    #[test]
    fn secret_debug_is_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn a_secret_serializes_masked_and_as_a_keyed_fingerprint_only_when_asked() {
        let s = Secret::new("redis://:hunter2@r:6379/0?x=y");
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""redis://***@r:6379/0?***""#);
        assert_eq!(serde_json::to_string(&Secret::new("hunter2")).unwrap(), r#""***""#);
        let fp = fingerprinted(|| serde_json::to_string(&s).unwrap());
        assert!(fp.starts_with("\"hmac-sha256:") && !fp.contains("hunter2"), "{fp}");
        assert_eq!(fp, format!("\"{}\"", fingerprint(s.expose())), "the same within the process");
        assert_ne!(fingerprint("hunter2"), fingerprint("hunter3"));
        // Back to masking once the closure returned.
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""redis://***@r:6379/0?***""#);
    }
}
