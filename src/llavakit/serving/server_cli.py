"""``llavakit serve``: the OpenAI-compatible HTTP server with a web chat page."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

import torch

from llavakit.checkpoint.io import checkpoint_name
from llavakit.serving.engine import EngineLimits
from llavakit.serving.media import MediaPolicy
from llavakit.serving.settings import ServerSettings

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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    limits.add_argument("--request-timeout", type=float, default=300.0, help="seconds for queueing + generation")
    limits.add_argument("--shutdown-timeout", type=float, default=60.0,
                        help="seconds in-flight requests get on SIGTERM")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch-size", type=int, default=32,
                          help="sequences decoded together (1 = one at a time)")
    batching.add_argument("--max-batch-tokens", type=int, default=65_536,
                          help="padded prompt tokens prefilled together")
    batching.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a request waits for company")
    batching.add_argument("--max-queue", type=int, default=256, help="waiting requests; more get HTTP 429")
    media = parser.add_argument_group("media URLs (data: URLs are always accepted)")
    media.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image/video URLs")
    media.add_argument("--allowed-media-domains", default="", help="comma-separated hosts http(s) URLs may name")
    media.add_argument("--allowed-local-media-path", action="append", default=[], metavar="DIR",
                       help="accept file:// URLs inside DIR (repeatable)")
    media.add_argument("--media-fetch-timeout", type=float, default=10.0)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace, context_length: int) -> ServerSettings:
    domains = tuple(d.strip().lower() for d in args.allowed_media_domains.split(",") if d.strip())
    media = MediaPolicy(
        max_image_pixels=args.max_image_pixels, max_media_bytes=args.max_media_bytes,
        allow_remote=args.allow_remote_media, allowed_domains=domains,
        local_dirs=tuple(Path(p).resolve(strict=True) for p in args.allowed_local_media_path),
        fetch_timeout_s=args.media_fetch_timeout,
    )
    engine = EngineLimits(max_batch_rows=args.max_batch_size, max_batch_tokens=args.max_batch_tokens,
                          batch_window_s=args.batch_window_ms / 1000, max_queued=args.max_queue)
    return ServerSettings(
        model_name=args.served_model_name or checkpoint_name(args.adapter or args.model),
        max_model_len=args.max_model_len or context_length,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, max_body_bytes=args.max_body_bytes,
        max_images=args.max_images, max_videos=args.max_videos, max_n=args.max_n,
        default_max_tokens=args.default_max_tokens, request_timeout_s=args.request_timeout, media=media, engine=engine,
    )


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

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("llavakit.serving")
    if args.threads:
        torch.set_num_threads(args.threads)
    llava = llavakit.load(args.model, dtype=DTYPES[args.dtype], device=args.device, adapter=args.adapter)
    try:
        settings = settings_from_args(args, context_length(llava))
    except (ValueError, OSError) as err:  # contradictory limits, a missing --allowed-local-media-path
        print(f"llavakit serve: error: {err}", file=sys.stderr)
        return 2
    if settings.api_key is None and not is_loopback(args.host):
        log.warning("listening on %s without an API key: anyone who can reach it can use the model", args.host)
    app = create_app(llava, settings)
    log.info("serving %r (context %d tokens) at http://%s:%d/ (chat page at /, API at /v1)",
             settings.model_name, settings.max_model_len, args.host, args.port)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    uvicorn.Server(config).run()  # SIGINT/SIGTERM: stop accepting, finish in-flight requests, drain
    return 0
