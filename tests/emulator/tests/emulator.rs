//! End-to-end tests of the emulator binary over real sockets: each test starts
//! its own instance on ephemeral ports and talks raw HTTP/1.1 to it.

// Test helpers outside #[test] functions may fail loudly too; the child is
// waited for in Drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::zombie_processes
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

static SEQ: AtomicU32 = AtomicU32::new(0);

struct Emu {
    child: Child,
    api: u16,
    admin: u16,
    dir: PathBuf,
}

impl Emu {
    fn start(args: &[&str]) -> Emu {
        let dir = std::env::temp_dir().join(format!(
            "llm-emu-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port_file = dir.join("ports.json");
        let child = Command::new(env!("CARGO_BIN_EXE_llm-emulator"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--port-file",
            ])
            .arg(&port_file)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let v: Value = serde_json::from_str(&s).unwrap();
                let api = v["api"].as_u64().unwrap() as u16;
                let admin = v["admin"].as_u64().unwrap() as u16;
                return Emu {
                    child,
                    api,
                    admin,
                    dir,
                };
            }
            assert!(Instant::now() < deadline, "emulator did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
        request(self.api, "POST", path, headers, &body.to_string()).unwrap()
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> Value {
        let r = request(self.admin, method, path, &[], body).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn write_request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    close: bool,
) -> std::io::Result<()> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
    if close {
        req.push_str("connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
}

/// Reads one response (Content-Length or chunked) from a buffered stream.
fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body)?;
    } else if get("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write_request(&mut s, method, path, headers, body, true)?;
    read_response(&mut BufReader::new(s))
}

/// `data:` payloads of an SSE body, with the `event:` name that preceded each.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut event = None;
    for line in body.lines() {
        if let Some(e) = line.strip_prefix("event: ") {
            event = Some(e.to_string());
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((event.take(), d.to_string()));
        }
    }
    out
}

const OA: (&str, &str) = ("authorization", "Bearer sk-test");

fn hello() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]})
}

#[test]
fn openai_non_stream_exact_usage() {
    let emu = Emu::start(&[]);
    let r = emu.post("/v1/chat/completions", &[OA], &hello());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // The cookbook's gpt-4o count for one user message "Hello" is 8.
    assert_eq!(v["usage"]["prompt_tokens"], 8);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 20);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        12
    );
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("10000"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("9999"));
    assert!(r.header("x-ratelimit-reset-tokens").is_some());
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));

    // Cut by max_tokens; n choices multiply the completion tokens.
    let mut body = hello();
    body["max_tokens"] = json!(3);
    body["n"] = json!(2);
    let v = emu
        .post(
            "/v1/chat/completions",
            &[OA, ("x-emulator-output-tokens", "5")],
            &body,
        )
        .json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["finish_reason"], "length");
    assert_eq!(v["choices"][1]["message"]["content"], "alpha beta gamma");
    assert_eq!(v["usage"]["completion_tokens"], 6);

    // The prompt formula adds 3 per message (+ role and content) and 1 per name.
    let v = emu
        .post(
            "/v1/chat/completions",
            &[OA],
            &json!({"model": "gpt-4o", "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "user", "name": "bob", "content": [{"type": "text", "text": "Hello"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}
            ]}),
        )
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], 8 + 3 + 1 + 1 + 1 + 1 + 85);
}

#[test]
fn openai_stream_with_usage_is_paced() {
    let emu = Emu::start(&["--ttft-ms", "300", "--inter-token-ms", "150"]);
    let mut s = TcpStream::connect(("127.0.0.1", emu.api)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = hello();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let t0 = Instant::now();
    write_request(
        &mut s,
        "POST",
        "/v1/chat/completions",
        &[OA, ("x-emulator-output-tokens", "3")],
        &body.to_string(),
        true,
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut events: Vec<(Duration, Value)> = Vec::new();
    let mut headers = String::new();
    let mut done = false;
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 0 {
        if headers.is_empty() || !headers.ends_with("\r\n\r\n") {
            headers.push_str(&line);
        } else if let Some(d) = line.trim_end().strip_prefix("data: ") {
            if d == "[DONE]" {
                done = true;
            } else {
                events.push((t0.elapsed(), serde_json::from_str(d).unwrap()));
            }
        }
        line.clear();
    }
    assert!(headers.contains("text/event-stream"), "{headers}");
    assert!(
        headers.contains("x-ratelimit-remaining-requests: 9999"),
        "{headers}"
    );
    assert!(done, "stream ends with [DONE]");
    // role, 3 content chunks, finish, usage
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events[0].1["choices"][0]["delta"]["role"], "assistant");
    let content: String = events
        .iter()
        .filter_map(|(_, e)| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "alpha beta gamma");
    assert_eq!(events[4].1["choices"][0]["finish_reason"], "stop");
    for (_, e) in &events[..5] {
        assert!(e["usage"].is_null() && e.as_object().unwrap().contains_key("usage"));
        assert_eq!(e["object"], "chat.completion.chunk");
    }
    let last = &events[5].1;
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 8);
    assert_eq!(last["usage"]["completion_tokens"], 3);
    // Genuinely streamed: the first token after the TTFT, later ones spaced.
    assert!(
        events[0].0 >= Duration::from_millis(290),
        "ttft {:?}",
        events[0].0
    );
    assert!(
        events[2].0 - events[1].0 >= Duration::from_millis(140),
        "{:?}",
        events
    );
    assert!(
        events[3].0 - events[2].0 >= Duration::from_millis(140),
        "{:?}",
        events
    );
}

#[test]
fn anthropic_stream_and_errors() {
    let emu = Emu::start(&[]);
    let ak = ("x-api-key", "ant-key");
    let body = json!({"model": "claude-x", "max_tokens": 4, "stream": true, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}]});
    let r = emu.post(
        "/v1/messages",
        &[ak, ("x-emulator-output-tokens", "10")],
        &body,
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(
        r.header("anthropic-ratelimit-requests-limit"),
        Some("10000")
    );
    let reset = r.header("anthropic-ratelimit-tokens-reset").unwrap();
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && &reset[10..11] == "T",
        "{reset}"
    );
    assert!(r.header("request-id").is_some());
    let events = sse_events(&r.text());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    // "Be brief." is 3 tokens (Be, brief, .), then 3 + "Hello" (1).
    let input = start["message"]["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(input, 3 + 3 + 1);
    assert_eq!(start["message"]["usage"]["output_tokens"], 1);
    for (name, data) in &events {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], name.as_deref().unwrap());
    }
    let delta: Value = serde_json::from_str(&events[8].1).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 4);

    // Non-stream.
    let mut b = body.clone();
    b["stream"] = json!(false);
    b["max_tokens"] = json!(100);
    let v = emu.post("/v1/messages", &[ak], &b).json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], input);
    assert_eq!(v["usage"]["output_tokens"], 12);
    assert_eq!(v["content"][0]["type"], "text");

    // Missing max_tokens, missing key, malformed JSON.
    let mut b2 = body.clone();
    b2.as_object_mut().unwrap().remove("max_tokens");
    let r = emu.post("/v1/messages", &[ak], &b2);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(r.json()["type"], "error");
    let r = emu.post("/v1/messages", &[], &body);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = request(emu.api, "POST", "/v1/messages", &[ak], "{nope").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = request(emu.api, "POST", "/v1/chat/completions", &[OA], "[1]").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(r.json()["error"]["param"].is_null());
}

#[test]
fn rate_limits_answer_429_with_headers() {
    let emu = Emu::start(&["--rpm", "2", "--tpm", "100"]);
    for _ in 0..2 {
        assert_eq!(
            emu.post("/v1/chat/completions", &[OA], &hello()).status,
            200
        );
    }
    let r = emu.post("/v1/chat/completions", &[OA], &hello());
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Rate limit reached for requests"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    // The first of two requests refills after 30 s (2 per minute).
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let ra_ms: u64 = r.header("retry-after-ms").unwrap().parse().unwrap();
    assert!((28..=30).contains(&ra), "{ra}");
    assert!((28_000..=30_000).contains(&ra_ms), "{ra_ms}");
    assert!(r
        .header("x-ratelimit-reset-requests")
        .unwrap()
        .ends_with('s'));

    // Tokens: 8 prompt + 50 max_tokens = 58 fits into 100 once, not twice.
    let mut b = hello();
    b["max_tokens"] = json!(50);
    let tk = ("authorization", "Bearer other");
    let r = emu.post("/v1/chat/completions", &[tk], &b);
    assert_eq!(r.status, 200);
    // 58 charged at admission (38 of it refunded afterwards).
    let left: u64 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!((42..=44).contains(&left), "remaining at admission {left}");
    b["max_tokens"] = json!(75);
    let r = emu.post("/v1/chat/completions", &[tk], &b);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "tokens");

    // Anthropic style.
    let ab =
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]});
    let ak = ("x-api-key", "ak");
    assert_eq!(emu.post("/v1/messages", &[ak], &ab).status, 200);
    assert_eq!(emu.post("/v1/messages", &[ak], &ab).status, 200);
    let r = emu.post("/v1/messages", &[ak], &ab);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert!(r.header("retry-after").is_some());

    // Reset clears the buckets.
    emu.admin("POST", "/admin/reset", "");
    assert_eq!(
        emu.post("/v1/chat/completions", &[OA], &hello()).status,
        200
    );
}

#[test]
fn storm_and_error_faults() {
    let emu = Emu::start(&["--storm-retry-after", "7"]);
    let r = emu.post("/v1/chat/completions", &[OA], &hello());
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("retry-after-ms"), Some("7000"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset-requests"), Some("7s"));
    let f = emu.admin(
        "POST",
        "/admin/faults",
        r#"{"storm": null, "error_rate": 1.0, "error_status": [503]}"#,
    );
    assert_eq!(f["storm"], Value::Null);
    assert_eq!(f["error_status"], json!([503]));
    let r = emu.post("/v1/chat/completions", &[OA], &hello());
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["type"], "server_error");
    let r = emu.post(
        "/v1/messages",
        &[("x-api-key", "k")],
        &json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["type"], "overloaded_error");

    // A seeded error rate repeats the same sequence.
    let run = || -> Vec<u16> {
        emu.admin(
            "POST",
            "/admin/faults",
            r#"{"error_rate": 0.5, "error_status": [500], "seed": 7}"#,
        );
        (0..16)
            .map(|_| emu.post("/v1/chat/completions", &[OA], &hello()).status)
            .collect()
    };
    let a = run();
    assert_eq!(a, run());
    assert!(a.contains(&200) && a.contains(&500), "{a:?}");
    let f = emu.admin("POST", "/admin/faults", r#"{"error_rate": 0}"#);
    assert_eq!(f["error_rate"], 0.0);
    assert_eq!(
        emu.post("/v1/chat/completions", &[OA], &hello()).status,
        200
    );
    let r = request(emu.admin, "POST", "/admin/faults", &[], r#"{"bogus": 1}"#).unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn outage_refuses_then_recovers() {
    let emu = Emu::start(&[]);
    // A keep-alive connection made before the outage gets closed by it.
    let mut ka = TcpStream::connect(("127.0.0.1", emu.api)).unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write_request(
        &mut ka,
        "POST",
        "/v1/chat/completions",
        &[OA],
        &hello().to_string(),
        false,
    )
    .unwrap();
    let mut kr = BufReader::new(ka.try_clone().unwrap());
    assert_eq!(read_response(&mut kr).unwrap().status, 200);

    emu.admin("POST", "/admin/faults", r#"{"outage": true}"#);
    let err = TcpStream::connect(("127.0.0.1", emu.api)).expect_err("refused during outage");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut buf = [0u8; 16];
    let n = kr.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "keep-alive connection closed");
    // The admin port stays up.
    assert_eq!(emu.admin("GET", "/admin/faults", "")["outage"], true);

    emu.admin("POST", "/admin/faults", r#"{"outage": false}"#);
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        match request(
            emu.api,
            "POST",
            "/v1/chat/completions",
            &[OA],
            &hello().to_string(),
        ) {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(r.status, 200);
}

#[test]
fn starts_in_outage_when_asked() {
    let emu = Emu::start(&["--outage"]);
    assert!(TcpStream::connect(("127.0.0.1", emu.api)).is_err());
    assert_eq!(
        request(emu.admin, "GET", "/healthz", &[], "")
            .unwrap()
            .status,
        200
    );
    emu.admin("POST", "/admin/faults", r#"{"outage": false}"#);
    let deadline = Instant::now() + Duration::from_secs(5);
    while request(emu.api, "GET", "/healthz", &[], "").is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn admin_counts_everything_received() {
    let emu = Emu::start(&["--rpm", "3"]);
    let h = [OA, ("x-test-header", "from-test")];
    assert_eq!(emu.post("/v1/chat/completions", &h, &hello()).status, 200);
    let mut sb = hello();
    sb["stream"] = json!(true);
    assert_eq!(emu.post("/v1/chat/completions", &h, &sb).status, 200);
    assert_eq!(
        emu.post("/v1/chat/completions", &h, &json!({"model": "gpt-4o"}))
            .status,
        400
    );
    assert_eq!(emu.post("/v1/chat/completions", &[], &hello()).status, 401);
    assert_eq!(emu.post("/v1/chat/completions", &h, &hello()).status, 200);
    assert_eq!(emu.post("/v1/chat/completions", &h, &hello()).status, 429);
    assert_eq!(emu.post("/nope", &h, &hello()).status, 404);
    // Health checks are not API traffic.
    assert_eq!(
        request(emu.api, "GET", "/healthz", &[], "").unwrap().text(),
        "ok"
    );

    let s = emu.admin("GET", "/admin/stats", "");
    assert_eq!(s["requests_total"], 7);
    assert_eq!(
        s["by_status"],
        json!({"200": 3, "400": 1, "401": 1, "404": 1, "429": 1})
    );
    assert_eq!(
        s["by_key"]["sk-test"],
        json!({"requests": 6, "prompt_tokens": 24, "completion_tokens": 36})
    );
    assert_eq!(s["by_model"]["gpt-4o"]["requests"], 7);
    let recent = s["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 7);
    assert_eq!(recent[0]["headers"]["x-test-header"], "from-test");
    assert_eq!(recent[0]["key"], "sk-test");
    assert_eq!(recent[0]["prompt_tokens"], 8);
    assert_eq!(recent[1]["stream"], true);
    assert_eq!(recent[3]["key"], Value::Null);
    assert_eq!(recent[5]["status"], 429);

    emu.admin("POST", "/admin/reset", "");
    let s = emu.admin("GET", "/admin/stats", "");
    assert_eq!(s["requests_total"], 0);
    assert_eq!(s["recent"], json!([]));
    let f = emu.admin("GET", "/admin/faults", "");
    assert_eq!(f["rpm"], 3);
    assert_eq!(f["tpm"], 10_000_000);
    assert_eq!(f["outage"], false);
    let f = emu.admin("POST", "/admin/faults", r#"{"rpm": 50, "latency_ms": 5}"#);
    assert_eq!(
        (f["rpm"].as_u64(), f["latency_ms"].as_u64()),
        (Some(50), Some(5))
    );
}

#[test]
fn other_endpoints_and_limits() {
    let emu = Emu::start(&[]);
    let r = request(emu.api, "GET", "/v1/models", &[OA], "").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "list");
    let r = emu.post("/v1/nowhere", &[OA], &json!({}));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());

    let v = emu
        .post(
            "/v1/completions",
            &[OA],
            &json!({"model": "m", "prompt": ["Hello", "Hello"], "max_tokens": 2}),
        )
        .json();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
    );
    let v = emu
        .post(
            "/v1/embeddings",
            &[OA],
            &json!({"model": "e", "input": ["Hello", "Hello Hello"]}),
        )
        .json();
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 8);
    let v = emu
        .post(
            "/v1/responses",
            &[OA],
            &json!({"model": "m", "input": "Hello", "max_output_tokens": 4}),
        )
        .json();
    assert_eq!(v["usage"]["input_tokens"], 8);
    assert_eq!(v["usage"]["output_tokens"], 4);
    assert_eq!(v["status"], "incomplete");
    let g = json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "generationConfig": {"maxOutputTokens": 5}});
    let v = emu
        .post(
            "/v1beta/models/gemini-2.0-flash:generateContent",
            &[("x-goog-api-key", "g")],
            &g,
        )
        .json();
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount": 1, "candidatesTokenCount": 5, "totalTokenCount": 6})
    );
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    let r = emu.post(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=g",
        &[],
        &g,
    );
    assert_eq!(r.status, 200);
    let ev = sse_events(&r.text());
    assert_eq!(ev.len(), 5);
    let last: Value = serde_json::from_str(&ev[4].1).unwrap();
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 5);

    // Bodies over 16 MiB get 413; the writer runs on its own thread because
    // the server answers before reading everything.
    let s = TcpStream::connect(("127.0.0.1", emu.api)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let len = 17 * 1024 * 1024;
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\ncontent-length: {len}\r\n\r\n");
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..17 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 413);
    let _ = writer.join();
}

#[test]
fn sigterm_exits_zero() {
    let mut emu = Emu::start(&[]);
    let pid = emu.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = emu.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one request and reads every byte until the server closes the
/// connection (with a read timeout, so a hang fails instead of blocking).
fn raw_exchange(port: u16, path: &str, headers: &[(&str, &str)], body: &Value) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_request(&mut s, "POST", path, headers, &body.to_string(), true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "read failed (hang?): {e}; got {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    out
}

fn stream_body(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

#[test]
fn reset_after_events_cuts_the_stream() {
    let emu = Emu::start(&[]);
    let f = emu.admin("POST", "/admin/faults", r#"{"reset_after_events": 2}"#);
    assert_eq!(f["reset_after_events"], 2);
    let raw = raw_exchange(
        emu.api,
        "/v1/chat/completions",
        &[OA, ("x-emulator-output-tokens", "5")],
        &stream_body(hello()),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    // Two events (the role chunk and the first token), then the connection
    // closes without the last chunk: no [DONE], no usage, no `0\r\n\r\n`.
    let events = sse_events(&text);
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&events[1].1).unwrap()["choices"][0]["delta"]["content"],
        "alpha"
    );
    assert!(
        !text.contains("[DONE]") && !text.ends_with("0\r\n\r\n"),
        "{text}"
    );
    // Non-streamed answers are not affected; clearing the fault restores streams.
    assert_eq!(
        emu.post("/v1/chat/completions", &[OA], &hello()).status,
        200
    );
    emu.admin("POST", "/admin/faults", r#"{"reset_after_events": null}"#);
    let raw = raw_exchange(
        emu.api,
        "/v1/chat/completions",
        &[OA],
        &stream_body(hello()),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("data: [DONE]") && text.ends_with("0\r\n\r\n"),
        "{text}"
    );
}

#[test]
fn broken_sse_inserts_malformed_events_and_the_stream_goes_on() {
    let emu = Emu::start(&[]);
    emu.admin("POST", "/admin/faults", r#"{"broken_sse": true}"#);
    let mut s = TcpStream::connect(("127.0.0.1", emu.api)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = stream_body(hello()).to_string();
    write_request(
        &mut s,
        "POST",
        "/v1/chat/completions",
        &[OA, ("x-emulator-output-tokens", "3")],
        &body,
        true,
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        std::str::from_utf8(&r.body).is_err(),
        "carries bytes that are not UTF-8"
    );
    assert!(r.body.len() > 300 * 1024, "carries the oversized event");
    let text = String::from_utf8_lossy(&r.body);
    let events = sse_events(&text);
    // role, truncated JSON, not UTF-8, oversized, 3 tokens, finish, usage, [DONE]
    // (the line with no field name is no `data:` line).
    assert_eq!(events.len(), 10, "{}", &text[..2000.min(text.len())]);
    assert!(serde_json::from_str::<Value>(&events[1].1).is_err());
    assert!(events[3].1.len() >= 300 * 1024);
    assert!(text.contains("\n\nthis line has no field name\n\n"));
    let usage: Value = serde_json::from_str(&events[8].1).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 8);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(events[9].1, "[DONE]");
    // Non-streamed answers are not affected.
    assert_eq!(
        emu.post("/v1/chat/completions", &[OA], &hello()).json()["usage"]["prompt_tokens"],
        8
    );
}

#[test]
fn broken_usage_sends_counts_as_strings() {
    let emu = Emu::start(&[]);
    emu.admin("POST", "/admin/faults", r#"{"broken_usage": true}"#);
    let v = emu.post("/v1/chat/completions", &[OA], &hello()).json();
    assert_eq!(v["usage"]["prompt_tokens"], "8");
    assert_eq!(v["usage"]["completion_tokens"], "12");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], "0");
    // Everything else keeps its type.
    assert!(v["created"].is_u64() && v["choices"][0]["index"].is_u64());
    let raw = raw_exchange(
        emu.api,
        "/v1/chat/completions",
        &[OA],
        &stream_body(hello()),
    );
    let text = String::from_utf8_lossy(&raw);
    let events = sse_events(&text);
    let usage: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], "12", "{text}");
    let v = emu
        .post(
            "/v1/messages",
            &[("x-api-key", "k")],
            &json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .json();
    assert_eq!(v["usage"]["output_tokens"], "5");
    // The emulator's own counts are not affected.
    let stats = emu.admin("GET", "/admin/stats", "");
    assert_eq!(stats["by_key"]["sk-test"]["prompt_tokens"], 16);
    emu.admin("POST", "/admin/faults", r#"{"broken_usage": false}"#);
    assert_eq!(
        emu.post("/v1/chat/completions", &[OA], &hello()).json()["usage"]["prompt_tokens"],
        8
    );
}

#[test]
fn response_headers_are_added_to_every_api_answer() {
    let emu = Emu::start(&[]);
    let f = emu.admin(
        "POST",
        "/admin/faults",
        r#"{"response_headers": {"x-llm-capacity-retry-after": "30", "X-Other": "yes"}}"#,
    );
    assert_eq!(f["response_headers"]["x-other"], "yes");
    let r = emu.post("/v1/chat/completions", &[OA], &hello());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-llm-capacity-retry-after"), Some("30"));
    assert_eq!(r.header("x-other"), Some("yes"));
    // Errors too (here: no API key).
    let r = emu.post("/v1/chat/completions", &[], &hello());
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-other"), Some("yes"));
    emu.admin("POST", "/admin/faults", r#"{"response_headers": null}"#);
    let r = emu.post("/v1/chat/completions", &[OA], &hello());
    assert_eq!(r.header("x-other"), None);
    let r = request(
        emu.admin,
        "POST",
        "/admin/faults",
        &[],
        r#"{"response_headers": {"a b": "1"}}"#,
    )
    .unwrap();
    assert_eq!(r.status, 400);
}
