"""Collating, lazy loading, length-grouped sampling and packing (same per-sample loss as unpacked)."""

from __future__ import annotations

import gc

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import llavakit
from llavakit.data import (
    Collator, DataSettings, LengthGroupedBatchSampler, LlavaDataset, PackingBatchSampler, PackingCollator,
    block_causal_mask, pack_rows, read_llava_file, sample_losses,
)
from llavakit.data.dataset import LengthInfo
from test_data_fixtures import (  # noqa: F401 (fixtures)
    conversation, llava, processor, write_image, write_json, write_video,
)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    write_image(root / "img" / "square.png", (30, 30), (10, 200, 30))
    write_image(root / "img" / "wide.png", (90, 30), (200, 10, 30))
    write_image(root / "img" / "tall.png", (20, 70), (30, 10, 200))
    write_video(root / "vid" / "clip.mp4", frames=8)
    records = [
        {"id": "single", "image": "wide.png", "conversations": conversation(
            "<image>\nWhat colour?", "Red.", "Sure?", "Yes, quite sure.")},
        {"id": "text", "conversations": conversation("Say hello.", "Hello there!")},
        {"id": "multi", "image": ["square.png", "tall.png"], "conversations": conversation(
            "Compare <image> with <image>.", "Green and blue.")},
        {"id": "video", "video": "clip.mp4",
         "conversations": conversation("<video>\nWhat happens?", "Colours change.")},
        {"id": "square", "image": "square.png", "conversations": conversation("<image>\nShape?", "A square.")},
        {"id": "text2", "conversations": conversation("Count to three.", "One, two, three.", "Again?", "1 2 3")},
    ]
    return write_json(root / "mixed.json", records)


@pytest.fixture(scope="module")
def dataset(processor, data_file):
    entries = read_llava_file(data_file, data_file.parent / "img", data_file.parent / "vid")
    return LlavaDataset(entries, processor, DataSettings(template="chatml"))


@pytest.fixture(scope="module")
def model(onevision_dir):
    return llavakit.load(onevision_dir).model  # float32, eval mode: no dropout


def pad_id(processor) -> int:
    return processor.tokenizer.pad_token_id


def test_collator_pads_and_keeps_placeholder_order(processor, dataset):
    samples = [dataset[i] for i in (0, 2, 3)]
    batch = Collator(pad_id(processor))(samples)
    assert batch.input_ids.shape == (3, max(s.length for s in samples))
    for row, sample in enumerate(samples):
        assert batch.input_ids[row, :sample.length].tolist() == sample.input_ids.tolist()
        assert batch.attention_mask[row].sum() == sample.length
        assert (batch.labels[row, sample.length:] == -100).all()
    assert batch.visual_items == [item for s in samples for item in s.visual_items]
    assert batch.pixel_values.shape[0] == sum(item.num_crops for item in batch.visual_items)
    assert torch.equal(batch.pixel_values[-4:], torch.from_numpy(samples[2].pixel_values))  # the video's frames last
    left = Collator(pad_id(processor), padding_side="left", pad_to_multiple_of=8)(samples)
    assert left.input_ids.shape[1] % 8 == 0 and left.attention_mask[:, -1].all()


def test_loading_is_lazy(dataset):
    """No decoded image stays alive once a sample has been handed on."""
    def live_images() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), Image.Image))

    before = live_images()
    for index in range(len(dataset)):
        dataset[index]
    assert live_images() == before
    assert all(isinstance(e.record, dict) for e in dataset.entries)


def test_dataloader_with_workers(processor, dataset):
    sampler = LengthGroupedBatchSampler(dataset.lengths(), batch_size=2, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(pad_id(processor)), num_workers=2)
    seen = [sid for batch in loader for sid in batch.sample_ids]
    assert sorted(seen) == sorted(e.sample_id for e in dataset.entries)


def fake_lengths() -> list[LengthInfo | None]:
    modalities = ["text", "image", "multi_image", "video"]
    return [None if i % 17 == 5 else LengthInfo(modalities[i % 4], 10 + (i * 37) % 200, (i % 4) * 50)
            for i in range(203)]


def test_length_grouped_sampler_groups_by_modality_and_length():
    lengths = fake_lengths()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, group=4)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == [i for i, info in enumerate(lengths) if info is not None]  # each once, skipped never
    for batch in batches:
        assert len({lengths[i].modality for i in batch}) == 1
        totals = [lengths[i].total for i in batch]
        assert totals == sorted(totals, reverse=True)
    assert batches == list(LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, group=4))
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_length_grouped_sampler_splits_the_same_plan_across_ranks():
    lengths = fake_lengths()
    ranks = [LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, world_size=3, rank=r) for r in range(3)]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    flat = [i for batches in per_rank for b in batches for i in b] + [i for b in ranks[0].dropped for i in b]
    assert sorted(flat) == [i for i, info in enumerate(lengths) if info is not None]


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([5, 3, 8, 2, 6, 1], capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum([5, 3, 8, 2, 6, 1][i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3  # 25 tokens in rows of 10
    assert all(len(row) <= 2 for row in pack_rows([1] * 6, capacity=10, crops=[1] * 6, max_crops=2))
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([11], capacity=10)


def test_packing_sampler_plans_full_rows():
    lengths = fake_lengths()
    sampler = PackingBatchSampler(lengths, capacity=600, rows=2, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == [i for i, info in enumerate(lengths) if info is not None]
    assert all(sum(lengths[i].total for i in b) <= 2 * 600 for b in batches)


def test_block_causal_mask():
    ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = block_causal_mask(ids)[0, 0]
    assert mask.tolist() == [
        [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1],
    ]
    additive = block_causal_mask(ids, "additive")[0, 0]
    assert (additive[mask] == 0).all() and (additive[~mask] == torch.finfo(torch.float32).min).all()


def per_sample(model, batch) -> dict[str, float]:
    with torch.no_grad():
        out = model(**batch.model_inputs())
    losses = sample_losses(out.logits, batch.labels, batch.sequence_ids)
    return dict(zip(batch.sample_ids, losses.tolist()))


@pytest.mark.parametrize("mask, attention", [
    ("position_ids", "sdpa"), ("position_ids", "eager"), ("bool", "sdpa"), ("additive", "eager"),
])
def test_packing_gives_the_unpacked_per_sample_loss(processor, dataset, model, mask, attention):
    model.language_model.set_attn_implementation(attention)
    try:
        samples = [dataset[i] for i in range(len(dataset))]
        alone = {}
        for sample in samples:  # each sample alone: no padding, no neighbours
            alone.update(per_sample(model, Collator(pad_id(processor))([sample])))
        padded = per_sample(model, Collator(pad_id(processor))(samples))
        capacity = sum(s.length for s in samples) // 2 + max(s.length for s in samples)
        packer = PackingCollator(capacity, pad_id(processor), mask=mask)
        packed_batch = packer(samples)
        assert packed_batch.input_ids.shape[0] < len(samples)  # really packed: several samples per row
        assert any(len(set(row.tolist()) - {-1}) > 1 for row in packed_batch.sequence_ids)
        packed = per_sample(model, packed_batch)
        for sample_id, loss in alone.items():
            assert abs(padded[sample_id] - loss) < 1e-5, sample_id
            assert abs(packed[sample_id] - loss) < 1e-5, sample_id
    finally:
        model.language_model.set_attn_implementation("sdpa")


def test_packed_batch_layout(processor, dataset):
    samples = [dataset[i] for i in range(len(dataset))]
    batch = PackingCollator(400, pad_id(processor))(samples)
    assert batch.attention_mask is None and batch.position_ids is not None
    order = {s.sample_id: s for s in samples}
    ordered = [order[sid] for sid in batch.sample_ids]
    assert batch.visual_items == [item for s in ordered for item in s.visual_items]  # row by row
    number = 0
    for row in range(batch.input_ids.shape[0]):
        start = 0
        for seq in sorted(set(batch.sequence_ids[row].tolist()) - {-1}):
            sample = ordered[seq]
            assert seq == number
            span = slice(start, start + sample.length)
            assert batch.input_ids[row, span].tolist() == sample.input_ids.tolist()
            assert batch.position_ids[row, span].tolist() == list(range(sample.length))
            assert batch.labels[row, start] == -100  # the first token is never a target
            assert batch.labels[row, start + 1:start + sample.length].tolist() == sample.labels[1:].tolist()
            start, number = start + sample.length, number + 1
    assert number == len(samples)
    assert batch.num_tokens == sum(s.length for s in samples)
