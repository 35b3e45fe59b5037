"""`servewise serve --device cuda` end to end: start the server, talk to it as a client would, drain it.

    python scripts/gpu_check.py --model DIR [--device cuda] [--port 8000] [--server-log FILE]

Run on a GPU machine by scripts/gpu_check.sh (CI has no GPU). Exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time

import httpx


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        raise SystemExit(1)


async def stream_chat(client: httpx.AsyncClient, model: str, i: int) -> tuple[int, str, str | None]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 24,
            "stream": True, "temperature": 0, "ignore_eos": True}
    text, finish, chunks = "", None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
                chunks += 1
    return chunks, text, finish


async def client_checks(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        models = (await c.get("/v1/models")).json()
        model = models["data"][0]["id"]
        check(model != "", f"GET /v1/models -> {model}")
        r = await c.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16, "temperature": 0})
        body = r.json()
        check(r.status_code == 200 and body["usage"]["completion_tokens"] > 0,
              f"chat completion: {body['choices'][0]['message']['content']!r} ({body['usage']})")
        r = await c.post("/v1/completions", json={"model": model, "prompt": "Once upon a time", "max_tokens": 8,
                                                  "n": 2, "logprobs": 3, "temperature": 0.8, "seed": 1})
        body = r.json()
        check(r.status_code == 200 and len(body["choices"]) == 2
              and len(body["choices"][0]["logprobs"]["top_logprobs"][0]) == 3, "completion n=2, logprobs=3, seed")
        r = await c.post("/v1/chat/completions", json={"model": model, "messages": [], "max_tokens": -1})
        check(r.status_code == 400 and "error" in r.json(), f"bad request -> {r.status_code} {r.json()['error']}")
        t = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(c, model, i) for i in range(48)))
        elapsed = time.perf_counter() - t
        check(all(chunks >= 24 and finish == "length" for chunks, _, finish in results),
              f"48 concurrent streams, 24 tokens each, in {elapsed:.2f} s")
        metrics = (await c.get("/metrics")).text
        check("servewise:time_to_first_token_seconds_bucket" in metrics, "/metrics exposes TTFT histograms")
        slo = (await c.get("/v1/slo")).json()
        print(json.dumps(slo)[:600])


def wait_ready(proc: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            check(False, f"server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    check(httpx.get(base + "/ready").status_code == 200, "server ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--server-log", default="servewise-serve.log", help="where the server's output goes")
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with open(args.server_log, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "servewise.cli", "serve", "--model", args.model,
                                 "--device", args.device, "--port", str(args.port), "--admission", "off"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, base)
            asyncio.run(client_checks(base))
            proc.send_signal(signal.SIGTERM)
            check(proc.wait(timeout=60) == 0, "SIGTERM drains and exits 0")
        finally:
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    main()
