"""``llavakit chat``: a multi-turn conversation with a model in the terminal, answers streamed.

Type a message and press Enter. Commands: ``/image PATH`` and ``/video PATH`` attach media to your
next message, ``/clear`` starts over, ``/quit`` (or Ctrl-D, or Ctrl-C at the prompt) leaves; Ctrl-C
during an answer stops the answer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

import torch

from llavakit.errors import LlavakitError
from llavakit.engine import EngineConfig, SamplingSettings
from llavakit.serving.feature_cache_option import (
    add_media_cache_option,
    media_cache_from_args,
    pixel_cache_from_args,
)
from llavakit.serving.streaming import stream
from llavakit.utils.device import default_device

HELP = ("commands: /image PATH, /video PATH (attach to your next message), /clear (forget the conversation), "
        "/quit; Ctrl-C stops an answer")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="llavakit or transformers llava / llava_next / llava_onevision checkpoint")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="attach to the first message (repeatable)")
    parser.add_argument("--video", metavar="PATH", help="attach a video to the first message")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    add_media_cache_option(parser)


class ChatSession:
    """A conversation, plus the media waiting to go with the next user message."""

    def __init__(self, llava, settings: SamplingSettings, stop: Sequence[str] = (), system: str | None = None):
        self.llava = llava
        self.settings = settings
        self.stop = list(stop)
        self.system = system
        self.messages: list[dict] = []
        self.attachments: list[dict] = []
        self.turns = 0  # seeds advance per answer, so a seeded session is reproducible but not repetitive
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.attachments = []
        self.turns = 0

    def attach(self, kind: str, path: str) -> None:
        """Check the file now, so a typo is reported before the question is asked (an image is read
        as the model will read it: with a pixel cache, the first turn finds it preprocessed)."""
        if kind == "image":
            self.llava.processor.image_pixels(path)
        elif not Path(path).is_file():
            raise LlavakitError(f"video {path}: file not found")
        self.attachments.append({"type": kind, kind: path})

    def ask(self, text: str, on_text: Callable[[str], None]) -> str:
        """Answer ``text`` (with the pending attachments), streaming deltas to ``on_text``."""
        message = {"role": "user", "content": [*self.attachments, {"type": "text", "text": text}]}
        seed = None if self.settings.seed is None else self.settings.seed + self.turns
        s = self.settings
        settings = SamplingSettings(s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.repetition_penalty, seed)
        pieces = []
        for delta in stream(self.llava, [*self.messages, message], settings, self.stop):
            pieces.append(delta)
            on_text(delta)
        # Only a finished answer joins the history: Ctrl-C leaves the conversation as it was.
        answer = "".join(pieces)
        self.messages += [message, {"role": "assistant", "content": answer}]
        self.attachments = []
        self.turns += 1
        return answer


def chat_loop(session: ChatSession, lines: Iterable[str], out: TextIO, interactive: bool = False) -> int:
    def prompt() -> None:
        if interactive:
            out.write(">>> ")
            out.flush()

    prompt()
    for line in lines:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        try:
            if text == "/clear":
                session.clear()
                out.write("(conversation cleared)\n")
            elif text == "/help":
                out.write(HELP + "\n")
            elif text.startswith(("/image ", "/video ")):
                kind, path = text[1:6], text[7:].strip()
                session.attach(kind, path)
                out.write(f"({kind} {path} attached to your next message)\n")
            elif text.startswith("/"):
                out.write(f"unknown command {text.split()[0]}; {HELP}\n")
            elif text:
                session.ask(text, lambda delta: (out.write(delta), out.flush()))
                out.write("\n")
        except LlavakitError as err:
            out.write(f"error: {err}\n")
        except KeyboardInterrupt:
            out.write("\n(stopped)\n")
        prompt()
    return 0


def read_lines(interactive: bool) -> Iterable[str]:
    if not interactive:
        yield from sys.stdin
        return
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    while True:
        try:
            yield input()
        except EOFError:
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, as Ctrl-D does
            print()
            return


def run(args: argparse.Namespace) -> int:
    import llavakit

    feature_cache = media_cache_from_args(args)  # a bad size fails before the model loads
    llava = llavakit.load(args.model, dtype=DTYPES[args.dtype], device=args.device)
    llava.processor.pixel_cache = pixel_cache_from_args(args)  # each turn repeats the image: preprocess it once
    # one conversation at a time: each turn continues the cache of the previous prompt and answer
    llava.set_engine(EngineConfig(max_rows=1, reuse_prefixes=True, feature_cache=feature_cache))
    settings = SamplingSettings(args.max_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty,
                                args.seed)
    session = ChatSession(llava, settings, args.stop, args.system)
    for path in args.image:  # a missing file is a LlavakitError, reported by the dispatcher
        session.attach("image", path)
    if args.video:
        session.attach("video", args.video)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model}; {HELP}")
    return chat_loop(session, read_lines(interactive), sys.stdout, interactive)
