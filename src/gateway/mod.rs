//! Everything about talking to the CC-Gateway: the method registry, the envelope and
//! retcodes, the HTTPS client, and the [`Gateway`] seam the layers above call it through.
//! The gateway's behaviour, with sources, is in docs/gateway.md.

pub mod client;
pub mod envelope;
pub mod methods;
pub mod poll_conn;
pub mod pool;
pub mod timing;
pub mod trace;
pub mod wire;

use std::future::Future;
use std::pin::Pin;

pub use client::{GatewayClient, GatewayRefusal, GatewayReply, GatewayRequest};
pub use envelope::{Envelope, Retcode};
pub use methods::GatewayMethod;
pub use poll_conn::PollConnection;
pub use wire::{SessionAuth, UpstreamError};

/// Every agent interface lives under this path.
pub const BASE_PATH: &str = "/agentgateway/resource/";

/// `{agentid}` is the agent's work number, a decimal string in 101..=999999.
pub const AGENT_ID_MIN: u32 = 101;
pub const AGENT_ID_MAX: u32 = 999_999;

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<GatewayReply, UpstreamError>> + Send + 'a>>;

/// One round trip to the gateway. [`GatewayClient`] is the real one; unit tests of the
/// session and operations layers put a scripted one behind it, with no sockets and no TLS.
/// A trait object rather than a type parameter: one boxed future per call is noise beside a
/// TLS round trip, and no layer above has to carry a generic.
pub trait Gateway: Send + Sync {
    fn call<'a>(&'a self, req: GatewayRequest<'a>) -> CallFuture<'a>;
}

/// Parses an agent id as the gateway accepts it: ASCII digits only, no sign, no leading zero,
/// within range. Returns the canonical string form.
pub fn parse_agent_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return None;
    }
    let n: u32 = s.parse().ok()?;
    (AGENT_ID_MIN..=AGENT_ID_MAX).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_ids() {
        use super::parse_agent_id as p;
        assert_eq!(p("101"), Some(101));
        assert_eq!(p("999999"), Some(999_999));
        for bad in ["", "100", "1000000", "0153", "+153", "15a", "１５３", " 153"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
