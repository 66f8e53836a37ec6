"""POPE and MME, with hand-computed confusion counts and subtask scores."""

import pytest

from llavakit.evaluation import metrics
from llavakit.evaluation.yesno import (
    MME_MAX_SCORE,
    mme_category,
    parse_mme_answer,
    parse_pope_answer,
    pope_counts,
    pope_is_unparsed,
    pope_metrics,
)

# (gold, reply): lmms-eval reading / official reading
POPE_SAMPLES = [
    ("yes", "Yes"),  # TP / TP
    ("yes", "yes."),  # unparsed / TP
    ("no", "No"),  # TN / TN
    ("no", "yes"),  # FP / FP
    ("yes", "no"),  # FN / FN
    ("no", "There is no dog."),  # unparsed / TN
    ("yes", "I see a dog"),  # unparsed / TP (no yes/no word: defaults to yes)
    ("no", "Not sure"),  # unparsed / FP ("Not" is not in the negation list)
]


def _records():
    return [{"id": i, "prediction": reply, "answer": gold} for i, (gold, reply) in enumerate(POPE_SAMPLES)]


def test_pope_parsing():
    assert [parse_pope_answer(r) for _, r in POPE_SAMPLES] == ["yes", None, "no", "yes", "no", None, None, None]
    official = [parse_pope_answer(r, mode="official") for _, r in POPE_SAMPLES]
    assert official == ["yes", "yes", "no", "yes", "no", "no", "yes", "yes"]
    assert parse_pope_answer("No, there is not.", mode="official") == "no"
    assert parse_pope_answer("NO", mode="official") == "yes"  # case-sensitive word list
    assert [pope_is_unparsed(r, mode="official") for _, r in POPE_SAMPLES] == [False] * 6 + [True, True]


def test_pope_lmms_eval_counts_unparsed_as_wrong_and_leaves_them_out_of_precision_recall():
    result = metrics.score("pope", _records())
    # TP=1 FP=1 TN=1 FN=1; unparsed: "yes." and "I see a dog" (gold yes), the other two (gold no)
    assert result.details["counts"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1, "unparsed_yes": 2, "unparsed_no": 2}
    assert result.details["unparsed"] == 4
    assert result.scores == pytest.approx(
        {"accuracy": 2 / 8, "precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "yes_ratio": 2 / 8, "gt_yes_ratio": 4 / 8}
    )


def test_pope_official():
    result = metrics.score("pope_official", _records())
    assert result.details["counts"] == {"tp": 3, "fp": 2, "tn": 2, "fn": 1, "unparsed_yes": 0, "unparsed_no": 0}
    assert result.details["unparsed"] == 2  # defaulted to yes
    precision, recall = 3 / 5, 3 / 4
    assert result.scores == pytest.approx(
        {
            "accuracy": 5 / 8,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall),
            "yes_ratio": 5 / 8,
            "gt_yes_ratio": 4 / 8,
        }
    )


def test_pope_by_category_and_zero_denominators():
    records = [dict(r, category="adversarial" if i < 4 else "random") for i, r in enumerate(_records())]
    result = metrics.score("pope", records)
    assert result.details["by_category"]["adversarial"]["n"] == 4
    assert result.details["by_category"]["adversarial"]["accuracy"] == pytest.approx(2 / 4)  # TP, unparsed, TN, FP
    assert pope_metrics(pope_counts(["no"], ["no"]))["precision"] == 0.0


@pytest.mark.parametrize(
    ("reply", "lmms_eval", "official"),
    [
        ("Yes", "yes", "yes"),
        ("No.", "no", "no"),
        ("Yes, it is.", "yes", "yes"),
        ("Not really", "no", "no"),  # "no" in the first 4 characters
        (" no", "no", "no"),
        ("y", "yes", "other"),  # lmms-eval maps one-letter replies
        ("n", "no", "other"),
        ("There is a dog", "other", "other"),
        ("I think yes", "other", "other"),  # only the first 4 characters are searched
        ("", "other", "other"),
    ],
)
def test_mme_parsing(reply, lmms_eval, official):
    assert parse_mme_answer(reply) == lmms_eval
    assert parse_mme_answer(reply, mode="official") == official


def _mme_records():
    rows = [
        ("existence", "img1", "yes", "Yes"),  # right
        ("existence", "img1", "no", "No"),  # right -> img1 counts for acc+
        ("existence", "img2", "yes", "No"),  # wrong
        ("existence", "img2", "no", "no"),  # right
        ("code_reasoning", "img3", "yes", "Yes, it is."),
        ("code_reasoning", "img3", "no", "y"),  # wrong; "other" officially, still wrong
    ]
    return [{"prediction": p, "answer": a, "category": c, "image_id": i} for c, i, a, p in rows]


def test_mme_acc_plus_pairs_by_image():
    result = metrics.score("mme", _mme_records())
    existence = result.details["by_category"]["existence"]
    assert existence["acc"] == pytest.approx(3 / 4)
    assert existence["acc_plus"] == pytest.approx(1 / 2)
    assert existence["score"] == pytest.approx(125.0)
    code = result.details["by_category"]["code_reasoning"]
    assert (code["acc"], code["acc_plus"], code["score"]) == pytest.approx((0.5, 0.0, 50.0))
    assert result.scores["perception"] == pytest.approx(125.0)
    assert result.scores["cognition"] == pytest.approx(50.0)
    assert result.scores["total"] == pytest.approx(175.0)
    assert result.scores["total_normalized"] == pytest.approx(175.0 / 2800)
    assert result.scores["existence"] == pytest.approx(125.0)
    assert MME_MAX_SCORE == 2800


def test_mme_reply_reading_differs_on_one_letter_replies():
    records = _mme_records()
    records[5]["answer"] = "yes"  # now "y" is right under lmms-eval
    assert metrics.score("mme", records).scores["cognition"] == pytest.approx(200.0)
    official = metrics.score("mme_official", records)
    assert official.scores["cognition"] == pytest.approx(50.0)
    assert official.details["unparsed"] == 1


def test_mme_needs_two_questions_per_image_and_known_subtasks():
    records = _mme_records()[:3]
    with pytest.raises(ValueError, match="img2.*1 questions"):
        metrics.score("mme", records)
    assert mme_category("ocr") == "OCR"
    bad = _mme_records()
    bad[0]["category"] = "smell"
    with pytest.raises(metrics.RecordError, match="record 0: field 'category'.*unknown MME subtask"):
        metrics.score("mme", bad)
