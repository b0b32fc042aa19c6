//! Remote keys against a real OpenID provider (node's certified `oidc-provider`): discovery,
//! its tokens accepted, a key rotation picked up without a restart, a removed key's tokens
//! refused after the refresh (also when a verification of them was cached), the provider down
//! with the last keys still working, a provider absent at start, and several issuers side by
//! side.

use crate::common;

use ccgate::config::ProviderConfig;
use common::oidc::{kid_of, OidcProvider, RESOURCE};
use common::{eventually, problem, Harness, Options, Reply, AUDIENCE, ISSUER};
use http::{Method, StatusCode};

/// The provider beside the harness's own file-keyed issuer, refreshed every second so the
/// tests see refreshes quickly.
fn with_provider(idp_issuer: String, ca: std::path::PathBuf) -> Options {
    Options {
        config: Box::new(move |c| {
            c.auth.providers.push(ProviderConfig {
                issuer: idp_issuer,
                audiences: vec![RESOURCE.into()],
                jwks_file: None,
                jwks_url: None,
                oidc_discovery: true,
                ca_file: Some(ca),
                hs256_secret_file: None,
                algorithms: vec!["ES256".into(), "RS256".into()],
                agent_claim: "agent_id".into(),
                tenant_claim: "tenant".into(),
                gateway: None,
            });
            c.auth.jwks_refresh_min_secs = 1;
            c.auth.jwks_refresh_max_secs = 1;
            c.auth.jwks_unknown_kid_interval_secs = 1;
            c.auth.jwks_startup_wait_ms = 300;
        }),
        ..Options::default()
    }
}

async fn session(h: &Harness, token: &str) -> Reply {
    h.call_with_token(Method::GET, "/v1/session", Some(token), "").await
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_the_provider_through_rotation_removal_and_outage() {
    let dir = tempdir();
    let mut idp = OidcProvider::start(&dir, None);
    let h = Harness::with(with_provider(idp.issuer.clone(), idp.ca_file.clone())).await;
    let fetched_ok = format!("ccgate_jwks_fetches_total{{issuer=\"{}\",result=\"ok\"}}", idp.issuer);

    // Discovery found the JWKS; ccgate is ready with the provider's keys.
    let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["remote_keys"][&idp.issuer], "loaded", "{}", r.text);
    let m = h.metrics().await;
    assert_eq!(sample(&m, &format!("ccgate_jwks_keys{{issuer=\"{}\"}}", idp.issuer)), 2.0, "ES256 + RS256");
    assert!(sample(&m, &fetched_ok) >= 1.0);
    // The last fetch as a Unix time: just now.
    let fetched_at = sample(&m, &format!("ccgate_jwks_last_fetch_timestamp_seconds{{issuer=\"{}\"}}", idp.issuer));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(fetched_at <= now && fetched_at > now - 60.0, "{fetched_at} vs now {now}");

    // Its token is accepted (sign in, then the session); the file-keyed issuer's still too.
    let first = idp.token("153").await;
    let r = h.call_with_token(Method::POST, "/v1/session", Some(&first), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(session(&h, &h.token("153")).await.status, StatusCode::OK, "the other issuer");

    // Rotation: a token signed with the new key is accepted at once, without a restart.
    let kids = idp.rotate().await;
    let rotated = idp.token("153").await;
    assert_eq!(kid_of(&rotated), kids[0]);
    assert_ne!(kid_of(&rotated), kid_of(&first));
    let r = session(&h, &rotated).await;
    assert_eq!(r.status, StatusCode::OK, "the new key was fetched on first sight: {}", r.text);
    assert_eq!(session(&h, &first).await.status, StatusCode::OK, "the old key is still published");

    // Removal: once ccgate refreshes, the old key's tokens are refused, though one of them
    // was verified (and cached) a moment ago.
    idp.retire_old_keys().await;
    eventually("the removed key's token is refused", || async {
        session(&h, &first).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    let r = session(&h, &first).await;
    assert_eq!(problem(&r)["reason"], "unknown_key", "{}", r.text);
    assert_eq!(session(&h, &rotated).await.status, StatusCode::OK);

    // The provider goes away: fetches fail, the last keys keep working, ccgate stays ready.
    idp.stop();
    let unreachable = format!("ccgate_jwks_fetches_total{{issuer=\"{}\",result=\"unreachable\"}}", idp.issuer);
    eventually("a fetch fails", || async { sample(&h.metrics().await, &unreachable) >= 1.0 }).await;
    let r = session(&h, &rotated).await;
    assert_eq!(r.status, StatusCode::OK, "the last good keys stay: {}", r.text);
    let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_absent_at_start_makes_ccgate_unready_until_its_keys_arrive() {
    let dir = tempdir();
    let port = common::closed_port().await;
    let issuer = format!("https://localhost:{port}");
    // The CA the provider will use is made now, so ccgate can be configured before it runs.
    let ca = OidcProvider::prepare(&dir);
    let h = Harness::with(with_provider(issuer.clone(), ca)).await;
    // Not ready, and the provider's tokens get 503 with Retry-After, not 401.
    let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json()["keys_loaded"], false);
    assert_eq!(r.json()["remote_keys"][&issuer], "missing", "{}", r.text);
    // Waiting for keys is not fetching them: the attempts keep their back-off (1 s here).
    let failed = format!("ccgate_jwks_fetches_total{{issuer=\"{issuer}\",result=\"unreachable\"}}");
    let attempts = sample(&h.metrics().await, &failed);
    assert!((1.0..=2.0).contains(&attempts), "{attempts} fetches within the 300 ms start-up wait");
    let dev = ccgate::devkeys::DevSigner::es256("k").unwrap();
    let r = session(&h, &dev.token(&issuer, RESOURCE, "153", 600).unwrap()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:keys-unavailable");
    assert!(r.headers.contains_key("retry-after"));
    // The other issuer is not held up.
    assert_eq!(session(&h, &h.token("154")).await.status, StatusCode::CONFLICT, "no session yet, but authenticated");

    let idp = OidcProvider::start(&dir, Some(port));
    tokio::time::timeout(common::WAIT, h.running().readiness.wait_ready()).await.expect("never ready");
    let r = h.call_with_token(Method::POST, "/v1/session", Some(&idp.token("153").await), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_is_checked_by_the_provider_its_issuer_names_only() {
    let dir = tempdir();
    let idp = OidcProvider::start(&dir, None);
    let h = Harness::with(with_provider(idp.issuer.clone(), idp.ca_file.clone())).await;
    // The harness's own key, claiming the provider's issuer: not the provider's key.
    let forged = h.es.token(&idp.issuer, RESOURCE, "153", 600).unwrap();
    let r = session(&h, &forged).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem(&r)["reason"], "unknown_key", "{}", r.text);
    // The provider's audience under the file issuer, and an issuer nobody configured.
    let r = session(&h, &h.es.token(ISSUER, RESOURCE, "153", 600).unwrap()).await;
    assert_eq!(problem(&r)["reason"], "wrong_audience", "{}", r.text);
    let r = session(&h, &h.es.token("https://elsewhere.example", AUDIENCE, "153", 600).unwrap()).await;
    assert_eq!(problem(&r)["reason"], "wrong_issuer", "{}", r.text);
    // Unknown key ids do not make ccgate hammer the provider: at most one fetch per interval.
    let m = h.metrics().await;
    let series = format!("ccgate_jwks_fetches_total{{issuer=\"{}\",result=\"ok\"}}", idp.issuer);
    let before = sample(&m, &series);
    for i in 0..20 {
        let t = ccgate::devkeys::DevSigner::es256(&format!("made-up-{i}")).unwrap();
        assert_eq!(
            session(&h, &t.token(&idp.issuer, RESOURCE, "153", 600).unwrap()).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let after = sample(&h.metrics().await, &series);
    assert!(after - before <= 3.0, "20 unknown keys caused {} fetches", after - before);
    h.stop().await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ccgate-oidc-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
