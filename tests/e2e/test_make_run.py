"""`make run` as a new user meets it: the printed curl, OpenAI and Anthropic SDK one-liners and the
streamed example work as printed, Ctrl-C stops all."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

import harness

PORTS = (10000, 9901, 18080, 18081, 18082, 18083)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def run_script():
    if any(port_open(p) for p in PORTS):
        pytest.skip("make run's fixed ports are in use on this machine")
    p = subprocess.Popen([str(harness.ROOT / "envoy" / "run.sh")], cwd=harness.ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    yield p
    harness.stop(p)


def test_make_run_prints_working_commands_and_stops_cleanly(run_script):
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = run_script.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "Ctrl-C stops everything" in line:
            break
    out = "\n".join(lines)
    assert "Ctrl-C stops everything" in out, out

    curl = next(l for l in lines if l.startswith("curl -s http://127.0.0.1:10000/v1/chat/completions"))
    r = subprocess.run(["bash", "-c", curl], cwd=harness.ROOT, capture_output=True, text=True, timeout=30)
    body = json.loads(r.stdout)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]

    for sdk in ("openai", "anthropic"):
        one_liner = next(l for l in lines if l.startswith(f".venv/bin/python -c 'from {sdk} import"))
        r = subprocess.run(["bash", "-c", one_liner], cwd=harness.ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip(), (sdk, r.stderr)

    streamed = next(l for l in lines if l.startswith("curl -sN http://127.0.0.1:10000/v1/chat/completions"))
    r = subprocess.run(["bash", "-c", streamed], cwd=harness.ROOT, capture_output=True, text=True, timeout=30)
    events = [json.loads(l[len("data: "):]) for l in r.stdout.splitlines()
              if l.startswith("data: ") and l != "data: [DONE]"]
    assert r.stdout.rstrip().endswith("data: [DONE]"), r.stdout
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert events[-1]["usage"]["completion_tokens"] > 0, events[-1]

    # Ctrl-C reaches the whole foreground process group, as in a terminal.
    os.killpg(run_script.pid, signal.SIGINT)
    run_script.wait(timeout=20)
    rest = run_script.stdout.read()
    assert "stopped" in rest
    deadline = time.monotonic() + 10
    while any(port_open(p) for p in PORTS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(port_open(p) for p in PORTS)
