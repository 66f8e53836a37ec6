"""Batched generation under the server: per-row sampling, streaming text, rows of one prompt."""

from __future__ import annotations

import pytest
import torch
from test_serving_support import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    picture,
    tiny_model,
)

from llavakit.model.generation import SamplingSettings, next_tokens
from llavakit.serving.decode import Row, collate, generate_rows
from llavakit.serving.sampling import BatchSampler, make_generator
from llavakit.serving.text import TextStream, stop_prefix_length


def conversation(*parts):
    return [{"role": "user", "content": [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]}]


def image(seed, width, height):
    return {"type": "image", "image": picture(seed, width, height)}


CONVERSATIONS = [
    conversation(image(1, 64, 48), "What is shown?"),
    conversation("Hello! How are you?"),
    conversation(image(2, 30, 90), image(3, 20, 20), "Compare the two pictures in detail, please."),
    conversation(image(4, 200, 120), "Describe."),
]
SETTINGS = [
    SamplingSettings(24),
    SamplingSettings(16, temperature=0.8, top_p=0.9, seed=3),
    SamplingSettings(30, temperature=1.2, top_k=5, repetition_penalty=1.3, seed=7),
    SamplingSettings(9, repetition_penalty=1.5),
]


def rows_for(llava, settings, stop=()):
    return [Row(i, s, TextStream(llava.tokenizer, stop, llava.eos_token_ids), make_generator(s.seed, "cpu"))
            for i, s in enumerate(settings)]


def alone(llava, conv, s, stop=None):
    return llava.generate(conv, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                          top_k=s.top_k, repetition_penalty=s.repetition_penalty, seed=s.seed, stop=stop)


def test_single_row_sampler_is_the_core_sampler():
    torch.manual_seed(0)
    logits, history = torch.randn(1, 50) * 3, torch.randint(0, 50, (1, 12))
    seen = torch.zeros(1, 50, dtype=torch.bool).scatter_(1, history, True)
    for s in [SamplingSettings(temperature=0), SamplingSettings(temperature=0, repetition_penalty=1.7),
              SamplingSettings(temperature=0.7, top_p=0.8, seed=1), SamplingSettings(temperature=1.3, top_k=4, seed=2),
              SamplingSettings(temperature=1.0, top_k=7, top_p=0.5, repetition_penalty=1.2, seed=3)]:
        ours = [BatchSampler([s], [make_generator(s.seed, "cpu")])(logits, seen).item() for _ in range(1)]
        core = next_tokens(logits, history, s, make_generator(s.seed, "cpu"))
        assert ours == core.tolist(), s


def test_a_batch_of_mixed_requests_gives_each_the_answer_it_gets_alone():
    llava = tiny_model()
    references = [alone(llava, c, s) for c, s in zip(CONVERSATIONS, SETTINGS)]
    inputs = collate([llava.prepare([c]) for c in CONVERSATIONS], llava.tokenizer.pad_token_id)
    rows = rows_for(llava, SETTINGS)
    generate_rows(llava.model, inputs, rows)
    for row, reference in zip(rows, references):
        assert row.token_ids == reference.token_ids
        assert row.text == reference.text
        assert row.finish_reason == reference.finish_reason


def test_collate_equals_the_processor_on_the_whole_batch():
    llava = tiny_model()
    together = llava.prepare(CONVERSATIONS)
    merged = collate([llava.prepare([c]) for c in CONVERSATIONS], llava.tokenizer.pad_token_id)
    assert torch.equal(together.input_ids, merged.input_ids)
    assert torch.equal(together.attention_mask, merged.attention_mask)
    assert torch.equal(together.pixel_values, merged.pixel_values)
    assert together.visual_items == merged.visual_items and together.prompt_tokens == merged.prompt_tokens


def test_rows_of_one_prompt_share_its_prefill_and_keep_their_own_seeds():
    llava = tiny_model()
    conv = CONVERSATIONS[0]
    settings = [SamplingSettings(12, temperature=1.0, seed=10 + i) for i in range(3)]
    rows = [Row(0, s, TextStream(llava.tokenizer, (), llava.eos_token_ids), make_generator(s.seed, "cpu"))
            for s in settings]
    generate_rows(llava.model, llava.prepare([conv]), rows)
    for row, s in zip(rows, settings):
        assert row.token_ids == alone(llava, conv, s).token_ids
    assert len({tuple(r.token_ids) for r in rows}) > 1


def test_stop_strings_end_a_row_as_the_core_does():
    llava = tiny_model()
    conv, s = CONVERSATIONS[0], SamplingSettings(24)
    full = alone(llava, conv, s).text
    stop = full[5:8]
    rows = rows_for(llava, [s], [stop])
    generate_rows(llava.model, llava.prepare([conv]), rows)
    reference = alone(llava, conv, s, [stop])
    assert rows[0].text == reference.text == full[: full.index(stop)]
    assert rows[0].token_ids == reference.token_ids and rows[0].finish_reason == "stop"


def test_streamed_deltas_concatenate_to_the_text_and_cancel_stops_a_row():
    llava = tiny_model()
    deltas: list[str] = []
    row = Row(0, SamplingSettings(40), TextStream(llava.tokenizer, (), llava.eos_token_ids),
              on_text=lambda r, d: deltas.append(d))
    generate_rows(llava.model, llava.prepare([CONVERSATIONS[3]]), [row])
    assert "".join(deltas) == row.text == llava.tokenizer.decode(row.token_ids, skip_special_tokens=True)
    steps = []
    cancelled = Row(0, SamplingSettings(40), TextStream(llava.tokenizer), cancelled=lambda: len(steps) >= 3,
                    on_text=lambda r, d: steps.append(d))
    generate_rows(llava.model, llava.prepare([CONVERSATIONS[3]]), [cancelled])
    assert cancelled.finish_reason == "cancelled" and len(cancelled.token_ids) < 40


class ByteTokenizer:
    """Each token is one UTF-8 byte, so characters arrive in pieces, as with byte-level BPE."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_partial_characters_and_stop_prefixes():
    text = "héllo wörld END tail"
    stream = TextStream(ByteTokenizer(), stop=["END"])
    deltas = [stream.push(b) for b in text.encode()[:-5]]  # up to "END"
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) == "héllo wörld " and stream.stopped
    stream = TextStream(ByteTokenizer(), stop=["wörm"])
    deltas = [stream.push(b) for b in "a wö".encode()]
    assert "".join(deltas) == "a " and stream.finish() == "wö"
    assert stop_prefix_length("abc EN", ["END", "xyz"]) == 2


@pytest.mark.parametrize("max_new_tokens", [0, 1])
def test_rows_with_no_or_one_token(max_new_tokens):
    llava = tiny_model()
    row = rows_for(llava, [SamplingSettings(max_new_tokens)])[0]
    generate_rows(llava.model, llava.prepare([CONVERSATIONS[1]]), [row])
    assert len(row.token_ids) <= max_new_tokens and row.finish_reason in ("length", "stop")


def test_generate_batch_takes_settings_per_conversation():
    from llavakit.serving.streaming import generate_batch

    llava = tiny_model()
    results = generate_batch(llava, CONVERSATIONS, SETTINGS)
    for result, conv, s in zip(results, CONVERSATIONS, SETTINGS):
        reference = alone(llava, conv, s)
        assert (result.text, result.token_ids, result.prompt_tokens, result.finish_reason) == (
            reference.text, reference.token_ids, reference.prompt_tokens, reference.finish_reason)


def test_stream_yields_the_answer_in_pieces_and_stops_when_closed():
    from llavakit.serving.streaming import stream

    llava = tiny_model()
    settings = SamplingSettings(30)
    pieces = list(stream(llava, CONVERSATIONS[0], settings))
    assert len(pieces) > 1 and "".join(pieces) == alone(llava, CONVERSATIONS[0], settings).text
    iterator = stream(llava, CONVERSATIONS[0], SamplingSettings(100_000))
    next(iterator)
    iterator.close()  # returns only once the generation has stopped


class Collect:
    """A JobListener that records everything, for driving the engine without HTTP."""

    def __init__(self):
        self.text, self.finished, self.errors, self.done = "", [], [], __import__("threading").Event()

    def on_text(self, choice, delta):
        self.text += delta

    def on_finish(self, choice, reason, token_ids):
        self.finished.append((reason, token_ids))
        self.done.set()

    def on_error(self, error):
        self.errors.append(error)
        self.done.set()


def test_a_broken_job_fails_alone_and_its_batch_neighbours_are_answered():
    from dataclasses import replace

    from llavakit.serving.engine import Engine, EngineLimits, Job

    llava = tiny_model()
    good_inputs = llava.prepare([CONVERSATIONS[0]])
    broken_inputs = replace(llava.prepare([CONVERSATIONS[3]]), visual_items=[])  # placeholders without features
    engine = Engine(llava, EngineLimits(batch_window_s=0.2))
    good, broken = Collect(), Collect()
    engine.submit(Job(good_inputs, SamplingSettings(24), good))
    engine.submit(Job(broken_inputs, SamplingSettings(24), broken))
    engine.start()
    assert good.done.wait(60) and broken.done.wait(60)
    engine.close()
    assert good.text == alone(llava, CONVERSATIONS[0], SamplingSettings(24)).text and not good.errors
    assert broken.errors and not broken.finished
