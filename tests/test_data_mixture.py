"""Mixtures: YAML on disk, sampling strategies, the same list in two processes and two runs, statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from llavakit.data import DataSettings, LlavaDataset, load_mixture
from llavakit.data.mixture import MixtureError, parse_strategy, select
from llavakit.data.stats import format_stats, mixture_stats
from test_data_fixtures import (  # noqa: F401 (fixtures)
    SQUARE_IMAGE_TOKENS, conversation, llava, processor, write_image, write_json, write_jsonl,
    write_video,
)


def records(prefix: str, count: int, **media) -> list[dict]:
    question = "<image>\nQ" if "image" in media else "<video>\nQ" if "video" in media else "Q"
    return [{"id": f"{prefix}{i}", **media, "conversations": conversation(question, f"answer {i}")}
            for i in range(count)]


@pytest.fixture()
def mixture_file(tmp_path):
    write_image(tmp_path / "imgs" / "x.png", (30, 30))
    write_video(tmp_path / "vids" / "v.mp4", frames=6)
    write_json(tmp_path / "caps.json", records("cap", 50, image="x.png"))
    write_jsonl(tmp_path / "text.jsonl", records("txt", 40))
    write_jsonl(tmp_path / "vid.jsonl", records("vid", 10, video="v.mp4"))
    path = tmp_path / "mix.yaml"
    path.write_text(textwrap.dedent("""\
        seed: 7
        datasets:
          - json_path: caps.json
            image_folder: imgs
            sampling_strategy: random:20%
          - json_path: text.jsonl
            sampling_strategy: random:5
          - json_path: text.jsonl
            name: text_head
            sampling_strategy: first:3
          - json_path: vid.jsonl
            video_folder: vids
            sampling_strategy: end:2
    """))
    return path


def test_strategies():
    assert select(10, parse_strategy("all"), 0, 0) == list(range(10))
    assert select(10, parse_strategy("first:3"), 0, 0) == [0, 1, 2]
    assert select(10, parse_strategy("end:3"), 0, 0) == [7, 8, 9]
    assert select(10, parse_strategy("first:25%"), 0, 0) == [0, 1, 2]  # ceil(2.5), as LLaVA-NeXT
    chosen = select(100, parse_strategy("random:10"), seed=1, position=0)
    assert len(set(chosen)) == 10 and chosen == sorted(chosen)
    assert chosen == select(100, parse_strategy("random:10"), seed=1, position=0)
    assert chosen != select(100, parse_strategy("random:10"), seed=2, position=0)
    assert chosen != select(100, parse_strategy("random:10"), seed=1, position=1)
    for bad in ("some", "first:", "random:x", "end:0.5", "first:0%", "first:101%"):
        with pytest.raises(ValueError, match="sampling strategy"):
            parse_strategy(bad)
    with pytest.raises(ValueError, match="asks for 11 samples but the file has 10"):
        select(10, parse_strategy("first:11"), 0, 0)


def test_mixture_selection(mixture_file):
    mixture = load_mixture(mixture_file)
    assert [(p.name, p.available, p.selected) for p in mixture.parts] == [
        ("caps", 50, 10), ("text", 40, 5), ("text_head", 40, 3), ("vid", 10, 2)]
    ids = [e.sample_id for e in mixture.entries]
    assert ids[15:18] == ["txt0", "txt1", "txt2"] and ids[18:] == ["vid8", "vid9"]
    assert mixture.entries[0].image_folder == str(mixture_file.parent / "imgs")
    assert [e.sample_id for e in load_mixture(mixture_file, seed=8).entries] != ids  # the seed matters


SCRIPT = "import sys; from llavakit.data import load_mixture; " \
         "print(','.join(e.sample_id for e in load_mixture(sys.argv[1]).entries))"


def test_same_list_in_two_processes_and_two_runs(mixture_file):
    """Two processes started together (different hash seeds) and a later run agree with this one."""
    here = ",".join(e.sample_id for e in load_mixture(mixture_file).entries)
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, str(mixture_file)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONHASHSEED": str(seed)})
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outputs == [here, here]
    assert ",".join(e.sample_id for e in load_mixture(mixture_file).entries) == here


def test_bad_mixtures_name_the_problem(tmp_path, mixture_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  - json_path: caps.json\n    sampling_strategy: half\n")
    with pytest.raises(MixtureError, match="sampling strategy 'half'"):
        load_mixture(bad)
    bad.write_text("datasets:\n  - json_path: caps.json\n    sampling_strategy: first:51\n")
    with pytest.raises(MixtureError, match="caps.*asks for 51 samples but the file has 50"):
        load_mixture(bad)
    bad.write_text("datasets:\n  - json_path: caps.json\n    sample: all\n")
    with pytest.raises(MixtureError, match="sample"):
        load_mixture(bad)
    bad.write_text("datasets: [\n")
    with pytest.raises(MixtureError, match="cannot read"):
        load_mixture(bad)
    bad.write_bytes(b"datasets:\n  - json_path: caf\xe9.json\n")  # Latin-1, not UTF-8
    with pytest.raises(MixtureError, match="bad.yaml: cannot read.*utf-8"):
        load_mixture(bad)


def test_bare_list_mixture(tmp_path, mixture_file):
    path = tmp_path / "list.yaml"
    path.write_text("- json_path: text.jsonl\n  sampling_strategy: first:2\n")
    assert [e.sample_id for e in load_mixture(path).entries] == ["txt0", "txt1"]


def test_mixture_statistics(processor, mixture_file):
    mixture = load_mixture(mixture_file)
    dataset = LlavaDataset(mixture.entries, processor, DataSettings(template="chatml"))
    parts, total = mixture_stats(dataset, mixture)
    by_name = {p.name: p for p in parts}
    assert dict(by_name["caps"].modalities) == {"image": 10}
    assert by_name["caps"].visual_tokens == 10 * SQUARE_IMAGE_TOKENS
    assert dict(by_name["vid"].modalities) == {"video": 2} and by_name["vid"].visual_tokens == 2 * (4 * 4 + 1)
    assert dict(by_name["text"].modalities) == {"text": 5} and by_name["text"].visual_tokens == 0
    assert total.selected == 20 and sum(total.modalities.values()) == 20
    encoded = [dataset[i] for i in range(len(dataset))]
    assert total.text_tokens == sum(s.text_tokens for s in encoded)
    assert total.visual_tokens == sum(s.visual_tokens for s in encoded)
    assert total.max_tokens == max(s.length for s in encoded)
    table = format_stats(parts, total)
    assert "caps" in table and "total" in table and "video 2" in table
    json.dumps(total.as_dict())
