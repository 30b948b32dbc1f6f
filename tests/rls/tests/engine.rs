//! The engine end to end: a real redis-server on a free port, the real llmcap-rls binary,
//! a tonic client. Skips (with a message) only where redis-server is not installed, and
//! fails instead when CI is set: `make setup` installs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use llmcap_rls::{
    Code, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, RateLimitServiceClient,
    Unit,
};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_llmcap-rls");
static SEQ: AtomicU32 = AtomicU32::new(0);

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "llmcap-rls-test-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// None when redis-server is not installed (and CI is not set).
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is not installed (make setup installs it)");
            }
            eprintln!(
                "SKIP: redis-server is not installed (apt-get install redis-server, or make setup)"
            );
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            let dir = scratch("redis");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut r = Redis { child, port, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if r.ping() {
                    return Some(r);
                }
                if let Ok(Some(_)) = r.child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start redis-server");
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Rls {
    child: Child,
    addr: String,
}

impl Rls {
    fn start(limits: &str, redis: Option<&Redis>, extra: &[&str]) -> Rls {
        let dir = scratch("rls");
        let file = dir.join("limits.yaml");
        std::fs::write(&file, limits).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", "127.0.0.1:0", "--limits"])
            .arg(&file)
            .args(extra);
        if let Some(r) = redis {
            cmd.args(["--redis", &r.url()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("llmcap-rls listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no listening line: {line:?} (exit {:?})", child.try_wait()))
            .to_string();
        Rls { child, addr }
    }

    async fn client(&self) -> RateLimitServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        RateLimitServiceClient::new(channel)
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn desc(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        limit: None,
        hits_addend: hits,
    }
}

/// The filter's call: one descriptor for requests (hits 1), one for tokens.
fn llm_call(domain: &str, route: &str, tokens: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: vec![
            desc(&[("llmcap_route", route), ("unit", "requests")], Some(1)),
            desc(&[("llmcap_route", route), ("unit", "tokens")], Some(tokens)),
        ],
        hits_addend: 0,
    }
}

async fn call(c: &mut RateLimitServiceClient<Channel>, req: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(req).await.unwrap().into_inner()
}

fn ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

fn limits(domain: &str, requests: u64, tokens: u64, seconds: u64) -> String {
    format!(
        r#"
- namespace: {domain}
  name: requests-per-route
  max_value: {requests}
  seconds: {seconds}
  conditions: ["descriptors[0]['unit'] == 'requests'"]
  variables: ["descriptors[0]['llmcap_route']"]
- namespace: {domain}
  name: tokens-per-route
  max_value: {tokens}
  seconds: {seconds}
  conditions: ["descriptors[0]['unit'] == 'tokens'"]
  variables: ["descriptors[0]['llmcap_route']"]
"#
    )
}

macro_rules! redis_or_skip {
    () => {
        match Redis::start() {
            Some(r) => r,
            None => return,
        }
    };
}

#[tokio::test]
async fn limit_reached_exactly_with_statuses() {
    let redis = redis_or_skip!();
    let rls = Rls::start(&limits("d", 5, 1000, 60), Some(&redis), &[]);
    let mut c = rls.client().await;
    for i in 0..5u32 {
        let r = call(&mut c, llm_call("d", "chat", 1)).await;
        assert!(ok(&r), "call {i}: {r:?}");
        assert_eq!(r.statuses.len(), 2);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.limit_remaining, 4 - i);
        let l = s.current_limit.as_ref().unwrap();
        assert_eq!(
            (l.requests_per_unit, l.unit, l.name.as_str()),
            (5, Unit::Minute as i32, "requests-per-route")
        );
        assert_eq!(r.statuses[1].limit_remaining, 999 - i);
    }
    let r = call(&mut c, llm_call("d", "chat", 1)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // The tokens descriptor was fine and is not charged: all or nothing.
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    assert_eq!(r.statuses[1].limit_remaining, 995);
    // Another route has its own counters.
    assert!(ok(&call(&mut c, llm_call("d", "embed", 1)).await));
}

#[tokio::test]
async fn per_descriptor_hits_and_request_hits() {
    let redis = redis_or_skip!();
    let rls = Rls::start(&limits("d", 100, 1000, 60), Some(&redis), &[]);
    let mut c = rls.client().await;
    let r = call(&mut c, llm_call("d", "chat", 300)).await;
    assert!(ok(&r));
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (99, 700)
    );
    // No per-descriptor hits: the request's hits_addend (7) for both.
    let mut req = llm_call("d", "chat", 0);
    for d in &mut req.descriptors {
        d.hits_addend = None;
    }
    req.hits_addend = 7;
    let r = call(&mut c, req.clone()).await;
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (92, 693)
    );
    // Neither: 1.
    req.hits_addend = 0;
    let r = call(&mut c, req).await;
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (91, 692)
    );
    // Per-descriptor hits win over the request's.
    let mut req = llm_call("d", "chat", 92);
    req.hits_addend = 50;
    let r = call(&mut c, req).await;
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (90, 600)
    );
}

#[tokio::test]
async fn all_or_nothing() {
    let redis = redis_or_skip!();
    let rls = Rls::start(&limits("d", 10, 100, 60), Some(&redis), &[]);
    let mut c = rls.client().await;
    let r = call(&mut c, llm_call("d", "chat", 80)).await;
    assert!(ok(&r));
    // Tokens over: requests not charged either.
    let r = call(&mut c, llm_call("d", "chat", 30)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(
        (r.statuses[0].code, r.statuses[0].limit_remaining),
        (Code::Ok as i32, 9)
    );
    assert_eq!(
        (r.statuses[1].code, r.statuses[1].limit_remaining),
        (Code::OverLimit as i32, 20)
    );
    // Exactly what is left still fits.
    let r = call(&mut c, llm_call("d", "chat", 20)).await;
    assert!(ok(&r), "{r:?}");
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (8, 0)
    );
    // hits 0: checked only; an exhausted counter answers OVER_LIMIT, and nothing is charged.
    let r = call(&mut c, llm_call("d", "chat", 0)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].limit_remaining, 8);
}

#[tokio::test]
async fn one_counter_matched_by_two_descriptors_holds_their_sum() {
    let redis = redis_or_skip!();
    let lim = r#"
- namespace: d
  max_value: 10
  seconds: 60
  conditions: ["descriptors[0]['llmcap_route'] == 'chat'"]
  variables: []
"#;
    let rls = Rls::start(lim, Some(&redis), &[]);
    let mut c = rls.client().await;
    // 6 + 6 > 10 although each alone fits.
    let r = call(&mut c, llm_call("d", "chat", 6)).await;
    let _ = r;
    let mut req = llm_call("d", "chat", 6);
    req.descriptors[0].hits_addend = Some(6);
    let r = call(&mut c, req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
    // The first call charged 1 + 6: 3 left.
    let r = call(&mut c, llm_call("d", "chat", 2)).await;
    assert!(ok(&r));
    assert_eq!(r.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn duration_until_reset_is_the_window_end() {
    let redis = redis_or_skip!();
    let rls = Rls::start(&limits("d", 3, 1000, 2), Some(&redis), &[]);
    let mut c = rls.client().await;
    let start = Instant::now();
    let r = call(&mut c, llm_call("d", "chat", 1)).await;
    let reset = |r: &RateLimitResponse, i: usize| {
        let d = r.statuses[i].duration_until_reset.as_ref().unwrap();
        Duration::new(d.seconds as u64, d.nanos as u32)
    };
    let first = reset(&r, 0);
    assert!(
        first <= Duration::from_secs(2) && first > Duration::from_millis(1800),
        "{first:?}"
    );
    // 2 s is not a unit Envoy names: no current_limit.
    assert!(r.statuses[0].current_limit.is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = call(&mut c, llm_call("d", "chat", 1)).await;
    let later = reset(&r, 0);
    assert!(
        later < first - Duration::from_millis(400) && later > first - Duration::from_millis(800),
        "{first:?} {later:?}"
    );
    call(&mut c, llm_call("d", "chat", 1)).await;
    let r = call(&mut c, llm_call("d", "chat", 1)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let left = reset(&r, 0);
    // The window ends when it says: over just before, admitted just after.
    let window_end = start + first;
    tokio::time::sleep_until((window_end - Duration::from_millis(150)).into()).await;
    assert_eq!(
        call(&mut c, llm_call("d", "chat", 1)).await.overall_code,
        Code::OverLimit as i32,
        "{left:?}"
    );
    tokio::time::sleep_until((window_end + Duration::from_millis(60)).into()).await;
    let r = call(&mut c, llm_call("d", "chat", 1)).await;
    assert!(ok(&r), "{r:?}");
    assert_eq!(r.statuses[0].limit_remaining, 2);
    assert!(reset(&r, 0) > Duration::from_millis(1800));
}

#[tokio::test]
async fn concurrent_callers_on_two_instances_stay_exactly_within() {
    let redis = redis_or_skip!();
    // 3 tokens a call: tokens bind at 40 calls, requests (50) never do.
    let lim = limits("d", 50, 120, 60);
    let a = Rls::start(&lim, Some(&redis), &[]);
    let b = Rls::start(&lim, Some(&redis), &[]);
    let mut tasks = Vec::new();
    for k in 0..4 {
        let mut c = if k % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u32;
            for _ in 0..30 {
                if ok(&call(&mut c, llm_call("d", "chat", 3)).await) {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert_eq!(admitted, 40);
    // Rejected calls charged nothing: requests counted 40, not 120.
    let mut c = a.client().await;
    let r = call(&mut c, llm_call("d", "chat", 0)).await;
    assert_eq!(r.statuses[0].limit_remaining, 10, "{r:?}");
    assert_eq!(r.statuses[1].limit_remaining, 0);
}

#[tokio::test]
async fn two_instances_share_the_counter() {
    let redis = redis_or_skip!();
    let lim = limits("d", 5, 1000, 60);
    let a = Rls::start(&lim, Some(&redis), &[]);
    let mut ca = a.client().await;
    for _ in 0..3 {
        assert!(ok(&call(&mut ca, llm_call("d", "chat", 1)).await));
    }
    let b = Rls::start(&lim, Some(&redis), &[]);
    let mut cb = b.client().await;
    let r = call(&mut cb, llm_call("d", "chat", 1)).await;
    assert_eq!(r.statuses[0].limit_remaining, 1);
    drop(a); // an instance going away loses nothing
    assert!(ok(&call(&mut cb, llm_call("d", "chat", 1)).await));
    assert!(!ok(&call(&mut cb, llm_call("d", "chat", 1)).await));
}

#[tokio::test]
async fn unmatched_descriptor_is_ok_without_limit() {
    let redis = redis_or_skip!();
    let rls = Rls::start(&limits("d", 1, 1, 60), Some(&redis), &[]);
    let mut c = rls.client().await;
    for _ in 0..3 {
        let r = call(
            &mut c,
            RateLimitRequest {
                domain: "d".into(),
                descriptors: vec![desc(&[("other", "x")], None)],
                hits_addend: 0,
            },
        )
        .await;
        assert!(ok(&r));
        assert_eq!(r.statuses.len(), 1);
        assert!(r.statuses[0].current_limit.is_none());
        assert!(r.statuses[0].duration_until_reset.is_none());
    }
    // An unknown domain: no limits at all.
    assert!(ok(&call(&mut c, llm_call("elsewhere", "chat", 5)).await));
}

#[tokio::test]
async fn malformed_requests_are_grpc_errors_and_the_service_lives_on() {
    let redis = redis_or_skip!();
    // A condition that cannot evaluate on a string (Limitador would panic on it).
    let lim = format!(
        "{}- namespace: d\n  max_value: 1\n  seconds: 60\n  conditions: [\"descriptors[0]['n'] > 5\"]\n  variables: []\n",
        limits("d", 5, 100, 60)
    );
    let rls = Rls::start(&lim, Some(&redis), &[]);
    let mut c = rls.client().await;
    let bad = [
        RateLimitRequest {
            domain: String::new(),
            descriptors: vec![desc(&[("a", "b")], None)],
            hits_addend: 0,
        },
        RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![],
            hits_addend: 0,
        },
        RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![desc(&[], None)],
            hits_addend: 0,
        },
        RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![desc(&[("", "b")], None)],
            hits_addend: 0,
        },
        RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![desc(&[("n", "seven")], None)],
            hits_addend: 0,
        },
        RateLimitRequest {
            domain: "d".into(),
            descriptors: (0..100).map(|_| desc(&[("a", "b")], None)).collect(),
            hits_addend: 0,
        },
    ];
    for req in bad {
        let e = c.should_rate_limit(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{req:?}: {e:?}");
    }
    // Huge hits are just over the limit.
    assert!(!ok(&call(&mut c, llm_call("d", "chat", u64::MAX)).await));
    assert!(ok(&call(&mut c, llm_call("d", "chat", 1)).await));
}

#[tokio::test]
async fn bad_limits_files_are_refused_at_start() {
    let dir = scratch("bad");
    for (name, text) in [
        ("yaml", "- namespace: [unclosed"),
        ("index", "- namespace: d\n  max_value: 1\n  seconds: 60\n  conditions: [\"descriptors[1]['a'] == 'b'\"]\n  variables: []\n"),
        ("zero", "- namespace: d\n  max_value: 1\n  seconds: 0\n  conditions: []\n  variables: []\n"),
        ("cel", "- namespace: d\n  max_value: 1\n  seconds: 60\n  conditions: [\"descriptors[0]['a'] ==\"]\n  variables: []\n"),
    ] {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--limits"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("limits"), "{name}: {:?}", out.stderr);
    }
    let out = Command::new(BIN)
        .args(["--listen", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn in_memory_storage_without_redis() {
    let rls = Rls::start(&limits("d", 2, 10, 60), None, &[]);
    let mut c = rls.client().await;
    assert!(ok(&call(&mut c, llm_call("d", "chat", 8)).await));
    let r = call(&mut c, llm_call("d", "chat", 3)).await;
    assert!(!ok(&r));
    assert_eq!(r.statuses[0].limit_remaining, 1);
    let r = call(&mut c, llm_call("d", "chat", 2)).await;
    assert!(ok(&r));
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (0, 0)
    );
    let d = r.statuses[1].duration_until_reset.as_ref().unwrap();
    assert!(d.seconds <= 60 && d.seconds >= 58, "{d:?}");
}

#[tokio::test]
async fn delay_makes_every_answer_late() {
    // --verbose too: its lines go to a stdout nobody reads any more, harmlessly.
    let rls = Rls::start(
        &limits("d", 5, 100, 60),
        None,
        &["--delay-ms", "300", "--verbose"],
    );
    let mut c = rls.client().await;
    let t = Instant::now();
    assert!(ok(&call(&mut c, llm_call("d", "chat", 1)).await));
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(ok(&call(&mut c, llm_call("d", "chat", 1)).await));
}

#[tokio::test]
async fn redis_gone_is_unavailable_not_a_hang() {
    let redis = redis_or_skip!();
    let rls = Rls::start(&limits("d", 5, 100, 60), Some(&redis), &[]);
    let mut c = rls.client().await;
    assert!(ok(&call(&mut c, llm_call("d", "chat", 1)).await));
    drop(redis);
    let t = Instant::now();
    let e = c
        .should_rate_limit(llm_call("d", "chat", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_call_abandoned_during_the_delay_charges_nothing() {
    let redis = redis_or_skip!();
    let lim = limits("d", 5, 100, 60);
    let slow = Rls::start(&lim, Some(&redis), &["--delay-ms", "400"]);
    let fast = Rls::start(&lim, Some(&redis), &[]);
    let mut c = slow.client().await;
    let mut req = tonic::Request::new(llm_call("d", "chat", 10));
    req.set_timeout(Duration::from_millis(100));
    let e = c.should_rate_limit(req).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut f = fast.client().await;
    let r = call(&mut f, llm_call("d", "chat", 1)).await;
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (4, 99),
        "{r:?}"
    );
}
