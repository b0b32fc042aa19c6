//! Token refusals: each case gets 401, a `WWW-Authenticate` header and a problem body saying
//! why, never echoes the token, and sends nothing to the gateway.

use crate::common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ccgate::clock::unix_secs as now_secs;
use ccgate::devkeys::DevSigner;
use common::{problem, rsa, Harness, AUDIENCE, ISSUER};
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn claims(agent: Value) -> Value {
    let now = now_secs();
    json!({"iss": ISSUER, "aud": AUDIENCE, "agent_id": agent, "iat": now, "nbf": now, "exp": now + 300})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

fn without(mut c: Value, key: &str) -> Value {
    c.as_object_mut().unwrap().remove(key);
    c
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason_and_nothing_reaches_the_gateway() {
    let h = Harness::start().await;
    let ok = claims(json!("153"));
    let stranger = DevSigner::es256("es-1").unwrap(); // same kid, different key
    let unknown_kid = DevSigner::es256("nobody").unwrap();
    let hs_confusion = jsonwebtoken::encode(
        &Header { kid: Some("rsa-1".into()), ..Header::new(Algorithm::HS256) },
        &ok,
        &EncodingKey::from_secret(&rsa().public_pem),
    )
    .unwrap();
    let now = now_secs() as i64;
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, "missing_token"),
        ("not a JWT", Some("not-a-jwt".into()), "malformed"),
        ("three garbage parts", Some("a.b.c".into()), "malformed"),
        ("alg none", Some(unsigned(json!({"alg": "none", "typ": "JWT"}), &ok)), "algorithm_not_allowed"),
        ("HS256 signed with the RSA public key", Some(hs_confusion), "algorithm_not_allowed"),
        ("bad signature", Some(stranger.sign(&ok).unwrap()), "bad_signature"),
        ("unknown kid", Some(unknown_kid.sign(&ok).unwrap()), "unknown_key"),
        ("expired", Some(h.es.sign(&with(ok.clone(), "exp", json!(now - 3600))).unwrap()), "expired"),
        ("not yet valid", Some(h.es.sign(&with(ok.clone(), "nbf", json!(now + 3600))).unwrap()), "not_yet_valid"),
        (
            "wrong issuer",
            Some(h.es.sign(&with(ok.clone(), "iss", json!("https://evil.invalid"))).unwrap()),
            "wrong_issuer",
        ),
        ("wrong audience", Some(h.es.sign(&with(ok.clone(), "aud", json!("someone-else"))).unwrap()), "wrong_audience"),
        ("no exp", Some(h.es.sign(&without(ok.clone(), "exp")).unwrap()), "missing_claim"),
        ("no iss", Some(h.es.sign(&without(ok.clone(), "iss")).unwrap()), "missing_claim"),
        ("no aud", Some(h.es.sign(&without(ok.clone(), "aud")).unwrap()), "missing_claim"),
        ("no agent", Some(h.es.sign(&without(ok.clone(), "agent_id")).unwrap()), "missing_agent"),
        ("agent 100", Some(h.es.sign(&claims(json!("100"))).unwrap()), "invalid_agent"),
        ("agent 1000000", Some(h.es.sign(&claims(json!(1_000_000))).unwrap()), "invalid_agent"),
        ("agent abc", Some(h.es.sign(&claims(json!("abc"))).unwrap()), "invalid_agent"),
        ("agent 0153", Some(h.es.sign(&claims(json!("0153"))).unwrap()), "invalid_agent"),
    ];
    for (name, token, reason) in &cases {
        let r = h.call_with_token(Method::POST, "/v1/conference/announcement/stop", token.as_deref(), "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text);
        let p = problem(&r);
        assert_eq!(p["reason"], *reason, "{name}: {p}");
        let www = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
        assert!(www.starts_with("Bearer realm=\"ccgate\""), "{name}: {www}");
        if *reason == "missing_token" {
            assert!(!www.contains("error="), "RFC 6750: no error code without credentials: {www}");
        } else {
            assert!(www.contains("error=\"invalid_token\""), "{name}: {www}");
        }
        if let Some(t) = token {
            let signature = t.rsplit('.').next().unwrap();
            for part in [t.as_str(), signature] {
                if part.len() > 8 {
                    assert!(!r.text.contains(part) && !www.contains(part), "{name}: token echoed");
                }
            }
        }
    }
    assert_eq!(h.sim.total(), 0, "no refused request reached the gateway");
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_auth_failures_total{reason="expired"} 1"#), "{m}");
    assert!(m.contains(r#"ccgate_auth_failures_total{reason="algorithm_not_allowed"} 2"#), "{m}");
    assert!(
        m.contains(&format!(
            r#"ccgate_requests_total{{gateway="",method="stopVoiceToConf",outcome="unauthenticated"}} {}"#,
            cases.len()
        )),
        "{m}"
    );
    h.stop().await;
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_accepted() {
    let h = Harness::start().await;
    let c = claims(json!(153));
    for (name, token) in [
        ("RS256 (openssl key)", rsa().signer.sign(&c).unwrap()),
        ("ES256", h.es.sign(&c).unwrap()),
        ("EdDSA", h.ed.sign(&c).unwrap()),
    ] {
        let r = h.call_with_token(Method::GET, "/v1/session", Some(&token), "").await;
        // Authenticated: the answer is about the session, not the token.
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert_eq!(problem(&r)["type"], "urn:ccgate:problem:no-session", "{name}");
    }
    h.stop().await;
}

#[tokio::test]
async fn leeway_accepts_small_clock_skew() {
    let h = Harness::start().await;
    let now = now_secs() as i64;
    // Expired 5 s ago: within the default 30 s leeway.
    let t = h.es.sign(&with(claims(json!("153")), "exp", json!(now - 5))).unwrap();
    let r = h.call_with_token(Method::GET, "/v1/session", Some(&t), "").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    h.stop().await;
}

#[tokio::test]
async fn agent_without_credentials_is_403_and_not_signed_in() {
    let h = Harness::start().await;
    let r = h.call(Method::POST, "/v1/session", Some("999"), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:no-credentials");
    assert_eq!(h.sim.total(), 0);
    h.stop().await;
}
