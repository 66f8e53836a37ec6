"""Benchmark: the inference engine (issue 29) against transformers ``generate``, the static batcher,
one request at a time, and without the visual feature cache; every ratio from contenders timed in
the same run.

Three parts (``--parts decode,load,chat``):

- **decode**: ms per decode step at batch 1, 16 and 64 (``--batches``), greedy, one image per
  prompt: ``Llava.generate`` through the engine, eager and compiled, against transformers
  ``generate`` on the same weights. A step is (time for N new tokens - time for 1) / (steps
  between them), each contender timed the same way, in alternation; tokens must equal
  transformers' (``--check strict``; ``report`` counts differing rows, for bf16). "first call s"
  is the warm-up call (compilation included).
- **load**: ``llavakit serve`` on loopback (a real process) under 32 concurrent streaming clients
  (``--clients``), mixed prompts (with and without an image, short and long texts) and answers
  (``--long-share`` of them ``--long-factor`` times longer, ``ignore_eos``): throughput, time to
  first token and time between streamed chunks (p50, p95), the short requests' p95 time to first
  token, for the continuous engine, the static batcher (``--schedule static``) and one request at a
  time (``--max-batch-size 1``). Greedy answers are compared across modes.
- **chat**: five turns about one generated 1080p photo, sent as a JPEG file (as a chat client
  attaches one), each turn answered with the whole conversation so far: total seconds without and
  with the media caches (the preprocessed pixels, so a repeated file is neither decoded nor cut
  into crops again, and the visual features, so it skips the tower; new caches per conversation),
  answers asserted equal; each cache's hashing time per image against the work it saves (decoding
  and preprocessing the file; encoding its crops: tower + projector + packing).

    python bench/engine.py                                    # CPU: quickstart shape, float32
    python bench/engine.py --shape 0.5b-lm --parts decode     # CPU: the Qwen2-0.5B language model
    python bench/engine.py --shape 0.5b --device cuda         # GPU: bf16, all parts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import inference
import models
from preprocess import photo

CHAT_TURNS = ["Describe this picture.", "What colours stand out?", "Is there anything on the left side?",
              "How many shapes can you see?", "Summarise the picture in one sentence."]
MODEL_NAME = "engine-bench"


# ---- the engine under test ----------------------------------------------------------------------
def llava_with(pair: models.Pair, *, compile_step: bool = False, feature_cache=None, max_rows: int = 64):
    """A ``Llava`` over the pair's model with an engine of these settings."""
    from llavakit.api import Llava
    from llavakit.engine import EngineConfig

    llava = Llava(pair.ours.model, pair.tokenizer)
    llava.set_engine(EngineConfig(max_rows=max_rows, max_prefill_tokens=65_536, compile=compile_step,
                                  feature_cache=feature_cache))
    return llava


# ---- decode -------------------------------------------------------------------------------------
def trimmed(rows: list[list[int]], eos: set[int]) -> list[list[int]]:
    """Each row up to and including its first end token (transformers pads a finished row)."""
    out = []
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in eos), None)
        out.append(row[: end + 1] if end is not None else row)
    return out


def decode_rows(pair: models.Pair, batch: int, args) -> list[dict[str, Any]]:
    convs = inference.conversations(batch, args.image_size, seed=batch)
    prompts = inference.Prompts(pair, convs)  # asserts both processors give the same ids
    eos = set(pair.ours.eos_token_ids)

    def hf(n: int) -> list[list[int]]:
        return trimmed(inference.hf_generate(pair, prompts.hf, n), eos)

    def ours(llava):
        return lambda n: [g.token_ids for g in llava.generate(convs, max_new_tokens=n)]

    contenders = {"transformers generate": hf,
                  "engine eager": ours(llava_with(pair, max_rows=batch)),
                  "engine compiled": ours(llava_with(pair, compile_step=True, max_rows=batch))}
    expected, first_call, differing = None, {}, {}
    for name, fn in contenders.items():  # warm-up (and compilation) of each contender
        common.cuda_sync()
        start = time.perf_counter()
        tokens = fn(args.new_tokens)
        common.cuda_sync()
        first_call[name] = time.perf_counter() - start
        expected = expected if expected is not None else tokens
        differing[name] = inference.compare(name, tokens, expected, args.check)
    steps = max(len(row) for row in expected) - 1
    if steps < 1:
        raise SystemExit(f"batch {batch}: every row ended at its first token; nothing to time (use --new-tokens > 1)")
    short = {name: common.Timing() for name in contenders}
    long_runs = {name: common.Timing() for name in contenders}
    for name, new_tokens in rounds(list(contenders), args.repeats, [1, args.new_tokens]):
        common.cuda_sync()
        start = time.perf_counter()
        tokens = contenders[name](new_tokens)
        common.cuda_sync()
        (short if new_tokens == 1 else long_runs)[name].seconds.append(time.perf_counter() - start)
        if new_tokens != 1:
            differing[name] = max(differing[name], inference.compare(name, tokens, expected, args.check))
    pick = (lambda t: t.best) if args.stat == "best" else (lambda t: t.median)
    rows, base = [], None
    for name in contenders:
        step = (pick(long_runs[name]) - pick(short[name])) / steps
        if step <= 0:  # the runs' noise exceeds the decode time: no figure rather than a negative one
            step = None
        base = base if base is not None else step
        rows.append({"batch": batch, "contender": name, "decode ms/step": step * 1000 if step else None,
                     "vs generate": base / step if step and base else None,
                     "decode tok/s": batch / step if step else None,
                     "first call s": first_call[name], "steps": steps, "rows differing": differing[name],
                     "note": None if step else "timing noise exceeds the decode time: raise --new-tokens or --repeats",
                     "runs": {"one token": short[name].as_dict(), "all tokens": long_runs[name].as_dict()}})
    return rows


def rounds(names: list[str], repeats: int, variants: list = (None,)) -> list[tuple]:
    """(name, variant) in timing order: every repeat runs every contender once per variant, the order
    reversed every other repeat, so whatever the previous run leaves behind (a thread winding down, memory
    being freed) falls on every contender alike, not on the second one."""
    order = []
    for repeat in range(repeats):
        for variant in variants:
            order += [(name, variant) for name in (names if repeat % 2 == 0 else names[::-1])]
    return order


# ---- load ---------------------------------------------------------------------------------------
@dataclass
class Sent:
    index: int
    kind: str  # "short" or "long" answer
    started: float = 0.0
    chunks: list[float] = field(default_factory=list)  # arrival times of content deltas
    finished: float = 0.0
    text: str = ""
    tokens: int = 0
    error: str | None = None


def load_requests(count: int, short_tokens: int, long_factor: int, long_share: float, seed: int = 0) -> list[dict]:
    """Deterministic mixed requests: 0 or 1 image of a random size, short or long prompt texts, a share
    of answers ``long_factor`` times longer; greedy, streamed, generated to their token limit."""
    from serve_load import png_data_url

    rng = random.Random(seed)
    bodies = []
    for index in range(count):
        content: list[dict] = []
        if rng.random() < 0.6:
            url = png_data_url(seed * 10_000 + index, rng.randint(32, 256), rng.randint(32, 256))
            content.append({"type": "image_url", "image_url": {"url": url}})
        words = rng.choice([2, 8, 40, 200])
        content.append({"type": "text", "text": "Describe what you see " + " ".join(["and more"] * words)})
        long = rng.random() < long_share
        bodies.append({"model": MODEL_NAME, "messages": [{"role": "user", "content": content}],
                       "max_tokens": short_tokens * (long_factor if long else 1), "temperature": 0, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}, "_kind": "long" if long else "short"})
    return bodies


async def stream_one(client, body: dict, index: int) -> Sent:
    body = dict(body)
    sent = Sent(index, body.pop("_kind"), started=time.perf_counter())
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                sent.error = f"{response.status_code} {(await response.aread()).decode()[:200]}"
                return sent
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    sent.error = json.dumps(chunk)[:200]
                    return sent
                for choice in chunk["choices"]:
                    delta = choice["delta"].get("content")
                    if delta:
                        sent.chunks.append(time.perf_counter())
                        sent.text += delta
                if chunk.get("usage"):
                    sent.tokens = chunk["usage"]["completion_tokens"]
    except Exception as err:  # noqa: BLE001 - a failed request is counted, the load goes on
        sent.error = f"{type(err).__name__}: {err}"[:200]
    sent.finished = time.perf_counter()
    return sent


async def run_clients(url: str, bodies: list[dict], clients: int) -> tuple[list[Sent], float]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    done: list[Sent] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            done.append(await stream_one(client, bodies[index], index))

    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        return done, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def load_modes(clients: int) -> dict[str, list[str]]:
    """The servers compared, as ``llavakit serve`` flags."""
    return {"engine continuous": ["--schedule", "continuous", "--max-batch-size", str(clients)],
            "static batcher": ["--schedule", "static", "--max-batch-size", str(clients)],
            "one at a time": ["--schedule", "continuous", "--max-batch-size", "1"]}


def load_rows(args, model_dir: Path) -> list[dict[str, Any]]:
    from llavakit.serving.background import ServerProcess

    bodies = load_requests(args.load_requests, args.short_tokens, args.long_factor, args.long_share)
    common_flags = ["--served-model-name", MODEL_NAME, "--log-level", "warning", "--max-queue", "1024",
                    "--device", args.device, "--dtype", args.dtype, "--media-cache-mb", "0",
                    "--request-timeout", "3600", *args.server_flag]
    if not args.device.startswith("cuda"):
        common_flags += ["--threads", str(args.threads or 1)]
    rows, reference = [], None
    for mode, flags in load_modes(args.clients).items():
        with ServerProcess(model_dir, *common_flags, *flags, startup_timeout=600) as server:
            asyncio.run(run_clients(server.url, bodies[: min(4, len(bodies))], 4))  # warm-up (compilation)
            sent, wall = asyncio.run(run_clients(server.url, bodies, args.clients))
        ok = [s for s in sent if s.error is None]
        ttft = [s.chunks[0] - s.started for s in ok if s.chunks]
        ttft_short = [s.chunks[0] - s.started for s in ok if s.chunks and s.kind == "short"]
        gaps = [b - a for s in ok for a, b in zip(s.chunks, s.chunks[1:])]
        answers = {s.index: s.text for s in ok}
        reference = reference or answers
        tokens = sum(s.tokens for s in ok)
        rows.append({"mode": mode, "requests": len(sent), "clients": args.clients, "errors": len(sent) - len(ok),
                     "wall s": wall, "tok/s": tokens / wall, "req/s": len(ok) / wall,
                     "TTFT p50 s": percentile(ttft, 50), "TTFT p95 s": percentile(ttft, 95),
                     "short TTFT p95 s": percentile(ttft_short, 95),
                     "TBT p50 ms": (percentile(gaps, 50) or 0) * 1000, "TBT p95 ms": (percentile(gaps, 95) or 0) * 1000,
                     "answers as first mode": sum(answers.get(i) == text for i, text in reference.items()),
                     "errors seen": [s.error for s in sent if s.error][:3]})
    static = next(row for row in rows if "static" in row["mode"])  # the baseline: a batch runs to its end
    for row in rows:
        row["tok/s vs static"] = row["tok/s"] / static["tok/s"] if static["tok/s"] else None
        row["short TTFT p95: static / this"] = (static["short TTFT p95 s"] / row["short TTFT p95 s"]
                                                if row["short TTFT p95 s"] and static["short TTFT p95 s"] else None)
    return rows


# ---- chat ---------------------------------------------------------------------------------------
def chat_rows(pair: models.Pair, args) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="llavakit-bench-chat-") as folder:
        image = Path(folder) / "photo.jpg"
        photo(7, (1080, 1920)).save(image, quality=95)
        return chat_rows_for(pair, args, image)


def chat_rows_for(pair: models.Pair, args, image: Path) -> list[dict[str, Any]]:
    from llavakit.model.feature_cache import FeatureCache
    from llavakit.processing.pixel_cache import PixelCache

    cache = FeatureCache(int(args.chat_cache_mb * 2**20))
    pixel_cache = PixelCache(int(args.chat_cache_mb * 2**20))  # --media-cache-mb gives each cache its size
    plain = llava_with(pair, max_rows=1)
    cached = llava_with(pair, feature_cache=cache, max_rows=1)
    cached.processor.pixel_cache = pixel_cache

    def conversation(llava) -> tuple[list[str], list[float]]:
        cache.clear()  # a new conversation about a new picture: its first turn misses
        pixel_cache.clear()
        messages: list[dict] = []
        answers, seconds = [], []
        for turn, question in enumerate(CHAT_TURNS):
            content = [{"type": "image", "image": str(image)}] if turn == 0 else []
            messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
            common.cuda_sync()
            start = time.perf_counter()
            answer = llava.generate(messages, max_new_tokens=args.chat_tokens).text
            common.cuda_sync()
            seconds.append(time.perf_counter() - start)
            messages.append({"role": "assistant", "content": answer})
            answers.append(answer)
        return answers, seconds

    contenders = {"no media cache": plain, "media cache": cached}
    for llava in contenders.values():  # warm-up
        conversation(llava)
    runs: dict[str, list[list[float]]] = {name: [] for name in contenders}
    answers: dict[str, list[str]] = {}
    before, pixels_before = cache.stats(), pixel_cache.stats()
    for name, _ in rounds(list(contenders), args.repeats):
        answers[name], seconds = conversation(contenders[name])
        runs[name].append(seconds)
    after, pixels_after = cache.stats(), pixel_cache.stats()
    if answers["media cache"] != answers["no media cache"]:
        raise AssertionError(f"the media cache changed the answers: {answers['media cache']} vs "
                             f"{answers['no media cache']}")
    inputs = pair.ours.prepare([[{"role": "user", "content": [{"type": "image", "image": str(image)},
                                                              {"type": "text", "text": CHAT_TURNS[0]}]}]])
    inputs = inputs.to(pair.device, pair.dtype)
    with torch.inference_mode():
        encode = common.measure(lambda: pair.ours.model.encode_visual(inputs.pixel_values, inputs.visual_items), 1,
                                args.repeats)
    preprocess = common.measure(lambda: plain.processor.image_pixels(str(image)), 1, args.repeats)
    lookups = (after.hits + after.misses) - (before.hits + before.misses)
    pixel_lookups = (pixels_after.hits + pixels_after.misses) - (pixels_before.hits + pixels_before.misses)
    typical = (lambda m: m.best * 1000) if args.stat == "best" else (lambda m: m.median * 1000)
    pick = min if args.stat == "best" else statistics.median
    totals = {name: pick(sum(r) for r in runs[name]) for name in contenders}
    rows = []
    for name in contenders:
        best = min(runs[name], key=sum)
        rows.append({"contender": name, "turns": len(CHAT_TURNS), "total s": totals[name],
                     "vs no cache": totals["no media cache"] / totals[name],
                     "turn s": [round(s, 4) for s in best],
                     "crops": int(inputs.visual_items[0].num_crops),
                     "preprocess ms/image": typical(preprocess),
                     "pixel hash ms/image": ((pixels_after.key_seconds - pixels_before.key_seconds) / pixel_lookups
                                             * 1000 if name == "media cache" and pixel_lookups else None),
                     "pixel hits": pixels_after.hits - pixels_before.hits if name == "media cache" else None,
                     "pixel misses": pixels_after.misses - pixels_before.misses if name == "media cache" else None,
                     "encode ms/image": typical(encode),
                     "hash ms/image": ((after.key_seconds - before.key_seconds) / lookups * 1000
                                       if name == "media cache" and lookups else None),
                     "cache hits": after.hits - before.hits if name == "media cache" else None,
                     "cache misses": after.misses - before.misses if name == "media cache" else None})
    return rows


# ---- main ---------------------------------------------------------------------------------------
DECODE_COLUMNS = ["batch", "contender", "decode ms/step", "vs generate", "decode tok/s", "first call s", "steps",
                  "rows differing", "note"]
LOAD_COLUMNS = ["mode", "requests", "clients", "errors", "tok/s", "tok/s vs static", "TTFT p50 s", "TTFT p95 s",
                "short TTFT p95 s", "short TTFT p95: static / this", "TBT p50 ms", "TBT p95 ms",
                "answers as first mode"]
CHAT_COLUMNS = ["contender", "turns", "total s", "vs no cache", "crops", "preprocess ms/image", "pixel hash ms/image",
                "pixel hits", "pixel misses", "encode ms/image", "hash ms/image", "cache hits", "cache misses"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="decode,load,chat")
    parser.add_argument("--shape", choices=models.SHAPES, default=None, help="default: quickstart on CPU, 0.5b on a GPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on CPU, bfloat16 on a GPU")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=None, help="decode: default 32 on CPU, 128 on a GPU")
    parser.add_argument("--image-size", type=inference.size, default=None,
                        help="decode prompts' images, HxW (default: 96x128 on CPU, 480x640 on a GPU)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load-requests", type=int, default=None, help="default: 96 on CPU, 256 on a GPU")
    parser.add_argument("--short-tokens", type=int, default=None, help="a short answer's tokens (default 8 CPU, 32 GPU)")
    parser.add_argument("--long-factor", type=int, default=10)
    parser.add_argument("--long-share", type=float, default=0.25, help="share of requests with long answers")
    parser.add_argument("--server-flag", action="append", default=[], help="extra llavakit serve flag (repeatable)")
    parser.add_argument("--chat-tokens", type=int, default=None, help="tokens per chat answer (default 16 CPU, 64 GPU)")
    parser.add_argument("--chat-cache-mb", type=float, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stat", choices=["best", "median"], default=None,
                        help="over repeats; default: best on CPU (shared, noisy), median on a GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default on CPU: 1)")
    parser.add_argument("--check", choices=["strict", "report"], default=None,
                        help="decode tokens vs transformers: default strict in float32, report in bfloat16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.shape = args.shape or ("0.5b" if gpu else "quickstart")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.new_tokens = args.new_tokens or (128 if gpu else 32)
    args.image_size = args.image_size or ((480, 640) if gpu else (96, 128))
    args.load_requests = args.load_requests or (256 if gpu else 96)
    args.short_tokens = args.short_tokens or (32 if gpu else 8)
    args.chat_tokens = args.chat_tokens or (64 if gpu else 16)
    args.stat = args.stat or ("median" if gpu else "best")
    args.check = args.check or ("strict" if args.dtype == "float32" else "report")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(parts) - {"decode", "load", "chat"}:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))} (choose from decode, load, chat)")
    common.set_threads(args.threads, args.device)

    tables: dict[str, list[dict]] = {}
    if "decode" in parts or "chat" in parts:
        pair = models.build_pair(args.shape, args.device, getattr(torch, args.dtype))
        pair.hf.generation_config.eos_token_id = pair.ours.eos_token_ids  # both stop at the same end tokens
        if "decode" in parts:
            tables["decode"] = [row for batch in args.batches.split(",") for row in decode_rows(pair, int(batch), args)]
        if "chat" in parts:
            tables["chat"] = chat_rows(pair, args)
        del pair
    if "load" in parts:
        with tempfile.TemporaryDirectory() as folder:
            model_dir = models.save_checkpoint(args.shape, Path(folder) / MODEL_NAME)
            tables["load"] = load_rows(args, model_dir)

    env = common.environment()
    print(f"\nengine ({args.shape}): {env['device']}, load {env['load_average']}, {env['date']}, "
          f"git {env['git']}")
    columns = {"decode": DECODE_COLUMNS, "load": LOAD_COLUMNS, "chat": CHAT_COLUMNS}
    for name, rows in tables.items():
        print(f"\n{name}\n{common.table(rows, columns[name])}")
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    path = common.write_json(args.out or common.default_out(f"engine-{args.shape}"), "engine", settings,
                             {"rows": [dict(row, part=name) for name, rows in tables.items() for row in rows],
                              "tables": tables}, env)
    print(f"wrote {path}")
    load_errors = sum(row["errors"] for row in tables.get("load", []))
    return 1 if load_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
