"""Task files: every shipped YAML loads; prompts, media and fields come out as the task says; errors
name the task file, sample and field; Hugging Face datasets are read lazily or refused clearly."""

from __future__ import annotations

import sys
import types

import pytest
from test_eval_support import SYNTH_TASKS, eval_world, png, write_jsonl

from llavakit.evaluation.samples import LazyMedia, TaskDataError, load_samples
from llavakit.evaluation.task_spec import TaskSpecError, builtin_task_names, load_task, task_from_dict


@pytest.fixture(scope="module")
def world():
    return eval_world()


STANDARD = ["vqav2", "gqa", "textvqa", "docvqa", "chartqa", "pope", "mme", "scienceqa_img", "mmbench", "llava_bench"]


def test_every_shipped_task_loads():
    names = builtin_task_names()
    assert set(SYNTH_TASKS + STANDARD) <= set(names)
    for name in names:
        spec = load_task(name)
        assert spec.name == name and spec.source.endswith(f"{name}.yaml")
    for name in STANDARD:
        assert load_task(name).data.hf is not None  # a Hugging Face fallback for every benchmark
    assert "Answer the question using a single word or phrase." in load_task("vqav2").prompt.template


def test_synthetic_tasks_read_the_world(world):
    for name in SYNTH_TASKS:
        samples = load_samples(load_task(name), world)
        assert len(samples) == 6 and all(s.chance is not None for s in samples)
    [video] = load_samples(load_task("synth_video_direction"), world, limit=1)
    [(kind, path)] = video.media
    assert kind == "video" and path.endswith(".mp4")
    assert video.messages()[0]["content"][0] == {"type": "video", "video": path}
    [multi] = load_samples(load_task("synth_multiview"), world, limit=1)
    parts = multi.messages()[0]["content"]
    assert [p["type"] for p in parts[:2]] == ["text", "image"] and parts[0]["text"] == "View 1: "
    assert multi.fields == {"answer": multi.fields["answer"], "category": "interleaved"}  # scored per placement


def test_builtin_task_needs_a_data_root():
    with pytest.raises(TaskDataError, match=r"task synth_color .*data_dir '\.' is relative; give the data root"):
        load_samples(load_task("synth_color"))


def _task(tmp_path, records, **fields):
    write_jsonl(tmp_path / "data" / "q.jsonl", records)
    data = {"name": "t", "data": {"data_dir": "data", "file": "q.jsonl", "media_dir": "img"}, "metric": "exact_match",
            **fields}
    return task_from_dict(data, str(tmp_path / "t.yaml"))


def test_prompt_parts_options_and_replacements(tmp_path):
    png(tmp_path / "data" / "img" / "a.png")
    records = [
        {"id": 1, "image": "a.png", "question": "Which? Please answer yes or no.", "hint": "It is red.",
         "A": "red", "B": "blue", "C": float("nan"), "answer": "A", "category": "color"},
        {"id": 2, "image": "a.png", "question": "Which?", "hint": None, "A": "x", "B": "y", "answer": "B",
         "category": "color"},
    ]
    spec = _task(tmp_path, records, prompt={
        "template": "{context}{question} Options:\n{options}\nAnswer with the letter.",
        "parts": {"context": {"field": "hint", "format": "Hint: {}\n"}},
        "options": {"columns": ["A", "B", "C", "D"]},
        "replace": {" Please answer yes or no.": ""},
        "system": "Be brief.",
    }, fields={"answer": "answer", "category": "category"}, metric="multiple_choice")
    first, second = load_samples(spec, tmp_path)
    assert first.prompt == "<image>\nHint: It is red.\nWhich? Options:\nA. red\nB. blue\nAnswer with the letter."
    assert second.prompt == "<image>\nWhich? Options:\nA. x\nB. y\nAnswer with the letter."
    assert first.fields == {"choices": ["red", "blue"], "answer": "A", "category": "color"}
    system, user = first.messages()
    assert system == {"role": "system", "content": "Be brief."}
    assert user["content"][0] == {"type": "image", "image": str(tmp_path / "data" / "img" / "a.png")}
    assert user["content"][1]["text"].startswith("Hint: It is red.")


def test_list_options_are_lettered_and_ids_default_to_positions(tmp_path):
    records = [{"question": "Pick.", "choices": ["cat", "dog"], "answer": 1}]
    spec = _task(tmp_path, records, prompt={"template": "{question}\n{options}", "options": {"field": "choices"}},
                 fields={"answer": "answer"})
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"id_field": None})})
    [sample] = load_samples(spec, tmp_path)
    assert sample.id == 0 and sample.prompt == "Pick.\nA. cat\nB. dog"  # text only: no media, no placeholder
    assert sample.messages() == [{"role": "user", "content": [{"type": "text", "text": "Pick.\nA. cat\nB. dog"}]}]


@pytest.mark.parametrize("records, fields, message", [
    ([{"id": 1, "question": "q", "image": "missing.png"}], {}, r"sample 1 \(record 0\): media file not found"),
    ([{"id": 1, "text": "q"}], {}, r"sample 1 \(record 0\): prompt.template uses \{question\} but the record has no"),
    ([{"id": 1, "question": "q"}], {"fields": {"answer": "label"}}, r"fields.answer reads 'label'"),
    ([{"id": 1, "question": "q"}, {"id": 1, "question": "r"}], {}, r"id 1 is used by records 0 and 1"),
    ([{"id": 1, "question": "<image> and <image>", "image": "a.png"}], {},
     r"the prompt has 2 <image> and 0 <video> placeholders but the record has 1 images"),
])
def test_sample_errors_name_the_task_and_sample(tmp_path, records, fields, message):
    png(tmp_path / "data" / "img" / "a.png")
    spec = _task(tmp_path, records, **fields)
    with pytest.raises(TaskDataError, match=rf"task t \({tmp_path / 't.yaml'}\): .*{message}"):
        load_samples(spec, tmp_path)


def test_task_file_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {file: x.jsonl, colour: red}\nmetric: vqa\ngeneration: {max_new_tokens: 0}\n")
    with pytest.raises(TaskSpecError) as err:
        load_task(bad)
    text = str(err.value)
    assert text.startswith(f"task file {bad}: invalid task:")
    assert "field 'data.colour': Extra inputs are not permitted" in text
    assert "field 'metric': Value error, unknown metric 'vqa'" in text
    assert "field 'generation.max_new_tokens': Input should be greater than 0" in text
    (tmp_path / "nodata.yaml").write_text("metric: accuracy\ndata: {}\n")
    with pytest.raises(TaskSpecError, match="field 'data': Value error, give 'file'"):
        load_task(tmp_path / "nodata.yaml")
    (tmp_path / "judge.yaml").write_text("metric: llava_bench\ndata: {file: x.jsonl}\n")
    with pytest.raises(TaskSpecError, match="add a 'judge' section"):
        load_task(tmp_path / "judge.yaml")
    with pytest.raises(TaskSpecError, match="unknown task 'nope'"):
        load_task("nope")


def test_missing_file_without_hf_fallback(tmp_path):
    spec = task_from_dict({"name": "t", "data": {"file": "none.jsonl"}, "metric": "accuracy"}, str(tmp_path / "t.yaml"))
    with pytest.raises(TaskDataError, match=r"data file .*none.jsonl not found"):
        load_samples(spec)


def test_hf_dataset_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(TaskDataError, match=r"task pope .*loading the Hugging Face dataset 'lmms-lab-encoder/POPE' "
                                            r"needs the `datasets` package"):
        load_samples(load_task("pope"))


class _FakeDataset:
    """What the runner uses of a `datasets.Dataset`: len, select, column_names, remove_columns, rows."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = list(rows[0])
        self.reads = 0

    def __len__(self):
        return len(self.rows)

    def select(self, indices):
        return _FakeDataset([self.rows[i] for i in indices])

    def remove_columns(self, names):
        return _FakeDataset([{k: v for k, v in r.items() if k not in names} for r in self.rows])

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        self.reads += 1
        return self.rows[index]


def test_hf_dataset_rows_with_lazy_images(monkeypatch):
    from PIL import Image

    rows = [{"question_id": f"q{i}", "question": f"Is there a cat {i}?", "answer": "yes", "category": "random",
             "image": Image.new("RGB", (8, 8))} for i in range(3)]
    calls = []

    def load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split))
        return _FakeDataset(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    samples = load_samples(load_task("pope"), limit=2)
    assert calls == [("lmms-lab-encoder/POPE", None, "test")]
    assert [s.id for s in samples] == ["q0", "q1"]
    assert isinstance(samples[0].media[0][1], LazyMedia)
    assert samples[0].prompt == "<image>\nIs there a cat 0?\nAnswer the question using a single word or phrase."
    assert samples[0].fields == {"answer": "yes", "category": "random"}
    image_part = samples[1].messages()[0]["content"][0]
    assert image_part["image"] is rows[1]["image"]


def test_hf_load_failure_names_the_dataset(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(TaskDataError, match=r"task mme .*'lmms-lab-encoder/MME' \(name=None, split='test'\) cannot be "
                                            r"loaded: no network"):
        load_samples(load_task("mme"))


def test_the_world_tasks_name_every_held_out_split_the_world_writes(world):
    """Each synth_* task names the world's splits (dev, test, test_paraphrase) as the world lays them
    out; reading one changes only the file read, and its questions are that split's."""
    from llavakit.synth.world import EVAL_SPLITS, TEST, eval_file

    for name in SYNTH_TASKS:
        spec = load_task(name)
        task = name.removeprefix("synth_")
        assert spec.data.splits == {split: eval_file(task, split) for split in EVAL_SPLITS}, name
        assert spec.data.file == eval_file(task, TEST)
        for split in EVAL_SPLITS:
            chosen = load_task(name, split=split)
            assert chosen.data.file == eval_file(task, split)
            assert chosen.model_dump(exclude={"data"}) == spec.model_dump(exclude={"data"})
            ids = [s.id for s in load_samples(chosen, world)]
            assert ids and all(i.startswith(f"{split}-") for i in ids), (name, split, ids[:2])
        assert load_task(name, split=TEST).fingerprint() == spec.fingerprint()
    with pytest.raises(TaskSpecError, match=r"no split 'train'"):
        load_task("synth_color", split="train")
    plain = load_task("synth_color").model_dump(mode="json")
    del plain["data"]["splits"]
    assert load_task(task_from_dict(plain), split="dev").data.file == "test/color.jsonl"  # one file: as it is
