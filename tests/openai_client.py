"""The official `openai` Python client against a running mistralrs-dnd server (issue 15,
"The official client in CI"). `.ci/openai-client` builds and starts the server with
automatic specialisation on (the shipped generator, a small K) and runs this script.

With the client's public API only, it checks that:
- chat, streamed chat and completions are answered, with the model name the client sent;
- the task id is read from `extra_headers={"X-Task-Id": ...}`, `extra_body={"task_id":
  ...}` and `user=`, and `x-dnd-adapter` (read through `with_raw_response`) names what
  answered: `base` for untagged requests and for a task's first K prompts, then, once the
  plugin has generated the task's adapter from them, `TASK@HASH` in all three ways,
  streamed or not, while other requests stay on the base;
- refusals come as the client's own exceptions, with the OpenAI error fields.

    URL=http://127.0.0.1:8080 [DND_ADMIN_TOKEN=...] python3 tests/openai_client.py
"""

import json
import os
import sys
import time
import urllib.request

import openai
from openai import OpenAI

URL = os.environ.get("URL", "http://127.0.0.1:8080")
TOKEN = os.environ.get("DND_ADMIN_TOKEN")
TASK = "ci-arith"
MODEL = "ci-model"
SWITCH_TIMEOUT_S = float(os.environ.get("SWITCH_TIMEOUT_S", "120"))

# No retries: a refusal or a failure must show at once, not after the client's backoff.
client = OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=120)
checks = 0


def check(ok: bool, what: str) -> None:
    global checks
    if not ok:
        raise AssertionError(what)
    checks += 1


def admin(path: str) -> dict:
    req = urllib.request.Request(f"{URL}/admin{path}")
    if TOKEN:
        req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def tagged(how: str, task: str | None) -> dict:
    """The client arguments that name `task` in one of the three ways."""
    if task is None or how == "none":
        return {}
    if how == "header":
        return {"extra_headers": {"X-Task-Id": task}}
    if how == "body":
        return {"extra_body": {"task_id": task}}
    if how == "user":
        return {"user": task}
    raise ValueError(how)


def chat(prompt: str, how: str = "none", task: str | None = None, stream: bool = False):
    """A greedy chat completion: (x-dnd-adapter, answer text)."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=8,
        temperature=0,
        stream=stream,
        **tagged(how, task),
    )
    check(raw.status_code == 200, f"chat status {raw.status_code}")
    label = raw.headers.get("x-dnd-adapter")
    answer = raw.parse()
    if stream:
        text, chunks = "", 0
        for chunk in answer:
            chunks += 1
            check(chunk.model == MODEL, f"streamed chunk names model {chunk.model!r}")
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        check(chunks > 0, "the stream had no chunk")
    else:
        check(answer.model == MODEL, f"answer names model {answer.model!r}")
        text = answer.choices[0].message.content
        check(isinstance(text, str), f"no message content: {answer}")
    return label, text


def completion(prompt: str, how: str = "none", task: str | None = None):
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0, **tagged(how, task)
    )
    check(raw.status_code == 200, f"completion status {raw.status_code}")
    answer = raw.parse()
    check(answer.model == MODEL, f"completion names model {answer.model!r}")
    check(isinstance(answer.choices[0].text, str), f"no completion text: {answer}")
    return raw.headers.get("x-dnd-adapter"), answer.choices[0].text


def refused(kind: type, status: int, param: str | None, call) -> None:
    """`call` raises the client's `kind` exception, with `status` and `param`."""
    try:
        call()
    except kind as e:
        check(e.status_code == status, f"{kind.__name__}: status {e.status_code}")
        check(e.param == param, f"{kind.__name__}: param {e.param!r}, wanted {param!r}")
        check(bool(e.message), f"{kind.__name__} without a message")
        return
    raise AssertionError(f"{kind.__name__} was not raised")


def main() -> None:
    prompts = [f"What is {i} plus {i + 3}?" for i in range(64)]

    label, _ = chat("Say hello.")
    check(label == "base", f"untagged chat served by {label!r}")
    label, _ = chat("Say hello.", stream=True)
    check(label == "base", f"untagged stream served by {label!r}")
    label, _ = completion("One, two, three,")
    check(label == "base", f"untagged completion served by {label!r}")

    # The task's first K prompts, each way of tagging in turn, chat (streamed or not) and
    # completions: the base answers them all; the K-th starts the generation.
    label, _ = chat(prompts[0], "header", TASK)
    check(label == "base", f"first prompt served by {label!r}")
    needed = admin(f"/adapters/{TASK}")["generation"]["prompts_needed"]
    check(1 <= needed <= len(prompts), f"prompts_needed {needed}")
    ways = ["body", "user", "header"]
    for i in range(1, needed):
        how = ways[i % 3]
        if i % 4 == 3:
            label, _ = completion(prompts[i], how, TASK)
        else:
            label, _ = chat(prompts[i], how, TASK, stream=i % 2 == 1)
        check(label == "base", f"prompt {i + 1} of {needed} ({how}) served by {label!r}")
    print(f"sent the task's {needed} prompts; waiting for its adapter")

    start = time.monotonic()
    while True:
        info = admin(f"/adapters/{TASK}")
        if info.get("state") == "resident" and info.get("hash"):
            break
        gen = info.get("generation") or {}
        check(info.get("state") != "failed" and gen.get("state") != "failed",
              f"generation failed: {info}")
        check(time.monotonic() - start < SWITCH_TIMEOUT_S,
              f"no adapter after {SWITCH_TIMEOUT_S} s: {info}")
        time.sleep(0.5)
    want = f"{TASK}@{info['hash']}"
    check(info["source"] == "generated", f"source {info['source']!r}")
    print(f"adapter {want} resident after {time.monotonic() - start:.1f} s")

    # After the switch: the task's adapter in every way, streamed, and for completions.
    for how in ["header", "body", "user"]:
        label, _ = chat(prompts[0], how, TASK)
        check(label == want, f"{how}: served by {label!r}, wanted {want!r}")
    label, _ = chat(prompts[1], "body", TASK, stream=True)
    check(label == want, f"streamed: served by {label!r}")
    label, _ = completion(prompts[2], "user", TASK)
    check(label == want, f"completion: served by {label!r}")
    # Everything else stays on the base.
    label, _ = chat(prompts[0])
    check(label == "base", f"untagged after the switch: {label!r}")
    label, _ = chat(prompts[0], "header", "ci-other")
    check(label == "base", f"another task: {label!r}")

    # Refusals, as the client's own exceptions with the OpenAI error fields.
    msgs = [{"role": "user", "content": "hi"}]
    refused(openai.BadRequestError, 400, "max_tokens", lambda: client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=10**9))
    refused(openai.BadRequestError, 400, None, lambda: client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=4, extra_headers={"X-Task-Id": "not a task"}))
    refused(openai.BadRequestError, 400, "task_id", lambda: client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=4, extra_body={"task_id": "../x"}))
    refused(openai.BadRequestError, 400, "temperature", lambda: client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=4, temperature="hot"))
    refused(openai.NotFoundError, 404, "model", lambda: client.chat.completions.create(
        model=f"dnd:{TASK}@{info['hash']}", messages=msgs, max_tokens=4))
    print(f"the openai client {openai.__version__} works against the server")
    print(f"openai-client: {checks} passed, 0 failed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - any failure fails the step, with its reason
        print(f"openai client check FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
