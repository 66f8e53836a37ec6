"""`llavakit eval compare`: runs side by side as a table and a bar chart."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.errors import LlavakitError
from llavakit.evaluation.compare import format_table, load_runs, task_names


def row(metric, score, chance=None, name=None, n=10):
    name = name or metric
    return {"metric": metric, "score_name": name, "score": score, name: score, "chance": chance, "n": n,
            "scores": {name: score}, "details": {}}


def write_run(folder, tasks):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"model": "m", "tasks": tasks}))
    return folder


@pytest.fixture
def runs(tmp_path):
    base = write_run(tmp_path / "base" / "eval", {"synth_color": row("accuracy", 0.5, 0.15),
                                                  "pope": row("pope", 0.8, 0.5, "f1"),
                                                  "mme": row("mme", 1500.0, name="total")})
    anyres = write_run(tmp_path / "anyres" / "eval", {"synth_color": row("accuracy", 0.75, 0.15),
                                                      "synth_count": row("accuracy", 0.4, 0.2),
                                                      "mme": row("mme", 1600.0, name="total")})
    return base, anyres


def test_table(runs):
    loaded = load_runs(runs, ["base", "anyres"])
    tasks = task_names(loaded)
    assert tasks == ["synth_color", "pope", "mme", "synth_count"]
    lines = format_table(loaded, tasks).splitlines()
    assert lines[0].split() == ["task", "metric", "chance", "base", "anyres"]
    assert lines[2].split() == ["synth_color", "accuracy", "0.1500", "0.5000", "0.7500*"]
    assert lines[3].split() == ["pope", "pope/f1", "0.5000", "0.8000", "-"]
    assert lines[4].split() == ["mme", "mme/total", "-", "1500.0000", "1600.0000*"]
    assert lines[5].split() == ["synth_count", "accuracy", "0.2000", "-", "0.4000"]
    # Same folder names are told apart.
    assert [r.name for r in load_runs(runs)] == ["eval", "eval#2"]


def test_a_task_scored_at_different_versions_is_marked_and_not_starred(tmp_path):
    old = write_run(tmp_path / "old", {"synth_color": {**row("accuracy", 0.9, 0.15), "version": 1},
                                      "synth_count": {**row("accuracy", 0.3, 0.2), "version": 1}})
    new = write_run(tmp_path / "new", {"synth_color": {**row("accuracy", 0.6, 0.15), "version": 2},
                                      "synth_count": {**row("accuracy", 0.4, 0.2), "version": 1}})
    lines = format_table(load_runs([old, new]), ["synth_color", "synth_count"]).splitlines()
    assert lines[2].split() == ["synth_color!", "accuracy", "0.1500", "0.9000", "0.6000"]
    assert lines[3].split() == ["synth_count", "accuracy", "0.2000", "0.3000", "0.4000*"]
    assert lines[4] == "! scored at different task versions, not comparable: synth_color (versions 1, 2)"


def test_cli_draws_the_chart(runs, tmp_path, capsys):
    chart = tmp_path / "charts" / "cmp.png"
    assert main(["eval", "compare", str(runs[0]), str(runs[1] / "results.json"), "--names", "base,anyres",
                 "--tasks", "synth_color,mme", "--plot", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert "synth_color" in printed and "pope" not in printed and f"wrote {chart}" in printed
    with Image.open(chart) as image:
        assert image.width > 300 and image.height > 200


def test_errors(tmp_path, capsys):
    with pytest.raises(LlavakitError, match="no results.json"):
        load_runs([tmp_path])
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(LlavakitError, match="no 'tasks' mapping"):
        load_runs([tmp_path / "results.json"])
    assert main(["eval", "compare", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err
