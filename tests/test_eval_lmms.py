"""The lmms-eval adapter: registered through lmms-eval's real ``lmms_eval.models`` entry-point mechanism,
a subclass of its ``lmms`` base class, answering ``generate_until`` as `Llava.generate` does and scoring
``loglikelihood`` on the right positions. Requests are fed in-process as lmms-eval `Instance`s;
test_eval_lmms_cli.py runs the `lmms-eval` command itself (docs/evaluation.md)."""

from __future__ import annotations

import math

import pytest
from test_eval_support import eval_world, one_torch_thread  # noqa: F401 - autouse fixture

pytest.importorskip("lmms_eval.api.model", reason="lmms-eval (with loguru and pytz) is not installed")

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelRegistryV2
from PIL import Image

from llavakit.evaluation.lmms_adapter import LlavakitLmms, conversation, sampling_kwargs


def test_registered_through_the_entry_point_group(tmp_path, monkeypatch):
    """What pyproject's ``[project.entry-points."lmms_eval.models"]`` installs, as a dist-info on sys.path."""
    dist = tmp_path / "llavakit_lmms_probe-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llavakit-lmms-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[lmms_eval.models]\nllavakit = llavakit.evaluation.lmms_plugin:manifest\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests(overwrite=True)
    assert registry.resolve("llavakit").model_type == "simple"
    cls = registry.get_model_class("llavakit")  # imports and checks it is an lmms subclass
    assert cls is LlavakitLmms and issubclass(cls, lmms)


@pytest.fixture(scope="module")
def world():
    return eval_world()


@pytest.fixture(scope="module")
def adapter(onevision_dir):
    return LlavakitLmms.create_from_arg_string(f"pretrained={onevision_dir},dtype=float32",
                                               {"batch_size": "2", "device": "cpu", "max_batch_size": None})


def instance(request_type, args, doc_id, task="t"):
    return Instance(request_type, args, doc_id, {"task": task, "doc_id": doc_id, "repeats": 1})


def test_generate_until_matches_llava_generate(adapter, world):
    images = [Image.new("RGB", (40 + 8 * i, 30), (40 * i, 90, 200)) for i in range(4)]
    video = str(next((world / "videos").glob("*.mp4")))
    docs = [{"image": img} for img in images] + [{"video": video}]
    adapter.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return [doc["image"]] if "image" in doc else [doc["video"]]

    short = {"until": ["\n\n"], "max_new_tokens": 4, "temperature": 0}
    longer = {"until": "ASSISTANT", "max_new_tokens": 6, "do_sample": False}
    contexts = ["What is it?", "<image>\nDescribe.", "Color?", "A much longer question about the picture?",
                "What moves?"]
    kwargs = [short, short, longer, short, longer]
    requests = [instance("generate_until", (c, dict(k), visual, i, "t", "test"), i)
                for i, (c, k) in enumerate(zip(contexts, kwargs))]
    replies = adapter.generate_until(requests)

    for i, reply in enumerate(replies):
        expected = adapter.llava.generate(conversation(contexts[i], visual(docs[i])), **sampling_kwargs(kwargs[i]))
        assert reply == expected.text
    assert conversation(contexts[4], visual(docs[4]))[0]["content"][0] == {"type": "video", "video": video}


def test_loglikelihood_scores_the_continuation_positions(adapter):
    image = Image.new("RGB", (30, 30), (10, 200, 10))
    messages = conversation("What is it?", [image])
    greedy = adapter.llava.generate(messages, max_new_tokens=3)
    ids = [t for t in greedy.token_ids if t not in adapter.llava.eos_token_ids][:3]
    logprob, is_greedy = adapter.token_logprob(messages, ids)
    assert is_greedy and logprob < 0 and math.isfinite(logprob)
    other = ids[:-1] + [ids[-1] - 1 if ids[-1] > 0 else 1]
    other_logprob, other_greedy = adapter.token_logprob(messages, other)
    assert not other_greedy and other_logprob < logprob
    assert adapter.token_logprob(messages, ids[:1])[0] >= logprob  # log-probs only go down

    adapter.task_dict = {"mc": {"test": [{"img": image, "target": "blue"}]}}
    request = instance("loglikelihood", ("What is it?", lambda doc: doc["target"], lambda doc: [doc["img"]], 0, "mc",
                                         "test"), 0, task="mc")
    [(value, flag)] = adapter.loglikelihood([request])
    assert (value, flag) == adapter.continuation_logprob(messages, "blue")


def test_requests_to_conversations():
    image = Image.new("RGB", (4, 4))
    assert sampling_kwargs({"until": "\n", "max_new_tokens": 7}) == {
        "max_new_tokens": 7, "temperature": 0.0, "top_p": 1.0, "stop": ["\n"]}
    assert sampling_kwargs({"do_sample": True, "top_p": None})["temperature"] == 1.0
    with pytest.raises(ValueError, match="beam search"):
        sampling_kwargs({"num_beams": 4})
    two = conversation("Image 1: <image>\nImage 2: <image>\nSame?", [image, image])[0]["content"]
    assert [p["type"] for p in two] == ["text", "image", "text", "image", "text"]
    with pytest.raises(ValueError, match="more <image> placeholders than visuals"):
        conversation("<image> <image>", [image])
    with pytest.raises(ValueError, match="takes images and videos"):
        conversation("hear this", [{"array": [0.0], "sampling_rate": 16000}])
