#!/usr/bin/env bash
# Walk-through with curl against a running server (cargo run -- serve --config configs/default.toml):
# the three ways to tag a request, then a hot-loaded adapter taking over a task.
# Needs: the server on $URL, and an adapter folder (PEFT) at $ADAPTER, for example one made
# by the shipped generator from a file of prompts:
#   cargo run -- generate --prompts prompts.txt --out data/import/demo
# (With configs/default.toml the plugin also generates a task's adapter by itself after its
# first 16 prompts: examples/openai_client.py shows that switch.)
set -euo pipefail
URL=${URL:-http://127.0.0.1:8080}
ADAPTER=${ADAPTER:-data/import/demo}
AUTH=()
[ -n "${DND_ADMIN_TOKEN:-}" ] && AUTH=(-H "Authorization: Bearer $DND_ADMIN_TOKEN")
ask() { # ask EXTRA_CURL_ARGS... ; prints what served the request and the answer
  curl -s -D /tmp/dnd-headers "$URL/v1/chat/completions" -H 'content-type: application/json' "$@" |
    python3 -c 'import json,sys; print("  answer:", json.load(sys.stdin)["choices"][0]["message"]["content"])'
  grep -i '^x-dnd-adapter' /tmp/dnd-headers
}
q='{"model":"default","temperature":0,"max_tokens":30,"messages":[{"role":"user","content":"What is 12 plus 30?"}]'

echo "1. header X-Task-Id";  ask -H 'X-Task-Id: demo' -d "$q}"
echo "2. body field task_id"; ask -d "$q,\"task_id\":\"demo\"}"
echo "3. OpenAI user field";  ask -d "$q,\"user\":\"demo\"}"

echo "hot-load $ADAPTER as task demo"
curl -s -X PUT "$URL/admin/adapters/demo" "${AUTH[@]}" -H 'content-type: application/json' \
  -d "{\"path\":\"$ADAPTER\"}" | python3 -m json.tool | head -12

echo "the same requests now go through the adapter"
ask -H 'X-Task-Id: demo' -d "$q}"
ask -d "$q,\"user\":\"demo\"}"
echo "untagged requests stay on the base model"
ask -d "$q}"
