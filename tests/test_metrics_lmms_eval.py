"""Our metrics against lmms-eval's own functions on a battery of strings.

lmms-eval's package imports pull in its whole harness, so the reference functions are read out of
its installed source files (`ast`) and run on their own. Install it without dependencies to run
these: ``pip install --no-deps lmms-eval``.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import re
import statistics
import string
from pathlib import Path

import numpy as np
import pytest

from llavakit.evaluation import metrics
from llavakit.evaluation.choice import extract_choice_letter
from llavakit.evaluation.judge import parse_judge_scores
from llavakit.evaluation.text import anls, exact_match, relaxed_correctness
from llavakit.evaluation.vqa import evalai_normalize, normalize_vqa_answer, vqa_accuracy
from llavakit.evaluation.yesno import parse_mme_answer


def _lmms_eval_root() -> Path:
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lmms-eval is not installed; `pip install --no-deps lmms-eval` enables these comparisons")
    return Path(next(iter(spec.submodule_search_locations)))


def _load(relative: str, names: list[str], namespace: dict | None = None) -> dict:
    """Execute only the named top-level functions/classes of an lmms-eval source file."""
    path = _lmms_eval_root() / relative
    if not path.exists():
        pytest.skip(f"this lmms-eval version has no {relative}")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    missing = set(names) - {n.name for n in nodes}
    if missing:
        pytest.skip(f"this lmms-eval version has no {sorted(missing)} in {relative}")
    for node in nodes:
        node.decorator_list = []
    namespace = dict(namespace or {})
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


STRINGS = [
    "two", "Two dogs", "2", "The dog", "dog", "a man's hat", "man's", "yes.", "Yes!", "yes", "no", "dont",
    "Don't know", "1,000", "1000", "2.5", "5.", "t-shirt", "t - shirt", "t shirt", "red, white", "what?",
    "none", "0", "It's 10 o'clock", "\tblue\n", "blue", "I'm", "Ive", "somebody'd", "(a) cat", "5 ft.",
    "50%", "e.g. this", "x/y", "snow board", "." * 40 + "a", "", "   ", "hello   world", "Straße", "a.m.",
]  # fmt: skip


def _answer_sets():
    """10-answer sets mixing agreeing and disagreeing humans."""
    for i, base in enumerate(STRINGS):
        other = STRINGS[(i * 7 + 3) % len(STRINGS)]
        for k in (0, 1, 2, 3, 4, 10):
            yield [base] * k + [other] * (10 - k)


@pytest.fixture(scope="module")
def evalai():
    return _load("tasks/_task_utils/vqa_eval_metric.py", ["EvalAIAnswerProcessor"], {"re": re})


def test_vqa_normalization_matches(evalai):
    processor = evalai["EvalAIAnswerProcessor"]()
    for s in STRINGS:
        cleaned = s.replace("\n", " ").replace("\t", " ").strip()
        reference = processor.process_digit_article(processor.process_punctuation(cleaned))
        assert normalize_vqa_answer(s) == reference, s
        assert evalai_normalize(s) == processor(s), s


def test_vqav2_accuracy_matches(evalai):
    ns = _load("tasks/vqav2/utils.py", ["vqav2_process_results"], {**evalai, "statistics": statistics})
    for answers, prediction in itertools.product(_answer_sets(), STRINGS[::3]):
        doc = {"question_id": 1, "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]}
        reference = ns["vqav2_process_results"](doc, [prediction])["exact_match"]
        assert vqa_accuracy(prediction, answers) == pytest.approx(reference), (prediction, answers)


def test_textvqa_accuracy_matches(evalai):
    ns = _load("tasks/textvqa/utils.py", ["textvqa_process_results"], {**evalai, "statistics": statistics})
    for answers, prediction in itertools.product(_answer_sets(), STRINGS[::3]):
        reference = ns["textvqa_process_results"]({"question_id": 1, "answers": list(answers)}, [prediction])
        assert vqa_accuracy(prediction, answers, mode="evalai") == pytest.approx(reference["exact_match"])


def test_anls_matches():
    ns = _load("api/metrics.py", ["levenshtein_distance", "anls"])
    words = ["Dr. Lobo", "dr lobo", "Lobo", "ab", "ax", "abc", "abx", "  hello   world ", "Hello World", "", "Straße",
             "STRASSE", "12/15/88", "12/15/89", "Denver Broncos", "denver r. broncos"]  # fmt: skip
    for prediction in words:
        for answers in itertools.combinations(words, 2):
            reference = ns["anls"](references=list(answers), predictions=[prediction])["anls"]
            assert anls(prediction, list(answers)) == pytest.approx(reference), (prediction, answers)


def test_relaxed_accuracy_matches():
    ns = _load("tasks/chartqa/utils.py", ["relaxed_correctness"])
    values = ["45", "45%", "0.45", "47", "48", "42.75", "0", "0.0", "Yes", "yes", "1,000", "1000", "-3", "-3.1", "nan"]
    for prediction, target in itertools.product(values, values):
        assert relaxed_correctness(prediction, target) == ns["relaxed_correctness"](prediction, target)


def test_gqa_exact_match_matches():
    ns = _load("api/metrics.py", ["exact_match_hf_evaluate"], {"np": np, "re": re, "string": string})
    values = ["Yes.", "yes", "t-shirt", "tshirt", "Left", "the left", "left", "2", "two", "Dr. No", "dr no"]
    for prediction, answer in itertools.product(values, values):
        reference = ns["exact_match_hf_evaluate"](
            predictions=[prediction], references=[answer], ignore_case=True, ignore_punctuation=True
        )["exact_match"]
        assert exact_match(prediction, [answer]) == reference, (prediction, answer)


REPLIES = ["Yes", "yes", "No", "no.", " Yes ", "Yes.", "yes, there is", "No, there is not.", "Not really", "y", "n",
           "There is a dog", "I think yes", "", "NO", "nope", "Y"]  # fmt: skip


def test_pope_matches():
    ns = _load(
        "tasks/pope/utils.py",
        ["pope_process_results", "pope_aggregate_accuracy", "pope_aggregate_precision", "pope_aggregate_recall",
         "pope_aggregate_f1_score", "pope_aggregate_yes_ratio"],
    )  # fmt: skip
    records = [
        {"question_id": i, "prediction": reply, "answer": gold}
        for i, (reply, gold) in enumerate(itertools.product(REPLIES, ["yes", "no"]))
    ]
    processed = [ns["pope_process_results"](r, [r["prediction"]])["pope_accuracy"] for r in records]
    ours = metrics.score("pope", records).scores
    assert ours["accuracy"] == pytest.approx(ns["pope_aggregate_accuracy"](processed))
    assert ours["precision"] == pytest.approx(ns["pope_aggregate_precision"](processed))
    assert ours["recall"] == pytest.approx(ns["pope_aggregate_recall"](processed))
    assert ours["f1"] == pytest.approx(ns["pope_aggregate_f1_score"](processed))
    assert ours["gt_yes_ratio"] == pytest.approx(ns["pope_aggregate_yes_ratio"](processed))  # sic, see yesno.py


def test_mme_parsing_matches():
    ns = _load("tasks/mme/utils.py", ["parse_pred_ans"])
    for reply in REPLIES:
        assert parse_mme_answer(reply) == ns["parse_pred_ans"](reply), reply


def test_scienceqa_matches():
    ns = _load("tasks/scienceqa/utils.py", ["sqa_doc_to_target", "sqa_process_results"])
    replies = ["A", "b", "B.", "B. cat", "B.cat", "B)", "(B)", "The answer is B.", "C", " B ", "", "B\n", "É."]
    for reply, answer in itertools.product(replies, [0, 1]):
        doc = {"choices": ["x", "y", "z"], "answer": answer}
        reference = ns["sqa_process_results"](doc, [reply])["exact_match"]
        ours = metrics.score("scienceqa_img", [{"prediction": reply, **doc}]).scores["accuracy"]
        assert ours == reference, (reply, answer)


def test_judge_parsing_matches():
    class VerifyResult:  # the harness's result type, reduced to what the parser fills in
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    names = ["_parse_comparative_scores"]
    ns = _load("tasks/llava-in-the-wild/utils.py", names, {"re": re, "VerifyResult": VerifyResult})
    replies = ["8 7\nreason", "9, 6", "7.5;9", "\n 8 7", "8 7 6", "eight six", "", "8", "The scores.\n8 7", "10 10"]
    for reply in replies:
        reference = ns["_parse_comparative_scores"](reply).metadata["scores"]
        ours = parse_judge_scores(reply)
        assert (list(ours) if ours else [-1, -1]) == reference, reply


def test_blink_letter_extraction_agrees_on_letter_replies():
    ns = _load("tasks/blink/utils.py", ["_extract_answer_letter"], {"re": re, "string": string})
    for reply in ["B", "(B)", "B.", "B)", "B) cat", "(B) cat", "The answer is B", "The correct answer is (B).", "b"]:
        assert extract_choice_letter(reply, num_choices=4) == ns["_extract_answer_letter"](reply, "ABCD"), reply
