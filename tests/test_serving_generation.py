"""Generation through the engine: per-row sampling, streaming text, choices of one prompt."""

from __future__ import annotations

import pytest
import torch
from test_serving_support import (
    CONVERSATIONS,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_model,
)

from llavakit.api import Collected
from llavakit.engine import Request, SamplingSettings
from llavakit.engine.sampling import BatchSampler, make_generator
from llavakit.engine.text import TextStream, stop_prefix_length


SETTINGS = [
    SamplingSettings(24),
    SamplingSettings(16, temperature=0.8, top_p=0.9, seed=3),
    SamplingSettings(30, temperature=1.2, top_k=5, repetition_penalty=1.3, seed=7),
    SamplingSettings(9, repetition_penalty=1.5),
]


def answer(llava, requests):
    """Run requests on the model's engine; each request's Collected listener holds its answers."""
    llava.engine.run(requests)
    return [r.listener for r in requests]


def request(llava, conv, settings, stop=(), n=1, **listener):
    return Request(llava.prepare([conv]), settings, Collected(n, **listener), n=n, stop=list(stop))


def alone(llava, conv, s, stop=None):
    return llava.generate(conv, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                          top_k=s.top_k, repetition_penalty=s.repetition_penalty, seed=s.seed, stop=stop)


def test_a_row_samples_in_a_batch_what_it_samples_alone():
    torch.manual_seed(0)
    logits = torch.randn(5, 50) * 3
    seen = torch.zeros(5, 50, dtype=torch.bool).scatter_(1, torch.randint(0, 50, (5, 12)), True)
    settings = [SamplingSettings(temperature=0), SamplingSettings(temperature=0, repetition_penalty=1.7),
                SamplingSettings(temperature=0.7, top_p=0.8, seed=1), SamplingSettings(temperature=1.3, top_k=4, seed=2),
                SamplingSettings(temperature=1.0, top_k=7, top_p=0.5, repetition_penalty=1.2, seed=3)]
    together = BatchSampler(settings, [make_generator(s.seed, "cpu") for s in settings])(logits, seen).tolist()
    for i, s in enumerate(settings):
        alone_ = BatchSampler([s], [make_generator(s.seed, "cpu")])(logits[i:i + 1], seen[i:i + 1]).item()
        assert together[i] == alone_, s


def test_a_batch_of_mixed_requests_gives_each_the_answer_it_gets_alone():
    llava = tiny_model()
    references = [alone(llava, c, s) for c, s in zip(CONVERSATIONS, SETTINGS)]
    results = answer(llava, [request(llava, c, s) for c, s in zip(CONVERSATIONS, SETTINGS)])
    for result, reference in zip(results, references):
        got = result.generation(0, reference.prompt_tokens)
        assert got.token_ids == reference.token_ids
        assert got.text == reference.text
        assert got.finish_reason == reference.finish_reason


def test_choices_of_one_prompt_share_its_prefill_and_keep_their_own_seeds():
    llava = tiny_model()
    conv = CONVERSATIONS[0]
    settings = SamplingSettings(12, temperature=1.0, seed=10)
    (result,) = answer(llava, [request(llava, conv, settings, n=3)])
    tokens = [result.generation(i, 0).token_ids for i in range(3)]
    for i in range(3):
        assert tokens[i] == alone(llava, conv, settings.with_seed(10 + i)).token_ids
    assert len({tuple(t) for t in tokens}) > 1


def test_stop_strings_end_a_row():
    llava = tiny_model()
    conv, s = CONVERSATIONS[0], SamplingSettings(24)
    full = alone(llava, conv, s)
    stop = full.text[5:8]
    reference = alone(llava, conv, s, [stop])
    assert reference.text == full.text[: full.text.index(stop)] and reference.finish_reason == "stop"
    # the row ends at the token that completed the stop string
    assert full.token_ids[:len(reference.token_ids)] == reference.token_ids
    assert stop in llava.tokenizer.decode(reference.token_ids, skip_special_tokens=True)
    assert stop not in llava.tokenizer.decode(reference.token_ids[:-1], skip_special_tokens=True)


def test_streamed_deltas_concatenate_to_the_text_and_cancel_stops_a_row():
    llava = tiny_model()
    deltas: list[str] = []
    (result,) = answer(llava, [request(llava, CONVERSATIONS[3], SamplingSettings(40), on_text=deltas.append)])
    row = result.generation(0, 0)
    assert "".join(deltas) == row.text == llava.tokenizer.decode(row.token_ids, skip_special_tokens=True)
    steps = []
    cancelled = request(llava, CONVERSATIONS[3], SamplingSettings(40),
                        on_text=lambda d: (steps.append(d), len(steps) >= 3 and cancelled.cancel()))
    cancelled.ignore_eos = True
    (result,) = answer(llava, [cancelled])
    got = result.generation(0, 0)
    assert got.finish_reason == "cancelled" and len(got.token_ids) < 40


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
    (result,) = answer(llava, [request(llava, CONVERSATIONS[1], SamplingSettings(max_new_tokens))])
    got = result.generation(0, 0)
    assert len(got.token_ids) <= max_new_tokens and got.finish_reason in ("length", "stop")


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

    from llavakit.engine import Engine, EngineConfig

    llava = tiny_model()
    good_inputs = llava.prepare([CONVERSATIONS[0]])
    broken_inputs = replace(llava.prepare([CONVERSATIONS[3]]), visual_items=[])  # placeholders without features
    engine = Engine(llava, EngineConfig())
    good, broken = Collect(), Collect()
    engine.submit(Request(good_inputs, SamplingSettings(24), good))
    engine.submit(Request(broken_inputs, SamplingSettings(24), broken))
    engine.start()
    assert good.done.wait(60) and broken.done.wait(60)
    engine.close()
    assert good.text == alone(llava, CONVERSATIONS[0], SamplingSettings(24)).text and not good.errors
    assert broken.errors and not broken.finished
