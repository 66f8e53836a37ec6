"""The inference engine: continuous batching, its preallocated KV cache, cancellation, limits."""

from __future__ import annotations

import random
import threading
import time

import pytest
from test_serving_support import (
    CONVERSATIONS,
    conversation,
    one_torch_thread,  # noqa: F401 - autouse fixture
    picture,
    picture_part,
    tiny_model,
)

from llavakit.api import Collected
from llavakit.engine import Engine, EngineConfig, Request, RequestTooLarge, SamplingSettings


CONVERSATIONS = [*CONVERSATIONS, conversation("Tell me a story about a red cube and a blue sphere.")]


class Recorder(Collected):
    """Keeps every streamed delta and the time each choice finished."""

    def __init__(self, choices=1):
        super().__init__(choices)
        self.deltas = [[] for _ in range(choices)]
        self.finished_at = [None] * choices

    def on_text(self, choice, delta):
        super().on_text(choice, delta)
        self.deltas[choice].append(delta)

    def on_finish(self, choice, reason, token_ids):
        super().on_finish(choice, reason, token_ids)
        self.finished_at[choice] = time.monotonic()


def alone(llava, conv, settings, stop=(), ignore_eos=False):
    """The answer of a request sent alone: an engine that has nothing else to do."""
    listener = Collected()
    Engine(llava, EngineConfig(max_rows=1)).run(
        [Request(llava.prepare([conv]), settings, listener, stop=list(stop), ignore_eos=ignore_eos)])
    return listener.generation(0, 0)


def test_answers_under_random_concurrent_arrivals_equal_the_requests_sent_alone():
    llava = tiny_model()
    greedy = alone(llava, CONVERSATIONS[0], SamplingSettings(30)).text
    specs = [  # (conversation, settings, n, stop)
        (CONVERSATIONS[0], SamplingSettings(30), 1, [greedy[6:9]]),
        (CONVERSATIONS[1], SamplingSettings(20, temperature=0.9, top_p=0.9, seed=5), 3, []),
        (CONVERSATIONS[2], SamplingSettings(25, temperature=1.1, top_k=8, repetition_penalty=1.3, seed=9), 2, []),
        (CONVERSATIONS[3], SamplingSettings(12, repetition_penalty=1.5), 1, []),
        (CONVERSATIONS[4], SamplingSettings(40, temperature=0.7, seed=1), 1, ["e"]),
        (CONVERSATIONS[0], SamplingSettings(18, temperature=1.0, seed=2), 2, []),
        (CONVERSATIONS[4], SamplingSettings(35), 1, []),
    ]
    # a few rows, a small prefill budget (prompts read in chunks) and a small cache: requests wait for room
    engine = Engine(llava, EngineConfig(max_rows=4, max_prefill_tokens=16, max_cache_tokens=4 * 256)).start()
    recorders = [Recorder(n) for _, _, n, _ in specs]
    requests = [Request(llava.prepare([conv]), s, rec, n=n, stop=stop)
                for (conv, s, n, stop), rec in zip(specs, recorders)]
    rng = random.Random(0)

    def arrive(request, delay):
        time.sleep(delay)
        engine.submit(request)

    threads = [threading.Thread(target=arrive, args=(r, rng.uniform(0, 0.3))) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for request in requests:
        assert request.finished.wait(120)
    engine.close()
    assert engine.steps > 0
    for (conv, s, n, stop), rec in zip(specs, recorders):
        for choice in range(n):
            seed = None if s.seed is None else s.seed + choice
            reference = alone(llava, conv, s.with_seed(seed), stop)
            got = rec.generation(choice, 0)
            assert (got.token_ids, got.text, got.finish_reason) == (
                reference.token_ids, reference.text, reference.finish_reason), (conv, s, choice)
            assert "".join(rec.deltas[choice]) == got.text
    assert any(len(rec.deltas[0]) > 1 for rec in recorders)  # answers were streamed in pieces


def _long_then_short(schedule):
    llava = tiny_model()
    engine = Engine(llava, EngineConfig(max_rows=4, schedule=schedule)).start()
    long, short = Recorder(), Recorder()
    engine.submit(Request(llava.prepare([CONVERSATIONS[4]]), SamplingSettings(300), long, ignore_eos=True))
    deadline = time.monotonic() + 60
    while not "".join(long.texts) and time.monotonic() < deadline:  # the long answer is being generated
        time.sleep(0.005)
    engine.submit(Request(llava.prepare([CONVERSATIONS[1]]), SamplingSettings(5), short, ignore_eos=True))
    engine.close(drain=True, timeout=120)
    assert long.finished[0][0] == short.finished[0][0] == "length"
    return long.finished_at[0], short.finished_at[0]


def test_a_short_request_arriving_during_a_long_answer_finishes_first():
    long_done, short_done = _long_then_short("continuous")
    assert short_done < long_done


def test_the_static_schedule_keeps_a_new_request_waiting_until_the_batch_ends():
    long_done, short_done = _long_then_short("static")
    assert short_done > long_done


def test_cancelling_frees_the_row_within_one_step():
    llava = tiny_model()
    engine = Engine(llava, EngineConfig(max_rows=2)).start()
    listener = Recorder()
    request = Request(llava.prepare([CONVERSATIONS[1]]), SamplingSettings(100_000), listener, ignore_eos=True)
    engine.submit(request)
    deadline = time.monotonic() + 60
    while engine.steps < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    steps = engine.steps
    request.cancel()
    assert request.finished.wait(30)
    assert engine.steps - steps <= 1 and not engine.rows and engine.running == 0
    assert listener.finished[0][0] == "cancelled" and "".join(listener.deltas[0]) == listener.texts[0]
    # a request cancelled while it waits ends without running
    waiting = Recorder()
    queued = Request(llava.prepare([CONVERSATIONS[1]]), SamplingSettings(10), waiting)
    queued.cancel()
    engine.submit(queued)
    assert queued.finished.wait(30) and waiting.finished[0] == ("cancelled", [])
    engine.close()


def test_the_kv_cache_is_allocated_once_and_reused():
    llava = tiny_model()
    engine = Engine(llava, EngineConfig(max_rows=3, max_cache_tokens=3 * 300))
    pointers = engine.cache_data_ptrs()
    assert pointers and engine.cache.slots == 4 and engine.cache.length == 301  # + the spare slot and position
    for conv, tokens in zip(CONVERSATIONS, (5, 40, 12, 30, 60)):
        engine.run([Request(llava.prepare([conv]), SamplingSettings(tokens), Collected())])
        assert engine.cache_data_ptrs() == pointers
    engine.run([Request(llava.prepare([c]), SamplingSettings(20), Collected(), n=1) for c in CONVERSATIONS])
    assert engine.cache_data_ptrs() == pointers
    # sized on demand: allocated for the first request, kept for the ones that fit
    engine = Engine(llava, EngineConfig(max_rows=2))
    engine.run([Request(llava.prepare([CONVERSATIONS[0]]), SamplingSettings(30), Collected(2), n=2)])
    pointers = engine.cache_data_ptrs()
    engine.run([Request(llava.prepare([CONVERSATIONS[3]]), SamplingSettings(20), Collected())])
    assert engine.cache_data_ptrs() == pointers


def test_a_request_larger_than_a_cache_row_is_refused_with_the_limit():
    llava = tiny_model()
    engine = Engine(llava, EngineConfig(max_rows=2, max_cache_tokens=2 * 64))
    inputs = llava.prepare([CONVERSATIONS[1]])
    with pytest.raises(RequestTooLarge, match=r"max_cache_tokens 128 / max_rows 2"):
        engine.submit(Request(inputs, SamplingSettings(100), Collected()))
    with pytest.raises(RequestTooLarge, match="max_rows"):
        engine.submit(Request(inputs, SamplingSettings(4), Collected(), n=3))


def test_one_row_at_a_time_gives_the_same_answers():
    llava = tiny_model()
    settings = [SamplingSettings(15), SamplingSettings(15, temperature=1.0, seed=4)]
    batched = llava.generate_many([llava.prepare([c]) for c in CONVERSATIONS[:2]], settings)
    engine = Engine(llava, EngineConfig(max_rows=1))
    listeners = [Collected(), Collected()]
    engine.run([Request(llava.prepare([c]), s, listener)
                for c, s, listener in zip(CONVERSATIONS[:2], settings, listeners)])
    assert [listener.generation(0, 0).token_ids for listener in listeners] == [b.token_ids for b in batched]


def test_engine_config_refuses_bad_limits():
    with pytest.raises(ValueError, match="max_rows"):
        EngineConfig(max_rows=0)
    with pytest.raises(ValueError, match="schedule"):
        EngineConfig(schedule="dynamic")
    with pytest.raises(ValueError, match="max_cache_tokens"):
        EngineConfig(max_rows=8, max_cache_tokens=8)


def test_compile_auto_compiles_a_server_on_a_gpu_only():
    import torch

    from llavakit.engine.scheduler import decide_compile

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert decide_compile("auto", gpu, serving=True)
    assert not decide_compile("auto", gpu, serving=False)  # Llava.generate: the compile time would not pay back
    assert not decide_compile("auto", cpu, serving=True)
    assert decide_compile(True, cpu, serving=False) and not decide_compile(False, gpu, serving=True)


def test_a_chat_turn_reuses_the_cache_of_the_previous_turn():
    from llavakit.serving.chat_cli import ChatSession

    llava = tiny_model()
    plain = Engine(llava, EngineConfig(max_rows=1))
    reusing = Engine(llava, EngineConfig(max_rows=1, reuse_prefixes=True))
    answers = {}
    for name, engine in (("plain", plain), ("reusing", reusing)):
        llava._engine = engine  # the session's engine (llavakit chat sets reuse_prefixes)
        try:
            session = ChatSession(llava, SamplingSettings(12, temperature=0.8, seed=3))
            session.attach("image", str(_saved_picture(5)))
            answers[name] = [session.ask(question, lambda delta: None)
                             for question in ("What is shown?", "And the colours?", "Anything else?")]
        finally:
            llava._engine = None
    assert answers["reusing"] == answers["plain"]
    first_turn = [{"role": "user", "content": [{"type": "image", "image": str(_saved_picture(5))},
                                                {"type": "text", "text": "What is shown?"}]}]
    # the second and third turns each continue at least the first turn's prompt (image included)
    assert reusing.prefix_tokens_reused >= 2 * (llava.prepare([first_turn]).input_ids.shape[1] - 1)
    assert plain.prefix_tokens_reused == 0


def test_a_reused_prefix_stops_where_the_image_differs():
    llava = tiny_model()
    engine = Engine(llava, EngineConfig(max_rows=1, reuse_prefixes=True))
    first = conversation(picture_part(6, 64, 48), "What is shown?")
    second = conversation(picture_part(7, 64, 48), "What is shown?")
    engine.run([Request(llava.prepare([first]), SamplingSettings(5), Collected())])
    reference = alone(llava, second, SamplingSettings(8))
    listener = Collected()
    engine.run([Request(llava.prepare([second]), SamplingSettings(8), listener)])  # same token ids, other image
    inputs = llava.prepare([second])
    first_placeholder = int((inputs.input_ids[0] == llava.config.image_token_id).nonzero()[0, 0])
    assert engine.prefix_tokens_reused == first_placeholder
    assert listener.generation(0, 0).token_ids == reference.token_ids


def _saved_picture(seed):
    from test_serving_support import workdir

    path = workdir() / f"engine-picture-{seed}.png"
    picture(seed, 80, 60).save(path)
    return path


def test_a_prompt_continuing_a_finished_answer_reuses_prompt_and_answer():
    import torch

    from llavakit.processing.processor import ModelInputs

    llava = tiny_model()
    engine = Engine(llava, EngineConfig(max_rows=2, reuse_prefixes=True))
    first = llava.prepare([CONVERSATIONS[0]])
    listener = Collected()
    engine.run([Request(first, SamplingSettings(10), listener, ignore_eos=True)])
    answer = listener.generation(0, 0).token_ids
    follow_up = llava.tokenizer("And then?", add_special_tokens=False)["input_ids"]
    ids = torch.cat([first.input_ids[0], torch.tensor(answer + follow_up)])[None]
    continued = ModelInputs(ids, torch.ones_like(ids), first.pixel_values, first.visual_items, [ids.shape[1]])
    reused, fresh = Collected(), Collected()
    engine.run([Request(continued, SamplingSettings(8), reused)])
    # the slot holds the prompt and every answer token but the last (never fed back)
    assert engine.prefix_tokens_reused == first.input_ids.shape[1] + len(answer) - 1
    Engine(llava, EngineConfig(max_rows=1)).run([Request(continued, SamplingSettings(8), fresh)])
    assert reused.generation(0, 0).token_ids == fresh.generation(0, 0).token_ids


@pytest.mark.slow
def test_a_compiled_engine_compiles_its_row_buckets_at_start_and_answers_as_the_eager_one():
    llava = tiny_model()
    compiled = Engine(llava, EngineConfig(max_rows=3, max_cache_tokens=3 * 400, compile=True)).start()
    assert sorted(compiled.forward._buckets) == [1, 2, 3]
    pointers = compiled.cache_data_ptrs()
    specs = [(CONVERSATIONS[i], SamplingSettings(20 + i, temperature=0.9 * (i % 2), seed=i)) for i in range(4)]
    listeners = [Collected() for _ in specs]
    requests = [Request(llava.prepare([c]), s, listener) for (c, s), listener in zip(specs, listeners)]
    for request in requests:
        compiled.submit(request)
    for request in requests:
        assert request.finished.wait(120)
    compiled.close()
    assert compiled.cache_data_ptrs() == pointers
    for (conv, settings), listener in zip(specs, listeners):
        assert listener.generation(0, 0).token_ids == alone(llava, conv, settings).token_ids
