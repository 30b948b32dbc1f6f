"""Bad input end to end, in real Envoy: every malformed, oversized, truncated,
abandoned or broken request and answer gets its documented reply (an
OpenAI-style JSON error with the right status, code and `x-llm-capacity`
header, or the documented pass-through), quickly, and nothing is left behind.

One emulator and one Envoy serve the whole module. After every test (one group
of cases) the `stack` fixture checks that nothing broke and nothing leaked:

- Envoy's Wasm failure counters stayed at zero: `wasm.<plugin>.vm_reload`,
  `vm_reload_failure`, `vm_reload_success`, `vm_reload_backoff` for both
  instances (`llm_capacity`, `llm_capacity_upstream`), and no new VM was
  created (`wasm.envoy.wasm.runtime.v8.created` and `.active`, `wasm.wasm_vm_count`
  unchanged); a VM that trapped would be reloaded (FAIL_RELOAD) on the next
  request, which is why a probe request goes first. Envoy's log has no panic,
  no critical line and no Wasm failure.
- Accounting is consistent: the routes run with `max_in_flight: 1` and a token
  limit whose burst is far below one request's reservation (1,000,000 tokens by
  `default_max_tokens`), so a probe is admitted (and sees the token bucket
  back near full) only once every earlier request has released its in-flight
  slot and settled its reservation; and every request that reached admission
  was settled exactly once (`llmcap_reconciliations_total` equals admitted
  plus rate-limited requests).

Runtime: about 15 s.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import socket
import time
import uuid

import pytest

import harness
import rawhttp

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COMPLETIONS = "/v1/completions"
CAP = 65536                    # openai-chat's max_request_bytes here
TPM = 6_000_000                # route token limit: refills 100,000 tokens/s, burst 50,000
BIG_ALLOWANCE = 1_000_000      # default_max_tokens: a leaked reservation could not hide
FAST = 3.0                     # a local answer arrives well within this (seconds)

PLUGIN = {
    "log_level": "info",
    "upstream_filter": True,
    "unmatched_routes": "pass",
    "clusters": {"emulator": {"provider": "openai"}, "emulator-fallback": {"provider": "openai"}},
    "routes": {
        "openai-chat": {
            "clusters": ["emulator"],
            "max_request_bytes": CAP,
            "include_usage": True,
            "default_max_tokens": BIG_ALLOWANCE,
            "limits": {"max_in_flight": 1, "tokens_per_minute": TPM},
        },
        # Identity headers: a tenant from a header the mesh is trusted to set,
        # and session budgets. 6 per minute with 15 s of burst (1.5 requests):
        # a tenant's first two requests go, the third is refused (for 5 s),
        # however fast they come.
        "anthropic-messages": {
            "clusters": ["emulator"],
            "limits": {"max_in_flight": 1},
            "tenant_limits": {"header": "x-tenant-id", "trust_header": True,
                              "requests_per_minute": 6, "burst_seconds": 15},
            "session_budget": {"header": "x-session-id", "max_calls": 3},
        },
        # Queueing: 10 per minute (6 s of refill each), 9 s of burst (1.5
        # requests): two go at once, the third waits about 3 s.
        "llm-other": {
            "clusters": ["emulator"],
            "limits": {"requests_per_minute": 10, "burst_seconds": 9},
            "queue": {"max_wait_seconds": 30, "poll_ms": 20},
        },
    },
}

NO_FAULTS = dict(error_rate=0.0, latency_ms=0, ttft_ms=0, inter_token_ms=0, storm=None, outage=False,
                 reset_after_events=None, broken_sse=False, broken_usage=False, response_headers=None,
                 rpm=100_000_000, tpm=1_000_000_000)

WASM_COUNTERS = [f"wasm.{p}.{c}" for p in ("llm_capacity", "llm_capacity_upstream")
                 for c in ("vm_reload", "vm_reload_failure", "vm_reload_success", "vm_reload_backoff")]
WASM_VMS = ["wasm.envoy.wasm.runtime.v8.created", "wasm.envoy.wasm.runtime.v8.active", "wasm.wasm_vm_count"]


def chat_body(**kw) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **kw}).encode()


def anthropic_body(**kw) -> bytes:
    return json.dumps({"model": "claude-sonnet-4", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "hi"}], **kw}).encode()


class Stack:
    def __init__(self, env: harness.Envoy, emu: harness.Emulator):
        self.env, self.emu = env, emu
        self.baseline = self.wasm_stats()
        # Requests admitted without a body (nothing reserved, nothing to settle).
        self.bodyless = {"openai-chat": 0, "anthropic-messages": 0}

    # ---- requests ----

    def headers(self, test_id: str, extra=()) -> list:
        return [("host", "llm.test"), ("content-type", "application/json"), ("authorization", "Bearer k-bad"),
                ("x-test-id", test_id), *extra]

    def send(self, path: str, body: bytes, extra=(), test_id: str | None = None, timeout=10.0) -> rawhttp.Response:
        tid = test_id or uuid.uuid4().hex
        r = rawhttp.exchange(self.env.port, "POST", path,
                             self.headers(tid, extra) + [("content-length", str(len(body)))], body, timeout=timeout)
        r.extra["test_id"] = tid
        return r

    def entry(self, test_id: str, timeout=10.0) -> dict:
        """This request's access-log line."""
        def find():
            for line in self.env.access_log.read_text(errors="replace").splitlines():
                if test_id in line and line.startswith("{"):
                    e = json.loads(line)
                    if e.get("test_id") == test_id:
                        return e
            return None
        return harness.wait_for(find, timeout, f"access-log line of {test_id}")

    def state(self, test_id: str) -> dict:
        raw = self.entry(test_id)["llm_capacity"]
        return json.loads(raw) if raw else {}

    def received(self) -> int:
        return self.emu.stats()["requests_total"]

    # ---- observations ----

    def wasm_stats(self) -> dict[str, int]:
        s = self.env.stats_json()
        return {k: s[k] for k in WASM_COUNTERS + WASM_VMS if k in s}

    def metrics(self) -> dict:
        return {(n, tuple(sorted(ls.items()))): v for n, ls, v in harness.prom_samples(self.env)
                if n.startswith("llmcap_")}

    @staticmethod
    def total(snap: dict, name: str, **labels) -> float:
        return sum(v for (n, ls), v in snap.items()
                   if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))

    # ---- the check after every group ----

    def probe(self, path: str, body: bytes, extra=()) -> rawhttp.Response:
        """Until admitted: an earlier request may still be finishing (its in-flight
        slot and reservation come back when Envoy logs it)."""
        deadline = time.monotonic() + 5
        seen = []
        while True:
            r = self.send(path, body, extra)
            if r.status == 200:
                return r
            seen.append((r.status, r.header("x-llm-capacity"), r.body[:160]))
            assert r.status == 429 and time.monotonic() < deadline, \
                f"probe on {path} never admitted: an in-flight slot or reservation leaked: {seen}"
            time.sleep(0.1)

    def check(self):
        assert self.env.proc.poll() is None, "Envoy exited:\n" + self.env.log_text()[-3000:]
        r = self.probe(CHAT, chat_body(max_tokens=5))
        # Nothing else holds tokens: the bucket is back near full (a leaked
        # 1,000,000-token reservation would take 10 s to refill).
        assert int(r.header("x-ratelimit-remaining-tokens")) >= TPM - 100_000, r.headers
        self.probe(MESSAGES, anthropic_body(), [("x-api-key", "k"), ("x-tenant-id", "probe-" + uuid.uuid4().hex)])
        now = self.wasm_stats()
        for k in WASM_COUNTERS + WASM_VMS:
            assert k in now, f"Envoy no longer reports {k}: {sorted(now)}"
        assert {k: now[k] for k in WASM_COUNTERS} == {k: 0 for k in WASM_COUNTERS}, now
        assert {k: now[k] for k in WASM_VMS} == {k: self.baseline[k] for k in WASM_VMS}, (now, self.baseline)
        bad = [line for line in self.env.log_text().splitlines()
               if "panic" in line or "[critical]" in line or re.search(r"wasm.*(fail|crash|abort)", line, re.I)]
        assert not bad, bad[:5]
        m = self.metrics()
        for route in ("openai-chat", "anthropic-messages"):
            settled = self.total(m, "llmcap_reconciliations_total", route=route)
            admitted = self.total(m, "llmcap_requests_total", route=route, outcome="admitted")
            refused = self.total(m, "llmcap_requests_total", route=route, outcome="rejected_rate_limited")
            assert settled == admitted + refused - self.bodyless[route], (route, settled, admitted, refused)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    emu = harness.Emulator(d)
    try:
        cfg = harness.localize(harness.load_envoy_config(), emu.api_port)
        harness.set_plugin_config(cfg, PLUGIN)
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]["test_id"] = "%REQ(X-TEST-ID)%"
        # Access-log lines are read per request: flush them at once (default 10 s).
        env = harness.Envoy(d, cfg, args=("--file-flush-interval-msec", "50"))
    except BaseException:
        emu.stop()
        raise
    s = Stack(env, emu)
    # The counters this module relies on exist before anything happens.
    for k in WASM_COUNTERS + WASM_VMS:
        assert k in s.baseline, (k, sorted(env.stats_json()))
    yield s
    env.stop()
    emu.stop()


@pytest.fixture
def st(stack):
    stack.emu.faults(**NO_FAULTS)
    stack.emu.reset()
    yield stack
    stack.emu.faults(**NO_FAULTS)
    stack.check()


def local_error(r: rawhttp.Response, status: int, code: str, message: str | re.Pattern, header: str | None = None):
    """A local answer of the filter: OpenAI-style JSON, `x-llm-capacity`, fast.
    (Limiter refusals name the family in the header, `rate_limit_exceeded`, and
    the scope in the body's code.)"""
    assert r.status == status, (r.status, r.body[:300])
    assert r.header("content-type") == "application/json", r.headers
    assert r.header("x-llm-capacity") == (header or code), r.headers
    err = json.loads(r.body)["error"]
    assert err["code"] == code and err["param"] is None, err
    if isinstance(message, re.Pattern):
        assert message.fullmatch(err["message"]), err["message"]
    else:
        assert err["message"] == message, err["message"]
    assert r.elapsed < FAST, r.elapsed
    return err


# ---------------------------------------------------------------------------
# Bodies the filter cannot read


def test_malformed_and_truncated_json_get_400_invalid_body(st):
    whole = chat_body(max_tokens=5)
    cases = [
        (b'{"model": "gpt-4o", "messages": [}', r"Request body is not valid JSON: expected value at line 1 column 34"),
        (whole[: len(whole) // 2], r"Request body is not valid JSON: EOF while parsing .* at line 1 column \d+"),
        (b"hello, model", r"Request body is not valid JSON: expected value at line 1 column 1"),
        (whole + b" trailing", rf"Request body is not valid JSON: trailing characters at line 1 column {len(whole) + 2}"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
         r"Request body is not valid JSON: invalid unicode code point at line 1 column \d+"),
        # An array where the object belongs: serde reads it as the struct's fields in order.
        (b"[1, 2]", r"Invalid request body: expected a JSON object, got an array"),
        (b' "hi"', r"Invalid request body: expected a JSON object, got a string"),
    ]
    for body, pattern in cases:
        r = st.send(CHAT, body)
        err = local_error(r, 400, "invalid_body", re.compile(pattern))
        assert err["type"] == "invalid_request_error"
        s = st.state(r.extra["test_id"])
        assert s["route"] == "openai-chat" and s["outcome"] == "rejected_invalid_body", s
        assert st.entry(r.extra["test_id"])["details"] == "invalid_body"
    # Anthropic's route answers in the same (OpenAI) shape.
    r = st.send(MESSAGES, b'{"model": "claude-sonnet-4", "max_tokens": 5, "messages": [',
                [("x-api-key", "k"), ("x-tenant-id", "t-" + uuid.uuid4().hex)])
    local_error(r, 400, "invalid_body", re.compile(r"Request body is not valid JSON: EOF while parsing .*"))
    # `content-encoding: identity` is no encoding: the body is still read.
    r = st.send(CHAT, b"{not json", [("content-encoding", "identity")])
    local_error(r, 400, "invalid_body", re.compile(r"Request body is not valid JSON: .*"))
    assert st.received() == 0, "an unreadable body reached the provider"
    m = st.metrics()
    assert st.total(m, "llmcap_requests_total", route="openai-chat", outcome="rejected_invalid_body") >= 7


def test_wrong_types_and_missing_fields(st):
    cases = [
        (chat_body(messages="hi"), r'Invalid request body: invalid type: string "hi", expected a sequence at line 1 column \d+'),
        (chat_body(max_tokens="5"), r'Invalid request body: invalid type: string "5", expected u64 at line 1 column \d+'),
        (chat_body(max_tokens=-1), r"Invalid request body: invalid value: integer `-1`, expected u64 at line 1 column \d+"),
        (chat_body(stream="yes"), r'Invalid request body: invalid type: string "yes", expected a boolean at line 1 column \d+'),
        (chat_body(n=[1]), r"Invalid request body: invalid type: sequence, expected u32 at line 1 column \d+"),
        (json.dumps({"model": "gpt-4o"}).encode(), r"Invalid request body: missing field `messages` at line 1 column \d+"),
    ]
    for body, pattern in cases:
        local_error(st.send(CHAT, body), 400, "invalid_body", re.compile(pattern))
    assert st.received() == 0
    # A missing model is not the filter's to refuse (it estimates by API): the
    # request goes on, and the provider's own 400 comes back, charged nothing.
    r = st.send(CHAT, json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode())
    assert r.status == 400 and r.header("x-llm-capacity") is None, (r.status, r.headers)
    assert json.loads(r.body)["error"]["message"] == "Missing required parameter: 'model'."
    assert st.received() == 1
    s = st.state(r.extra["test_id"])
    assert s["outcome"] == "admitted" and s["usage_source"] == "refused", s
    assert "gen_ai.request.model" not in s
    assert (s["gen_ai.usage.input_tokens"], s["gen_ai.usage.output_tokens"]) == (0, 0)


def test_empty_body_passes_unestimated(st):
    # No body at all: nothing to read or refuse. The request counts (1
    # request, no tokens) and goes on; the provider's own 400 comes back.
    r = st.send(CHAT, b"")
    st.bodyless["openai-chat"] += 1
    assert r.status == 400 and r.header("x-llm-capacity") is None, (r.status, r.headers)
    assert json.loads(r.body)["error"]["message"] == "The request body is empty; expected a JSON object."
    assert st.received() == 1
    s = st.state(r.extra["test_id"])
    assert s["outcome"] == "admitted" and "input_estimate" not in s and "usage_source" not in s, s


# ---------------------------------------------------------------------------
# Sizes


def padded(size: int) -> bytes:
    """A valid chat body of exactly `size` bytes (JSON whitespace at the end)."""
    b = chat_body(max_tokens=5)
    assert len(b) <= size
    return b + b" " * (size - len(b))


def test_body_just_under_and_far_over_the_cap(st):
    # Exactly the cap: read, estimated, sent.
    r = st.send(CHAT, padded(CAP))
    assert r.status == 200, r.body[:300]
    assert st.state(r.extra["test_id"])["usage_source"] == "provider"
    # One byte over, by content-length: 413 before the body is read.
    r = st.send(CHAT, padded(CAP + 1))
    local_error(r, 413, "request_too_large",
                f"Request body of {CAP + 1} bytes exceeds the limit of {CAP} bytes for this route.")
    assert st.state(r.extra["test_id"])["outcome"] == "rejected_too_large"
    assert st.entry(r.extra["test_id"])["details"] == "request_too_large"
    # Far over (64 x the cap, beyond Envoy's 1 MiB buffers): answered on the
    # headers alone, while the client has sent almost nothing of the body.
    huge = 64 * CAP
    tid = uuid.uuid4().hex
    t0 = time.monotonic()
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", CHAT, st.headers(tid) + [("content-length", str(huge))]) + b"{" * 1024)
        rd = rawhttp.Reader(s)
        status, _, hs = rd.head()
        body, _ = rd.body(hs)
    r = rawhttp.Response(status, hs, body, elapsed=time.monotonic() - t0)
    local_error(r, 413, "request_too_large",
                f"Request body of {huge} bytes exceeds the limit of {CAP} bytes for this route.")
    # A route without a policy is capped too, at defaults.max_request_bytes.
    r = st.send("/unmatched/path", b"x" * 262_145)
    local_error(r, 413, "request_too_large",
                "Request body of 262145 bytes exceeds the limit of 262144 bytes for this route.")
    assert st.received() == 1, "only the body at the cap reached the provider"


def test_chunked_body_checked_as_it_arrives(st):
    # Chunked, exactly at the cap: passes.
    body = padded(CAP)
    tid = uuid.uuid4().hex
    chunks = b"".join(rawhttp.chunk(body[i:i + 8192]) for i in range(0, len(body), 8192)) + b"0\r\n\r\n"
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", CHAT, st.headers(tid) + [("transfer-encoding", "chunked")]) + chunks)
        rd = rawhttp.Reader(s)
        status, _, hs = rd.head()
        rd.body(hs)
    assert status == 200
    assert st.received() == 1
    # Chunked, growing past the cap, never finished: 413 as soon as the
    # buffered body passes it, while the client is still sending.
    tid = uuid.uuid4().hex
    t0 = time.monotonic()
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", CHAT, st.headers(tid) + [("transfer-encoding", "chunked")]))
        s.sendall(rawhttp.chunk(b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "'))
        sent = 0
        try:
            while sent < CAP + 16384:
                s.sendall(rawhttp.chunk(b"a" * 4096))
                sent += 4096
        except OSError:
            pass  # Envoy may stop reading once it has answered
        rd = rawhttp.Reader(s)
        status, _, hs = rd.head()
        body, _ = rd.body(hs)
    r = rawhttp.Response(status, hs, body, elapsed=time.monotonic() - t0)
    local_error(r, 413, "request_too_large", f"Request body exceeds the limit of {CAP} bytes for this route.")
    assert st.state(tid)["outcome"] == "rejected_too_large"
    assert st.received() == 1


def test_gzip_body_passes_through_unread_charged_by_size(st):
    plain = chat_body(max_tokens=5)
    gz = gzip.compress(plain)
    r = st.send(CHAT, gz, [("content-encoding", "gzip")])
    # The filter does not decode request bodies: the compressed body reaches the
    # provider as sent (not rewritten for include_usage), and its answer comes back.
    assert r.header("x-llm-capacity") is None, r.headers
    got = st.emu.stats()["recent"]
    assert len(got) == 1
    assert got[0]["headers"]["content-encoding"] == "gzip"
    assert got[0]["headers"]["content-length"] == str(len(gz))
    s = st.state(r.extra["test_id"])
    assert s["outcome"] == "admitted" and s["api"] == "openai_chat", s
    assert "gen_ai.request.model" not in s, "the body was not read"
    est = math.ceil(len(gz) / 4)
    assert s["input_estimate"] == est, (s, len(gz))
    # An unread body has no text to tell its kind: the default margin for prose
    # and o200k (no model read), plus the slack (input_margin: auto;
    # src/core/tokens/estimate.rs DEFAULT_MARGINS, DEFAULT_SLACK).
    assert s["reserved"] == math.ceil(est * 1.06) + 8 + BIG_ALLOWANCE, s
    # The emulator cannot read gzip either: its 400 is a refusal, charged nothing.
    assert r.status == 400 and s["usage_source"] == "refused", (r.status, s)


# ---------------------------------------------------------------------------
# Heads


def test_oversized_and_odd_headers(st):
    body = chat_body(max_tokens=5)

    def raw(extra):
        return st.send(CHAT, body, extra)

    # Envoy's own limits (max_request_headers_kb 60, max_headers_count 100)
    # answer before any filter runs: 431, plain text, never a crash.
    for extra in ([("x-big", "a" * 70_000)], [(f"x-h{i}", "v") for i in range(101)]):
        r = raw(extra)
        assert r.status == 431 and r.body == b"Request Header Fields Too Large", (r.status, r.body[:200])
    # Just under the limit: a 50 KB header passes through the filter untouched.
    r = raw([("x-big", "b" * 50_000)])
    assert r.status == 200, r.status
    assert st.emu.stats()["recent"][-1]["headers"]["x-big"].startswith("b" * 1000)
    # A control character in a value: the codec refuses it (400).
    r = raw([("x-odd", b"a\x01b")])
    assert r.status == 400 and r.header("x-llm-capacity") is None, (r.status, r.body[:200])
    # Bytes that are not UTF-8 in values the filter reads (the client's
    # deadline, a priority-like header) and passes on: answered normally.
    r = raw([("x-stainless-timeout", b"\xff\xfe"), ("x-envoy-expected-rq-timeout-ms", b"\xc3\x28"),
             ("x-client-note", b"caf\xe9")])
    assert r.status == 200, (r.status, r.body[:200])
    assert st.state(r.extra["test_id"])["usage_source"] == "provider"
    assert st.received() == 2
    # Envoy answered those itself, before routing (access log: its own details,
    # no route); nothing was admitted or counted on a route.
    def codec_refusals():
        lines = [json.loads(l) for l in st.env.access_log.read_text().splitlines() if l.startswith("{")]
        got = sorted((e["status"], e["details"]) for e in lines if e["route"] is None
                     and e["details"].startswith("http1."))
        for e in lines:
            if e["route"] is None and e["llm_capacity"]:
                assert json.loads(e["llm_capacity"])["outcome"] != "admitted", e
        return got if len(got) >= 3 else None
    assert harness.wait_for(codec_refusals, 5, "Envoy's own refusals in the access log") == [
        (400, "http1.invalid_characters"), (431, "http1.headers_too_large"), (431, "http1.too_many_headers")]


def test_missing_duplicate_and_unreadable_identity_headers(st):
    run = uuid.uuid4().hex[:8]
    key = [("x-api-key", "k")]

    def call(*extra):
        return st.send(MESSAGES, anthropic_body(), key + list(extra))

    def refused_tenant(r, tenant):
        err = local_error(r, 429, "tenant_rate_limit_exceeded", re.compile(
            r'Rate limit reached for requests per minute on tenant "(.*)" on route "anthropic-messages" '
            r"\(limit 6\)\. Please try again in .*\."), header="rate_limit_exceeded")
        assert err["type"] == "requests" and int(r.header("retry-after")) >= 1, (err, r.headers)
        assert re.search(r'tenant "(.*)" on route', err["message"]).group(1) == tenant, err["message"]

    # No tenant header: the shared tenant "-".
    assert [call().status for _ in range(2)] == [200, 200]
    refused_tenant(call(), "-")
    # A repeated tenant header: the first value is the tenant (Envoy hands the
    # filter the first of repeated headers), never the joined "a, b".
    a, b = f"a-{run}", f"b-{run}"
    assert [call(("x-tenant-id", a)).status for _ in range(2)] == [200, 200]
    refused_tenant(call(("x-tenant-id", a), ("x-tenant-id", b)), a)
    assert call(("x-tenant-id", b), ("x-tenant-id", a)).status == 200
    # The provider sees both lines, as the client sent them.
    assert st.emu.stats()["recent"][-1]["headers"]["x-tenant-id"] == f"{b}, {a}"
    # A tenant value that is not UTF-8 is read lossily (U+FFFD), never a crash.
    bad = f"bad-{run}-".encode() + b"\xff\xfe"
    assert [call(("x-tenant-id", bad)).status for _ in range(2)] == [200, 200]
    refused_tenant(call(("x-tenant-id", bad)), f"bad-{run}-\ufffd\ufffd")

    # Sessions (max_calls 3): a repeated session header counts against the first.
    s1, s2 = f"s1-{run}", f"s2-{run}"

    def session_call(*sessions):
        r = call(("x-tenant-id", f"t-{uuid.uuid4().hex}"), *[("x-session-id", s) for s in sessions])
        return r.status, r.header("x-llm-capacity-session-remaining-calls")

    assert session_call(s1) == (200, "2")
    assert session_call(s1, s2) == (200, "1")
    assert session_call(s2) == (200, "2")
    assert session_call(s1) == (200, "0")
    r = call(("x-tenant-id", f"t-{uuid.uuid4().hex}"), ("x-session-id", s1))
    err = local_error(r, 402, "session_budget_exceeded",
                      "This session has used its budget (calls); further calls are refused.")
    assert err["type"] == "budget_exceeded" and r.header("x-should-retry") == "false"
    # Not UTF-8: a session of its own (lossy name), answered normally.
    assert session_call(b"\xff" + s1.encode()) == (200, "2")
    # No session header: no session budget, no session headers.
    assert session_call() == (200, None)


# ---------------------------------------------------------------------------
# Clients that go away


def test_client_disconnects_mid_request(st):
    body = chat_body(max_tokens=5)
    tid = uuid.uuid4().hex
    # Half the body, then close: the filter was still buffering; nothing leaves.
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", CHAT, st.headers(tid) + [("content-length", str(len(body)))])
                  + body[: len(body) // 2])
        time.sleep(0.3)
    e = st.entry(tid)
    assert e["status"] == 0 and e["details"] == "downstream_remote_disconnect", e
    # It never reached admission: no outcome, or at least not "admitted"
    # (which means "sent upstream").
    assert e["llm_capacity"] is None or json.loads(e["llm_capacity"])["outcome"] != "admitted", e
    # The whole body, then close while the provider is still working on it: no
    # answer at all, so the reservation is charged (documented), then released.
    st.emu.faults(latency_ms=1500)
    tid = uuid.uuid4().hex
    body = chat_body(max_tokens=100)
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", CHAT, st.headers(tid) + [("content-length", str(len(body)))]) + body)
        time.sleep(0.5)
    s = st.state(tid)
    assert s["outcome"] == "admitted" and s["usage_source"] == "reservation", s
    assert s["gen_ai.usage.input_tokens"] == s["input_estimate"] and s["gen_ai.usage.output_tokens"] == 100, s
    st.emu.faults(latency_ms=0)


def test_client_disconnects_mid_stream(st):
    st.emu.faults(inter_token_ms=100)
    body = chat_body(stream=True)
    tid = uuid.uuid4().hex
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", CHAT, st.headers(tid, [("x-emulator-output-tokens", "50")])
                                     + [("content-length", str(len(body)))]) + body)
        rd = rawhttp.Reader(s)
        status, _, hs = rd.head()
        first = rd.read_some()
    assert status == 200 and dict(hs)["content-type"].startswith("text/event-stream")
    assert b"data: " in first
    s = st.state(tid)
    # The stream ended without its usage chunk: input estimated, output from
    # the text that went by (far less than the 50 tokens the answer had).
    assert s["outcome"] == "admitted" and s["usage_source"] == "streamed_text", s
    assert s["gen_ai.usage.input_tokens"] == s["input_estimate"], s
    assert s["gen_ai.usage.output_tokens"] < 50, s
    assert st.entry(tid)["status"] == 200


@pytest.fixture(scope="module")
def abandoned(stack):
    """A request held in the limiter's queue whose client closes before its
    turn, and the request after it. Shared by the two tests below."""
    st = stack
    st.emu.faults(**NO_FAULTS)
    st.emu.reset()
    before = st.metrics()
    body = json.dumps({"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 5}).encode()
    # Two are admitted at once (the second into a debt of half a request) ...
    first = [st.send(COMPLETIONS, body) for _ in range(2)]
    assert [r.status for r in first] == [200, 200], [r.body for r in first]
    # ... the third would go in about 3 s: it waits, and its client leaves.
    tid = uuid.uuid4().hex
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", COMPLETIONS, st.headers(tid) + [("content-length", str(len(body)))])
                  + body)
        s.settimeout(0.7)
        try:
            early = s.recv(1)
        except socket.timeout:
            early = None
    assert early is None, "the third request was answered at once instead of waiting"
    assert st.received() == 2
    harness.wait_for(lambda: st.total(st.metrics(), "llmcap_queued_total", route="llm-other", result="abandoned")
                     - st.total(before, "llmcap_queued_total", route="llm-other", result="abandoned") == 1,
                     5, "the abandoned request to leave the queue")
    # The next request takes the place given back: it waits the ~2 s left of
    # the refill, not ~8 s (behind a place nobody will use).
    r = st.send(COMPLETIONS, body, timeout=30)
    # Its access-log line is written after the filter's last callback: every
    # count it makes has been made (metrics() then waits for them to be written).
    st.entry(r.extra["test_id"])
    after = st.metrics()
    return {"before": before, "after": after, "next": r, "tid": tid, "received": st.received()}


def test_client_disconnects_mid_queue(abandoned, st):
    r = abandoned["next"]
    assert r.status == 200, r.body[:300]
    assert 0.5 < r.elapsed < 5.5, f"waited {r.elapsed:.1f} s: the abandoned place was not given back"
    assert abandoned["received"] == 3, "the abandoned request reached the provider"
    before, after = abandoned["before"], abandoned["after"]
    d = lambda name, **kw: st.total(after, name, **kw) - st.total(before, name, **kw)  # noqa: E731
    assert d("llmcap_queued_total", route="llm-other", result="abandoned") == 1
    assert d("llmcap_queued_total", route="llm-other", result="admitted") == 1
    assert d("llmcap_requests_total", route="llm-other", outcome="admitted") == 3
    assert st.entry(abandoned["tid"])["status"] == 0
    s = st.state(r.extra["test_id"])
    assert s["outcome"] == "admitted" and s["queue_wait_ms"] >= 500, s


def test_abandoned_queued_request_is_not_charged(abandoned, st):
    before, after = abandoned["before"], abandoned["after"]
    d = lambda name, **kw: st.total(after, name, **kw) - st.total(before, name, **kw)  # noqa: E731
    # Three calls reached the provider, each answered with 5 output tokens.
    assert d("llmcap_reconciliations_total", route="llm-other") == 3, after
    assert d("llmcap_reconciliations_total", route="llm-other", source="reservation") == 0
    assert d("llmcap_tokens_total", route="llm-other", kind="output") == 15


# ---------------------------------------------------------------------------
# Upstreams that break


def stream_once(st, extra=(), body=None):
    body = body or chat_body(stream=True)
    tid = uuid.uuid4().hex
    t0 = time.monotonic()
    with rawhttp.connect(st.env.port) as s:
        s.sendall(rawhttp.head_bytes("POST", CHAT, st.headers(tid, list(extra)) + [("content-length", str(len(body)))])
                  + body)
        rd = rawhttp.Reader(s)
        status, reason, hs = rd.head()
        data, complete = rd.body(hs)
    return rawhttp.Response(status, hs, data, complete, time.monotonic() - t0, reason, {"test_id": tid})


def test_upstream_resets_mid_stream(st):
    for n, text in [(3, 2), (0, 0)]:
        st.emu.faults(reset_after_events=n)
        r = stream_once(st)
        # The client gets the events that came, then the connection ends without
        # the last chunk (Envoy closes after its 1 s delayed-close timeout).
        assert r.status == 200 and not r.complete, (r.status, r.complete, r.body[:200])
        assert r.elapsed < 5, r.elapsed
        events = rawhttp.sse_events(r.body)
        assert len(events) == n and b"[DONE]" not in r.body, events
        e = st.entry(r.extra["test_id"])
        assert e["details"] == "upstream_reset_after_response_started{protocol_error}", e
        s = json.loads(e["llm_capacity"])
        assert s["usage_source"] == "streamed_text", s
        assert s["gen_ai.usage.input_tokens"] == s["input_estimate"], s
        # Output estimated from the text that went by: the role chunk has none,
        # then one word per event.
        assert (s["gen_ai.usage.output_tokens"] > 0) == (text > 0) and s["gen_ai.usage.output_tokens"] <= 2 * text, s


def test_broken_sse_is_forwarded_untouched_and_usage_still_read(st):
    st.emu.faults(broken_sse=True)
    r = stream_once(st)
    assert r.status == 200 and r.complete
    # Every byte the provider sent reached the client: the truncated JSON, the
    # bytes that are not UTF-8, the 300 KiB event.
    assert b'"content":"trunc\n\n' in r.body
    assert b"data: \xff\xfe\xfd not utf-8 \xc3\x28\n\n" in r.body
    assert b"\n\nthis line has no field name\n\n" in r.body
    assert b"data: " + b"x" * (300 * 1024) + b"\n\n" in r.body
    events = rawhttp.sse_events(r.body)
    assert events[-1] == b"[DONE]"
    usage = json.loads(events[-2])["usage"]
    s = st.state(r.extra["test_id"])
    # The parser skipped what it could not read (and the oversized event) and
    # found the final usage: settled exactly.
    assert s["usage_source"] == "provider", s
    assert (s["gen_ai.usage.input_tokens"], s["gen_ai.usage.output_tokens"]) == \
        (usage["prompt_tokens"], usage["completion_tokens"]) == (8, 12), (s, usage)


def test_broken_usage_falls_back_as_documented(st):
    st.emu.faults(broken_usage=True)
    # JSON answer whose usage has no readable count: charged the reservation
    # (input estimate, output allowance = this request's max_tokens).
    r = st.send(CHAT, chat_body(max_tokens=100))
    assert r.status == 200 and json.loads(r.body)["usage"]["prompt_tokens"] == "8"
    s = st.state(r.extra["test_id"])
    assert s["usage_source"] == "reservation", s
    assert (s["gen_ai.usage.input_tokens"], s["gen_ai.usage.output_tokens"]) == (s["input_estimate"], 100), s
    # Its 100 tokens are charged to the bucket, and refill within a second.
    time.sleep(1.1)
    # Stream whose final usage has no readable count: the text that went by.
    r = stream_once(st, body=chat_body(stream=True, max_tokens=100))
    assert r.status == 200 and r.complete
    assert json.loads(rawhttp.sse_events(r.body)[-2])["usage"]["completion_tokens"] == "12"
    s = st.state(r.extra["test_id"])
    assert s["usage_source"] == "streamed_text", s
    assert s["gen_ai.usage.input_tokens"] == s["input_estimate"], s
    assert 6 <= s["gen_ai.usage.output_tokens"] <= 24, s
