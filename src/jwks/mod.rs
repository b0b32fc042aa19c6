//! Public keys for verifying app tokens: a JWK Set read from a file ([`KeySet::from_file`])
//! or fetched from an identity provider and kept fresh ([`remote::RemoteKeys`]).
//!
//! Identity providers publish encryption keys and other algorithms beside their signing keys,
//! so each key is judged on its own ([`usable_key`]): one that does not fit is skipped with a
//! log line, and only a set with no usable key at all is an error.

pub mod remote;

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Smallest RSA modulus accepted (NIST SP 800-57: 2048 bits until 2030).
const MIN_RSA_BITS: usize = 2048;

pub struct Key {
    pub alg: Algorithm,
    pub key: DecodingKey,
    /// The JWK's public parameters as published, to tell a changed key from the same one.
    fingerprint: String,
}

/// Keys by `kid`. A key without `kid` is stored under "" and used only by tokens without one.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, Vec<Key>>,
}

impl KeySet {
    /// The usable keys of a JWK Set's `keys` array, and why each other key was skipped.
    pub fn from_jwks(jwks: &[Value]) -> (Self, Vec<String>) {
        let mut keys: HashMap<String, Vec<Key>> = HashMap::new();
        let mut skipped = Vec::new();
        for raw in jwks {
            let kid = raw.get("kid").and_then(Value::as_str).unwrap_or_default().to_owned();
            let usable = usable_key(raw).and_then(|(jwk, alg)| {
                let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unreadable ({e})"))?;
                Ok((alg, key))
            });
            match usable {
                Ok((alg, key)) => keys.entry(kid).or_default().push(Key { alg, key, fingerprint: fingerprint(raw) }),
                Err(why) => {
                    let shown = if kid.is_empty() { "(no kid)" } else { &kid };
                    tracing::warn!(kid = %shown, reason = %why, "JWKS key skipped");
                    skipped.push(format!("{shown}: {why}"));
                }
            }
        }
        (Self { keys }, skipped)
    }

    /// Reads a JWK Set file. Only the set's shape must be right; each key is judged on its own.
    pub fn from_file(path: &Path) -> Result<(Self, Vec<String>), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let keys = parse_set(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::from_jwks(&keys))
    }

    /// The key for a token's `kid` and algorithm.
    pub fn find(&self, kid: &str, alg: Algorithm) -> Option<&DecodingKey> {
        self.keys.get(kid)?.iter().find(|k| k.alg == alg).map(|k| &k.key)
    }

    pub fn len(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys verify one of `allowed`.
    pub fn usable_with(&self, allowed: &[Algorithm]) -> usize {
        self.keys.values().flatten().filter(|k| allowed.contains(&k.alg)).count()
    }

    /// Key ids in `self` that `newer` no longer has, or has with other parameters: tokens they
    /// verified must be verified again.
    pub fn removed_in(&self, newer: &KeySet) -> Vec<String> {
        let mut gone: Vec<String> = self
            .keys
            .iter()
            .filter(|(kid, keys)| {
                keys.iter().any(|k| {
                    newer
                        .keys
                        .get(*kid)
                        .is_none_or(|n| !n.iter().any(|m| m.alg == k.alg && m.fingerprint == k.fingerprint))
                })
            })
            .map(|(kid, _)| kid.clone())
            .collect();
        gone.sort();
        gone
    }

    /// Key ids in `newer` that `self` does not have.
    pub fn added_in(&self, newer: &KeySet) -> Vec<String> {
        let mut new: Vec<String> = newer.keys.keys().filter(|kid| !self.keys.contains_key(*kid)).cloned().collect();
        new.sort();
        new
    }
}

/// The `keys` array of a JWK Set document.
pub fn parse_set(body: &[u8]) -> Result<Vec<Value>, String> {
    let set: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    match set.get("keys") {
        Some(Value::Array(keys)) => Ok(keys.clone()),
        _ => Err("not a JWK Set (no \"keys\" array)".into()),
    }
}

/// A key's public parameters, in a stable order.
fn fingerprint(raw: &Value) -> String {
    let part = |k: &str| raw.get(k).and_then(Value::as_str).unwrap_or_default();
    ["kty", "crv", "n", "e", "x", "y", "alg"].iter().map(|k| part(k)).collect::<Vec<_>>().join(".")
}

/// A key ccgate can verify signatures with, and for which algorithm; or why not.
pub fn usable_key(raw: &Value) -> Result<(Jwk, Algorithm), String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("not a JWK ccgate can read ({e})"))?;
    if jwk.common.public_key_use == Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) {
        return Err("an encryption key (use: enc)".into());
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD.decode(p.n.trim_end_matches('=')).map_err(|_| "RSA modulus is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("an RSA key of about {bits} bits; at least {MIN_RSA_BITS} are required"));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return Err("a key type or curve ccgate does not verify with (RSA, P-256, Ed25519 only)".into()),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let (declared, implied_name) = (format!("{declared:?}"), format!("{implied:?}"));
        if declared != implied_name {
            return Err(format!("alg {declared}, which ccgate does not verify"));
        }
    }
    Ok((jwk, implied))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(signers: &[&crate::devkeys::DevSigner]) -> KeySet {
        let jwks = crate::devkeys::jwks(signers);
        KeySet::from_jwks(jwks["keys"].as_array().unwrap()).0
    }

    #[test]
    fn removed_and_added_keys_are_told_apart_from_kept_ones() {
        let a = crate::devkeys::DevSigner::es256("a").unwrap();
        let b = crate::devkeys::DevSigner::es256("b").unwrap();
        let a_again = crate::devkeys::DevSigner::es256("a").unwrap();
        let (old, new) = (set(&[&a]), set(&[&a, &b]));
        assert!(old.removed_in(&new).is_empty());
        assert_eq!(old.added_in(&new), vec!["b".to_owned()]);
        assert_eq!(new.removed_in(&set(&[&b])), vec!["a".to_owned()]);
        // Same kid, other key material: the old key is gone.
        assert_eq!(old.removed_in(&set(&[&a_again])), vec!["a".to_owned()]);
    }
}
