//! What the API port received, for `GET /admin/stats`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use hyper::HeaderMap;
use serde::Serialize;

/// Entries kept in `recent`.
pub const RECENT: usize = 200;
/// Distinct keys/models tracked before the rest are lumped under `(other)`,
/// so memory stays bounded whatever the traffic.
const MAX_GROUPS: usize = 10_000;
const MAX_HEADERS: usize = 100;
const MAX_HEADER_VALUE: usize = 4096;

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub id: String,
    pub method: String,
    pub path: String,
    pub key: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub headers: BTreeMap<String, String>,
    /// Arrival time, unix milliseconds.
    pub received_ms: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub requests_total: u64,
    /// Requests whose connection went away before their answer was sent
    /// (not in `requests_total`).
    pub cancelled_total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_key: HashMap<String, Counts>,
    pub by_model: HashMap<String, Counts>,
    pub recent: VecDeque<Recent>,
}

fn bump(map: &mut HashMap<String, Counts>, name: &str, prompt: u64, completion: u64) {
    let name = if map.contains_key(name) || map.len() < MAX_GROUPS {
        name
    } else {
        "(other)"
    };
    let c = map.entry(name.to_string()).or_default();
    c.requests += 1;
    c.prompt_tokens += prompt;
    c.completion_tokens += completion;
}

/// Request headers as lowercase name → value (repeated headers joined by ", ").
pub fn header_map(h: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in h.iter() {
        if out.len() >= MAX_HEADERS && !out.contains_key(name.as_str()) {
            continue;
        }
        let mut v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if v.len() > MAX_HEADER_VALUE {
            let mut cut = MAX_HEADER_VALUE;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
        }
        out.entry(name.as_str().to_ascii_lowercase())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

impl Stats {
    pub fn record(&mut self, r: Recent) {
        self.requests_total += 1;
        *self.by_status.entry(r.status.to_string()).or_default() += 1;
        if let Some(k) = &r.key {
            bump(&mut self.by_key, k, r.prompt_tokens, r.completion_tokens);
        }
        if let Some(m) = &r.model {
            bump(&mut self.by_model, m, r.prompt_tokens, r.completion_tokens);
        }
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: Option<&str>, status: u16, p: u64, c: u64) -> Recent {
        Recent {
            id: "x".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            key: key.map(String::from),
            model: Some("m".into()),
            received_ms: 0,
            stream: false,
            status,
            prompt_tokens: p,
            completion_tokens: c,
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn counts_and_bounds() {
        let mut s = Stats::default();
        s.record(rec(Some("a"), 200, 10, 5));
        s.record(rec(Some("a"), 429, 0, 0));
        s.record(rec(None, 401, 0, 0));
        assert_eq!(s.requests_total, 3);
        assert_eq!(s.by_status.get("200"), Some(&1));
        assert_eq!(s.by_status.get("429"), Some(&1));
        assert_eq!(
            s.by_key.get("a"),
            Some(&Counts {
                requests: 2,
                prompt_tokens: 10,
                completion_tokens: 5
            })
        );
        assert_eq!(s.by_model.get("m").map(|c| c.requests), Some(3));
        for _ in 0..300 {
            s.record(rec(Some("b"), 200, 1, 1));
        }
        assert_eq!(s.recent.len(), RECENT);
    }

    #[test]
    fn headers_are_lowercase_and_joined() {
        let mut h = HeaderMap::new();
        h.append("X-Foo", "1".parse().expect("value"));
        h.append("x-foo", "2".parse().expect("value"));
        let m = header_map(&h);
        assert_eq!(m.get("x-foo").map(String::as_str), Some("1, 2"));
    }
}
