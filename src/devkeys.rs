//! Throw-away key material for `ccgate demo` and the tests: a CA, server certificates signed
//! by it, and JWT signing keys with their JWK Set. Generated in memory at start; nothing here
//! is ever meant for production.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};

/// A CA and one server certificate for the given names (DNS names or IP addresses).
pub struct DevPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub fn dev_pki(names: &[&str]) -> Result<DevPki, String> {
    let e = |e: rcgen::Error| format!("generating dev certificates: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "ccgate throw-away dev CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(e)?;
    let mut leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map_err(e)?;
    leaf.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
    let cert = leaf.signed_by(&key, &issuer).map_err(e)?;
    Ok(DevPki { ca_pem: ca_cert.pem(), server_cert_pem: cert.pem(), server_key_pem: key.serialize_pem() })
}

/// A JWT signing key and its public JWK.
pub struct DevSigner {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    pub jwk: Value,
}

impl DevSigner {
    /// An ES256 (P-256) key.
    pub fn es256(kid: &str) -> Result<Self, String> {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let raw = kp.public_key_raw();
        // Uncompressed point: 0x04 || x (32) || y (32).
        if raw.len() != 65 || raw[0] != 4 {
            return Err("unexpected P-256 public key encoding".into());
        }
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
        Ok(Self { kid: kid.into(), alg: Algorithm::ES256, key, jwk })
    }

    /// An Ed25519 (EdDSA) key.
    pub fn ed25519(kid: &str) -> Result<Self, String> {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| e.to_string())?;
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw()),
        });
        let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
        Ok(Self { kid: kid.into(), alg: Algorithm::EdDSA, key, jwk })
    }

    /// An RSA key from PEM (PKCS#8 or PKCS#1) and its public modulus/exponent (big-endian).
    pub fn rsa_from_pem(kid: &str, pem: &[u8], modulus: &[u8], exponent: &[u8]) -> Result<Self, String> {
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(modulus),
            "e": URL_SAFE_NO_PAD.encode(exponent),
        });
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| e.to_string())?;
        Ok(Self { kid: kid.into(), alg: Algorithm::RS256, key, jwk })
    }

    /// Signs arbitrary claims.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).map_err(|e| e.to_string())
    }

    /// A token for `agent` valid for `ttl_secs`.
    pub fn token(&self, issuer: &str, audience: &str, agent: &str, ttl_secs: u64) -> Result<String, String> {
        let now = crate::clock::unix_secs();
        self.sign(&json!({
            "iss": issuer, "aud": audience, "sub": format!("agent-{agent}"),
            "agent_id": agent, "iat": now, "nbf": now, "exp": now + ttl_secs,
        }))
    }
}

/// A JWK Set document with the given signers' public keys.
pub fn jwks(signers: &[&DevSigner]) -> Value {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;
    use crate::edge::auth::Authenticator;

    #[test]
    fn es256_and_eddsa_tokens_verify_against_their_jwks() {
        let es = DevSigner::es256("k1").unwrap();
        let ed = DevSigner::ed25519("k2").unwrap();
        let set = jwks(&[&es, &ed])["keys"].as_array().unwrap().clone();
        let cfg = AuthConfig { issuer: "iss".into(), audience: "aud".into(), ..AuthConfig::default() };
        let a = Authenticator::new(&cfg, &set, None).unwrap();
        for s in [&es, &ed] {
            let t = s.token("iss", "aud", "153", 60).unwrap();
            assert_eq!(a.verify(&t).unwrap().agent_id, "153");
        }
    }

    #[test]
    fn pki_builds() {
        let p = dev_pki(&["localhost", "127.0.0.1"]).unwrap();
        assert!(p.ca_pem.contains("BEGIN CERTIFICATE"));
        assert!(p.server_key_pem.contains("PRIVATE KEY"));
    }
}
