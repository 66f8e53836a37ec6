"""``llavakit datagen instruct|stats|prompts``: instruction data from image annotations (seed 001)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from llavakit.datagen.annotations import BoxUnits
from llavakit.datagen.client import EndpointSettings, RetrySettings
from llavakit.datagen.errors import DatagenError
from llavakit.datagen.prompts import RESPONSE_TYPES
from llavakit.datagen.replies import FORBIDDEN, ReplySettings

ENV_URL, ENV_MODEL, ENV_KEY = "LLAVAKIT_DATAGEN_BASE_URL", "LLAVAKIT_DATAGEN_MODEL", "LLAVAKIT_DATAGEN_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="datagen_command", metavar="STEP", required=True)
    _instruct_args(sub.add_parser("instruct", help="annotations -> conversation / detail / reasoning LLaVA JSONL"))
    stats = sub.add_parser("stats", help="records per type, turns per conversation, answer lengths")
    stats.add_argument("data", help="a LLaVA .jsonl or .json file")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    prompts = sub.add_parser("prompts", help="copy the shipped prompt files to a folder, for editing")
    prompts.add_argument("--out", required=True, help="new folder; use it with 'instruct --prompts DIR'")


def _instruct_args(p: argparse.ArgumentParser) -> None:
    r, e, t = ReplySettings(), EndpointSettings("", ""), RetrySettings()
    p.add_argument("--annotations", nargs="+", required=True, metavar="FILE",
                   help="COCO JSON files (captions and/or instances, together) or one JSONL of "
                        "{image, captions, boxes: [{name, bbox}]}")
    p.add_argument("--out", required=True, help="LLaVA JSONL to write; OUT.rejects.jsonl and OUT.journal.jsonl "
                                                "go next to it")
    endpoint = p.add_argument_group("endpoint (any OpenAI-compatible chat completions API)")
    endpoint.add_argument("--base-url", help=f"up to /v1, e.g. http://127.0.0.1:8000/v1 (default: ${ENV_URL}, "
                                             "then $OPENAI_BASE_URL)")
    endpoint.add_argument("--model", help=f"model name sent with each request (default: ${ENV_MODEL})")
    endpoint.add_argument("--api-key", help=f"bearer key (default: ${ENV_KEY}, then $OPENAI_API_KEY)")
    endpoint.add_argument("--temperature", type=float, default=e.temperature, help="(%(default)s)")
    endpoint.add_argument("--max-tokens", type=int, default=e.max_tokens, help="per reply (%(default)s)")
    endpoint.add_argument("--timeout", type=float, default=e.timeout_s, help="seconds per attempt (%(default)s)")
    endpoint.add_argument("--concurrency", type=int, default=8, help="requests in flight (%(default)s)")
    endpoint.add_argument("--max-attempts", type=int, default=t.max_attempts,
                          help="per request, on 429 / 5xx / timeouts (%(default)s)")
    endpoint.add_argument("--backoff", type=float, default=t.backoff_s,
                          help="first retry wait in seconds, doubled each time (%(default)s)")
    endpoint.add_argument("--max-backoff", type=float, default=t.max_backoff_s, help="(%(default)s)")
    endpoint.add_argument("--max-requests", type=int, help="budget: HTTP requests (retries included) this run")
    endpoint.add_argument("--max-total-tokens", type=int, help="budget: prompt + completion tokens this run")
    data = p.add_argument_group("data")
    data.add_argument("--types", default=",".join(RESPONSE_TYPES), help="response types, in output order "
                                                                        "(%(default)s)")
    data.add_argument("--prompts", metavar="DIR", help="prompt folder (default: the shipped one; see "
                                                       "'datagen prompts')")
    data.add_argument("--image-prefix", default="", help="prepended to each image path in the records")
    data.add_argument("--box-units", choices=["auto", "normalized", "pixels"], default="auto",
                      help="JSONL boxes: auto = normalised when every value is in [0, 1] (%(default)s)")
    data.add_argument("--limit", type=int, help="only the first N images")
    data.add_argument("--seed", type=int, default=0, help="picks each detail instruction (%(default)s)")
    data.add_argument("--retry-rejects", action="store_true", help="request rejected items again")
    checks = p.add_argument_group("reply checks")
    checks.add_argument("--max-questions", type=int, default=r.max_questions, help="(%(default)s)")
    checks.add_argument("--min-answer-words", type=int, default=r.min_answer_words, help="(%(default)s)")
    checks.add_argument("--min-reasoning-words", type=int, default=r.min_reasoning_words, help="(%(default)s)")
    checks.add_argument("--min-description-words", type=int, default=r.min_description_words, help="(%(default)s)")
    checks.add_argument("--forbid", action="append", default=[], metavar="PHRASE",
                        help=f"reject replies containing PHRASE, besides {', '.join(map(repr, FORBIDDEN))}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def endpoint_from_args(args: argparse.Namespace) -> EndpointSettings:
    base_url = args.base_url or os.environ.get(ENV_URL) or os.environ.get("OPENAI_BASE_URL")
    model = args.model or os.environ.get(ENV_MODEL)
    if not base_url:
        raise DatagenError(f"no endpoint: pass --base-url or set ${ENV_URL}")
    if not model:
        raise DatagenError(f"no model name: pass --model or set ${ENV_MODEL}")
    key = args.api_key or os.environ.get(ENV_KEY) or os.environ.get("OPENAI_API_KEY")
    return EndpointSettings(base_url, model, key or None, args.temperature, args.max_tokens, args.timeout)


def instruct_settings(args: argparse.Namespace):
    from llavakit.datagen.runner import InstructSettings

    replies = ReplySettings(args.max_questions, args.min_answer_words, args.min_reasoning_words,
                            args.min_description_words, FORBIDDEN + tuple(args.forbid))
    box_units: BoxUnits = args.box_units
    return InstructSettings(
        annotations=tuple(args.annotations), output=args.out, endpoint=endpoint_from_args(args),
        retry=RetrySettings(args.max_attempts, args.backoff, args.max_backoff), replies=replies,
        types=tuple(t.strip() for t in args.types.split(",") if t.strip()), prompts=args.prompts,
        image_prefix=args.image_prefix, box_units=box_units, limit=args.limit, concurrency=args.concurrency,
        max_requests=args.max_requests, max_total_tokens=args.max_total_tokens, seed=args.seed,
        retry_rejects=args.retry_rejects, progress=not args.quiet,
    )


def _run_instruct(args: argparse.Namespace) -> int:
    from llavakit.datagen.runner import run_instruct
    from llavakit.datagen.stats import dataset_stats, format_stats

    summary = run_instruct(instruct_settings(args))
    u = summary.usage
    print(f"{summary.items} items: {summary.written} written, {summary.rejected} rejected, "
          f"{summary.unfinished} unfinished; {summary.duplicates_dropped} duplicate questions dropped")
    print(f"this run: {summary.sent} items sent, {u.attempts} requests ({u.retries} retries), "
          f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens; statuses {u.statuses}")
    print(f"all replies used: {summary.total_prompt_tokens} prompt + {summary.total_completion_tokens} "
          f"completion tokens")
    if summary.empty_images:
        print(f"{summary.empty_images} images without captions or boxes were left out", file=sys.stderr)
    if summary.journal_lines_ignored:
        print(f"{summary.journal_lines_ignored} unreadable journal lines ignored", file=sys.stderr)
    for failure in summary.failures:
        print(f"failed: {failure}", file=sys.stderr)
    if summary.written:
        print(format_stats(dataset_stats(summary.paths.dataset)))
    print(f"-> {summary.paths.dataset} (rejects: {summary.paths.rejects})")
    if summary.interrupted:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    if not summary.complete:
        reason = "the budget is spent" if summary.budget_spent else "some requests failed"
        print(f"{summary.unfinished} items unfinished ({reason}): rerun the same command to continue",
              file=sys.stderr)
        return 1
    return 0


def _run_stats(args: argparse.Namespace) -> int:
    from llavakit.datagen.stats import dataset_stats, format_stats

    stats = dataset_stats(args.data)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def _run_prompts(args: argparse.Namespace) -> int:
    from llavakit.datagen.prompts import export_prompts

    print(f"prompt files -> {export_prompts(args.out)}; edit them and pass --prompts {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {"instruct": _run_instruct, "stats": _run_stats, "prompts": _run_prompts}
    try:
        return handlers[args.datagen_command](args)
    except DatagenError as err:
        print(f"llavakit datagen {args.datagen_command}: error: {err}", file=sys.stderr)
        return 2
