"""Chat templates as data, and the one rule that turns a conversation into trained segments.

A template says how each role is written; :func:`segments` writes a conversation as a list of
text pieces, each marked trained or not. Only an assistant reply and the token that ends it are
trained (plus ``reply_lead``, the separator a tokenizer fuses with the reply's first word, which the
model must generate at inference: vicuna's "ASSISTANT:" is followed by " answer"). The tokenizer's
own Jinja chat template is supported by rendering the conversation's prefixes and diffing them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llavakit.data.records import Turn
from llavakit.errors import LlavakitError

LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
# Tokens that end an assistant turn in common Jinja templates (the tokenizer's EOS is always one).
KNOWN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>")


class TemplateError(LlavakitError):
    """A template that cannot be used with this tokenizer, or a chat template we cannot diff."""


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation is written. ``{content}`` is the turn's text; ``{bos}``/``{eos}`` the tokenizer's."""

    name: str
    prefix: str = ""  # before everything (BOS)
    system: str | None = None  # default system message; None: a system turn only when the sample has one
    system_format: str = "{content}"
    user_format: str = "{content}"
    assistant_prefix: str = ""  # the generation prompt
    reply_lead: str = ""  # fused with the reply's first word, trained with it
    end_of_turn: str = "{eos}"  # ends a reply; trained; must be one token
    after_turn: str = ""  # after end_of_turn, not trained
    special_tokens: tuple[str, ...] = ()  # must each be one token of the tokenizer
    placeholders_only: bool = False  # plain: a user turn becomes just its image/video placeholders
    single_turn: bool = False  # plain: exactly one user turn and one reply
    use_system: bool = True

    def segments(self, turns: Sequence[Turn], placeholders: tuple[str, str] = ("<image>", "<video>")) -> list[Segment]:
        if self.single_turn and max(sum(t.role == r for t in turns) for r in ("user", "assistant")) > 1:
            raise TemplateError(f"template {self.name!r} takes one user turn and one reply (a caption)")
        out = [Segment(self.prefix, False)]
        system = turns[0].text if turns[0].role == "system" else self.system
        if system is not None and self.use_system:
            out.append(Segment(_fill(self.system_format, system), False))
        for turn in turns:
            if turn.role == "user":
                text = _only_placeholders(turn.text, placeholders) if self.placeholders_only else turn.text
                out.append(Segment(_fill(self.user_format, text), False))
            elif turn.role == "assistant":
                out.append(Segment(self.assistant_prefix, False))
                out.append(Segment(self.reply_lead + turn.text + self.end_of_turn, True))
                out.append(Segment(self.after_turn, False))
        return [s for s in out if s.text]

    def generation_prompt(self, turns: Sequence[Turn], placeholders: tuple[str, str] = ("<image>", "<video>")) -> str:
        """The prompt text up to where the model starts its reply (for evaluation on the same template)."""
        return "".join(s.text for s in self.segments(turns, placeholders)) + self.assistant_prefix


def _fill(form: str, content: str) -> str:
    return form.replace("{content}", content)  # not str.format: user text may contain braces


def _only_placeholders(text: str, placeholders: tuple[str, str]) -> str:
    image, video = placeholders
    found = sorted((i, token) for token in (image, video) for i in _positions(text, token))
    return "".join(token for _, token in found)


def _positions(text: str, token: str) -> list[int]:
    out, start = [], text.find(token)
    while start >= 0:
        out.append(start)
        start = text.find(token, start + len(token))
    return out


TEMPLATES: dict[str, ChatTemplate] = {
    # Stage-1 captions: image(s) then caption; only the caption and EOS are trained.
    "plain": ChatTemplate("plain", placeholders_only=True, single_turn=True, use_system=False),
    "chatml": ChatTemplate(
        "chatml",
        system_format="<|im_start|>system\n{content}<|im_end|>\n",
        user_format="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        after_turn="\n",
        special_tokens=("<|im_start|>", "<|im_end|>"),
    ),
    "vicuna_v1": ChatTemplate(
        "vicuna_v1",
        prefix="{bos}",
        system=LLAVA_SYSTEM,
        system_format="{content} ",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT:",
        reply_lead=" ",
        end_of_turn="{eos}",
    ),
    "llama3": ChatTemplate(
        "llama3",
        prefix="<|begin_of_text|>",
        system=LLAMA3_SYSTEM,
        system_format="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
        special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
}
# Qwen (LLaVA-OneVision) is ChatML with Qwen's default system message.
TEMPLATES["qwen"] = dataclasses.replace(TEMPLATES["chatml"], name="qwen", system="You are a helpful assistant.")


@dataclass(frozen=True)
class TokenizerTemplate:
    """The tokenizer's own Jinja chat template; trained spans found by diffing rendered prefixes.

    For the assistant turn at position i, the text rendered for turns[:i] with the generation
    prompt is a prefix of the whole conversation's text, and so is the text for turns[:i+1]: the
    difference is the reply and what closes it. The reply and the first end-of-turn token after it
    are trained; anything after that token (a newline) is not.
    """

    chat_template: str
    end_tokens: tuple[str, ...]
    tokenizer: Any = dataclasses.field(repr=False, compare=False)
    content: Literal["string", "parts"] = "string"  # how the template wants message contents
    placeholders: tuple[str, str] = ("<image>", "<video>")
    name: str = "tokenizer"

    def render(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> str:
        messages = [{"role": t.role, "content": self._content(t.text)} for t in turns]
        try:
            return self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as err:  # noqa: BLE001 - Jinja templates raise anything (raise_exception, TypeError, ...)
            raise TemplateError(f"the tokenizer's chat template refuses this conversation: {err}") from None

    def _content(self, text: str) -> str | list[dict]:
        return text if self.content == "string" else as_parts(text, self.placeholders)

    def segments(self, turns: Sequence[Turn], placeholders: tuple[str, str] = ("<image>", "<video>")) -> list[Segment]:
        full = self.render(turns)
        out, done = [], 0
        for index, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            start, end = self._reply_span(turns, index, full)
            out += [Segment(full[done:start], False), Segment(full[start:end], True)]
            done = end
        out.append(Segment(full[done:], False))
        return [s for s in out if s.text]

    def generation_prompt(self, turns: Sequence[Turn], placeholders: tuple[str, str] = ("<image>", "<video>")) -> str:
        return self.render(turns, add_generation_prompt=True)

    def _reply_span(self, turns: Sequence[Turn], index: int, full: str) -> tuple[int, int]:
        closed = self.render(turns[: index + 1])
        if not full.startswith(closed):
            raise TemplateError("the tokenizer's chat template renders a conversation's beginning differently "
                                "from the whole conversation; choose a template by name (chatml, qwen, ...)")
        prompt = self.render(turns[:index], add_generation_prompt=True)
        if full.startswith(prompt) and len(prompt) <= len(closed):
            start = len(prompt)
        else:  # the generation prompt differs from how a reply is written: find the reply after the header
            start = closed.find(turns[index].text.strip(), len(self.render(turns[:index])))
            if start < 0:
                raise TemplateError(f"cannot find assistant turn {index} in the text the chat template renders")
        reply = turns[index].text.strip()
        found = closed.find(reply, start)
        search_from = found + len(reply) if found >= 0 else start  # an end token inside the reply is text
        ends = [(closed.find(token, search_from), token) for token in self.end_tokens]
        ends = [(pos, token) for pos, token in ends if pos >= 0]
        if not ends:
            raise TemplateError(f"the tokenizer's chat template ends assistant turns with none of {self.end_tokens}")
        pos, token = min(ends)
        return start, pos + len(token)


Template = ChatTemplate | TokenizerTemplate


def as_parts(text: str, placeholders: tuple[str, str]) -> list[dict]:
    """LLaVA text -> content parts in order: "<image>\nWhat?" -> [image, text "What?"].

    The newline right after a placeholder is LLaVA's separator; templates that take parts write
    their own, so it is dropped.
    """
    image, video = placeholders
    parts: list[dict] = []
    after_placeholder = False
    for piece in re.split(f"({re.escape(image)}|{re.escape(video)})", text):
        if piece in placeholders:
            parts.append({"type": "image" if piece == image else "video"})
            after_placeholder = True
        elif piece:
            piece = piece[1:] if after_placeholder and piece.startswith("\n") else piece
            if piece:
                parts.append({"type": "text", "text": piece})
            after_placeholder = False
    return parts


def _content_style(template: TokenizerTemplate) -> TokenizerTemplate:
    """String contents if the template renders them, else content parts (llava-hf templates)."""
    image = template.placeholders[0]
    probe = (Turn("user", f"{image}\nprobe question"), Turn("assistant", "probe answer"))
    for style in ("string", "parts"):
        candidate = dataclasses.replace(template, content=style)
        try:
            text = candidate.render(probe)
        except TemplateError:
            continue
        if text.count(image) == 1 and "probe question" in text and "probe answer" in text:
            return candidate
    raise TemplateError("the tokenizer's chat template renders neither string contents nor content parts with an "
                        f"{image} placeholder; choose a template by name ({', '.join(TEMPLATES)})")


def resolve_template(name: str, tokenizer: Any, placeholders: tuple[str, str] = ("<image>", "<video>")) -> Template:
    """A template bound to a tokenizer: ``auto`` (the tokenizer's own, else chatml), ``tokenizer``, or a name."""
    own = getattr(tokenizer, "chat_template", None)
    if name == "auto":
        name = "tokenizer" if own else "chatml"
    if name == "tokenizer":
        if not own:
            raise TemplateError("template 'tokenizer': this tokenizer has no chat template; choose one of "
                                f"{', '.join(TEMPLATES)}")
        specials = set(getattr(tokenizer, "all_special_tokens", [])) | set(tokenizer.get_added_vocab())
        ends = tuple(dict.fromkeys(t for t in (tokenizer.eos_token, *KNOWN_END_TOKENS) if t and t in specials))
        return _content_style(TokenizerTemplate(own, ends, tokenizer, placeholders=placeholders))
    if name not in TEMPLATES:
        raise TemplateError(f"unknown template {name!r}; choose auto, tokenizer or one of {', '.join(TEMPLATES)}")
    return bind(TEMPLATES[name], tokenizer)


def bind(template: ChatTemplate, tokenizer: Any) -> ChatTemplate:
    """Fill in {bos}/{eos} and check that the template's special strings are single tokens."""
    if "{eos}" in template.end_of_turn and not tokenizer.eos_token:
        raise TemplateError(f"template {template.name!r} ends replies with EOS but the tokenizer has no eos_token")
    values = {"{bos}": tokenizer.bos_token or "", "{eos}": tokenizer.eos_token or ""}
    fields = {}
    for field in ("prefix", "system_format", "user_format", "assistant_prefix", "end_of_turn", "after_turn"):
        text = getattr(template, field)
        for key, value in values.items():
            text = text.replace(key, value)
        fields[field] = text
    bound = dataclasses.replace(template, **fields)
    for token in (*bound.special_tokens, bound.end_of_turn):
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise TemplateError(f"template {template.name!r} needs {token!r} to be one token of the tokenizer "
                                f"(it encodes to {len(ids)}); add it as a special token or choose another template")
    return bound
