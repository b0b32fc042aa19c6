//! Checking one token: reading it from the request, the identity [`Provider`] it names, and the
//! full verification by that provider (algorithm, key, signature, time, issuer, audience,
//! agent and tenant claims) that [`verify_with`] does. Nothing here remembers anything.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::refusals::Refused;
use super::routing::Routing;
use crate::config::ProviderConfig;
use crate::gateway::parse_agent_id;
use crate::jwks::remote::RemoteKeys;
use crate::jwks::KeySet;
use crate::labels::AuthFailureReason as Reason;
use crate::ops::Principal;

/// Longest tenant value kept; longer ones share the "no tenant" bucket rather than letting a
/// token make ccgate store arbitrary amounts of key data.
const MAX_TENANT_LEN: usize = 128;
/// The longest `sub` the audit line carries (OpenID Connect's own limit is 255 ASCII
/// characters); a longer one is left out rather than cut to something it is not.
const MAX_SUBJECT_LEN: usize = 256;

/// One identity provider, ready to verify.
pub(super) struct Provider {
    pub(super) issuer: String,
    pub(super) audiences: Vec<String>,
    pub(super) keys: Keys,
    pub(super) hs256: Option<DecodingKey>,
    pub(super) allowed: Vec<Algorithm>,
    pub(super) agent_claim: String,
    pub(super) tenant_claim: String,
    /// The gateway all its tokens are for (`gateway` of `[[auth.providers]]`).
    pub(super) gateway: Option<usize>,
}

pub(super) enum Keys {
    /// Read from a file (re-read on reload only).
    Static(KeySet),
    /// Fetched and refreshed.
    Remote(Arc<RemoteKeys>),
    /// HS256 only.
    None,
}

impl Provider {
    /// Bumped whenever a key this provider verified with may have gone: cached verifications
    /// made before are void.
    pub(super) fn removals(&self) -> u64 {
        match &self.keys {
            Keys::Remote(r) => r.removals(),
            _ => 0,
        }
    }
}

/// The provider's algorithms as `jsonwebtoken` names them.
pub(super) fn algorithms(p: &ProviderConfig) -> Result<Vec<Algorithm>, String> {
    p.algorithms
        .iter()
        .map(|a| match a.as_str() {
            "RS256" => Ok(Algorithm::RS256),
            "ES256" => Ok(Algorithm::ES256),
            "EdDSA" => Ok(Algorithm::EdDSA),
            "HS256" if p.hs256_secret_file.is_some() => Ok(Algorithm::HS256),
            other => Err(format!("{}: algorithm {other} not usable", p.issuer)),
        })
        .collect()
}

pub(super) fn hs256_key(path: &std::path::Path) -> Result<DecodingKey, String> {
    let raw = crate::secret_file::read(path, "HS256 secret file")?;
    let s = String::from_utf8(raw).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let s = s.trim_end_matches(['\n', '\r']);
    // RFC 7518 §3.2: the HS256 key must be at least as long as the hash output.
    if s.len() < 32 {
        return Err(format!("{}: HS256 secret must be at least 32 bytes", path.display()));
    }
    Ok(DecodingKey::from_secret(s.as_bytes()))
}

/// Full verification by one provider; returns the principal and the token's `exp`.
pub(super) fn verify_with(
    p: &Provider,
    routing: &Routing,
    token: &str,
    leeway: u64,
) -> Result<(Principal, u64), Refused> {
    let refuse = |r| Refused::Token(r);
    let (alg, kid) = peek_header(token).map_err(refuse)?;
    let alg = match alg.as_str() {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        _ => return Err(refuse(Reason::AlgorithmNotAllowed)),
    };
    if !p.allowed.contains(&alg) {
        return Err(refuse(Reason::AlgorithmNotAllowed));
    }
    let remote_set;
    let key = if alg == Algorithm::HS256 {
        p.hs256.as_ref().ok_or(refuse(Reason::AlgorithmNotAllowed))?
    } else {
        let set = match &p.keys {
            Keys::Static(set) => set,
            Keys::Remote(r) => {
                remote_set = r.keys().ok_or(Refused::KeysUnavailable)?;
                &*remote_set
            }
            Keys::None => return Err(refuse(Reason::UnknownKey)),
        };
        set.find(kid.as_deref().unwrap_or_default(), alg).ok_or(refuse(Reason::UnknownKey))?
    };
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    // jsonwebtoken checks iss/aud only when set, and presence only when listed here.
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[&p.issuer]);
    v.set_audience(&p.audiences);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| {
        refuse(match e.kind() {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            ErrorKind::ExpiredSignature => Reason::Expired,
            ErrorKind::ImmatureSignature => Reason::NotYetValid,
            ErrorKind::InvalidIssuer => Reason::WrongIssuer,
            ErrorKind::InvalidAudience => Reason::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => Reason::MissingClaim,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Reason::AlgorithmNotAllowed,
            ErrorKind::InvalidKeyFormat | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
                Reason::BadSignature
            }
            _ => Reason::Malformed,
        })
    })?;
    let agent = match data.claims.get(&p.agent_claim) {
        None | Some(Value::Null) => return Err(refuse(Reason::MissingAgent)),
        Some(Value::String(s)) => parse_agent_id(s),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| parse_agent_id(&n.to_string())),
        Some(_) => None,
    }
    .ok_or(refuse(Reason::InvalidAgent))?;
    let tenant = match data.claims.get(&p.tenant_claim) {
        Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TENANT_LEN => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let exp = data.claims.get("exp").and_then(Value::as_u64).ok_or(refuse(Reason::MissingClaim))?;
    let gateway = routing.route(p.gateway, &data.claims).map_err(refuse)?;
    let subject = match data.claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_SUBJECT_LEN => {
            Some(crate::session::view::printable(s).into())
        }
        _ => None,
    };
    Ok((Principal { agent_id: agent.to_string(), tenant, gateway, subject }, exp))
}

/// The payload's `iss`, unverified: only to pick the provider that then verifies everything.
pub(super) fn peek_issuer(token: &str) -> Result<String, Reason> {
    let payload = token.split('.').nth(1).ok_or(Reason::Malformed)?;
    let raw = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Reason::Malformed)?;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let claims: Iss = serde_json::from_slice(&raw).map_err(|_| Reason::Malformed)?;
    claims.iss.ok_or(Reason::MissingClaim)
}

/// Extracts the token from `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750).
pub(super) fn bearer_token(headers: &HeaderMap) -> Result<&str, Reason> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(Reason::MissingToken)?;
    if values.next().is_some() {
        return Err(Reason::Malformed);
    }
    let s = value.to_str().map_err(|_| Reason::Malformed)?;
    let (scheme, token) = s.split_once(' ').ok_or(Reason::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reason::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Reason::MissingToken);
    }
    Ok(token)
}

/// Reads `alg` and `kid` from the JOSE header without trusting anything else in it.
fn peek_header(token: &str) -> Result<(String, Option<String>), Reason> {
    let head = token.split('.').next().ok_or(Reason::Malformed)?;
    let raw = URL_SAFE_NO_PAD.decode(head).map_err(|_| Reason::Malformed)?;
    let v: Map<String, Value> = serde_json::from_slice(&raw).map_err(|_| Reason::Malformed)?;
    if v.contains_key("crit") {
        // Whatever it lists, ccgate implements no extension, so it must refuse (RFC 7515
        // §4.1.11); an empty or malformed `crit` is invalid anyway.
        return Err(Reason::Crit);
    }
    let alg = v.get("alg").and_then(Value::as_str).ok_or(Reason::Malformed)?.to_owned();
    let kid = match v.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Reason::Malformed),
    };
    Ok((alg, kid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::auth::tests::{good, headers};

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&HeaderMap::new()), Err(Reason::MissingToken));
        assert_eq!(bearer_token(&headers("Basic abc")), Err(Reason::MissingToken));
        assert_eq!(bearer_token(&headers("Bearer ")), Err(Reason::MissingToken));
        assert_eq!(bearer_token(&headers("bearer a.b.c")), Ok("a.b.c"));
    }

    #[test]
    fn header_peek_rejects_garbage_and_none() {
        assert_eq!(peek_header("!!!.b.c"), Err(Reason::Malformed));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(peek_header(&format!("{none}.e30.")).unwrap().0, "none");
        let bad_kid = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":5}"#);
        assert_eq!(peek_header(&format!("{bad_kid}.e30.x")), Err(Reason::Malformed));
    }

    #[test]
    fn a_crit_header_is_refused_whatever_it_lists() {
        let (es, a) = good();
        let t = es.token("https://idp.test", "ccgate", "153", 600).unwrap();
        assert!(a.verify(&t).is_ok());
        let (_, rest) = t.split_once('.').unwrap();
        for crit in [r#"["exp"]"#, r#"["x-unknown"]"#, "[]", r#""b64""#] {
            let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"es-1","crit":{crit}}}"#));
            assert_eq!(a.verify(&format!("{head}.{rest}")), Err(Reason::Crit), "{crit}");
        }
    }
}
