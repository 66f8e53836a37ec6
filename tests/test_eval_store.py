"""Predictions files: a line torn by a kill is dropped and cut before the next append; every file of a
task counts, whatever the sharding; shards from i/N or torchrun's environment."""

from __future__ import annotations

import pytest

from llavakit.evaluation.store import PredictionStore, Shard, StoreError, append_jsonl, read_jsonl_tolerant


def test_torn_last_line_is_ignored_then_cut(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "prediction": "x"}\n{"id": "b", "predic')
    assert [r["id"] for r in read_jsonl_tolerant(path)] == ["a"]
    append_jsonl(path, [{"id": "b", "prediction": "y"}, {"id": "c", "prediction": "z"}])
    assert path.read_text() == ('{"id": "a", "prediction": "x"}\n{"id": "b", "prediction": "y"}\n'
                                '{"id": "c", "prediction": "z"}\n')


def test_a_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(StoreError, match=r"t.jsonl:2: invalid JSON"):
        read_jsonl_tolerant(path)
    path.write_text('{"prediction": "no id"}\n')
    with pytest.raises(StoreError, match=r"t.jsonl:1: not a predictions line"):
        read_jsonl_tolerant(path)


def test_every_file_of_the_task_counts(tmp_path):
    PredictionStore(tmp_path, "t", Shard(0, 2)).append([{"id": 0, "prediction": "a"}])
    PredictionStore(tmp_path, "t", Shard(1, 3)).append([{"id": 1, "prediction": "b"}])
    PredictionStore(tmp_path, "t").append([{"id": 2, "prediction": "c"}])
    PredictionStore(tmp_path, "tt").append([{"id": 3, "prediction": "other task"}])
    store = PredictionStore(tmp_path, "t", Shard(1, 2))
    assert store.part.name == "t.shard-1-of-2.jsonl"
    assert sorted(store.read()) == ["0", "1", "2"]
    store.write_merged([{"id": 0, "prediction": "a"}])
    assert (tmp_path / "t.jsonl").read_text() == '{"id": 0, "prediction": "a"}\n'


def test_shards():
    assert Shard.parse(" 1 / 4 ") == Shard(1, 4)
    assert Shard.from_env({}) == Shard(0, 1)
    assert Shard.from_env({"RANK": "3", "WORLD_SIZE": "4"}) == Shard(3, 4)
    assert [i for i in range(10) if Shard(1, 4).owns(i)] == [1, 5, 9]
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)
