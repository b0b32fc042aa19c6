//! What the gateway probes found, one entry per configured gateway: the verdict, since when,
//! why, and the URL as it may be shown. Readiness keeps them; `/readyz`, `/gatewayz` and the
//! status page show them.

use serde_json::json;

/// What the last gateway probe found; `/readyz` shows it as `"gateway"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayState {
    /// No probe has finished yet.
    Unchecked,
    /// TCP and a TLS handshake with the configured CA and server name succeeded.
    Up,
    ConnectFailed,
    Timeout,
    /// The gateway answered but its certificate or handshake was refused.
    TlsFailed,
}

impl GatewayState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Up => "up",
            Self::ConnectFailed => "connect_failed",
            Self::Timeout => "timeout",
            Self::TlsFailed => "tls_failed",
        }
    }
}

/// A probe's error text as pages and JSON show it: printable, at most this many characters
/// (a TLS error naming a certificate chain can run long; the log has it whole).
pub(super) const MAX_PROBE_ERROR_CHARS: usize = 200;

/// One gateway as its probe last found it: a row of the status page, an entry of
/// `gateway_detail` on `/readyz` and `/gatewayz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHealth {
    pub name: String,
    /// The configured URL as scheme, host and port only: never credentials, path or query.
    pub url: String,
    pub state: GatewayState,
    /// When it last went up or down (Unix ms); the start for `unchecked`. One failure kind
    /// giving way to another (refused, then timed out) is still down since then.
    pub since_ms: u64,
    /// Why the last probe failed (`Connection refused (os error 111)`), printable and
    /// bounded; `None` while up or unchecked.
    pub error: Option<String>,
}

impl GatewayHealth {
    pub(super) fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.to_owned(),
            url: url_for_people(url),
            state: GatewayState::Unchecked,
            since_ms: crate::clock::unix_ms(),
            error: None,
        }
    }

    /// A probe's verdict and, when it failed, why; whether the verdict changed. "Since"
    /// moves only when the gateway goes up or down: not for another failure kind, nor for a
    /// new error text.
    pub(super) fn record(&mut self, state: GatewayState, error: Option<&str>) -> bool {
        let changed = self.state != state;
        let up_or_down = |s: GatewayState| match s {
            GatewayState::Up => Some(true),
            GatewayState::Unchecked => None,
            _ => Some(false),
        };
        if up_or_down(self.state) != up_or_down(state) {
            self.since_ms = crate::clock::unix_ms();
        }
        self.state = state;
        self.error = error.map(error_for_people);
        changed
    }

    /// As `/readyz` and `/gatewayz` show it.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "url": self.url,
            "state": self.state.as_str(),
            "since": crate::session::view::rfc3339(self.since_ms),
            "last_error": self.error,
        })
    }
}

/// A gateway URL with only its scheme, host and port: a URL with `user:password@` or a query
/// (which the config refuses, so only as a second line of defence) shows neither.
pub(super) fn url_for_people(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => {
            let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}", u.scheme_str().unwrap_or("https"), u.host().unwrap_or("?"))
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// A probe's error for people: what [`crate::session::view::printable`] leaves, at most
/// [`MAX_PROBE_ERROR_CHARS`].
pub(super) fn error_for_people(e: &str) -> String {
    let text = crate::session::view::printable(e);
    match text.char_indices().nth(MAX_PROBE_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
