"""Multiple-choice letter extraction and the ScienceQA-IMG scorers."""

import pytest

from llavakit.evaluation.choice import answer_letter, choice_letters, extract_choice_letter, scienceqa_letter

CHOICES = ["dog", "cat", "cow"]


@pytest.mark.parametrize(
    "reply",
    [
        "B",
        "b",
        " B\n",
        "(B)",
        "B.",
        "B)",
        "B:",
        "**B**",
        '"B"',
        "B. cat",
        "B) cat",
        "(B) cat",
        "B: cat",
        "B cat",
        "The answer is B",
        "The answer is B.",
        "The correct answer is (B).",
        "Answer: B",
        "answer: (B)",
        "I think the best option is B because it purrs.",
        "It purrs, so I pick (B).",
        "cat",
        "Cat.",
        "It is a cat.",
    ],
)
def test_extracts_b(reply):
    assert extract_choice_letter(reply, CHOICES) == "B"


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I don't know",
        "D",  # only three options
        "Either (A) or (B)",  # two letters named
        "a dog or a cat",  # two option texts
    ],
)
def test_unparsed(reply):
    assert extract_choice_letter(reply, CHOICES) is None


def test_lower_case_article_is_not_a_letter():
    assert extract_choice_letter("The answer is a cat", CHOICES) == "B"  # via the option text
    assert extract_choice_letter("The answer is a cat", num_choices=4) is None


def test_last_statement_wins_and_letters_need_the_count():
    assert extract_choice_letter("Answer: A. Wait, no. The answer is C.", num_choices=4) == "C"
    assert extract_choice_letter("E", num_choices=4) is None
    assert extract_choice_letter("E") == "E"  # default A..H
    assert choice_letters(num_choices=3) == "ABC"


def test_letter_plus_space_needs_the_option_text():
    assert extract_choice_letter("A cat", CHOICES) == "B"  # "A" is an article here: the text is B's
    assert extract_choice_letter("A dog", CHOICES) == "A"


def test_answer_letter():
    assert answer_letter("b") == "B"
    assert answer_letter("(C)") == "C"
    assert answer_letter(0) == "A"
    with pytest.raises(ValueError):
        answer_letter("cat")
    with pytest.raises(ValueError):
        answer_letter(3, num_choices=3)
    with pytest.raises(ValueError):
        answer_letter(True)


@pytest.mark.parametrize(
    ("reply", "lmms_eval", "llava"),
    [
        ("B", "B", "B"),
        ("b", "B", None),  # lmms-eval compares case-insensitively; LLaVA needs A-E
        ("B. cat", "B", "B"),
        ("B.cat", "B", None),  # LLaVA needs ". " after the letter
        ("B) cat", None, None),
        ("The answer is B.", None, "B"),
        ("The answer is B", None, "B"),
        ("Some reasoning.\nThe answer is C.", None, "C"),
        ("", None, None),
    ],
)
def test_scienceqa_modes(reply, lmms_eval, llava):
    assert scienceqa_letter(reply, mode="lmms_eval") == lmms_eval
    assert scienceqa_letter(reply, mode="llava") == llava
