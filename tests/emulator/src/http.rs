//! Response bodies and small HTTP helpers shared by all endpoints.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Abort>;

/// A body error: hyper then cuts the connection mid-body (HTTP/1: no last
/// chunk; HTTP/2: RST_STREAM), which is how the `reset_after_events` fault
/// emulates a provider that drops a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort;

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stream aborted by an injected fault")
    }
}

impl std::error::Error for Abort {}

/// What a streaming body is fed: bytes to send, or `Err(Abort)` to cut it.
pub type Chunk = Result<Bytes, Abort>;

/// Largest request body accepted; bigger ones get 413.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A body fed from a channel: each message is written (and flushed by hyper,
/// which flushes whenever the body is not ready) as soon as it is produced, so
/// delays between SSE events are visible to the client.
pub struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Abort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Abort>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|o| o.map(|c| c.map(Frame::data)))
    }
}

/// A streaming body and the sender that feeds it. The channel is small so a
/// slow client applies back-pressure instead of growing memory.
pub fn channel_body() -> (mpsc::Sender<Chunk>, Body) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody { rx }.boxed())
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: StatusCode, v: &Value) -> Response<Body> {
    response(
        status,
        "application/json",
        full(serde_json::to_vec(v).unwrap_or_default()),
    )
}

pub fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", full(s))
}

pub fn sse(body: Body) -> Response<Body> {
    let mut r = response(StatusCode::OK, "text/event-stream; charset=utf-8", body);
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

/// Sets a header; values that are not valid header text are skipped rather
/// than failing the response.
pub fn set_header(r: &mut Response<Body>, name: &'static str, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

pub enum ReadError {
    TooLarge,
    Broken(String),
}

/// Reads the whole request body, refusing more than [`MAX_BODY`] bytes.
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, ReadError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ReadError::TooLarge)
            } else {
                Err(ReadError::Broken(e.to_string()))
            }
        }
    }
}

/// One SSE event without an `event:` line (OpenAI, Gemini style).
pub fn sse_data(v: &Value) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        serde_json::to_string(v).unwrap_or_default()
    ))
}

/// One SSE event with an `event:` line (Anthropic, Responses API style).
pub fn sse_event(event: &str, v: &Value) -> Bytes {
    Bytes::from(format!(
        "event: {event}\ndata: {}\n\n",
        serde_json::to_string(v).unwrap_or_default()
    ))
}

/// Standard base64 (with padding), for OpenAI's `encoding_format: "base64"` embeddings.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
