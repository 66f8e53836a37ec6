"""Exact match (GQA), the synthetic tasks' accuracy, ANLS and ChartQA's relaxed accuracy, by hand."""

import pytest

from llavakit.evaluation.text import (
    anls,
    exact_match,
    levenshtein,
    normalize_short_answer,
    normalized_levenshtein,
    reasoned_accuracy,
    reasoned_answer,
    relaxed_accuracy,
    relaxed_correctness,
    short_answer_accuracy,
)


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Yes.", "yes", 1.0),
        ("t-shirt", "tshirt", 1.0),
        (" Left ", "left", 1.0),
        ("the left", "left", 0.0),
        ("2", "two", 0.0),
    ],
)
def test_exact_match(prediction, answer, expected):
    assert exact_match(prediction, [answer]) == expected


def test_exact_match_any_answer():
    assert exact_match("blue", ["red", "Blue"]) == 1.0


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Red", "red", 1.0),
        ("red.", "red", 1.0),
        ("A cube.", "cube", 1.0),
        ("an apple", "apple", 1.0),
        ("the red cube", "red cube", 1.0),
        ("3!", "3", 1.0),
        ("cubes", "cube", 0.0),
        ("red cube", "cube", 0.0),
        ("another", "other", 0.0),  # "an" is an article only as a word
    ],
)
def test_short_answer_accuracy(prediction, answer, expected):
    assert short_answer_accuracy(prediction, [answer]) == expected


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("red left, blue right, so left.", "left", 1.0),
        ("red left, blue left, so right.", "left", 0.0),  # the conclusion counts, not the sides
        ("red left, blue right, so left, so right.", "right", 1.0),  # the last conclusion
        ("Left.", "left", 1.0),  # a one-word reply is its own answer
        ("red left, blue right", "left", 0.0),  # sides without a conclusion answer nothing
    ],
)
def test_reasoned_accuracy_scores_the_words_after_the_last_so(prediction, answer, expected):
    assert reasoned_accuracy(prediction, [answer]) == expected


def test_reasoned_answer():
    assert reasoned_answer("cyan above, red below, so above.") == "above."
    assert reasoned_answer("above") == "above"


def test_normalize_short_answer():
    assert normalize_short_answer("  The Sphere?! ") == "sphere"


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2


def test_anls_exact_and_normalized():
    assert anls("Hello World", ["hello world"]) == 1.0
    assert anls("  hello   world ", ["Hello World"]) == 1.0  # distance 0 after whitespace collapsing


def test_anls_threshold_boundary():
    # "ab" vs "ax": distance 1, length 2, NL = 0.5 exactly
    assert normalized_levenshtein("ax", "ab") == 0.5
    assert anls("ax", ["ab"]) == 0.5  # official DocVQA script and lmms-eval keep similarity >= 0.5
    assert anls("ax", ["ab"], inclusive=False) == 0.0  # the paper: 0 when NL >= 0.5
    assert anls("abx", ["abc"]) == pytest.approx(2 / 3)
    assert anls("wxyd", ["abcd"]) == 0.0  # NL = 3/4


def test_anls_max_over_answers_and_raw_length_denominator():
    assert anls("ab", ["zz", "ab"]) == 1.0
    # the scripts divide by the longer *raw* length: "ab  " has length 4, distance("ax", "ab") = 1
    assert anls("ab  ", ["ax"]) == pytest.approx(0.75)
    assert anls("", [""]) == 1.0
    with pytest.raises(ValueError):
        anls("x", [])


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("45%", "0.45", True),  # a percent sign divides by 100
        ("0.45", "45%", True),
        ("45", "45%", False),  # 45 vs 0.45
        ("45%", "45%", True),
        ("47", "45", True),  # 2/45 = 4.4%
        ("42.75", "45", True),  # exactly 5%
        ("48", "45", False),  # 6.7%
        ("0", "0", True),  # zero target: string comparison
        ("0.0", "0", False),
        ("Yes", "yes", True),
        ("1,000", "1000", False),  # not a float: string comparison
        (" 45 ", "45", True),
    ],
)
def test_relaxed_correctness(prediction, target, expected):
    assert relaxed_correctness(prediction, target) is expected


def test_relaxed_accuracy_any_answer():
    assert relaxed_accuracy("10", ["12", "10.4"]) == 1.0
    assert relaxed_accuracy("10", ["12"]) == 0.0
