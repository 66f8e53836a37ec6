"""Load test of ``llavakit serve`` on loopback: many concurrent clients, answers checked, latency measured.

For each mode (batched, and one-at-a-time = ``--max-batch-size 1``) it starts a real server process,
sends every distinct request of a pool alone to get its reference answer, then lets N concurrent
clients send R requests drawn from the pool (images of many sizes, greedy and seeded sampling with
different settings, some streamed, some with n = 2). Every answer must equal its reference: a
request's answer may not depend on what else was in its batch. Prints a table and writes JSON.

    python bench/serve_load.py --requests 500 --clients 64 --out serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from llavakit.serving.background import ServerProcess

MODEL_NAME = "load-test"
PROMPTS = ["What is shown?", "Describe the picture in detail.", "How many objects are there? Answer with one word.",
           "Is it left or right?", "Hello! How can you help me today?", "Compare the images."]


# ---- the requests ---------------------------------------------------------------------------------
def png_data_url(seed: int, width: int, height: int) -> str:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def request_pool(size: int, seed: int = 0) -> list[dict]:
    """Distinct deterministic requests: 0-2 images of random sizes, greedy or seeded sampling."""
    rng = random.Random(seed)
    pool = []
    for index in range(size):
        images = [png_data_url(seed * 1000 + index * 10 + k, rng.randint(16, 160), rng.randint(16, 160))
                  for k in range(rng.choice([0, 1, 1, 1, 2]))]
        content = [{"type": "image_url", "image_url": {"url": url}} for url in images]
        content.append({"type": "text", "text": rng.choice(PROMPTS) + " " + "please " * rng.randint(0, 6)})
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": rng.randint(4, 24),
                "stream": rng.random() < 0.25}
        if rng.random() < 0.5:
            body["temperature"] = 0
        else:
            body.update(temperature=rng.choice([0.7, 1.0, 1.2]), top_p=rng.choice([0.8, 0.95, 1.0]),
                        top_k=rng.choice([0, 5, 20]), seed=rng.randint(0, 10_000), n=rng.choice([1, 1, 2]))
        pool.append(body)
    return pool


# ---- one request ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    pool_index: int
    status: int
    latency_s: float
    answer: list | None = None  # [(text, finish_reason)] per choice
    completion_tokens: int = 0
    error: str | None = None


async def send(client: httpx.AsyncClient, body: dict, pool_index: int) -> Outcome:
    body = {"model": MODEL_NAME, **body}
    started = time.perf_counter()
    try:
        if body.get("stream"):
            body["stream_options"] = {"include_usage": True}
            return await _send_streaming(client, body, pool_index, started)
        response = await client.post("/v1/chat/completions", json=body)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            return Outcome(pool_index, response.status_code, latency, error=response.text[:300])
        data = response.json()
        answer = [(c["message"]["content"], c["finish_reason"]) for c in data["choices"]]
        return Outcome(pool_index, 200, latency, answer, data["usage"]["completion_tokens"])
    except httpx.HTTPError as err:
        return Outcome(pool_index, 0, time.perf_counter() - started, error=f"{type(err).__name__}: {err}")


async def _send_streaming(client, body, pool_index, started) -> Outcome:
    n = body.get("n", 1)
    texts, reasons, tokens = [""] * n, [None] * n, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return Outcome(pool_index, response.status_code, time.perf_counter() - started,
                           error=(await response.aread()).decode()[:300])
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return Outcome(pool_index, 500, time.perf_counter() - started, error=json.dumps(chunk))
            for choice in chunk["choices"]:
                texts[choice["index"]] += choice["delta"].get("content") or ""
                reasons[choice["index"]] = choice["finish_reason"] or reasons[choice["index"]]
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return Outcome(pool_index, 200, time.perf_counter() - started, list(zip(texts, reasons)), tokens)


# ---- the load ---------------------------------------------------------------------------------------
async def references(url: str, pool: list[dict]) -> list[list]:
    """Each distinct request sent alone, one after the other."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        answers = []
        for index, body in enumerate(pool):
            outcome = await send(client, body, index)
            if outcome.status != 200:
                raise RuntimeError(f"reference request {index} failed: {outcome.status} {outcome.error}")
            answers.append(outcome.answer)
        return answers


async def run_load(
    url: str, pool: list[dict], requests: int, clients: int, seed: int = 1
) -> tuple[list[Outcome], float]:
    """``clients`` concurrent clients share ``requests`` requests drawn from the pool; returns outcomes, wall time."""
    order = [i % len(pool) for i in range(requests)]  # every distinct request, repeated, in random order
    random.Random(seed).shuffle(order)
    queue: asyncio.Queue = asyncio.Queue()
    for index in order:
        queue.put_nowait(index)
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            outcomes.append(await send(client, pool[index], index))

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        return outcomes, time.perf_counter() - started


@dataclass
class Report:
    mode: str
    requests: int
    clients: int
    wall_s: float
    ok: int
    server_errors: int  # 5xx, or a connection that failed
    other_errors: int
    mismatched: int  # answers that differ from the same request sent alone
    p50_latency_s: float
    p99_latency_s: float
    requests_per_s: float
    completion_tokens_per_s: float
    examples: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else float("nan")


def summarize(mode: str, outcomes: list[Outcome], wall: float, expected: list[list], clients: int) -> Report:
    latencies = [o.latency_s for o in outcomes if o.status == 200]
    server_errors = [o for o in outcomes if o.status == 0 or o.status >= 500]
    other = [o for o in outcomes if 200 != o.status < 500 and o.status != 0]
    mismatched = [o for o in outcomes
                  if o.status == 200 and [tuple(a) for a in o.answer] != [tuple(a) for a in expected[o.pool_index]]]
    tokens = sum(o.completion_tokens for o in outcomes)
    examples = [f"{o.status} {o.error}" for o in (server_errors + other)[:3]]
    examples += [f"request {o.pool_index}: got {o.answer!r}, alone {expected[o.pool_index]!r}" for o in mismatched[:3]]
    return Report(mode, len(outcomes), clients, wall, len(latencies), len(server_errors), len(other), len(mismatched),
                  percentile(latencies, 50), percentile(latencies, 99), len(outcomes) / wall, tokens / wall, examples)


def measure(
    model: Path, mode: str, pool: list[dict], requests: int, clients: int, extra_flags: list[str] = ()
) -> Report:
    """Start a server in ``mode`` ("batched" or "one-at-a-time"), get the references, run the load."""
    batch = ["--max-batch-size", "1"] if mode == "one-at-a-time" else ["--max-batch-size", str(clients)]
    flags = ["--served-model-name", MODEL_NAME, "--log-level", "warning", "--max-queue", str(max(256, 2 * clients)),
             "--max-n", "2", *batch, *extra_flags]
    with ServerProcess(model, *flags) as server:
        expected = asyncio.run(references(server.url, pool))
        outcomes, wall = asyncio.run(run_load(server.url, pool, requests, clients))
    return summarize(mode, outcomes, wall, expected, clients)


def device_name() -> str:
    """Where the server ran: the GPU, or the CPU model and core count (shared machines vary)."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model}, {os.cpu_count()} cores"


def print_table(reports: list[Report]) -> None:
    header = (f"{'mode':<14}{'requests':>9}{'clients':>8}{'5xx':>5}{'wrong':>6}{'p50 s':>8}{'p99 s':>8}"
              f"{'req/s':>8}{'tok/s':>8}")
    print(header)
    print("-" * len(header))
    for r in reports:
        print(f"{r.mode:<14}{r.requests:>9}{r.clients:>8}{r.server_errors:>5}{r.mismatched:>6}{r.p50_latency_s:>8.3f}"
              f"{r.p99_latency_s:>8.3f}{r.requests_per_s:>8.2f}{r.completion_tokens_per_s:>8.1f}")
    for r in reports:
        for example in r.examples:
            print(f"  {r.mode}: {example}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint to serve (default: a tiny random llava_onevision, built here)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--pool", type=int, default=48, help="distinct requests")
    parser.add_argument("--modes", default="batched,one-at-a-time")
    parser.add_argument("--out", default="serve_load.json")
    parser.add_argument("--server-flag", action="append", default=[],
                        help="extra flag for llavakit serve, e.g. --server-flag=--threads=1 (repeatable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_tiny(Path(tmp))
        pool = request_pool(args.pool)
        reports = [measure(model, mode, pool, args.requests, args.clients, args.server_flag)
                   for mode in args.modes.split(",")]
    print_table(reports)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_name(),
              "model": args.model or "tiny random llava_onevision (llavakit.tiny.checkpoints.build_onevision)",
              "server_flags": args.server_flag, "pool": args.pool, "reports": [asdict(r) for r in reports]}
    if len(reports) == 2 and reports[1].requests_per_s:
        result["batched_speedup"] = reports[0].requests_per_s / reports[1].requests_per_s
        print(f"batched / one-at-a-time throughput: {result['batched_speedup']:.2f}x")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r.server_errors == 0 and r.mismatched == 0 and r.other_errors == 0 for r in reports) else 1


def build_tiny(directory: Path) -> Path:
    from llavakit.tiny.checkpoints import build_onevision

    return build_onevision(directory / MODEL_NAME)


if __name__ == "__main__":
    sys.exit(main())
