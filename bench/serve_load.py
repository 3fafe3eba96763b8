"""Bounded load check for `chattune serve`: N concurrent clients with the official `openai` AsyncOpenAI.

    .venv/bin/python bench/serve_load.py                          # SmolLM2 alias, 64 streaming clients
    .venv/bin/python bench/serve_load.py runs/demo --clients 1 16 64   # a run dir, one stream row per count
    .venv/bin/python bench/serve_load.py runs/demo --engine vllm  # another engine (chattune serve --engine)
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000 --api-key KEY   # a running server
    .venv/bin/python bench/serve_load.py --smoke                  # tiny random model, 4 clients, seconds

Starts `python -m chattune serve MODEL` on a free loopback port (unless --url), waits for /health,
then runs these phases, one table row each:
  * single   — one streaming client alone (the latency floor),
  * stream   — N concurrent streaming clients, once per N given to --clients,
  * batch    — N concurrent non-streaming clients (the largest N).
Every request must succeed (the script exits 1 on any error). Columns: requests/s, p50/p95 time to
first token (first non-empty content chunk; for non-streaming, the whole answer), completion
tokens/s over the phase's wall time. Greedy, max_tokens 32 by default: short on purpose.
Times on a shared CPU are noisy: compare rows of one invocation; the machine's load average is printed
before and after.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import httpx
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

import _smoke


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    total: float = 0.0
    tokens: int = 0
    error: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompt(i: int) -> list[dict]:
    # Distinct prompts (different lengths too), as real clients send.
    return [{"role": "user", "content": f"Write one short sentence about the number {i * 37 % 1000}."}]


async def one_stream(client: AsyncOpenAI, i: int, max_tokens: int) -> Result:
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    try:
        stream = await client.chat.completions.create(model="served", messages=prompt(i), max_tokens=max_tokens,
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except Exception as e:  # noqa: BLE001 - counted and printed
        return Result(False, error=f"{type(e).__name__}: {e}")
    total = time.perf_counter() - t0
    return Result(True, ttft if ttft is not None else total, total, tokens)


async def one_plain(client: AsyncOpenAI, i: int, max_tokens: int) -> Result:
    t0 = time.perf_counter()
    try:
        r = await client.chat.completions.create(model="served", messages=prompt(i), max_tokens=max_tokens,
                                                 temperature=0)
    except Exception as e:  # noqa: BLE001 — any failure counts as a failed request
        return Result(False, error=f"{type(e).__name__}: {e}")
    total = time.perf_counter() - t0
    return Result(True, total, total, r.usage.completion_tokens)


async def phase(client: AsyncOpenAI, n: int, max_tokens: int, stream: bool, timeout: float):
    """Run n clients at once; a client still running after `timeout` s is cancelled and counted as an error."""
    fn = one_stream if stream else one_plain
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(fn(client, i, max_tokens)) for i in range(n)]
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for t in late:
        t.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    wall = time.perf_counter() - t0
    return [t.result() if t not in late else Result(False, error=f"unfinished after {timeout:.0f}s")
            for t in tasks], wall


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def run(url: str, api_key: str, clients: list[int], max_tokens: int, timeout: float) -> int:
    # Every concurrent client holds one connection: size the pool for all of them.
    most = max(clients)
    client = AsyncOpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=timeout,
                         http_client=DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=most + 8)))
    await one_plain(client, 0, 4)  # warm-up (first call pays one-time costs)
    rows, errors = [], 0
    phases = [("single", 1, True)] + [("stream", n, True) for n in clients] + [("batch", most, False)]
    for name, n, stream in phases:
        results, wall = await phase(client, n, max_tokens, stream, timeout)
        ok = [r for r in results if r.ok]
        bad = [r for r in results if not r.ok]
        errors += len(bad)
        for r in bad[:3]:
            print(f"  {name}: {r.error}", file=sys.stderr)
        ttfts = [r.ttft for r in ok]
        toks = sum(r.tokens for r in ok)
        rows.append((name, n, len(bad), len(ok) / wall, pct(ttfts, 0.5), pct(ttfts, 0.95), toks / wall, wall))
    await client.close()
    head = ("phase", "clients", "errors", "req/s", "p50 TTFT s", "p95 TTFT s", "tok/s", "wall s")
    print(" | ".join(f"{h:>10}" for h in head))
    for r in rows:
        print(" | ".join([f"{r[0]:>10}", f"{r[1]:>10}", f"{r[2]:>10}"] + [f"{x:>10.2f}" for x in r[3:]]))
    print(f"max_tokens={max_tokens}, greedy; TTFT for 'batch' = whole answer (non-streaming)")
    return 1 if errors else 0


def main() -> int:
    """Start the server (unless --url), run the three phases, print the table; exit 1 on any failed request."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="run dir, model folder or alias")
    ap.add_argument("--clients", type=int, nargs="+", default=[64], help="concurrent clients; one stream row each")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--url", help="use this running server instead of starting one")
    ap.add_argument("--engine", default="hf", help="the server's engine (chattune serve --engine)")
    ap.add_argument("--api-key", default="bench-key")
    ap.add_argument("--max-batch-size", type=int, default=None, help="server's batch limit (default: its own)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in the server (OMP_NUM_THREADS); 1 is far faster on an oversubscribed CPU")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds for a whole phase")
    ap.add_argument("--startup-timeout", type=float, default=900, help="seconds to wait for the server")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model, 4 clients, 4 tokens (checks that "
                    "the bench runs; its numbers mean nothing)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.clients, args.max_tokens, args.threads = str(_smoke.tiny_model_dir()), [4], 4, 1

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CHATTUNE_API_KEY": args.api_key, "HF_HUB_OFFLINE": "1"}
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        cmd = [sys.executable, "-m", "chattune", "serve", args.model, "--port", str(port), "--engine", args.engine,
               "--max-queue", str(max(64, max(args.clients) + 1)), "--max-tokens-cap", str(max(args.max_tokens, 64))]
        if args.max_batch_size:
            cmd += ["--max-batch-size", str(args.max_batch_size)]
        # A file, not a pipe: the access log of many requests would fill a pipe nobody reads and stall the server.
        log = tempfile.NamedTemporaryFile("w+", prefix="serve_load_", suffix=".log", delete=False)  # noqa: SIM115 — the log outlives this block (read on failure)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        while True:
            if proc is not None and proc.poll() is not None:
                log.seek(0)
                print(f"server exited ({proc.returncode}):\n{log.read()[-4000:]}", file=sys.stderr)
                return 1
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > args.startup_timeout:
                print("server did not come up", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"server up in {time.monotonic() - t0:.1f}s: {args.model} at {url} ({args.engine} engine, "
              f"threads {args.threads or 'default'}, max batch {args.max_batch_size or 'default'})")
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        code = asyncio.run(run(url, args.api_key, args.clients, args.max_tokens, args.timeout))
        print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        return code
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
