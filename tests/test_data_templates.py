"""Chat templates and label masks: exact masks against hand-written expectations, for every template.

Each expectation is written out as text pieces (prompt or trained) and tokenized piece by piece,
independently of the encoder (which tokenizes the whole text once and maps offsets); the pieces
are cut at special tokens or newlines, where both ways must agree. Data: JSON on disk, PNG images.
"""

from __future__ import annotations

import pytest

from llavakit.data import DataError, DataSettings, LlavaDataset, read_llava_file
from llavakit.data.templates import LLAMA3_SYSTEM, LLAVA_SYSTEM, ChatTemplate, TemplateError, resolve_template
from test_data_fixtures import (  # noqa: F401 (fixtures)
    SQUARE_IMAGE_TOKENS, chatml_tokenizer, conversation, llama3_tokenizer, llava, processor,
    processor_with, trained_runs, vicuna_tokenizer, write_image, write_json,
)

QUESTION_1, ANSWER_1 = "<image>\nWhat is in the picture?", "A red square."
QUESTION_2, ANSWER_2 = "Is it big?", "No, it is small."


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    write_image(root / "images" / "red.png", (30, 30))
    return write_json(root / "chat.json", [
        {"id": "multi-turn", "image": "red.png",
         "conversations": conversation(QUESTION_1, ANSWER_1, QUESTION_2, ANSWER_2)},
        {"id": "caption", "image": "red.png", "conversations": conversation("<image>\nDescribe.", ANSWER_1)},
        {"id": "roles", "image": "red.png", "conversations": [{"role": "system", "content": "Be brief."},
                                                              *conversation(QUESTION_1, ANSWER_1, style="role")]},
    ])


def encode(processor, data_file, template: str, index: int = 0):
    entries = read_llava_file(data_file, image_folder=data_file.parent / "images")
    dataset = LlavaDataset(entries, processor, DataSettings(template=template))
    return dataset.encode(index)


def expected(tokenizer, pieces: list[tuple[str, bool]], visual_tokens: int = SQUARE_IMAGE_TOKENS):
    """ids and labels from hand-written pieces; each <image> becomes ``visual_tokens`` tokens."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids, labels = [], []
    for text, trained in pieces:
        for token in tokenizer.encode(text, add_special_tokens=False):
            repeat = visual_tokens if token == image_id else 1
            ids += [token] * repeat
            labels += [token if trained else -100] * repeat
    return ids, labels


def check(sample, tokenizer, pieces, replies: list[str], lead: str, end: str):
    ids, labels = expected(tokenizer, pieces)
    assert sample.input_ids.tolist() == ids
    assert sample.labels.tolist() == labels
    runs = trained_runs(sample.input_ids, sample.labels)
    assert len(runs) == len(replies)
    end_id = tokenizer.convert_tokens_to_ids(end)
    for run, reply in zip(runs, replies):
        assert run[-1] == end_id  # the end-of-turn token is trained
        assert tokenizer.decode(run[:-1]) == lead + reply  # and the rest is exactly the reply


def test_chatml_mask(processor, data_file):
    pieces = [
        (f"<|im_start|>user\n{QUESTION_1}<|im_end|>\n<|im_start|>assistant\n", False),
        (f"{ANSWER_1}<|im_end|>", True),
        (f"\n<|im_start|>user\n{QUESTION_2}<|im_end|>\n<|im_start|>assistant\n", False),
        (f"{ANSWER_2}<|im_end|>", True),
        ("\n", False),
    ]
    sample = encode(processor, data_file, "chatml")
    check(sample, processor.tokenizer, pieces, [ANSWER_1, ANSWER_2], "", "<|im_end|>")
    assert sample.visual_tokens == SQUARE_IMAGE_TOKENS


def test_qwen_mask_has_the_default_system_and_a_sample_system_replaces_it(processor, data_file):
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    pieces = [
        (f"{system}<|im_start|>user\n{QUESTION_1}<|im_end|>\n<|im_start|>assistant\n", False),
        (f"{ANSWER_1}<|im_end|>", True),
        (f"\n<|im_start|>user\n{QUESTION_2}<|im_end|>\n<|im_start|>assistant\n", False),
        (f"{ANSWER_2}<|im_end|>", True),
        ("\n", False),
    ]
    check(encode(processor, data_file, "qwen"), processor.tokenizer, pieces, [ANSWER_1, ANSWER_2], "", "<|im_end|>")
    own = [
        (f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{QUESTION_1}<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        (f"{ANSWER_1}<|im_end|>", True),
        ("\n", False),
    ]
    check(encode(processor, data_file, "qwen", index=2), processor.tokenizer, own, [ANSWER_1], "", "<|im_end|>")


def test_vicuna_v1_mask(processor, data_file):
    tokenizer = vicuna_tokenizer()
    pieces = [
        (f"<s>{LLAVA_SYSTEM} USER: {QUESTION_1} ASSISTANT:", False),
        (f" {ANSWER_1}</s>", True),  # the space belongs to the reply: the model generates " A" after "ASSISTANT:"
        (f"USER: {QUESTION_2} ASSISTANT:", False),
        (f" {ANSWER_2}</s>", True),
    ]
    sample = encode(processor_with(processor, tokenizer), data_file, "vicuna_v1")
    check(sample, tokenizer, pieces, [ANSWER_1, ANSWER_2], " ", "</s>")


def test_llama3_mask(processor, data_file):
    tokenizer = llama3_tokenizer()
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    pieces = [
        (f"<|begin_of_text|>{header.format('system')}{LLAMA3_SYSTEM}<|eot_id|>{header.format('user')}{QUESTION_1}"
         f"<|eot_id|>{header.format('assistant')}", False),
        (f"{ANSWER_1}<|eot_id|>", True),
        (f"{header.format('user')}{QUESTION_2}<|eot_id|>{header.format('assistant')}", False),
        (f"{ANSWER_2}<|eot_id|>", True),
    ]
    sample = encode(processor_with(processor, tokenizer), data_file, "llama3")
    check(sample, tokenizer, pieces, [ANSWER_1, ANSWER_2], "", "<|eot_id|>")


def test_plain_trains_only_the_caption_and_eos(processor, data_file):
    pieces = [("<image>", False), (f"{ANSWER_1}<|im_end|>", True)]  # the question is dropped, as in LLaVA stage 1
    check(encode(processor, data_file, "plain", index=1), processor.tokenizer, pieces, [ANSWER_1], "", "<|im_end|>")


def test_plain_refuses_a_multi_turn_sample(processor, data_file):
    with pytest.raises(DataError, match="multi-turn.*template.*one user turn and one reply"):
        encode(processor, data_file, "plain", index=0)


@pytest.mark.parametrize("make_tokenizer, lead, end", [
    (chatml_tokenizer, "", "<|im_end|>"),
    (vicuna_tokenizer, " ", "</s>"),  # the tiny Llama template: "USER: ... ASSISTANT: reply</s>"
    (llama3_tokenizer, "", "<|eot_id|>"),
], ids=["chatml-jinja", "llama-jinja", "llama3-jinja"])
@pytest.mark.parametrize("index", [0, 2], ids=["multi-turn", "with-system"])
def test_tokenizer_template_ids_equal_apply_chat_template(processor, data_file, make_tokenizer, lead, end, index):
    tokenizer = make_tokenizer()
    sample = encode(processor_with(processor, tokenizer), data_file, "tokenizer", index)
    record = [conversation(QUESTION_1, ANSWER_1, QUESTION_2, ANSWER_2), None,
              [{"role": "system", "content": "Be brief."}, *conversation(QUESTION_1, ANSWER_1, style="role")]][index]
    messages = [{"role": {"human": "user", "gpt": "assistant"}.get(t.get("from"), t.get("role")),
                 "content": t.get("value", t.get("content"))} for t in record]
    reference = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    expanded = [t for token in reference for t in [token] * (SQUARE_IMAGE_TOKENS if token == image_id else 1)]
    assert sample.input_ids.tolist() == expanded
    replies = [ANSWER_1, ANSWER_2] if index == 0 else [ANSWER_1]
    runs = trained_runs(sample.input_ids, sample.labels)
    assert [tokenizer.decode(run) for run in runs] == [f"{lead}{r}{end}" for r in replies]


def test_tokenizer_template_mask_equals_the_hand_written_chatml_mask(processor, data_file):
    """The diffed Jinja template (ChatML) and the data template agree token for token and label for label."""
    by_jinja = encode(processor, data_file, "tokenizer")
    by_data = encode(processor, data_file, "chatml")
    assert by_jinja.input_ids.tolist() == by_data.input_ids.tolist()
    assert by_jinja.labels.tolist() == by_data.labels.tolist()


def test_auto_prefers_the_tokenizers_template():
    assert resolve_template("auto", chatml_tokenizer()).name == "tokenizer"
    assert resolve_template("auto", chatml_tokenizer(chat_template=None)).name == "chatml"
    with pytest.raises(TemplateError, match="no chat template"):
        resolve_template("tokenizer", chatml_tokenizer(chat_template=None))


def test_a_template_needs_its_special_tokens():
    with pytest.raises(TemplateError, match="llama3.*'<\\|begin_of_text\\|>' to be one token"):
        resolve_template("llama3", chatml_tokenizer())
    with pytest.raises(TemplateError, match="unknown template 'alpaca'"):
        resolve_template("alpaca", chatml_tokenizer())


def test_a_separator_fused_with_the_reply_must_be_part_of_it(processor, data_file):
    """'ASSISTANT: ' + 'A red' tokenizes as 'ASSISTANT', ':', ' A', ...: the space cannot stay in the prompt."""
    from llavakit.data import templates

    bad = ChatTemplate("bad", user_format="USER: {content} ", assistant_prefix="ASSISTANT: ", end_of_turn="<|im_end|>")
    templates.TEMPLATES["bad"] = bad
    try:
        with pytest.raises(DataError, match="template: token 'ĠA' spans the boundary"):
            encode(processor, data_file, "bad")
    finally:
        del templates.TEMPLATES["bad"]


# llava-hf's OneVision template: content parts only, images first in each turn, and a generation prompt
# ("assistant\n") that differs from how a reply is written ("assistant " + "\n" + text).
ONEVISION_HF_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ '\\n' + content['text'] }}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}"
    "{% endfor %}{% endif %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# llava-hf's LLaVA-1.5 template: nothing ends an assistant reply (it was written for inference).
LLAVA15_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_a_parts_only_template_with_images_first(processor, data_file):
    tokenizer = chatml_tokenizer(ONEVISION_HF_TEMPLATE)
    template = resolve_template("tokenizer", tokenizer)
    assert template.content == "parts"
    sample = encode(processor_with(processor, tokenizer), data_file, "auto")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER_1}]},
        {"role": "user", "content": [{"type": "text", "text": QUESTION_2}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER_2}]},
    ]
    reference = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert sample.input_ids.tolist() == [t for token in reference
                                         for t in [token] * (SQUARE_IMAGE_TOKENS if token == image_id else 1)]
    pieces = [
        ("<|im_start|>user <image>\nWhat is in the picture?<|im_end|><|im_start|>assistant \n", False),
        (f"{ANSWER_1}<|im_end|>", True),
        (f"<|im_start|>user \n{QUESTION_2}<|im_end|><|im_start|>assistant \n", False),
        (f"{ANSWER_2}<|im_end|>", True),
    ]
    check(sample, tokenizer, pieces, [ANSWER_1, ANSWER_2], "", "<|im_end|>")


def test_a_template_without_end_tokens_is_refused(processor, data_file):
    tokenizer = chatml_tokenizer(LLAVA15_HF_TEMPLATE)
    with pytest.raises(DataError, match="template: the tokenizer's chat template ends assistant turns with none of"):
        encode(processor_with(processor, tokenizer), data_file, "tokenizer")


def test_tokenized_conversations_are_reused_and_equal_fresh_ones(processor, data_file):
    """The second epoch's encoding comes from the cache (no template rendering) and is identical."""
    entries = read_llava_file(data_file, image_folder=data_file.parent / "images")
    cached = LlavaDataset(entries, processor, DataSettings(template="tokenizer"))
    fresh = LlavaDataset(entries, processor, DataSettings(template="tokenizer", token_cache=0))
    first = [cached.encode(i) for i in range(len(entries))]
    renders = []
    render = cached.template.render
    object.__setattr__(cached.template, "render", lambda *a, **k: renders.append(a) or render(*a, **k))
    for index, sample in enumerate(first):
        again, reference = cached.encode(index), fresh.encode(index)
        assert again.input_ids.tolist() == sample.input_ids.tolist() == reference.input_ids.tolist()
        assert again.labels.tolist() == sample.labels.tolist() == reference.labels.tolist()
    assert renders == []  # every conversation came from the cache
    assert len(fresh._tokenized) == 0 and len(cached._tokenized) == len(entries)


def test_the_token_cache_is_bounded(processor, data_file):
    entries = read_llava_file(data_file, image_folder=data_file.parent / "images")
    dataset = LlavaDataset(entries, processor, DataSettings(template="chatml", token_cache=1))
    for index in range(len(entries)):
        dataset.encode(index)
    assert len(dataset._tokenized) == 1
