"""VQA accuracy: the official normalization rules and the 10-choose-9 consensus, by hand."""

import pytest

from llavakit.evaluation.vqa import (
    consensus_accuracy,
    evalai_normalize,
    normalize_vqa_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("two", "2"),
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("a dog", "dog"),
        ("The dog", "dog"),
        ("an apple", "apple"),
        ("yes.", "yes"),
        ("Yes!", "yes"),
        ("dont", "don't"),
        ("Dont know", "don't know"),
        ("isnt", "isn't"),
        ("Im", "im"),  # the capitalised keys never match after lower-casing
        ("t-shirt", "t shirt"),  # no space next to '-': it becomes a space
        ("t - shirt", "t shirt"),  # a space next to '-': deleted
        ("1,000", "1000"),  # a comma between digits deletes all punctuation
        ("2.5", "2.5"),  # a period before a digit stays
        ("5.", "5"),
        ("a.m.", "am"),
        ("  blue\n", "blue"),
        ("red\tcar", "red car"),
    ],
)
def test_normalize_vqa_answer(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def test_period_strip_is_capped_at_32_like_the_reference():
    # the reference passes re.UNICODE (32) as `count`
    assert normalize_vqa_answer("." * 40 + "x") == "." * 8 + "x"


def test_punctuation_and_word_rules_separately():
    assert process_punctuation("what?") == "what "
    assert process_punctuation("what ?") == "what "
    assert process_digit_article("The Three cats") == "3 cats"


def test_evalai_processor_splits_possessives_and_drops_commas():
    assert evalai_normalize("Man's hat?") == "man 's hat"
    assert evalai_normalize("red, white") == "red white"


@pytest.mark.parametrize(("matching", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_ten_choose_nine_averaging(matching, expected):
    # k of 10 humans agree: 10 - k subsets keep all k (min(k/3, 1)), k subsets keep k - 1
    answers = ["2"] * matching + ["3"] * (10 - matching)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)
    assert vqa_accuracy("two", answers) == pytest.approx(expected)


def test_ten_choose_nine_by_hand_for_two_matches():
    # 8 subsets keep both matches (2/3), 2 subsets keep one (1/3): (8 * 2/3 + 2 * 1/3) / 10 = 0.6
    assert consensus_accuracy("a", ["a", "a"] + ["b"] * 8) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)


def test_fewer_than_ten_answers():
    assert vqa_accuracy("2", ["2", "2", "2"]) == pytest.approx(2 / 3)  # each subset of 2 has 2 matches
    assert vqa_accuracy("2", ["2", "3"]) == pytest.approx((0 + 1 / 3) / 2)
    assert vqa_accuracy("Two", ["2"]) == 1.0  # a single answer: plain equality after normalization
    assert vqa_accuracy("3", ["2"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("2", [])


def test_prediction_normalization_matters():
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    assert vqa_accuracy("dont know", ["don't know"] * 10) == 1.0


def test_official_mode_leaves_unanimous_answers_raw():
    # lmms-eval normalizes the human answers too; the official scorer only punctuation-processes
    # them, and only when they disagree
    assert vqa_accuracy("dog", ["the dog"] * 10, mode="lmms_eval") == 1.0
    assert vqa_accuracy("dog", ["the dog"] * 10, mode="official") == 0.0
    assert vqa_accuracy("yes", ["Yes"] * 3 + ["no"] * 7, mode="lmms_eval") == pytest.approx(0.9)
    assert vqa_accuracy("yes", ["Yes"] * 3 + ["no"] * 7, mode="official") == 0.0
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 5 + ["shirt"] * 5, mode="official") == 1.0


def test_evalai_mode():
    assert vqa_accuracy("Man's hat", ["man's hat"] * 10, mode="evalai") == 1.0
    with pytest.raises(ValueError, match="unknown VQA mode"):
        vqa_accuracy("x", ["x"], mode="nope")
