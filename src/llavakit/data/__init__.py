"""LLaVA-format data -> training batches: readers, templates and label masks, mixtures, packing.

Typical use::

    mixture = load_entries("mix.yaml")                       # or one .json / .jsonl file
    dataset = LlavaDataset(mixture.entries, llava.processor, DataSettings(template="qwen", max_length=8192))
    sampler = LengthGroupedBatchSampler(dataset.lengths(), batch_size=8, seed=mixture.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(pad_token_id(llava.tokenizer)))
    for batch in loader: out = model(**batch.to(device).model_inputs())
"""

from llavakit.data.collate import Collator, TrainingBatch, pad_token_id
from llavakit.data.dataset import DataSettings, EncodedSample, LengthInfo, LlavaDataset, sample_lengths
from llavakit.data.encoding import IGNORE_INDEX
from llavakit.data.errors import DataError, SkippedSample, SkipReport
from llavakit.data.mixture import Mixture, load_entries, load_mixture
from llavakit.data.packing import PackingCollator, block_causal_mask, pack_rows, sample_losses
from llavakit.data.placement import PlacementSettings
from llavakit.data.readers import read_llava_file
from llavakit.data.records import Entry, Sample, Turn, parse_entry
from llavakit.data.sampler import LengthGroupedBatchSampler, PackingBatchSampler
from llavakit.data.templates import TEMPLATES, ChatTemplate, Segment, TemplateError, TokenizerTemplate, resolve_template

__all__ = [
    "IGNORE_INDEX", "TEMPLATES", "ChatTemplate", "Collator", "DataError", "DataSettings", "EncodedSample", "Entry",
    "LengthGroupedBatchSampler", "LengthInfo", "LlavaDataset", "Mixture", "PackingBatchSampler", "PackingCollator",
    "PlacementSettings", "Sample", "Segment", "SkipReport", "SkippedSample", "TemplateError", "TokenizerTemplate",
    "TrainingBatch", "Turn", "block_causal_mask", "load_entries", "load_mixture", "pack_rows", "pad_token_id",
    "parse_entry", "read_llava_file", "resolve_template", "sample_lengths", "sample_losses",
]
