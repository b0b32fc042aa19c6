//! One HTTP/1.1 connection to the gateway, and the wire format of its one kind of exchange: a
//! request out, one answer in. Each agent's poller has its own; app requests and sign-ins
//! take one from the shared pool (`pool.rs`).
//!
//! Why not hyper: a long poll holds its connection for the gateway's whole wait, so each
//! signed-in agent has one, and at 10,000 agents they make ~1,000 round trips a second while
//! nothing happens. Through hyper each one is four task wake-ups (the poller hands the
//! request to the connection's task over a channel, that task writes it; later it reads the
//! answer and hands it back over another),
//! a request and a response header map, and an 8 KiB read buffer allocated afresh per answer;
//! each connection also keeps an 8 KiB write buffer and its task. Here the poller writes and
//! reads its connection itself, with two small buffers kept between polls (bench/RESULTS.md,
//! scenario d, third part, has the before and after).
//!
//! What it accepts is what RFC 9112 allows an HTTP/1.1 server to send: interim 1xx answers
//! skipped, `Content-Length`, `chunked` (trailers dropped), or a body up to the close; the
//! head parsed by `httparse` (hyper's own parser), capped at [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] fields. Anything else (a transfer-coding other than `chunked`, two different
//! lengths, an upgrade, a head or body over its cap) is refused as a malformed answer and the
//! connection is closed. A connection is reused only after an answer that HTTP/1.1 keep-alive
//! allows to (framed, no `Connection: close`, nothing left over); otherwise the next poll
//! dials a new one.

use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::methods::GatewayMethod;
use super::wire::{self, cookie_pair, parse_set_guid, Answer, SessionAuth, UpstreamError, MAX_UPSTREAM_BODY};

/// Largest answer head accepted: far above a gateway's few hundred bytes, and the size most
/// servers (Tomcat's `maxHttpResponseHeaderSize`, nginx's buffers) cap their own heads at, x8.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields parsed per answer (and per chunked trailer); more is refused.
pub const MAX_HEADERS: usize = 64;
/// Bytes one answer may take on the wire, interim answers, head, chunk framing, extensions
/// and trailers included: the body's cap, its head's, and a quarter of the body's again for
/// framing (a legitimate chunked answer spends a few bytes per KiB on it). Without this a
/// body within its cap could arrive as 1-byte chunks each carrying a 1,000-byte extension,
/// and the raw answer would be held whole: a GiB for one poll.
pub const MAX_ANSWER_BYTES: usize = MAX_HEAD + MAX_UPSTREAM_BODY + MAX_UPSTREAM_BODY / 4;
/// Interim (1xx) answers accepted before the real one. A gateway sends none; a proxy in front
/// may send a `100 Continue` or a `103 Early Hints`. A flood of them is refused rather than
/// read until the poll's timeout.
pub const MAX_INTERIM_ANSWERS: usize = 8;
/// The read buffer keeps at most this much capacity between polls: an answer bigger than that
/// (a large event) is read, then its buffer given back, so one such answer does not pin its
/// size for the life of the agent.
const KEEP_CAPACITY: usize = 16 * 1024;
/// Read this much at a time: a whole answer, usually.
const READ_CHUNK: usize = 2048;

/// One HTTP/1.1 connection to the gateway and its buffers: an agent poller's own (see the
/// module's documentation; dropped with the poller, so it closes when the agent signs out), or
/// one of the shared pool's (`pool.rs`). The request line and fixed headers are rendered once
/// per method and agent, which for a poller is once.
#[derive(Default)]
pub struct PollConnection {
    /// Boxed: the TLS state is KiBs, and this is moved in and out of every exchange.
    stream: Option<Box<TlsStream<TcpStream>>>,
    read: Vec<u8>,
    write: Vec<u8>,
    /// What `head` was rendered for.
    head_for: Option<(GatewayMethod, String)>,
    /// `GET <path> HTTP/1.1\r\n` and the headers that never change.
    head: Vec<u8>,
}

impl std::fmt::Debug for PollConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollConnection").field("open", &self.stream.is_some()).finish()
    }
}

impl PollConnection {
    /// Renders the request into the write buffer: the fixed part once, then the session's
    /// Guid and cookie and the trace context, as hyper would send them (lowercase names, no
    /// `content-length` on a GET without a body).
    pub(super) fn render(
        &mut self,
        method: GatewayMethod,
        agent: &str,
        host: &HeaderValue,
        auth: Option<&SessionAuth>,
        body: &[u8],
    ) -> Result<(), UpstreamError> {
        if self.head_for.as_ref().is_none_or(|(m, a)| *m != method || a != agent) {
            // Cleared first: a failure below leaves no head to reuse.
            self.head_for = None;
            let target = wire::request_target(method, agent)?;
            let fixed = &mut self.head;
            fixed.clear();
            fixed.extend_from_slice(method.http_method().as_str().as_bytes());
            fixed.push(b' ');
            fixed.extend_from_slice(target.as_bytes());
            fixed.extend_from_slice(b" HTTP/1.1\r\n");
            field(fixed, "host", host.as_bytes());
            field(fixed, "content-type", wire::JSON_UTF8.as_bytes());
            self.head_for = Some((method, agent.to_owned()));
        }
        let w = &mut self.write;
        w.clear();
        w.extend_from_slice(&self.head);
        wire::session_headers(auth, |name, value| field(w, name.as_str(), value.as_bytes()));
        if !body.is_empty() || method.http_method() != http::Method::GET {
            w.extend_from_slice(b"content-length: ");
            wire::push_decimal(w, body.len() as u64);
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(body);
        Ok(())
    }

    /// The open connection, if there is one the gateway has not closed meanwhile (it may
    /// have, past its keep-alive timeout: then its FIN or close_notify is waiting to be read).
    /// Costs no system call while the socket has nothing to read, which is the usual case.
    pub(super) fn take_open(&mut self) -> Option<Box<TlsStream<TcpStream>>> {
        let mut stream = self.stream.take()?;
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        // Any bytes at all are unasked for: a close_notify, most likely; EOF or an error is a
        // close. Only "nothing yet" means open. The no-op waker is replaced by the real one
        // at the next read.
        match stream.get_ref().0.poll_peek(&mut Context::from_waker(Waker::noop()), &mut buf) {
            Poll::Pending if nothing_buffered(&mut stream) => Some(stream),
            _ => None,
        }
    }

    /// Whether it holds a connection to reuse (not checked for a close meanwhile: that is
    /// `take_open`'s, at the next request).
    pub(super) fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    pub(super) fn request(&self) -> &[u8] {
        &self.write
    }

    /// Reads one answer. Returns it, and whether the connection may carry the next request.
    pub(super) async fn read_answer(
        &mut self,
        stream: &mut TlsStream<TcpStream>,
    ) -> Result<(Answer, bool), UpstreamError> {
        let buf = &mut self.read;
        buf.clear();
        // Every byte read for this answer counts against MAX_ANSWER_BYTES; `limit` is what the
        // buffer may hold, less what interim answers took.
        let mut limit = MAX_ANSWER_BYTES;
        let mut interim = 0;
        let head = loop {
            match parse_head(buf)? {
                Parsed::Final(head) => break head,
                Parsed::Interim(len) => {
                    interim += 1;
                    if interim > MAX_INTERIM_ANSWERS {
                        return Err(malformed(format!("more than {MAX_INTERIM_ANSWERS} interim answers")));
                    }
                    buf.drain(..len);
                    limit -= len;
                }
                Parsed::Partial => {
                    if buf.len() >= MAX_HEAD {
                        return Err(malformed(format!("answer head larger than {MAX_HEAD} bytes")));
                    }
                    if read_more(stream, buf, limit).await? == 0 {
                        return Err(closed(buf.is_empty()));
                    }
                }
            }
        };
        let mut keep_alive = head.keep_alive;
        let body = match head.framing {
            Framing::Length(n) => {
                if n > MAX_UPSTREAM_BODY {
                    return Err(too_large());
                }
                while buf.len() < head.len + n {
                    if read_more(stream, buf, limit).await? == 0 {
                        return Err(closed(false));
                    }
                }
                // Bytes past the answer were never asked for: do not read them as the next one.
                keep_alive &= buf.len() == head.len + n;
                Bytes::copy_from_slice(&buf[head.len..head.len + n])
            }
            Framing::Chunked => {
                let mut chunks = Chunked::new(head.len);
                loop {
                    if let Some(end) = chunks.step(buf)? {
                        keep_alive &= buf.len() == end;
                        break Bytes::from(chunks.body);
                    }
                    if read_more(stream, buf, limit).await? == 0 {
                        return Err(closed(false));
                    }
                }
            }
            Framing::UntilClose => {
                keep_alive = false;
                loop {
                    buf.reserve(READ_CHUNK);
                    match stream.read_buf(buf).await {
                        Ok(0) => break,
                        // A close without TLS close_notify ends it too, as many servers close;
                        // an envelope cut short fails its JSON parse.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(malformed(format!("reading the answer: {e}"))),
                        Ok(_) if buf.len() - head.len > MAX_UPSTREAM_BODY => return Err(too_large()),
                        Ok(_) => {}
                    }
                }
                Bytes::copy_from_slice(&buf[head.len..])
            }
        };
        if buf.capacity() > KEEP_CAPACITY {
            *buf = Vec::new();
        }
        // Bytes rustls has decrypted (or received) but not handed over were never asked for
        // either: reading them as the next poll's answer would adopt a Guid nobody sent for it.
        keep_alive &= nothing_buffered(stream);
        Ok((Answer { status: head.status, set_guid: head.set_guid, cookies: head.cookies, body }, keep_alive))
    }

    /// Gives back buffer capacity past [`KEEP_CAPACITY`], so an idle pooled connection does
    /// not pin the size of the largest request it carried.
    pub(super) fn trim(&mut self) {
        if self.write.capacity() > KEEP_CAPACITY {
            self.write = Vec::new();
        }
        if self.read.capacity() > KEEP_CAPACITY {
            self.read = Vec::new();
        }
    }

    pub(super) fn keep(&mut self, stream: Box<TlsStream<TcpStream>>) {
        self.stream = Some(stream);
    }
}

fn field(w: &mut Vec<u8>, name: &str, value: &[u8]) {
    w.extend_from_slice(name.as_bytes());
    w.extend_from_slice(b": ");
    w.extend_from_slice(value);
    w.extend_from_slice(b"\r\n");
}

/// Writes the whole request; `Err` only when it could not be handed to the kernel.
pub(super) async fn write_request(stream: &mut TlsStream<TcpStream>, request: &[u8]) -> std::io::Result<()> {
    stream.write_all(request).await?;
    stream.flush().await
}

/// Whether the TLS layer holds nothing for the reader: no decrypted bytes, no close_notify,
/// no record that fails to decrypt. Records rustls has received but not processed are
/// processed here (that reads nothing from the socket), so they count too. The socket itself
/// is the caller's to check.
fn nothing_buffered(stream: &mut TlsStream<TcpStream>) -> bool {
    match stream.get_mut().1.process_new_packets() {
        Ok(state) => state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed(),
        Err(_) => false,
    }
}

/// Reads what arrives into `buf`, which may hold at most `limit` bytes (the answer's cap).
async fn read_more(stream: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>, limit: usize) -> Result<usize, UpstreamError> {
    if buf.len() >= limit {
        return Err(malformed(format!("answer larger than {MAX_ANSWER_BYTES} bytes on the wire")));
    }
    buf.reserve(READ_CHUNK.min(limit - buf.len()));
    let room = (limit - buf.len()).min(buf.capacity() - buf.len());
    let mut take = (&mut *stream).take(room as u64);
    take.read_buf(buf).await.map_err(|e| malformed(format!("reading the answer: {e}")))
}

fn malformed(why: String) -> UpstreamError {
    UpstreamError::Malformed(why)
}

fn too_large() -> UpstreamError {
    malformed(format!("answer body larger than {} bytes", MAX_UPSTREAM_BODY))
}

/// The connection ended before the answer did. With nothing received at all on a reused
/// connection this is the keep-alive race (the gateway closed it as the request went out); the
/// request is not sent again, since the gateway may have taken it.
fn closed(nothing: bool) -> UpstreamError {
    malformed(if nothing { "connection closed before any answer" } else { "connection closed mid-answer" }.into())
}

/// How the body of an answer ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: StatusCode,
    /// Bytes of the head, blank line included.
    len: usize,
    framing: Framing,
    keep_alive: bool,
    set_guid: Option<String>,
    cookies: Vec<String>,
}

impl std::fmt::Debug for Head {
    /// Framing only: the Guid and cookies are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("status", &self.status)
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Parsed {
    /// Not all of the head has arrived.
    Partial,
    /// A 1xx answer of this many bytes, to be skipped: the real one follows.
    Interim(usize),
    Final(Head),
}

/// A header value as text, if it is what `HeaderValue::to_str` accepts (visible ASCII, space
/// and tab), so both paths read the same headers the same way.
fn text(v: &[u8]) -> Option<&str> {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)).then(|| std::str::from_utf8(v).ok()).flatten()
}

fn parse_head(buf: &[u8]) -> Result<Parsed, UpstreamError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(malformed(format!("bad answer head: {e}"))),
    };
    let code = resp.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| malformed(format!("bad status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(malformed("the gateway switched protocols".into()));
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    // HTTP/1.0 closes after each answer unless told otherwise; no keep-alive for it here.
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut set_guid = None;
    let mut cookies = Vec::new();
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = text(h.value)
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| malformed("bad content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(malformed("two different content-lengths".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = text(h.value).ok_or_else(|| malformed("bad transfer-encoding".into()))?;
            for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if !coding.eq_ignore_ascii_case("chunked") || chunked {
                    return Err(malformed(format!("unsupported transfer-coding {coding:?}")));
                }
                chunked = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if text(h.value).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))) {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case(wire::SET_GUID_HEADER) {
            if set_guid.is_none() {
                set_guid = text(h.value).and_then(parse_set_guid);
            }
        } else if name.eq_ignore_ascii_case("set-cookie") {
            cookies.extend(text(h.value).and_then(cookie_pair));
        }
    }
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else if chunked {
        // Both present: chunked wins, and the connection is not trusted after (RFC 9112 §6.3).
        if length.is_some() {
            keep_alive = false;
        }
        Framing::Chunked
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(Parsed::Final(Head { status, len, framing, keep_alive, set_guid, cookies }))
}

/// A chunked body decoded as it arrives: `pos` is where the next chunk-size line starts.
struct Chunked {
    pos: usize,
    body: Vec<u8>,
    /// The last chunk was seen; the trailer section is next.
    last: bool,
}

impl Chunked {
    fn new(start: usize) -> Self {
        Self { pos: start, body: Vec::new(), last: false }
    }

    /// Takes in what `buf` holds; `Some(end)` once the body (and its trailers) ended at `end`.
    fn step(&mut self, buf: &[u8]) -> Result<Option<usize>, UpstreamError> {
        loop {
            let rest = &buf[self.pos..];
            if self.last {
                let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                return match httparse::parse_headers(rest, &mut trailers) {
                    Ok(httparse::Status::Complete((n, _))) => Ok(Some(self.pos + n)),
                    Ok(httparse::Status::Partial) if rest.len() < MAX_HEAD => Ok(None),
                    Ok(httparse::Status::Partial) => Err(malformed("chunked trailers too large".into())),
                    Err(e) => Err(malformed(format!("bad chunked trailers: {e}"))),
                };
            }
            let (line, size) = match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete(found)) => found,
                Ok(httparse::Status::Partial) if rest.len() < 1024 => return Ok(None),
                Ok(httparse::Status::Partial) | Err(_) => return Err(malformed("bad chunk size line".into())),
            };
            if size == 0 {
                self.pos += line;
                self.last = true;
                continue;
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|s| self.body.len().checked_add(*s).is_some_and(|t| t <= MAX_UPSTREAM_BODY))
                .ok_or_else(too_large)?;
            // The chunk's data and its CRLF must all be here before it counts.
            if rest.len() < line + size + 2 {
                return Ok(None);
            }
            if &rest[line + size..line + size + 2] != b"\r\n" {
                return Err(malformed("chunk data not followed by CRLF".into()));
            }
            self.body.extend_from_slice(&rest[line..line + size]);
            self.pos += line + size + 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes()).unwrap() {
            Parsed::Final(h) => h,
            other => panic!("{other:?}"),
        }
    }

    /// The whole answer from `raw` as `read_answer` frames it: (body, keep-alive).
    fn frame(raw: &[u8]) -> Result<Option<(Vec<u8>, bool)>, UpstreamError> {
        let mut at = 0;
        let h = loop {
            match parse_head(&raw[at..])? {
                Parsed::Final(h) => break h,
                Parsed::Interim(n) => at += n,
                Parsed::Partial => return Ok(None),
            }
        };
        let buf = &raw[at..];
        Ok(match h.framing {
            Framing::Length(n) => (buf.len() >= h.len + n)
                .then(|| (buf[h.len..h.len + n].to_vec(), h.keep_alive && buf.len() == h.len + n)),
            Framing::Chunked => {
                let mut c = Chunked::new(h.len);
                c.step(buf)?.map(|end| (c.body.clone(), h.keep_alive && end == buf.len()))
            }
            Framing::UntilClose => Some((buf[h.len..].to_vec(), false)),
        })
    }

    #[test]
    fn a_gateway_answer_with_a_length_and_a_new_guid() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-GUID: JSESSIONID=abc.AgentGateway1\r\n\
                   Set-Cookie: huaweielbsession=9; Path=/; Secure\r\nContent-Length: 2\r\n\r\n{}";
        let h = head(raw);
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(h.set_guid.as_deref(), Some("abc.AgentGateway1"));
        assert_eq!(h.cookies, ["huaweielbsession=9"]);
        assert_eq!(frame(raw.as_bytes()).unwrap(), Some((b"{}".to_vec(), true)));
    }

    #[test]
    fn chunked_bodies_are_joined_and_trailers_dropped() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\n{\"a\r\n2\r\n\":\r\n2\r\n1}\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(frame(raw).unwrap(), Some((b"{\"a\":1}".to_vec(), true)));
        // Arriving a byte at a time, it is complete only at the very end.
        for cut in 0..raw.len() {
            assert_eq!(frame(&raw[..cut]).unwrap(), None, "complete after {cut} bytes?");
        }
    }

    #[test]
    fn interim_answers_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1";
        assert_eq!(frame(raw).unwrap(), Some((b"1".to_vec(), true)));
    }

    #[test]
    fn what_ends_keep_alive() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        // Both framings: chunked is read, and the connection not trusted after.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        // Bytes after the answer.
        assert_eq!(frame(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP").unwrap(), Some((b"1".to_vec(), false)));
        // No framing at all: the body runs to the close.
        assert_eq!(frame(b"HTTP/1.1 200 OK\r\n\r\n{}").unwrap(), Some((b"{}".to_vec(), false)));
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Length(0));
    }

    #[test]
    fn malformed_answers_are_refused_with_a_reason() {
        for (raw, why) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "two different"),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n", "bad content-length"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported transfer-coding"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "unsupported transfer-coding"),
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "switched protocols"),
            ("HTTP/1.1 abc OK\r\n\r\n", "bad answer head"),
            ("SSH-2.0-OpenSSH_9.2\r\n\r\n", "bad answer head"),
        ] {
            let e = parse_head(raw.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(why), "{raw:?}: {e}");
        }
        assert!(
            frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n").is_err(),
            "data past its size"
        );
        assert!(frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err(), "not hex");
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", super::super::wire::MAX_UPSTREAM_BODY + 1);
        assert_eq!(head(&huge).framing, Framing::Length(super::super::wire::MAX_UPSTREAM_BODY + 1));
        let chunk = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", 2 * 1024 * 1024);
        assert!(frame(chunk.as_bytes()).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn debug_output_holds_no_guid_or_cookie() {
        let raw = "HTTP/1.1 200 OK\r\nSet-GUID: JSESSIONID=secret-g.AgentGateway1\r\nSet-Cookie: s=secret-c\r\nContent-Length: 0\r\n\r\n";
        let h = head(raw);
        assert_eq!(h.set_guid.as_deref(), Some("secret-g.AgentGateway1"));
        let a =
            Answer { status: h.status, set_guid: h.set_guid.clone(), cookies: h.cookies.clone(), body: Bytes::new() };
        for shown in [format!("{h:?}"), format!("{a:?}")] {
            assert!(!shown.contains("secret"), "{shown}");
        }
    }

    #[test]
    fn the_request_is_what_hyper_would_send() {
        let mut c = PollConnection::default();
        let auth = super::super::wire::session_auth("g-1.AgentGateway0", &["a=1".into(), "b=2".into()]).unwrap();
        let host = HeaderValue::from_static("gw.example:8043");
        c.render(GatewayMethod::GetAgentEvent, "153", &host, Some(&auth), b"").unwrap();
        assert_eq!(
            String::from_utf8_lossy(c.request()),
            "GET /agentgateway/resource/agentevent/153 HTTP/1.1\r\nhost: gw.example:8043\r\n\
             content-type: application/json; charset=UTF-8\r\nguid: g-1.AgentGateway0\r\ncookie: a=1; b=2\r\n\r\n"
        );
        // The fixed part is rendered once; the Guid is current each time.
        let rotated = super::super::wire::session_auth("g-2.AgentGateway0", &[]).unwrap();
        c.render(GatewayMethod::GetAgentEvent, "153", &host, Some(&rotated), b"").unwrap();
        assert!(String::from_utf8_lossy(c.request()).ends_with("guid: g-2.AgentGateway0\r\n\r\n"));
        // An agent id that is not a work number (planted in the shared store) never reaches
        // the request line.
        let mut c = PollConnection::default();
        let e = c.render(
            GatewayMethod::GetAgentEvent,
            "154/forcelogout HTTP/1.1\r\nX: 1\r\n\r\nDELETE /x",
            &host,
            None,
            b"",
        );
        assert!(e.is_err() && c.request().is_empty());
    }

    proptest! {
        /// Whatever the gateway sends, framing never panics: an answer, "not yet", or an error.
        #[test]
        fn framing_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = frame(&raw);
        }

        /// The same on inputs that look like answers, so the parsers get past the status line.
        #[test]
        fn framing_never_panics_on_answer_like_input(
            headers in proptest::collection::vec("(Content-Length|Transfer-Encoding|Connection|Set-GUID|X): [ -~]{0,12}", 0..4),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            for h in &headers {
                raw.extend_from_slice(h.as_bytes());
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            raw.extend_from_slice(&body);
            let _ = frame(&raw);
        }

        /// Any body, sent chunked in any split, comes out as it went in.
        #[test]
        fn chunked_round_trip(body in proptest::collection::vec(any::<u8>(), 0..300), cuts in proptest::collection::vec(1usize..40, 0..12)) {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let mut rest = &body[..];
            for c in cuts {
                if rest.is_empty() { break; }
                let n = c.min(rest.len());
                raw.extend_from_slice(format!("{n:X}\r\n").as_bytes());
                raw.extend_from_slice(&rest[..n]);
                raw.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            if !rest.is_empty() {
                raw.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                raw.extend_from_slice(rest);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            prop_assert_eq!(frame(&raw).unwrap(), Some((body.clone(), true)));
        }
    }
}
