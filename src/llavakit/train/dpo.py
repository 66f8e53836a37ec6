"""Direct preference optimisation after instruction tuning (seed 002: video DPO, Table 14).

Preference data is JSONL: ``{"id", "image" | "video", "prompt", "chosen", "rejected"}``, optionally
with ``ref_chosen_logp`` / ``ref_rejected_logp`` (summed log-probabilities of the answers under the
reference model) when ``dpo.reference: precomputed``. Each pair becomes two LLaVA samples that share
the prompt and media; the loss compares policy and reference log-ratios.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llavakit.api import Llava
from llavakit.data import LlavaDataset
from llavakit.data.encoding import IGNORE_INDEX
from llavakit.data.errors import MALFORMED
from llavakit.data.readers import BadRecord, jsonl_records
from llavakit.data.records import Entry
from llavakit.train.config import DpoSettings, TrainConfigError
from llavakit.train.loop import StepResult, Trainer
from llavakit.train.plan import BatchPlan


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits, (B, L) labels -> (B,) summed log-probabilities of the labelled tokens."""
    targets = labels[:, 1:]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked * (targets != IGNORE_INDEX)).sum(-1)


@dataclass
class DpoTerms:
    losses: torch.Tensor  # (P,)
    chosen_rewards: torch.Tensor  # (P,) beta * (policy - reference) log-ratio of the chosen answer
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, settings: DpoSettings) -> DpoTerms:
    """Per-pair DPO losses. With h = (pi_c - ref_c) - (pi_r - ref_r):
    sigmoid: -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)  (Rafailov et al.; eps = label smoothing)
    ipo:     (h - 1 / (2 beta))^2                                     (Azar et al.)
    hinge:   max(0, 1 - beta h)                                       (SLiC)
    """
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    beta, eps = settings.beta, settings.label_smoothing
    if settings.loss == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif settings.loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    return DpoTerms(losses, beta * (policy_chosen - reference_chosen).detach(),
                    beta * (policy_rejected - reference_rejected).detach())


def read_pairs(path: Path, image_folder: str | None, video_folder: str | None) -> tuple[list[Entry], list[Entry], list]:
    """Chosen and rejected entries (same order) and the precomputed reference logps (or None)."""
    chosen, rejected, references = [], [], []
    for position, record in jsonl_records(path):
        where = f"{path}:{position}"
        if isinstance(record, BadRecord):  # not UTF-8 or not JSON
            raise TrainConfigError(f"{where}: {record.reason}")
        if not isinstance(record, dict):
            raise TrainConfigError(f"{where}: a preference record is a JSON object, got {type(record).__name__}")
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(record.get(k), str)]
        if missing:
            raise TrainConfigError(f"{where}: preference record lacks text field(s) {', '.join(missing)}")
        media = {k: record[k] for k in ("image", "video") if k in record}
        for answer, bucket in (("chosen", chosen), ("rejected", rejected)):
            conversation = [{"from": "human", "value": record["prompt"]}, {"from": "gpt", "value": record[answer]}]
            item = {"id": f"{record.get('id', position)}:{answer}", **media, "conversations": conversation}
            bucket.append(Entry(item, str(path), position, image_folder, video_folder, path.stem))
        refs = (record.get("ref_chosen_logp"), record.get("ref_rejected_logp"))
        references.append(refs if None not in refs else None)
    return chosen, rejected, references


class DpoTrainer(Trainer):
    """The Trainer with pairs as samples and the DPO objective."""

    def _dataset(self, model, tokenizer) -> LlavaDataset:
        chosen, rejected, references = [], [], []
        for source in self.config.data.sources:
            c, r, refs = read_pairs(Path(source.path), source.image_folder, source.video_folder)
            chosen, rejected, references = chosen + c, rejected + r, references + refs
        if self.config.dpo.reference == "precomputed" and any(ref is None for ref in references):
            raise TrainConfigError("dpo.reference=precomputed but some pairs lack ref_chosen_logp/ref_rejected_logp")
        self.pairs, self.references = len(chosen), references
        dataset = LlavaDataset(chosen + rejected, Llava(model, tokenizer).processor, self.config.data.settings)
        lengths = dataset.lengths(progress=self.accelerator.is_main_process)
        from llavakit.data import SkipReport

        self.skips = SkipReport(dataset.prepass_skipped)
        # a pair is usable only if both answers are; its length is the longer one
        self.lengths = [
            None if lengths[i] is None or lengths[i + self.pairs] is None
            else max(lengths[i], lengths[i + self.pairs], key=lambda info: info.total)
            for i in range(self.pairs)
        ]
        if not any(info is not None for info in self.lengths):
            raise TrainConfigError("the preference data has no usable pair")
        if self.config.dpo.reference == "model":
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        return dataset

    def setup(self) -> None:
        super().setup()
        if self.config.dpo.reference == "model":
            self.reference.to(self.accelerator.device)

    def _pair_batch(self, pair_indices: list[int]):
        items = [self.dataset[i] for i in pair_indices] + [self.dataset[i + self.pairs] for i in pair_indices]
        if any(not hasattr(item, "input_ids") for item in items):
            bad = next(item for item in items if not hasattr(item, "input_ids"))
            raise self.dataset.entries[bad.index].error(MALFORMED, f"preference sample failed: {bad.reason}")
        return self.collate(items)

    def _reference_logps(self, batch, pair_indices: list[int]) -> torch.Tensor:
        if self.config.dpo.reference == "precomputed":
            chosen = [self.references[i][0] for i in pair_indices]
            rejected = [self.references[i][1] for i in pair_indices]
            return torch.tensor(chosen + rejected, device=self.accelerator.device, dtype=torch.float32)
        with torch.no_grad(), self.accelerator.autocast():
            out = self.reference(**{k: v for k, v in batch.model_inputs().items() if k != "labels"})
        return sequence_logps(out.logits, batch.labels)

    def micro_batches(self, step: int) -> list:
        """Each micro-batch as (its pairs' indices, their batch: chosen answers, then rejected)."""
        return [(indices, self._pair_batch(indices))
                for indices in self.plan.micro_batches(step, self.accelerator.process_index)]

    def train_step(self, step: int, batches: list | None = None) -> StepResult:
        accelerator, settings = self.accelerator, self.config.dpo
        micro = self.micro_batches(step) if batches is None else batches
        world, global_pairs = accelerator.num_processes, self.config.global_batch_size
        totals = {"loss": 0.0, "chosen": 0.0, "rejected": 0.0, "accuracy": 0.0}
        tokens = 0
        for index, (pair_indices, batch) in enumerate(micro):
            batch = batch.to(accelerator.device)
            tokens += batch.num_tokens
            reference = self._reference_logps(batch, pair_indices)
            context = self.backend.sync_context(self.model, sync=index == len(micro) - 1)
            with context, accelerator.autocast():
                inputs = {k: v for k, v in batch.model_inputs().items() if k != "labels"}
                policy = sequence_logps(self.model(**inputs).logits, batch.labels)
                count = len(pair_indices)
                terms = dpo_loss(policy[:count], policy[count:], reference[:count], reference[count:], settings)
                accelerator.backward(terms.losses.sum() * world / global_pairs)
            totals["loss"] += float(terms.losses.detach().sum())
            totals["chosen"] += float(terms.chosen_rewards.sum())
            totals["rejected"] += float(terms.rejected_rewards.sum())
            totals["accuracy"] += float((terms.chosen_rewards > terms.rejected_rewards).float().sum())
        self.optimizer_step()
        reduced = accelerator.reduce(torch.tensor(list(totals.values()), device=accelerator.device), "sum") / global_pairs
        self.last_dpo = dict(zip(("loss", "reward_chosen", "reward_rejected", "accuracy"), reduced.tolist()))
        self.last_dpo["margin"] = self.last_dpo["reward_chosen"] - self.last_dpo["reward_rejected"]
        return StepResult(self.last_dpo["loss"], tokens, global_pairs // world)

    def step_record(self) -> dict[str, Any]:
        return {f"dpo/{k}": v for k, v in getattr(self, "last_dpo", {}).items()}


__all__ = ["DpoTrainer", "dpo_loss", "read_pairs", "sequence_logps", "BatchPlan"]
