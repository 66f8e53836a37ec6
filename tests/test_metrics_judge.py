"""LLaVA-Bench judge replies: parsing, failures, and the relative score."""

import pytest

from llavakit.evaluation import metrics
from llavakit.evaluation.judge import parse_judge_scores, relative_score


@pytest.mark.parametrize(
    ("reply", "pair"),
    [
        ("8 7\nAssistant 1 gave a detailed answer...", (8.0, 7.0)),
        ("9, 6", (9.0, 6.0)),
        ("7.5;9", (7.5, 9.0)),
        ("\n  8 7  \n", (8.0, 7.0)),  # leading blank lines are stripped first
        ("8 7 6", (8.0, 7.0)),  # the first two numbers
        ("Score: eight and six", None),
        ("", None),
        ("8", None),
        ("The scores follow.\n8 7", None),  # only the first line is read
        ("-1 -1", None),  # the references' failure marker
    ],
)
def test_parse_judge_scores(reply, pair):
    assert parse_judge_scores(reply) == pair


def test_relative_score_leaves_failures_out():
    pairs = [(8.0, 7.0), (9.0, 6.0), None, (7.5, 9.0), None]
    result = relative_score(pairs)
    assert result["judged"] == 3 and result["failed"] == 2
    assert result["reference"] == pytest.approx(24.5 / 3)
    assert result["model"] == pytest.approx(22 / 3)
    assert result["relative"] == pytest.approx(100 * 22 / 24.5)


def test_relative_score_counting_failures_like_llava():
    pairs = [(8.0, 7.0), (9.0, 6.0), None, (7.5, 9.0), None]
    result = relative_score(pairs, count_failures=True)
    assert result["reference"] == pytest.approx((24.5 - 2) / 5)
    assert result["relative"] == pytest.approx(100 * (22 - 2) / (24.5 - 2))


def test_relative_score_without_judgements():
    assert relative_score([None, None])["relative"] is None
    assert relative_score([])["failed"] == 0


def test_llava_bench_metric_by_category_and_prescored_records():
    records = [
        {"id": 1, "category": "conv", "review": "8 7\nfine"},
        {"id": 2, "category": "conv", "review": "I cannot rate this."},
        {"id": 3, "category": "detail", "scores": [10, 5]},
        {"id": 4, "category": "detail", "scores": [-1, -1]},
    ]
    result = metrics.score("llava_bench", records)
    assert result.details["failed"] == 2
    assert result.scores["relative"] == pytest.approx(100 * 12 / 18)
    assert result.details["by_category"]["conv"]["relative"] == pytest.approx(100 * 7 / 8)
    assert result.details["by_category"]["detail"]["relative"] == pytest.approx(50.0)
    assert [s["score"] for s in result.per_sample] == [7.0, None, 5.0, None]


def test_llava_bench_needs_a_review_or_scores():
    with pytest.raises(metrics.RecordError, match="record 0: field 'review'"):
        metrics.score("llava_bench", [{"prediction": "x"}])
    with pytest.raises(metrics.RecordError, match="field 'scores'"):
        metrics.score("llava_bench", [{"scores": [1, 2, 3]}])
