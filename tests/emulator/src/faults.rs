//! Injected faults, settable from the command line and the admin API.

use std::collections::BTreeMap;

use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Storm {
    pub retry_after_s: u64,
    /// Which of a 429's wait headers are sent.
    pub headers: StormHeaders,
}

/// The wait headers a storm's 429s carry, to play providers that say less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StormHeaders {
    /// `retry-after`, `retry-after-ms` and the flavor's rate-limit headers.
    #[default]
    Full,
    /// No wait header at all: no `retry-after`, no rate-limit headers.
    None,
    /// Only the flavor's reset headers (requests in S, tokens in 2S): no
    /// `retry-after`, no `-remaining`, no `-limit`.
    Resets,
}

impl Storm {
    pub fn new(retry_after_s: u64) -> Self {
        Storm {
            retry_after_s,
            headers: StormHeaders::Full,
        }
    }
}

/// The fault state, serialised as-is by `GET /admin/faults` (plus rpm/tpm).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Faults {
    pub error_rate: f64,
    /// Statuses used for injected errors, picked in turn at random.
    pub error_status: Vec<u16>,
    pub latency_ms: u64,
    pub ttft_ms: u64,
    pub inter_token_ms: u64,
    pub storm: Option<Storm>,
    pub outage: bool,
    /// Streams: after this many SSE events the response is cut (the body
    /// errors, so the connection drops without the last chunk).
    pub reset_after_events: Option<u64>,
    /// Streams: malformed events (see [`broken_sse_events`]) follow the first one.
    pub broken_sse: bool,
    /// Every count in a `usage` object (JSON answers and stream events) is
    /// sent as a string, e.g. `"prompt_tokens": "8"`.
    pub broken_usage: bool,
    /// Extra headers on every API answer (lowercase names), e.g. to play a
    /// provider that sends a proxy's internal headers.
    pub response_headers: BTreeMap<String, String>,
    /// The next this many API requests are read and counted, then their
    /// connection is closed with no answer (a reset after the request was sent).
    pub drop_requests: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: vec![500],
            latency_ms: 0,
            ttft_ms: 0,
            inter_token_ms: 0,
            storm: None,
            outage: false,
            reset_after_events: None,
            broken_sse: false,
            broken_usage: false,
            response_headers: BTreeMap::new(),
            drop_requests: 0,
        }
    }
}

/// Size of the oversized event in [`broken_sse_events`]: above the 256 KiB
/// per-event buffers SSE readers (and the filter under test) keep.
pub const OVERSIZED_EVENT_BYTES: usize = 300 * 1024;

/// The events the `broken_sse` fault inserts: a JSON object cut in the middle,
/// bytes that are not UTF-8, a line with no field name, and a `data:` line of
/// [`OVERSIZED_EVENT_BYTES`] that is not JSON. Each ends with a blank line, so
/// a reader that skips what it cannot parse finds the next good event.
pub fn broken_sse_events() -> Vec<Bytes> {
    let mut big = Vec::with_capacity(OVERSIZED_EVENT_BYTES + 8);
    big.extend_from_slice(b"data: ");
    big.resize(OVERSIZED_EVENT_BYTES + 6, b'x');
    big.extend_from_slice(b"\n\n");
    vec![
        Bytes::from_static(
            b"data: {\"id\":\"broken\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"trunc\n\n",
        ),
        Bytes::from_static(b"data: \xff\xfe\xfd not utf-8 \xc3\x28\n\n"),
        Bytes::from_static(b"this line has no field name\n\n"),
        Bytes::from(big),
    ]
}

/// `v` with every integer in it turned into a string (`8` -> `"8"`), when
/// `broken` (the `broken_usage` fault); else `v` unchanged.
pub fn maybe_break_counts(mut v: Value, broken: bool) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Number(n) if n.is_u64() || n.is_i64() => *v = Value::String(n.to_string()),
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    if broken {
        walk(&mut v);
    }
    v
}

/// What a `POST /admin/faults` body asks to change.
#[derive(Debug, Default, PartialEq)]
pub struct FaultsUpdate {
    pub faults: Faults,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub seed: Option<u64>,
}

/// Parses `500`, `"500,503"` or `[500, 503]`.
pub fn parse_statuses(v: &Value) -> Result<Vec<u16>, String> {
    let list: Vec<u16> = match v {
        Value::Number(_) => vec![as_status(v)?],
        Value::String(s) => parse_status_list(s)?,
        Value::Array(a) => a.iter().map(as_status).collect::<Result<_, _>>()?,
        _ => {
            return Err("error_status must be a status, a list of statuses or a comma list".into())
        }
    };
    if list.is_empty() {
        return Err("error_status must not be empty".into());
    }
    Ok(list)
}

pub fn parse_status_list(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| format!("bad status {p:?}: want a code in 400..=599"))
        })
        .collect()
}

fn as_status(v: &Value) -> Result<u16, String> {
    v.as_u64()
        .filter(|c| (400..=599).contains(c))
        .map(|c| c as u16)
        .ok_or_else(|| format!("bad status {v}: want a code in 400..=599"))
}

fn as_u64(v: &Value, field: &str) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{field} must be a non-negative integer"))
}

/// Applies a partial faults object to `current`; unknown fields are an error
/// so a typo in a test does not silently do nothing.
pub fn apply_update(current: &Faults, body: &Value) -> Result<FaultsUpdate, String> {
    let obj = body.as_object().ok_or("faults must be a JSON object")?;
    let mut up = FaultsUpdate {
        faults: current.clone(),
        ..Default::default()
    };
    let f = &mut up.faults;
    for (k, v) in obj {
        match k.as_str() {
            "error_rate" => {
                let r = v.as_f64().filter(|r| (0.0..=1.0).contains(r));
                f.error_rate = r.ok_or("error_rate must be a number in 0..1")?;
            }
            "error_status" => f.error_status = parse_statuses(v)?,
            "latency_ms" => f.latency_ms = as_u64(v, k)?,
            "ttft_ms" => f.ttft_ms = as_u64(v, k)?,
            "inter_token_ms" => f.inter_token_ms = as_u64(v, k)?,
            "storm" => {
                f.storm = match v {
                    Value::Null | Value::Bool(false) => None,
                    Value::Number(_) => Some(Storm::new(as_u64(v, k)?)),
                    Value::Object(o) => {
                        let s = o.get("retry_after_s").ok_or("storm needs retry_after_s")?;
                        let headers = match o.get("headers").and_then(Value::as_str) {
                            None if o.get("headers").is_none() => StormHeaders::Full,
                            Some("full") => StormHeaders::Full,
                            Some("none") => StormHeaders::None,
                            Some("resets") => StormHeaders::Resets,
                            _ => {
                                return Err(
                                    "storm headers must be \"full\", \"none\" or \"resets\"".into(),
                                )
                            }
                        };
                        Some(Storm {
                            retry_after_s: as_u64(s, "retry_after_s")?,
                            headers,
                        })
                    }
                    _ => {
                        return Err(
                            "storm must be null or {\"retry_after_s\": S, \"headers\": H}".into(),
                        )
                    }
                }
            }
            "outage" => f.outage = v.as_bool().ok_or("outage must be a boolean")?,
            "reset_after_events" => {
                f.reset_after_events = match v {
                    Value::Null | Value::Bool(false) => None,
                    _ => Some(as_u64(v, k)?),
                }
            }
            "broken_sse" => f.broken_sse = v.as_bool().ok_or("broken_sse must be a boolean")?,
            "broken_usage" => {
                f.broken_usage = v.as_bool().ok_or("broken_usage must be a boolean")?
            }
            "response_headers" => f.response_headers = parse_headers(v)?,
            "drop_requests" => f.drop_requests = as_u64(v, k)?,
            "rpm" => up.rpm = Some(as_u64(v, k)?),
            "tpm" => up.tpm = Some(as_u64(v, k)?),
            "seed" => up.seed = Some(as_u64(v, k)?),
            other => return Err(format!("unknown fault field {other:?}")),
        }
    }
    Ok(up)
}

/// Parses `{"name": "value", ...}` (or `null` for none) into valid header pairs.
fn parse_headers(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let obj = match v {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(o) => o,
        _ => return Err("response_headers must be an object of header names to strings".into()),
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let name = k.to_ascii_lowercase();
        let value = v
            .as_str()
            .ok_or_else(|| format!("response_headers.{k} must be a string"))?;
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("response_headers: bad header name {k:?}"));
        }
        if HeaderValue::from_str(value).is_err() {
            return Err(format!("response_headers.{k}: bad header value"));
        }
        out.insert(name, value.to_string());
    }
    Ok(out)
}

/// SplitMix64: tiny, seedable and good enough to pick which requests fail.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_update() {
        let cur = Faults::default();
        let up = apply_update(&cur, &json!({"error_rate": 0.5, "error_status": "500, 503", "storm": {"retry_after_s": 7}, "rpm": 5}))
            .expect("valid");
        assert_eq!(up.faults.error_rate, 0.5);
        assert_eq!(up.faults.error_status, vec![500, 503]);
        assert_eq!(up.faults.storm, Some(Storm::new(7)));
        let resets = apply_update(
            &cur,
            &json!({"storm": {"retry_after_s": 3, "headers": "resets"}}),
        )
        .expect("valid");
        assert_eq!(
            resets.faults.storm.map(|s| s.headers),
            Some(StormHeaders::Resets)
        );
        assert!(apply_update(
            &cur,
            &json!({"storm": {"retry_after_s": 3, "headers": "some"}})
        )
        .is_err());
        assert_eq!(up.faults.latency_ms, 0);
        assert_eq!((up.rpm, up.tpm), (Some(5), None));
        let up2 = apply_update(&up.faults, &json!({"storm": null, "error_status": [503]}))
            .expect("valid");
        assert_eq!(up2.faults.storm, None);
        assert_eq!(up2.faults.error_status, vec![503]);
        assert_eq!(up2.faults.error_rate, 0.5);
    }

    #[test]
    fn bad_updates_are_rejected() {
        let cur = Faults::default();
        assert!(apply_update(&cur, &json!({"error_rate": 2})).is_err());
        assert!(apply_update(&cur, &json!({"error_status": 200})).is_err());
        assert!(apply_update(&cur, &json!({"latency": 1})).is_err());
        assert!(apply_update(&cur, &json!([1])).is_err());
        assert!(apply_update(&cur, &json!({"outage": "yes"})).is_err());
    }

    #[test]
    fn stream_and_usage_faults_are_set_and_cleared() {
        let cur = Faults::default();
        let up = apply_update(
            &cur,
            &json!({"reset_after_events": 3, "broken_sse": true, "broken_usage": true}),
        )
        .expect("valid");
        assert_eq!(up.faults.reset_after_events, Some(3));
        assert!(up.faults.broken_sse && up.faults.broken_usage);
        let up = apply_update(
            &up.faults,
            &json!({"reset_after_events": null, "broken_sse": false, "broken_usage": false}),
        )
        .expect("valid");
        assert_eq!(up.faults, Faults::default());
        assert!(apply_update(&cur, &json!({"reset_after_events": -1})).is_err());
        assert!(apply_update(&cur, &json!({"reset_after_events": "2"})).is_err());
        assert!(apply_update(&cur, &json!({"broken_sse": 1})).is_err());
        assert!(apply_update(&cur, &json!({"broken_usage": "yes"})).is_err());
    }

    #[test]
    fn dropped_requests_are_counted_down_from_what_was_set() {
        let up = apply_update(&Faults::default(), &json!({"drop_requests": 2})).expect("valid");
        assert_eq!(up.faults.drop_requests, 2);
        assert!(apply_update(&Faults::default(), &json!({"drop_requests": -1})).is_err());
    }

    #[test]
    fn response_headers_are_validated() {
        let cur = Faults::default();
        let up = apply_update(
            &cur,
            &json!({"response_headers": {"X-Extra": "1", "x-b": "two"}}),
        )
        .expect("valid");
        let want: Vec<(&str, &str)> = vec![("x-b", "two"), ("x-extra", "1")];
        let got: Vec<(&str, &str)> = up
            .faults
            .response_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
        let up = apply_update(&up.faults, &json!({"response_headers": null})).expect("valid");
        assert!(up.faults.response_headers.is_empty());
        assert!(apply_update(&cur, &json!({"response_headers": {"bad name": "1"}})).is_err());
        assert!(apply_update(&cur, &json!({"response_headers": {"x": "a\nb"}})).is_err());
        assert!(apply_update(&cur, &json!({"response_headers": {"x": 1}})).is_err());
        assert!(apply_update(&cur, &json!({"response_headers": ["x"]})).is_err());
    }

    #[test]
    fn broken_sse_events_are_framed_and_malformed() {
        let evs = broken_sse_events();
        assert_eq!(evs.len(), 4);
        for e in &evs {
            assert!(
                e.ends_with(b"\n\n"),
                "every broken event still ends with a blank line"
            );
            let payload = e.strip_prefix(b"data: ").unwrap_or(e);
            assert!(serde_json::from_slice::<Value>(payload.trim_ascii()).is_err());
        }
        assert!(std::str::from_utf8(&evs[1]).is_err());
        assert!(evs[3].len() > OVERSIZED_EVENT_BYTES);
        assert!(!evs[3][6..evs[3].len() - 2].contains(&b'\n'));
    }

    #[test]
    fn broken_usage_turns_every_count_into_a_string() {
        let u = json!({"prompt_tokens": 8, "completion_tokens": 12, "details": {"cached_tokens": 0}, "tier": "x", "ratio": 0.5});
        assert_eq!(maybe_break_counts(u.clone(), false), u);
        assert_eq!(
            maybe_break_counts(u, true),
            json!({"prompt_tokens": "8", "completion_tokens": "12", "details": {"cached_tokens": "0"}, "tier": "x", "ratio": 0.5})
        );
    }

    #[test]
    fn rng_is_deterministic_and_uniformish() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<f64> = (0..1000).map(|_| a.next_f64()).collect();
        let ys: Vec<f64> = (0..1000).map(|_| b.next_f64()).collect();
        assert_eq!(xs, ys);
        let below = xs.iter().filter(|x| **x < 0.3).count();
        assert!((200..400).contains(&below), "{below}");
    }
}
