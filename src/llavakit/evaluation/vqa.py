"""VQA accuracy (VQAv2, TextVQA, VizWiz): answer normalization and the 10-choose-9 human consensus.

Three behaviours are provided because the references disagree:

``"lmms_eval"`` (default; lmms-eval's ``vqav2`` task)
    prediction and every human answer: newlines/tabs -> spaces, strip, punctuation rule, digit/article
    rule.
``"official"`` (GT-Vision-Lab ``vqaEval.py``)
    prediction as above; the human answers are compared raw, except that when they are not unanimous
    each gets the punctuation rule only (no lower-casing, no digit/article rule, no strip).
``"evalai"`` (lmms-eval's ``textvqa`` task, mmf's ``EvalAIAnswerProcessor``)
    prediction and answers both go through `evalai_normalize`, which first lower-cases, deletes every
    ``,`` and ``?`` and splits ``'s`` off (``"man's"`` -> ``"man 's"``).

The tables below are the official scorer's, quirks included: the capitalised contraction keys can
never match (the text is lower-cased first), ``"somebody'd"`` maps to ``"somebodyd"``, the period
regex's ``(?!<=\\d)`` is a look-ahead (so it strips every ``.`` not followed by a digit), and the
period substitution is capped at 32 replacements because the reference passes ``re.UNICODE`` (= 32)
as the ``count`` argument.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

VQA_MODES = ("lmms_eval", "official", "evalai")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# Missing apostrophes restored word by word (official table, applied after lower-casing).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a look-ahead, see the module docstring
COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")  # official scorer
COMMA_BETWEEN_DIGITS_EVALAI = re.compile(r"(?<=\d)(,)+(?=\d)")  # mmf / lmms-eval
_PERIOD_STRIP_COUNT = 32  # the reference passes re.UNICODE (== 32) where `count` goes


def process_punctuation(text: str, *, comma_rule: re.Pattern[str] = COMMA_BETWEEN_DIGITS_EVALAI) -> str:
    """The VQA punctuation rule.

    For each character of `PUNCTUATION`: if the *input* has it followed or preceded by a space, or the
    input has a comma between two digits, the character is deleted; otherwise it becomes a space.
    Then every ``.`` not followed by a digit is deleted (at most 32 of them). ``"yes."`` -> ``"yes"``,
    ``"2.5"`` stays, ``"t-shirt"`` -> ``"t shirt"``, ``"1,000"`` -> ``"1000"``.
    """
    commas_in_number = comma_rule.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or commas_in_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The VQA word rule: lower-case, split on whitespace, map number words ``zero``..``ten`` (and
    ``none``) to digits, drop the articles a/an/the, restore contractions (``"dont"`` -> ``"don't"``),
    and join with single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """Normalize one answer as the official scorer normalizes a prediction: newlines and tabs become
    spaces, surrounding whitespace is stripped, then `process_punctuation` and `process_digit_article`.

    ``"Two."`` -> ``"2"``, ``"The dog"`` -> ``"dog"``, ``"dont know"`` -> ``"don't know"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def evalai_normalize(text: str) -> str:
    """mmf's ``EvalAIAnswerProcessor`` (used by lmms-eval for TextVQA): lower-case, delete ``,`` and
    ``?``, replace ``'s`` by `` 's``, strip, newlines/tabs -> spaces, strip, then the punctuation and
    digit/article rules."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def consensus_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Human-consensus accuracy of an already-normalized prediction against normalized answers.

    For each answer i, count the *other* answers equal to the prediction, score min(count / 3, 1), and
    average over i (with 10 answers: the average over the 10 subsets of 9). 1, 2, 3 and 4+ matching
    humans out of 10 give 0.3, 0.6, 0.9 and 1.0. With n answers the best possible score is
    min(n - 1, 3) / 3; a single answer is scored by plain equality (the leave-one-out would always
    give 0). Answers are removed by position, so duplicates count separately.
    """
    if not answers:
        raise ValueError("VQA accuracy needs at least one reference answer")
    if len(answers) == 1:
        return float(prediction == answers[0])
    matches = sum(a == prediction for a in answers)
    # leaving out a matching answer leaves matches - 1 agreeing humans, otherwise `matches`
    total = sum(min(1.0, (matches - (a == prediction)) / 3) for a in answers)
    return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str], *, mode: str = "lmms_eval") -> float:
    """VQA accuracy of one prediction against its human answers (usually 10), in [0, 1].

    `mode` picks the normalization (see the module docstring): ``"lmms_eval"`` (default, lmms-eval's
    VQAv2), ``"official"`` (GT-Vision-Lab's scorer) or ``"evalai"`` (lmms-eval's TextVQA). The score
    is then `consensus_accuracy`. Where they differ: with 10 unanimous answers ``"the dog"``, the
    prediction ``"dog"`` scores 1.0 under lmms_eval but 0.0 under official (the answers are not
    normalized there); under evalai ``"man's"`` becomes ``"man 's"`` on both sides.
    """
    if mode == "lmms_eval":
        pred = normalize_vqa_answer(prediction)
        refs = [normalize_vqa_answer(a) for a in answers]
    elif mode == "official":
        pred = normalize_vqa_answer_official(prediction)
        refs = list(answers)
        if len(set(refs)) > 1:
            refs = [process_punctuation(a, comma_rule=COMMA_BETWEEN_DIGITS) for a in refs]
    elif mode == "evalai":
        pred = evalai_normalize(prediction)
        refs = [evalai_normalize(a) for a in answers]
    else:
        raise ValueError(f"unknown VQA mode {mode!r}; choose from {', '.join(VQA_MODES)}")
    return consensus_accuracy(pred, refs)


def normalize_vqa_answer_official(text: str) -> str:
    """`normalize_vqa_answer` with the official scorer's comma regex ``(\\d)(,)(\\d)``; the two
    regexes only differ on runs of commas between digits (``"1,,2"``)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, comma_rule=COMMA_BETWEEN_DIGITS))
