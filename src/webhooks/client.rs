//! One endpoint's HTTP client: HTTPS with the endpoint's CAs (or the system's), HTTP/1.1
//! connections kept alive between attempts, redirects never followed (hyper-util's client
//! follows none), and the receiver's name resolved once per new connection, with every
//! loopback, link-local and private address refused unless the endpoint allows them: the
//! connection goes to an address the check saw, so a name that resolves differently a second
//! time (DNS rebinding) cannot slip past it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{is_public_address, WebhookConfig};
use crate::labels::WebhookOutcome;

/// A receiver's answer body is read (so the connection can be kept) up to this much; a
/// longer one costs the connection instead.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Idle connections to a receiver are closed after this: below the 60 s that load balancers
/// commonly allow, so ccgate closes first and never writes into a connection already gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// A TCP and TLS handshake that has not completed by then will not. It bounds connections
/// the attempt's own timeout cannot: hyper-util's client races a new connection against an
/// idle one becoming free and, when the idle one wins, finishes the new one in the background.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The `Retry-After` a receiver may ask for at most is the endpoint's longest scheduled
/// wait; this floor keeps an answer of `0` from becoming a tight loop.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

type HttpsClient = Client<Deadline<hyper_rustls::HttpsConnector<HttpConnector<Resolver>>>, Full<Bytes>>;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: WebhookOutcome,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// `Retry-After` of a 429 or 503, as a wait.
    pub retry_after: Option<Duration>,
    /// Why it failed, for the operators' view (no secret: a status, a reason class).
    pub why: String,
}

/// The headers of one attempt: Standard Webhooks' three.
pub struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: u64,
    pub signature: String,
}

pub struct EndpointClient {
    client: HttpsClient,
    url: http::Uri,
    timeout: Duration,
}

impl EndpointClient {
    pub fn new(cfg: &WebhookConfig) -> Result<Self, String> {
        let url: http::Uri = cfg.url.parse().map_err(|e| format!("url: {e}"))?;
        let tls = match &cfg.ca_file {
            Some(p) => crate::tls::client_config(Some(p)).map_err(|e| format!("ca_file: {e}"))?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() && url.scheme_str() == Some("https") {
                    return Err("no system CA certificates found; set ca_file".into());
                }
                crate::tls::client_config_with_roots(roots)?
            }
        };
        let mut http = HttpConnector::new_with_resolver(Resolver { allow_private: cfg.allow_private });
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let https = Deadline { inner: https, within: CONNECT_TIMEOUT };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(cfg.max_in_flight)
            .build(https);
        Ok(Self { client, url, timeout: crate::config::ms(cfg.timeout_ms) })
    }

    /// Sends `body` once with `headers`; never follows a redirect. `longest_wait` bounds a
    /// `Retry-After`.
    pub async fn send(&self, body: Bytes, headers: Signed<'_>, longest_wait: Duration) -> Answer {
        let mut req = Request::post(self.url.clone());
        if let Some(h) = req.headers_mut() {
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(http::header::USER_AGENT, HeaderValue::from_static(concat!("ccgate/", env!("CARGO_PKG_VERSION"))));
            for (name, value) in [
                ("webhook-id", headers.id.to_owned()),
                ("webhook-timestamp", headers.timestamp.to_string()),
                ("webhook-signature", headers.signature),
            ] {
                if let Ok(v) = HeaderValue::try_from(value) {
                    h.insert(name, v);
                }
            }
        }
        let Ok(req) = req.body(Full::new(body)) else {
            return failure(WebhookOutcome::Connect, "the request could not be built".into());
        };
        let exchange = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            // Read the answer so the connection can serve the next attempt; one that is too
            // long closes it instead, which is all it costs.
            let _ = Limited::new(body, MAX_ANSWER_BYTES).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(parts)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => failure(WebhookOutcome::Timeout, format!("no answer within {} ms", self.timeout.as_millis())),
            Ok(Err(e)) => classify_error(&e),
            Ok(Ok(parts)) => judge(parts.status, &parts.headers, longest_wait),
        }
    }
}

fn failure(outcome: WebhookOutcome, why: String) -> Answer {
    Answer { outcome, status: None, retry_after: None, why }
}

/// What a status means for the delivery.
pub fn judge(status: StatusCode, headers: &http::HeaderMap, longest_wait: Duration) -> Answer {
    let code = status.as_u16();
    let outcome = match code {
        200..=299 => WebhookOutcome::Delivered,
        410 => WebhookOutcome::Gone,
        429 | 503 => WebhookOutcome::Throttled,
        300..=399 => WebhookOutcome::Redirect,
        400..=499 => WebhookOutcome::Rejected,
        _ => WebhookOutcome::ServerError,
    };
    let retry_after = (outcome == WebhookOutcome::Throttled)
        .then(|| headers.get(http::header::RETRY_AFTER).and_then(|v| retry_after(v, std::time::SystemTime::now())))
        .flatten()
        .map(|d| d.clamp(MIN_RETRY_AFTER, longest_wait.max(MIN_RETRY_AFTER)));
    let why = match outcome {
        WebhookOutcome::Delivered => String::new(),
        _ => format!("HTTP {code}"),
    };
    Answer { outcome, status: Some(code), retry_after, why }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(v: &HeaderValue, now: std::time::SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A transport failure's outcome: a refused address is named as such.
fn classify_error(e: &hyper_util::client::legacy::Error) -> Answer {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return failure(WebhookOutcome::ForbiddenAddress, r.to_string());
        }
        if let Some(t) = s.downcast_ref::<ConnectTimedOut>() {
            return failure(WebhookOutcome::Timeout, t.to_string());
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return failure(WebhookOutcome::Connect, format!("connection failed: {}", io.kind()));
        }
        source = s.source();
    }
    let why = if e.is_connect() { "connection or TLS handshake failed" } else { "the exchange failed" };
    failure(WebhookOutcome::Connect, why.into())
}

/// A connector with one deadline over name resolution, TCP and TLS together (see
/// [`CONNECT_TIMEOUT`]): a receiver that accepts TCP and never finishes the handshake holds
/// no connection, task or descriptor past it.
#[derive(Clone)]
pub struct Deadline<C> {
    inner: C,
    within: Duration,
}

/// The connection took longer than [`CONNECT_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("the connection and TLS handshake did not complete within {0:?}")]
struct ConnectTimedOut(Duration);

impl<C> tower_service::Service<http::Uri> for Deadline<C>
where
    C: tower_service::Service<http::Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let within = self.within;
        Box::pin(async move {
            match tokio::time::timeout(within, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(within)) as Self::Error),
            }
        })
    }
}

/// Why a name was not connected to.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the name resolves only to loopback, link-local or private addresses (allow_private is off)")]
    Private,
    #[error("the name did not resolve")]
    Unresolved,
}

/// The connector's resolver: the system's, minus what the endpoint may not reach.
#[derive(Clone)]
pub struct Resolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(Box::new(Refused::Unresolved) as Self::Error);
            }
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|a| allow_private || is_public_address(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused::Private) as Self::Error);
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn statuses_mean_what_standard_webhooks_senders_make_of_them() {
        let long = Duration::from_secs(3600);
        let o = |code: u16| judge(StatusCode::from_u16(code).unwrap(), &h(&[]), long).outcome;
        assert_eq!(o(200), WebhookOutcome::Delivered);
        assert_eq!(o(204), WebhookOutcome::Delivered);
        assert_eq!(o(301), WebhookOutcome::Redirect);
        assert_eq!(o(400), WebhookOutcome::Rejected);
        assert_eq!(o(410), WebhookOutcome::Gone);
        assert_eq!(o(429), WebhookOutcome::Throttled);
        assert_eq!(o(503), WebhookOutcome::Throttled);
        assert_eq!(o(500), WebhookOutcome::ServerError);
        let a = judge(StatusCode::TOO_MANY_REQUESTS, &h(&[("retry-after", "30")]), long);
        assert_eq!(a.retry_after, Some(Duration::from_secs(30)));
        // Bounded both ways; ignored where it means nothing.
        let a = judge(StatusCode::SERVICE_UNAVAILABLE, &h(&[("retry-after", "999999")]), long);
        assert_eq!(a.retry_after, Some(long));
        let a = judge(StatusCode::TOO_MANY_REQUESTS, &h(&[("retry-after", "0")]), long);
        assert_eq!(a.retry_after, Some(MIN_RETRY_AFTER));
        let a = judge(StatusCode::INTERNAL_SERVER_ERROR, &h(&[("retry-after", "30")]), long);
        assert_eq!(a.retry_after, None);
        let a = judge(StatusCode::TOO_MANY_REQUESTS, &h(&[("retry-after", "soon")]), long);
        assert_eq!(a.retry_after, None);
    }

    #[test]
    fn retry_after_reads_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let v = HeaderValue::from_static("Sun, 06 Nov 1994 08:50:07 GMT");
        assert_eq!(retry_after(&v, now), Some(Duration::from_secs(30)));
        let past = HeaderValue::from_static("Sun, 06 Nov 1994 08:00:00 GMT");
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
    }

    /// A connection that never completes (a receiver that accepts TCP and never answers the
    /// TLS ClientHello) ends at the deadline, as a timeout, however the client polls it.
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_completes_ends_at_its_deadline() {
        use tower_service::Service;
        #[derive(Clone)]
        struct Never;
        impl tower_service::Service<http::Uri> for Never {
            type Response = ();
            type Error = std::io::Error;
            type Future = std::future::Pending<Result<(), std::io::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Uri) -> Self::Future {
                std::future::pending()
            }
        }
        let started = tokio::time::Instant::now();
        let mut d = Deadline { inner: Never, within: CONNECT_TIMEOUT };
        let err = d.call("https://127.0.0.1:1/".parse().unwrap()).await.unwrap_err();
        assert!(err.downcast_ref::<ConnectTimedOut>().is_some(), "{err}");
        assert_eq!(started.elapsed(), CONNECT_TIMEOUT);
    }

    #[tokio::test]
    async fn the_resolver_refuses_private_addresses_unless_allowed() {
        use tower_service::Service;
        let name: Name = "localhost".parse().unwrap();
        let err = Resolver { allow_private: false }.call(name.clone()).await.unwrap_err();
        assert!(err.to_string().contains("allow_private"), "{err}");
        let ok: Vec<_> = Resolver { allow_private: true }.call(name).await.unwrap().collect();
        assert!(ok.iter().all(|a| a.ip().is_loopback()) && !ok.is_empty(), "{ok:?}");
    }
}
