"""The METRICS registry: every metric scores records, and malformed records name their field."""

import pytest

from llavakit.evaluation import METRICS, get_metric, metrics

# one valid record per metric, scoring 1.0 (or the metric's best) on its headline number
GOOD = {
    "vqav2": {"prediction": "Two", "answers": ["2"] * 10},
    "vqav2_official": {"prediction": "Two", "answers": ["2"] * 10},
    "textvqa": {"prediction": "Two", "answers": ["2"] * 10},
    "exact_match": {"prediction": "Yes.", "answer": "yes"},
    "accuracy": {"prediction": "A cube.", "answer": "cube"},
    "reasoned_accuracy": {"prediction": "red left, blue right, so left.", "answer": "left"},
    "anls": {"prediction": "Dr. Lobo", "answers": ["dr. lobo", "Lobo"]},
    "relaxed_accuracy": {"prediction": "0.45", "answer": "45%"},
    "multiple_choice": {"prediction": "(B)", "answer": "B", "choices": ["x", "y"]},
    "scienceqa_img": {"prediction": "B", "answer": 1, "choices": ["x", "y"]},
    "scienceqa_img_llava": {"prediction": "The answer is B.", "answer": 1},
    "pope": {"prediction": "yes", "answer": "yes"},
    "pope_official": {"prediction": "Yes, there is.", "answer": "yes"},
    "mme": None,  # needs pairs, see below
    "mme_official": None,
    "llava_bench": {"review": "8 8"},
}


def test_registry_is_complete_and_named():
    assert set(METRICS) == set(GOOD)
    for name, metric in METRICS.items():
        assert metric.name == name and metric.summary and metric.fields


@pytest.mark.parametrize("name", [n for n, r in GOOD.items() if r is not None])
def test_each_metric_scores_a_good_record(name):
    result = metrics.score(name, [dict(GOOD[name], id="q1")])
    assert result.n == 1
    headline = next(iter(result.scores.values()))
    assert headline == pytest.approx(100.0 if name == "llava_bench" else 1.0)
    assert result.per_sample[0]["id"] == "q1"
    assert result.to_dict(per_sample=False).keys() == {"metric", "n", "scores", "details"}


@pytest.mark.parametrize("name", ["mme", "mme_official"])
def test_mme_metrics_score_a_pair(name):
    records = [
        {"prediction": "Yes", "answer": "Yes", "category": "OCR", "image_id": 7},
        {"prediction": "No", "answer": "No", "category": "OCR", "image_id": 7},
    ]
    assert metrics.score(name, records).scores["OCR"] == pytest.approx(200.0)


@pytest.mark.parametrize(
    ("name", "record", "field"),
    [
        ("vqav2", {"answers": ["2"]}, "prediction"),
        ("vqav2", {"prediction": 2, "answers": ["2"]}, "prediction"),
        ("vqav2", {"prediction": "2"}, "answer"),
        ("vqav2", {"prediction": "2", "answers": []}, "answers"),
        ("vqav2", {"prediction": "2", "answers": "2"}, "answers"),
        ("anls", {"prediction": "2", "answers": [None]}, "answers"),
        ("multiple_choice", {"prediction": "B", "answer": "cat"}, "answer"),
        ("multiple_choice", {"prediction": "B", "answer": 5, "choices": ["x", "y"]}, "answer"),
        ("multiple_choice", {"prediction": "B", "answer": "B", "choices": "xy"}, "choices"),
        ("multiple_choice", {"prediction": "B", "answer": "B", "num_choices": 0}, "num_choices"),
        ("pope", {"prediction": "yes", "answer": "maybe"}, "answer"),
        ("pope", {"prediction": "yes", "answer": "yes", "category": 3}, "category"),
        ("mme", {"prediction": "yes", "answer": "yes", "category": "OCR"}, "image_id"),
        ("mme", {"prediction": "yes", "answer": "yes", "image_id": 1}, "category"),
    ],
)
def test_malformed_records_name_the_field(name, record, field):
    good = GOOD.get(name) or {"prediction": "yes", "answer": "yes", "category": "OCR", "image_id": 1}
    with pytest.raises(metrics.RecordError) as info:
        metrics.score(name, [good, record])
    assert info.value.index == 1
    assert info.value.field == field


def test_answers_in_vqa_annotation_form_and_numbers():
    answers = [{"answer": "2", "answer_id": i} for i in range(10)]
    assert metrics.score("vqav2", [{"prediction": "two", "answers": answers}]).scores["accuracy"] == 1.0
    assert metrics.score("relaxed_accuracy", [{"prediction": "45.5", "answer": 45}]).scores["relaxed_accuracy"] == 1.0


def test_mean_metrics_break_down_by_category_and_count_unparsed():
    records = [
        {"prediction": "A", "answer": "A", "category": "art"},
        {"prediction": "no idea", "answer": "B", "category": "art"},
        {"prediction": "C", "answer": "C", "category": "math"},
    ]
    result = metrics.score("multiple_choice", records)
    assert result.scores["accuracy"] == pytest.approx(2 / 3)
    assert result.details["unparsed"] == 1
    assert result.details["by_category"] == {"art": {"accuracy": 0.5, "n": 2}, "math": {"accuracy": 1.0, "n": 1}}


def test_unknown_metric_and_empty_input():
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        get_metric("bleu")
    with pytest.raises(ValueError, match="no records"):
        metrics.score("vqav2", [])
