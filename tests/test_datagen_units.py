"""Datagen pieces without a server: annotations, symbolic context, prompt files, reply parsing and
checks, assembly (order, dedup, instructions), the journal's crash repair, statistics."""

from __future__ import annotations

import json

import pytest
from test_datagen_support import write_coco, write_scenes

from llavakit.datagen.annotations import read_annotations
from llavakit.datagen.assemble import assemble, detail_instruction
from llavakit.datagen.errors import DatagenError, ReplyError
from llavakit.datagen.files import AppendOnlyJsonl, read_jsonl
from llavakit.datagen.items import plan_items
from llavakit.datagen.journal import JournalContents, JournalEntry, read_journal
from llavakit.datagen.parse import parse_qa
from llavakit.datagen.prompts import RESPONSE_TYPES, export_prompts, load_prompts
from llavakit.datagen.replies import ReplySettings, parse_reply
from llavakit.datagen.stats import dataset_stats
from llavakit.datagen.symbolic import symbolic_context

SEED_001_FIRST = "Describe the following image in detail"
SAMPLING = {"model": "m", "temperature": 0.7, "max_tokens": 64}


# ---- annotations and the symbolic representation -------------------------------------------
def test_coco_captions_and_instances_give_the_synth_symbolic_text(tmp_path):
    scenes = write_scenes(tmp_path, 3)
    annotations = read_annotations(write_coco(tmp_path, scenes), image_prefix="coco/")
    assert [a.key for a in annotations] == ["1000", "1001", "1002"]
    assert annotations[0].image == "coco/000000.png"
    for scene, annotation in zip(scenes, annotations):
        assert symbolic_context(annotation) == scene.symbolic()  # captions, then name: [x1, y1, x2, y2]


def test_coco_pixel_boxes_are_normalised_to_three_decimals(tmp_path):
    doc = {"images": [{"id": 7, "file_name": "a.jpg", "width": 640, "height": 480}],
           "annotations": [{"image_id": 7, "caption": "  A  dog on grass. "},
                           {"image_id": 7, "category_id": 18, "bbox": [64, 48, 320, 240]}],
           "categories": [{"id": 18, "name": "dog"}]}
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    [annotation] = read_annotations([tmp_path / "coco.json"])
    assert symbolic_context(annotation) == "A dog on grass.\ndog: [0.100, 0.100, 0.600, 0.600]"


@pytest.mark.parametrize("record, message", [
    ({"captions": ["x"]}, 'with an "image" path'),
    ({"image": "a.png", "boxes": [{"name": "cat", "bbox": [1, 2, 3]}]}, "must be four numbers"),
    ({"image": "a.png", "boxes": [{"name": "cat", "bbox": [10, 20, 30, 40]}]}, 'need the image\'s "width"'),
    ({"image": "a.png", "boxes": [{"name": "cat", "bbox": [0.5, 0.5, 0.2, 0.9]}]}, "x2 < x1"),
])
def test_bad_jsonl_annotations_name_the_line(tmp_path, record, message):
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps({"image": "ok.png", "captions": ["fine"]}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DatagenError, match=message) as error:
        read_annotations([path])
    assert f"{path}:2" in str(error.value)


def test_jsonl_pixel_boxes_and_duplicate_keys(tmp_path):
    path = tmp_path / "ann.jsonl"
    line = {"image": "a.png", "width": 200, "height": 100, "captions": ["c"],
            "boxes": [{"name": "cat", "bbox": [20, 10, 100, 50]}]}
    path.write_text(json.dumps(line) + "\n")
    assert symbolic_context(read_annotations([path])[0]) == "c\ncat: [0.100, 0.100, 0.500, 0.500]"
    path.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DatagenError, match="already used"):
        read_annotations([path])


# ---- prompt files ---------------------------------------------------------------------------
def test_shipped_prompts_hold_the_seed_instructions_and_valid_examples():
    prompts = load_prompts()
    assert prompts.detail_instructions[0] == SEED_001_FIRST and len(prompts.detail_instructions) == 16
    for kind in RESPONSE_TYPES:
        prompt = prompts.types[kind]
        assert len(prompt.examples) >= 2
        for example in prompt.examples:  # the few-shot replies pass the checks their outputs must pass
            assert parse_reply(kind, example.response, "stop", ReplySettings()).pairs
        messages = prompt.messages("CONTEXT")
        assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(prompt.examples) + ["user"]
        assert messages[-1]["content"] == "CONTEXT"


def test_exported_prompts_load_and_a_broken_folder_names_the_file(tmp_path):
    folder = export_prompts(tmp_path / "mine")
    assert load_prompts(folder).digest() == load_prompts().digest()
    (folder / "detail" / "001_context.txt").unlink()
    with pytest.raises(DatagenError, match="001_response.txt has no 001_context.txt"):
        load_prompts(folder)
    with pytest.raises(DatagenError, match="already exists"):
        export_prompts(folder)


# ---- parsing and checking replies -----------------------------------------------------------
def test_question_answer_formats():
    expected = [("What is it?", "A cat."), ("Where?", "On the mat.\n\nIt sleeps.")]
    block = "Question:\nWhat is it?\n===\nAnswer:\nA cat.\n===\nQuestion:\nWhere?\n===\nAnswer:\nOn the mat.\n\nIt sleeps."
    assert parse_qa(block) == expected
    assert parse_qa("Question: What is it? === Answer: A cat. === Question: Where? === Answer: On the mat.\n\n"
                    "It sleeps.") == expected
    assert parse_qa("**Question:** What is it?\n**Answer:** A cat.\nQuestion: Where?\nAnswer: On the mat.\n\n"
                    "It sleeps.\n===\n") == expected


@pytest.mark.parametrize("text, reason", [
    ("", "empty reply"),
    ("Sure! Here is a conversation:\nQuestion: A?\n===\nAnswer: B.", "text outside"),
    ("Question: A?\n===\nQuestion: B?\n===\nAnswer: C.", "followed by another question"),
    ("Question: A?\n===\nAnswer: B.\n===\nQuestion: C?", "has no answer"),
    ("Answer: B.", "answer without a question"),
    ("Question: A?\n===\nAnswer:", "answer 1 is empty"),
])
def test_malformed_conversations_are_refused_with_a_reason(text, reason):
    with pytest.raises(ReplyError, match=reason):
        parse_reply("conversation", text, "stop", ReplySettings())


LONG = " ".join(["word"] * 30)


@pytest.mark.parametrize("kind, text, finish, reason", [
    ("conversation", "Question: A?\n===\nAnswer: B.", "length", "truncated"),
    ("conversation", "Question: What is <image>?\n===\nAnswer: B.", "stop", "placeholder <image>"),
    ("conversation", "Question: A?\n===\nAnswer: The bounding box shows a cat.", "stop", "'bounding box'"),
    ("complex_reasoning", f"Question: A?\n===\nAnswer: {LONG}\n===\nQuestion: C?\n===\nAnswer: {LONG}", "stop",
     "exactly one question"),
    ("complex_reasoning", "Question: A?\n===\nAnswer: Too short.", "stop", "fewer than the minimum 15"),
    ("detail", f"Question: A?\n===\nAnswer: {LONG}", "stop", "must be prose"),
    ("detail", "A cat.", "stop", "fewer than the minimum 20"),
])
def test_reply_checks(kind, text, finish, reason):
    with pytest.raises(ReplyError, match=reason):
        parse_reply(kind, text, finish, ReplySettings())


def test_repeated_questions_in_one_reply_are_dropped():
    text = "Question: What is it?\n===\nAnswer: A cat.\n===\nQuestion: what  is it\n===\nAnswer: A dog."
    parsed = parse_reply("conversation", text, "stop", ReplySettings())
    assert parsed.pairs == (("What is it?", "A cat."),) and parsed.duplicates_dropped == 1


# ---- assembly -------------------------------------------------------------------------------
def _items(tmp_path, count=2):
    annotations = read_annotations(write_coco(tmp_path, write_scenes(tmp_path, count)))
    return plan_items(annotations, RESPONSE_TYPES, load_prompts(), SAMPLING)[0]


def _journal(items, texts) -> JournalContents:
    entries = [JournalEntry(i.key, i.digest, "reply", t, "stop") for i, t in zip(items, texts) if t]
    return JournalContents({(e.item, e.digest): e for e in entries})


def test_assembly_order_dedup_across_records_and_pending(tmp_path):
    items = _items(tmp_path)
    qa = "Question: How many?\n===\nAnswer: Two.\n===\nQuestion: Is it red?\n===\nAnswer: Yes."
    reasoning = f"Question: how many\n===\nAnswer: {LONG}"  # asked already in this image's conversation
    texts = [qa, LONG, reasoning, qa, None, f"Question: Why?\n===\nAnswer: {LONG}"]
    out = assemble(items, _journal(items, texts), load_prompts().detail_instructions, 0, ReplySettings())
    assert [r["id"] for r in out.records] == ["1000_conversation", "1000_detail", "1001_conversation",
                                              "1001_complex_reasoning"]
    assert out.rejects[0]["id"] == "1000_complex_reasoning" and "already asked" in out.rejects[0]["reason"]
    assert [i.key for i in out.pending] == ["1001/detail"]
    assert out.duplicates_dropped == 1
    detail = out.records[1]["conversations"]
    assert detail[0]["value"] == "<image>\n" + detail_instruction(load_prompts().detail_instructions, 0, "1000")
    assert detail[1]["value"] == LONG


def test_detail_instructions_are_seeded_per_image_and_vary():
    instructions = load_prompts().detail_instructions
    picks = [detail_instruction(instructions, 0, str(key)) for key in range(200)]
    assert picks == [detail_instruction(instructions, 0, str(key)) for key in range(200)]
    assert set(picks) == set(instructions)
    assert picks != [detail_instruction(instructions, 1, str(key)) for key in range(200)]


def test_changed_prompts_change_only_their_items_digests(tmp_path):
    annotations = read_annotations(write_coco(tmp_path, write_scenes(tmp_path, 1)))
    folder = export_prompts(tmp_path / "prompts")
    before = plan_items(annotations, RESPONSE_TYPES, load_prompts(folder), SAMPLING)[0]
    (folder / "detail" / "system.txt").write_text("Describe it.")
    after = plan_items(annotations, RESPONSE_TYPES, load_prompts(folder), SAMPLING)[0]
    assert [a.digest == b.digest for a, b in zip(before, after)] == [True, False, True]


# ---- crash safety ---------------------------------------------------------------------------
def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"item": "x/detail", "dig')  # a kill in the middle of a write
    with AppendOnlyJsonl(path) as journal:
        assert journal.repaired_bytes == len('{"item": "x/detail", "dig')
        journal.append({"c": 3})
    assert [r for _, r in read_jsonl(path)] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert read_journal(path).unreadable_lines == 3  # none of them is a journal entry


# ---- statistics -----------------------------------------------------------------------------
def test_stats_count_types_turns_and_answer_words(tmp_path):
    def record(kind, pairs):
        turns = []
        for q, a in pairs:
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        return {"id": kind, "image": f"{kind}.png", "type": kind, "conversations": turns}

    rows = [record("conversation", [("<image>\nA?", "one two"), ("B?", "one two three four")]),
            record("conversation", [("<image>\nC?", "one")]),
            record("detail", [("<image>\nDescribe.", "w " * 10)]),
            {"id": "x", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = dataset_stats(path)
    assert stats["records"] == 4 and stats["images"] == 2
    conversation = stats["types"]["conversation"]
    assert conversation["records"] == 2 and conversation["pairs"] == 3
    assert conversation["turns_histogram"] == {"1": 1, "2": 1}
    assert conversation["answer_words"]["mean"] == pytest.approx(7 / 3, abs=0.01)
    assert stats["types"]["detail"]["answer_words"]["max"] == 10
    assert stats["types"]["(untyped)"]["records"] == 1
