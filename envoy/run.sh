#!/usr/bin/env bash
# `make run`: the emulator and Envoy with the filter, on loopback, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY=127.0.0.1:10000
mkdir -p .run
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "stopping..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in 10000 9901 18080 18081 18082 18083; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use: stop what holds it (another make run?)" >&2
    exit 1
  fi
done

target/release/llm-emulator --listen 127.0.0.1:18080 --admin 127.0.0.1:18081 \
  2> .run/emulator.log &
pids+=($!)
# The fallback region of the openai-chat route.
target/release/llm-emulator --listen 127.0.0.1:18082 --admin 127.0.0.1:18083 \
  2> .run/emulator-fallback.log &
pids+=($!)
.venv/bin/envoy -c envoy/envoy.yaml --concurrency 2 --use-dynamic-base-id \
  > .run/access.log 2> .run/envoy.log &
pids+=($!)

for _ in $(seq 1 100); do
  if [[ "$(curl -s http://127.0.0.1:9901/ready 2>/dev/null)" == LIVE* ]]; then ready=1; break; fi
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a process exited early; see .run/*.log" >&2; exit 1; }; done
  sleep 0.1
done
[[ "${ready:-}" == 1 ]] || { echo "Envoy did not become ready; see .run/envoy.log" >&2; exit 1; }

cat <<MSG
llm-capacity is running: Envoy on http://$PROXY (admin http://127.0.0.1:9901),
emulated OpenAI/Anthropic API behind it on 127.0.0.1:18080 (admin :18081),
and the chat route's fallback region on 127.0.0.1:18082 (admin :18083).

Try, in another terminal (each command is one line):

curl -s http://$PROXY/v1/chat/completions -H 'content-type: application/json' -H 'authorization: Bearer demo-key' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'

.venv/bin/python -c 'from openai import OpenAI; print(OpenAI(base_url="http://$PROXY/v1", api_key="demo-key").chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)'

.venv/bin/python -c 'from anthropic import Anthropic; print(Anthropic(base_url="http://$PROXY", api_key="demo-key").messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=[{"role": "user", "content": "Hello!"}]).content[0].text)'

Streamed (server-sent events, the usage in the last chunk):
curl -sN http://$PROXY/v1/chat/completions -H 'content-type: application/json' -H 'authorization: Bearer demo-key' -d '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello!"}]}'

(The Anthropic SDK's base_url takes no /v1: it adds /v1/messages itself.)

Failover: make the primary answer 429 with Retry-After: 5, then send chat requests:
curl -s -XPOST http://127.0.0.1:18081/admin/faults -d '{"storm": {"retry_after_s": 5}}'
(undo: -d '{"storm": null}')

Metrics: curl -s http://127.0.0.1:9901/stats/prometheus | grep llmcap
Logs: .run/envoy.log, access log .run/access.log, emulator .run/emulator.log
Ctrl-C stops everything.
MSG

# Stay up until Ctrl-C or until either process dies.
while true; do
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a process exited; see .run/*.log" >&2; exit 1; }; done
  sleep 1
done
