//! `GET /v1/events`: the agent's gateway events as Server-Sent Events.
//!
//! Each subscriber gets a small task that copies events from the session's buffer into a
//! bounded channel feeding the response body; a slow reader back-pressures only its own task.
//! `id:` is the event id, `Last-Event-ID` resumes after it (a `: missed` comment says when the
//! buffer dropped events first), a comment every 15 s keeps proxies from closing an idle
//! stream, and a final `ccgate.session_ended` event tells the app its session is gone. While
//! a stream is open the agent counts as active (no idle sign-out).

use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use hyper::body::Frame;
use tokio::sync::{mpsc, watch};

use crate::server::body::{Body, BoxError};
use crate::server::listener::triggered;
use crate::session::events::BufferedEvent;
use crate::session::{Ended, Listening};

/// A comment line this often keeps intermediaries from timing out an idle stream.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Frames queued per subscriber before its task waits for the client to read.
const SUBSCRIBER_QUEUE: usize = 32;

/// The response body: frames from the subscriber task; ends when the task does.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn frame(e: &BufferedEvent) -> Bytes {
    let mut s = String::with_capacity(e.data.len() + e.kind.len() + 32);
    // Event types come from the gateway: keep them on one line whatever they contain.
    let kind: String = e.kind.chars().filter(|c| !c.is_control()).collect();
    let _ = write!(s, "id: {}\nevent: {}\ndata: ", e.id, kind);
    // Compact JSON has no raw newlines, so one data line suffices.
    s.push_str(&String::from_utf8_lossy(&e.data));
    s.push_str("\n\n");
    Bytes::from(s)
}

/// The event stream for `session`, after event `after` (`None`: from now).
pub fn subscribe(session: Listening, after: Option<u64>, shutdown: watch::Receiver<bool>) -> Response<Body> {
    let cursor = after.unwrap_or_else(|| session.events().latest());
    let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
    tokio::spawn(pump(session, cursor, tx, shutdown));
    let mut r = Response::new(Body::new(ChannelBody(rx)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style buffering proxies to pass events through at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Runs while the stream is open, holding `session` (the agent counts as active meanwhile:
/// the session layer's rule, carried by `Listening`).
async fn pump(session: Listening, mut cursor: u64, tx: mpsc::Sender<Bytes>, mut shutdown: watch::Receiver<bool>) {
    // Open until the app goes away (the send fails), the session ends or ccgate stops.
    let _open = crate::metrics::GaugeGuard::new(session.metrics().event_streams());
    let mut latest = session.events().subscribe();
    let mut ended = std::pin::pin!(session.wait_ended());
    if tx.send(Bytes::from_static(b": ccgate event stream\nretry: 2000\n\n")).await.is_err() {
        return;
    }
    loop {
        let batch = session.events().since(cursor);
        if batch.missed && tx.send(Bytes::from_static(b": missed events: the buffer was full\n\n")).await.is_err() {
            return;
        }
        for e in &batch.events {
            if tx.send(frame(e)).await.is_err() {
                return;
            }
            cursor = e.id;
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            why = &mut ended => {
                // Deliver what arrived before the end, then say so.
                for e in &session.events().since(cursor).events {
                    if tx.send(frame(e)).await.is_err() {
                        return;
                    }
                }
                let reason = match why {
                    Ended::Lost(r) => r.as_str(),
                    Ended::SignedOut => "signed_out",
                };
                let _ = tx.send(Bytes::from(format!("event: {}\ndata: {{\"reason\":\"{reason}\"}}\n\n", crate::session::events::SESSION_ENDED))).await;
                return;
            }
            _ = tokio::time::sleep(SSE_KEEPALIVE) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
            }
            _ = triggered(&mut shutdown) => return,
            _ = tx.closed() => return,
        }
    }
}
