"""``llavakit serve``: the OpenAI-compatible HTTP server with a web chat page."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from pathlib import Path

import torch

from llavakit.checkpoint.io import checkpoint_name
from llavakit.engine import EngineConfig
from llavakit.model.feature_cache import FeatureCache
from llavakit.serving.feature_cache_option import (
    add_media_cache_option,
    media_cache_from_args,
    pixel_cache_from_args,
)
from llavakit.serving.media import MediaPolicy
from llavakit.serving.middleware import LOOPBACK_HOSTS
from llavakit.serving.settings import ServerSettings
from llavakit.utils.device import default_device

API_KEY_ENV = "LLAVAKIT_API_KEY"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="llavakit or transformers llava / llava_next / llava_onevision checkpoint")
    parser.add_argument("--adapter", help="LoRA adapter directory (a LoRA run's RUN/adapter) merged into --model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", help="the model id clients send (default: the checkpoint folder's name)")
    parser.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV})")
    parser.add_argument("--allowed-hosts",
                        help="comma-separated names the Host header may carry, '*' for any (default: on loopback "
                             "without an API key, only localhost, 127.0.0.1 and ::1, against DNS rebinding; else any)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 suits small models "
                                                     "on a busy machine)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-model-len", type=int, help="prompt + completion tokens (default: the LLM's maximum)")
    limits.add_argument("--default-max-tokens", type=int, default=512,
                        help="completion tokens when a request sets none")
    limits.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    limits.add_argument("--max-images", type=int, default=8, help="images per request")
    limits.add_argument("--max-videos", type=int, default=1, help="videos per request")
    limits.add_argument("--max-image-pixels", type=int, default=25_000_000, help="width*height per image or frame")
    limits.add_argument("--max-media-bytes", type=int, default=20 * 1024 * 1024, help="bytes per image or video")
    limits.add_argument("--max-n", type=int, default=8, help="choices per request")
    limits.add_argument("--max-request-pixels", type=int, default=50_000_000,
                        help="decoded pixels per request, all images and video frames together (more: HTTP 413)")
    limits.add_argument("--max-decoding-pixels", type=int, default=100_000_000,
                        help="decoded pixels of all requests being prepared at once (more: HTTP 429)")
    limits.add_argument("--decode-workers", type=int, default=2, help="requests whose media are decoded at once")
    limits.add_argument("--request-timeout", type=float, default=300.0,
                        help="seconds for media preparation + queueing + generation")
    limits.add_argument("--shutdown-timeout", type=float, default=60.0,
                        help="seconds in-flight requests get on SIGTERM; those still running then get HTTP 503")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--schedule", choices=["continuous", "static"], default="continuous",
                          help="continuous: requests join and leave the running batch at every step; static: a "
                               "batch runs to its end while new requests wait")
    batching.add_argument("--max-batch-size", type=int, default=32,
                          help="sequences decoded together, a request counting n (1 = one at a time)")
    batching.add_argument("--max-batch-tokens", type=int, default=4096,
                          help="prompt tokens prefilled between two decode steps (longer prompts are read in chunks)")
    batching.add_argument("--max-cache-tokens", type=int,
                          help="KV cache tokens, all sequences together, allocated at start-up; each of the "
                               "--max-batch-size sequences holds this / --max-batch-size, which also caps "
                               "--max-model-len (default: sized on demand to the longest request so far)")
    batching.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                          help="torch.compile the decode step, for a few batch sizes at start-up (auto: on a GPU)")
    batching.add_argument("--batch-window-ms", type=float, default=5.0,
                          help="static schedule: how long a request waits for company")
    batching.add_argument("--max-queue", type=int, default=256, help="waiting requests; more get HTTP 429")
    media = parser.add_argument_group("media URLs (data: URLs are always accepted)")
    media.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image/video URLs")
    media.add_argument("--allowed-media-domains", default="", help="comma-separated hosts http(s) URLs may name")
    media.add_argument("--allowed-local-media-path", action="append", default=[], metavar="DIR",
                       help="accept file:// URLs inside DIR (repeatable)")
    media.add_argument("--media-fetch-timeout", type=float, default=10.0)
    add_media_cache_option(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace, context_length: int,
                       feature_cache: FeatureCache | None = None) -> ServerSettings:
    domains = tuple(d.strip().lower() for d in args.allowed_media_domains.split(",") if d.strip())
    media = MediaPolicy(
        max_image_pixels=args.max_image_pixels, max_media_bytes=args.max_media_bytes,
        allow_remote=args.allow_remote_media, allowed_domains=domains,
        local_dirs=tuple(Path(p).resolve(strict=True) for p in args.allowed_local_media_path),
        fetch_timeout_s=args.media_fetch_timeout,
    )
    engine = EngineConfig(max_rows=args.max_batch_size, max_prefill_tokens=args.max_batch_tokens,
                          max_cache_tokens=args.max_cache_tokens, schedule=args.schedule,
                          compile={"auto": "auto", "on": True, "off": False}[args.compile],
                          batch_window_s=args.batch_window_ms / 1000, max_queued=args.max_queue,
                          feature_cache=feature_cache)
    max_model_len = args.max_model_len or context_length
    if engine.slot_length is not None:
        max_model_len = min(max_model_len, engine.slot_length)  # what one sequence's cache slot holds
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    return ServerSettings(
        model_name=args.served_model_name or checkpoint_name(args.adapter or args.model),
        max_model_len=max_model_len,
        api_key=api_key, max_body_bytes=args.max_body_bytes,
        max_images=args.max_images, max_videos=args.max_videos, max_n=args.max_n,
        default_max_tokens=args.default_max_tokens, request_timeout_s=args.request_timeout, media=media, engine=engine,
        max_request_pixels=args.max_request_pixels, max_decoding_pixels=args.max_decoding_pixels,
        decode_workers=args.decode_workers, allowed_hosts=allowed_hosts(args.allowed_hosts, args.host, api_key),
    )


def allowed_hosts(option: str | None, bind: str, api_key: str | None) -> tuple[str, ...] | None:
    """The Host names to answer: the option's, or loopback names for a keyless loopback server (None: any)."""
    if option is not None:
        names = tuple(name.strip().lower() for name in option.split(",") if name.strip())
        return None if "*" in names else names
    return LOOPBACK_HOSTS if api_key is None and is_loopback(bind) else None


def context_length(llava) -> int:
    config = llava.model.language_model.config
    return int(getattr(config, "max_position_embeddings", None) or 4096)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    import llavakit
    from llavakit.serving.app import create_app

    DrainingServer = draining_server_class()

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("llavakit.serving")
    if args.threads:
        torch.set_num_threads(args.threads)
    feature_cache = media_cache_from_args(args)  # a bad size fails before the model loads
    llava = llavakit.load(args.model, dtype=DTYPES[args.dtype], device=args.device, adapter=args.adapter)
    llava.processor.pixel_cache = pixel_cache_from_args(args)  # a repeated image is not decoded again
    try:
        settings = settings_from_args(args, context_length(llava), feature_cache)
    except (ValueError, OSError) as err:  # contradictory limits, a missing --allowed-local-media-path
        print(f"llavakit serve: error: {err}", file=sys.stderr)
        return 2
    if settings.api_key is None and not is_loopback(args.host):
        log.warning("listening on %s without an API key: anyone who can reach it can use the model", args.host)
    app = create_app(llava, settings)
    log.info("serving %r (context %d tokens) at http://%s:%d/ (chat page at /, API at /v1)",
             settings.model_name, settings.max_model_len, args.host, args.port)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=FLUSH_TIMEOUT_S)
    # SIGINT/SIGTERM: drain (503 to new requests and /health), cut what is left, then stop.
    DrainingServer(config, app, args.shutdown_timeout).run()
    return 0


FLUSH_TIMEOUT_S = 5.0  # after the drain, for cut requests' error responses to be written


def draining_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """A uvicorn server that drains the app (``app.state.drain``) on the first signal before stopping.

        uvicorn's own graceful shutdown stops listening first, so ``/health`` could not say 503, and
        cuts what is left by cancelling tasks, which drops connections. A second signal stops at once.
        """

        def __init__(self, config, app, drain_timeout: float):
            super().__init__(config)
            self.app = app
            self.drain_timeout = drain_timeout
            self._drain_task = None
            self._drain_requested = False

        def handle_exit(self, sig, frame) -> None:
            if self._drain_requested or not self.started:
                super().handle_exit(sig, frame)
                return
            self._captured_signals.append(sig)  # re-raised after the shutdown, as uvicorn does
            self._drain_requested = True

        async def on_tick(self, counter: int) -> bool:
            if self._drain_requested and self._drain_task is None:
                self._drain_task = asyncio.ensure_future(self._drain())
            return await super().on_tick(counter)

        async def _drain(self) -> None:
            engine = self.app.state.engine
            await self.app.state.drain.run(self.drain_timeout, on_cut=lambda: engine.close(drain=False, timeout=0))
            self.should_exit = True

    return DrainingServer

