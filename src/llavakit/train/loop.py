"""The training recipe: setup, train, save. One explicit loop for every stage and backend.

accelerate supplies the distributed engine (DDP, FSDP, DeepSpeed; gloo on CPU) and mixed
precision; the loop itself stays short: a step takes this process's micro-batches of the global
batch, normalises the summed token loss by the global token count, and steps once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from llavakit.api import Llava
from llavakit.checkpoint import adapter, components, io
from llavakit.config import LlavaConfig
from llavakit.data import Collator, LlavaDataset, PackingCollator, SkipReport, load_entries
from llavakit.data.errors import SkippedSample
from llavakit.data.sources import EntryTable
from llavakit.model.llava import LlavaForCausalLM
from llavakit.train import checkpoints, params
from llavakit.train.config import ParamRule, TrainConfig, TrainConfigError
from llavakit.train.distributed import (
    AccelerateBackend,
    CpuFsdpBackend,
    check_engine,
    refuse_unrunnable,
    requested_engine,
    running_engine,
)
from llavakit.train.in_loop_eval import InLoopEvaluator
from llavakit.train.loss_weights import label_weights
from llavakit.train.plan import BatchPlan
from llavakit.train.prefetch import step_batches
from llavakit.train.telemetry import MetricsLog, Throughput
from llavakit.train.tracking import open_trackers

def unused_vision(model_config: LlavaConfig) -> ParamRule:
    """Parts of the vision tower that LLaVA never reads (it takes hidden states before them: the
    pooling head, the last norm, the layers after the deepest feature layer) are frozen: they get no
    gradient, so as trainable parameters they would count as trained, stall DDP waiting for them,
    and have no optimizer state under FSDP, whose resume then fails for want of it."""
    parts = ["head", "post_layernorm"] + [rf"encoder\.layers\.{i}" for i in model_config.vision.unused_layers]
    return ParamRule(pattern=rf"^vision_tower\.(vision_model\.)?({'|'.join(parts)})\.", frozen=True)


def build_model(config: TrainConfig) -> tuple[LlavaForCausalLM, Any]:
    if config.model.checkpoint:
        model, tokenizer, _ = io.load(config.model.checkpoint)
        return model, tokenizer
    return components.build_from_parts(config.model.build, "model.build")


def apply_lora(model: LlavaForCausalLM, settings) -> None:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, bias="none")
    model.language_model = get_peft_model(model.language_model, lora)


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str, min_ratio: float):
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return factor


def precision(config: TrainConfig) -> str:
    if config.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[config.precision]


def training_rules(config: TrainConfig, model_config: LlavaConfig) -> list[ParamRule]:
    rules = [unused_vision(model_config)]
    if config.lora is not None:  # the LLM's own weights stay frozen under LoRA
        rules.append(ParamRule(pattern=r"^language_model\.", frozen=True))
    return rules + list(config.trainable)


@dataclass
class StepResult:
    loss: float
    tokens: int
    samples: int
    skipped: list[SkippedSample] = field(default_factory=list)


class Trainer:
    """``Trainer(config).run(resume=...)``: the whole recipe for one stage."""

    def __init__(self, config: TrainConfig, accelerator: Any | None = None):
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.accelerator = accelerator
        self.stopped_at: int | None = None  # the step at which stop_at_loss ended the run

    # ---- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, FullyShardedDataParallelPlugin, set_seed

        config = self.config
        request = requested_engine(config.distributed)
        refuse_unrunnable(request)  # before accelerate, which would fail on an import deep inside
        gpu_fsdp = config.distributed == "fsdp" and torch.cuda.is_available()
        self.accelerator = self.accelerator or Accelerator(
            mixed_precision=precision(config), cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2) if gpu_fsdp else None,
        )
        cpu_fsdp = config.distributed == "fsdp" and not torch.cuda.is_available()
        check_engine(request, running_engine(self.accelerator, cpu_fsdp and self.accelerator.num_processes > 1))
        set_seed(config.seed)
        self.evaluator = InLoopEvaluator(config.eval, self.run_dir, self.accelerator) if config.eval else None
        model, tokenizer = build_model(config)
        model.language_model.config._attn_implementation = config.attention
        self.tokenizer = tokenizer
        if config.lora is not None:
            apply_lora(model, config.lora)
        always = ("lora_",) if config.lora is not None else ()
        lora_lr = config.lora.lr if config.lora is not None and config.lora.lr else None
        self.plan_params = params.assign(model, training_rules(config, model.config), config.optim.lr,
                                         config.optim.weight_decay, always)
        if lora_lr:
            self.plan_params = [params.Assignment(a.name, lora_lr if "lora_" in a.name else a.lr, a.weight_decay)
                                for a in self.plan_params]
        if config.gradient_checkpointing:
            model.language_model.gradient_checkpointing_enable({"use_reentrant": False})
            if hasattr(model.vision_tower, "gradient_checkpointing_enable"):
                model.vision_tower.gradient_checkpointing_enable({"use_reentrant": False})
        self.model = model
        self.dataset = self._dataset(model, tokenizer)
        self.plan = self._plan()
        self.collate = self._collator(tokenizer)
        self.total_steps = self._total_steps()
        cpu_fsdp = config.distributed == "fsdp" and not torch.cuda.is_available()
        if cpu_fsdp and self.accelerator.num_processes > 1:
            self.backend = CpuFsdpBackend(self.accelerator)
            self.model, self.optimizer, self.scheduler = self.backend.prepare(model, self._optimizer, self._scheduler)
        else:
            self.backend = AccelerateBackend(self.accelerator)
            optimizer = self._optimizer(model)
            self.scheduler = self._scheduler(optimizer)
            self.model, self.optimizer = self.backend.prepare(model, optimizer, self.scheduler)

    def _optimizer(self, model: LlavaForCausalLM) -> torch.optim.Optimizer:
        groups = params.param_groups(model, self.plan_params)
        for group in groups:
            group.pop("names")
        optim = self.config.optim
        fused = torch.cuda.is_available() or None
        return torch.optim.AdamW(groups, betas=optim.betas, eps=optim.eps, fused=fused)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> LambdaLR:
        optim = self.config.optim
        return LambdaLR(optimizer, lr_lambda(self.total_steps, optim.warmup_ratio, optim.schedule, optim.min_lr_ratio))

    def _dataset(self, model: LlavaForCausalLM, tokenizer: Any) -> LlavaDataset:
        entries = EntryTable()
        for source in self.config.data.sources:
            entries += load_entries(source.path, source.image_folder, source.video_folder, self.config.seed).entries
        llava = Llava(model, tokenizer)
        dataset = LlavaDataset(entries, llava.processor, self.config.data.settings)
        self.skips = SkipReport()
        if not self.config.data.length_prepass:
            self.lengths = None  # planned from the count alone; bad samples are met in their batch
            return dataset
        lengths = dataset.lengths(progress=self.accelerator.is_main_process)
        self.skips.extend(dataset.prepass_skipped)
        self.lengths = lengths
        if not any(info is not None for info in lengths):
            raise TrainConfigError(f"the dataset has no usable sample ({len(lengths)} read, all refused: "
                                   f"{self.skips.summary()})")
        return dataset

    def _plan(self) -> BatchPlan:
        if self.lengths is None:  # no pre-pass: every sample is planned, lengths unknown (no grouping)
            count = len(self.dataset)
            usable, totals, multimodal = range(count), (0,) * count, (True,) * count
        else:
            usable = [i for i, info in enumerate(self.lengths) if info is not None]
            totals = tuple(self.lengths[i].total for i in usable)
            multimodal = tuple(self.lengths[i].modality != "text" for i in usable)
        plan = BatchPlan(
            usable if isinstance(usable, range) else tuple(usable), totals, multimodal,
            self.config.global_batch_size, self.config.micro_batch_size, self.accelerator.num_processes,
            self.config.seed, self.config.data.group_by_length,
        )
        if plan.steps_per_epoch == 0:
            raise TrainConfigError(
                f"{len(usable)} usable samples cannot fill one global batch of {self.config.global_batch_size}"
            )
        return plan

    def _collator(self, tokenizer: Any):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.config.data.packing:
            return PackingCollator(self.config.data.settings.max_length, pad)
        return Collator(pad)

    def _total_steps(self) -> int:
        """``max_steps`` when given (it overrides ``epochs``, as in transformers), else the epochs."""
        return self.config.max_steps or math.ceil(self.plan.steps_per_epoch * self.config.epochs)

    # ---- one optimizer step -----------------------------------------------------------------
    def micro_batches(self, step: int) -> list:
        """The step's micro-batches, built here or ahead by data.num_workers (what train_step takes)."""
        return [self.collate([self.dataset[i] for i in indices])
                for indices in self.plan.micro_batches(step, self.accelerator.process_index)]

    def train_step(self, step: int, batches: list | None = None) -> StepResult:
        """One optimizer step on ``batches`` (built ahead), or on the step's micro-batches built now."""
        accelerator, model = self.accelerator, self.model
        batches = self.micro_batches(step) if batches is None else batches
        # Per-token loss weights (None: every trained token counts 1, LLaVA's token averaging) and
        # each micro-batch's total weight; the update is sum(w * ce) / (total over the global batch).
        weights = [None if b.is_empty else label_weights(b.labels, b.sequence_ids, self.config.loss_reduction)
                   for b in batches]
        totals = [0.0 if b.is_empty else float(int((b.labels[:, 1:] != -100).sum()) if w is None else w.sum())
                  for b, w in zip(batches, weights)]
        global_weight = accelerator.reduce(torch.tensor(sum(totals), device=accelerator.device), "sum").item()
        world = accelerator.num_processes
        loss_sum = torch.zeros((), device=accelerator.device)
        skipped, samples = [], 0
        for index, (batch, weight, total) in enumerate(zip(batches, weights, totals)):
            skipped += batch.skipped
            if batch.is_empty:
                continue
            samples += len(batch.sample_ids)
            context = self.backend.sync_context(model, sync=index == len(batches) - 1)
            batch = batch.to(accelerator.device)
            extra = {} if weight is None else {"label_weights": weight.to(accelerator.device)}
            with context, accelerator.autocast():
                out = model(**batch.model_inputs(), **extra)
                # back from the model's mean to the sum: its own token count, or the weight total
                summed = out.loss * (out.num_label_tokens if weight is None else total)
                # DDP averages gradients over processes: scale so the update is sum / global weight.
                accelerator.backward(summed * world / max(global_weight, 1e-12))
            loss_sum += summed.detach()
        self.optimizer_step()
        mean_loss = accelerator.reduce(loss_sum, "sum").item() / max(global_weight, 1e-12)
        tokens = int(accelerator.reduce(torch.tensor(sum(b.num_tokens for b in batches if not b.is_empty),
                                                     device=accelerator.device), "sum").item())
        return StepResult(mean_loss, tokens, samples, skipped)

    def step_record(self) -> dict[str, Any]:
        """Extra per-step metrics of a recipe (DPO adds rewards and margins)."""
        return {}

    def optimizer_step(self) -> None:
        if self.config.optim.grad_clip:
            self.backend.clip(self.model, self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---- the run ----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        previous = checkpoints.run_files(self.run_dir)
        if resume and self.config.overwrite:
            raise TrainConfigError("resume continues the run in output_dir and overwrite replaces it: give one")
        if previous and not resume and not self.config.overwrite:
            raise TrainConfigError(f"{self.run_dir} holds a run ({', '.join(p.name for p in previous)}): resume it "
                                   "(--resume) or replace it (--overwrite)")
        if self.accelerator is None or not hasattr(self, "model"):
            self.setup()
        accelerator = self.accelerator
        if previous and not resume and accelerator.is_main_process:
            checkpoints.remove_run(self.run_dir)
        accelerator.wait_for_everyone()
        start = self._resume() if resume else 0
        log = None
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.config.model_dump(mode="json"), indent=2))
            print(params.format_summary(params.summary(accelerator.unwrap_model(self.model), self.plan_params)))
            resume_step = start if resume else None
            log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step,
                             open_trackers(self.config, self.run_dir, resume_step))
        if resume and self.evaluator is not None:
            self.evaluator.resume()
        progress = self._progress(start)
        throughput, started = Throughput(), time.perf_counter()
        self.model.train()
        # A run resumed from a checkpoint that stop_at_loss ended stays ended there.
        final, recent = self.stopped_at or self.total_steps, []
        workers = self.config.data.num_workers
        ahead = step_batches(self.micro_batches, start, final, workers) if workers else None
        for step in range(start, final):
            result = self.train_step(step) if ahead is None else self.train_step(step, next(ahead))
            self.skips.extend(result.skipped)
            rate = throughput.add(result.tokens)
            recent.append(result.loss)
            stopping = self._should_stop(recent, step + 1)
            record = {"step": step + 1, "loss": result.loss, "tokens": result.tokens, "tokens_per_s": rate,
                      "epoch": (step + 1) / self.plan.steps_per_epoch, "elapsed_s": time.perf_counter() - started}
            record |= params.learning_rates(self.optimizer.param_groups)
            record |= self.step_record()
            paused = time.perf_counter()
            scores = self.in_loop_eval(step + 1, last=step + 1 == self.total_steps or stopping)
            if scores:
                throughput.exclude(time.perf_counter() - paused)
            record |= scores
            if log is not None and ((step + 1) % self.config.log_every == 0 or step + 1 == self.total_steps
                                    or stopping or scores):
                log.write(record)
            if progress is not None:
                progress.set_postfix(loss=f"{result.loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                     tok_s=f"{rate:,.0f}")
                progress.update(1)
            if stopping:
                final = self.stopped_at = step + 1
                if accelerator.is_main_process:
                    window = self.config.stop_at_loss.window
                    print(f"\nstop_at_loss: the mean loss of steps {final - window + 1}-{final} is "
                          f"{sum(recent[-window:]) / window:.4f} < {self.config.stop_at_loss.below}; "
                          f"stopping at step {final} of {self.total_steps}")
                break
            every = self.config.save.every_steps
            if every and (step + 1) % every == 0 and step + 1 < self.total_steps:
                self.save_checkpoint(step + 1)
        del ahead  # its workers stop (they may be building steps a stop_at_loss left untrained)
        if progress is not None:
            progress.close()
        self.save_checkpoint(final)
        summary = self._finish(log, time.perf_counter() - started, final)
        return summary

    def in_loop_eval(self, step: int, last: bool) -> dict[str, float]:
        """``eval:`` scores after ``step`` when it is due (train.in_loop_eval), else {}."""
        evaluator = getattr(self, "evaluator", None)
        if evaluator is None or not evaluator.due(step, last):
            return {}
        scores = evaluator.run(step, self.unwrapped(), self.tokenizer, self.save_model)
        if scores:
            print("\n" + f"eval at step {step}: " + ", ".join(f"{k.removeprefix('eval/')} {v:.4f}"
                                                                for k, v in scores.items()))
        return scores

    def _should_stop(self, recent: list[float], steps_done: int) -> bool:
        """``stop_at_loss``: the mean of the last ``window`` step losses is below the threshold
        (all processes see the same reduced losses, so they stop together)."""
        stop = self.config.stop_at_loss
        if stop is None or steps_done < stop.min_steps or len(recent) < stop.window:  # recent: this run's steps
            return False
        return sum(recent[-stop.window:]) / stop.window < stop.below

    def _progress(self, start: int):
        if not self.accelerator.is_main_process:
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=start, desc=f"train {self.config.stage}", unit="step")

    # ---- saving and resuming ----------------------------------------------------------------
    def unwrapped(self) -> LlavaForCausalLM:
        return self.backend.unwrap(self.model)

    def save_outputs(self, checkpoint: Path, state_dict: dict | None = None) -> None:
        """``checkpoint/model`` (loadable), and under LoRA ``checkpoint/adapter`` (peft's format),
        the merged model only if ``lora.save_merged``. ``state_dict``: gathered from shards."""
        model = self.unwrapped()
        lora = self.config.lora
        if lora is not None:
            adapter.save_adapter(model, checkpoint / "adapter", state_dict)
            if not lora.save_merged:
                return
            model, state_dict = adapter.merged(model, state_dict), None
        io.save(model, self.tokenizer, checkpoint / "model", connector_only=self.config.save.projector_only,
                state_dict=state_dict)

    def save_model(self, directory: Path) -> Path:
        """A loadable model in ``directory`` itself (adapters merged), e.g. ``RUN/best``."""
        model = self.unwrapped()
        if self.config.lora is not None:
            model = adapter.merged(model)
        return io.save(model, self.tokenizer, directory, connector_only=self.config.save.projector_only)

    def save_checkpoint(self, step: int) -> None:
        accelerator = self.accelerator
        staging = checkpoints.staging_dir(self.run_dir, step)
        if accelerator.is_main_process:
            checkpoints.recover(self.run_dir)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        with checkpoints.reporting_full_disk(staging.parent, f"checkpoint {checkpoints.step_name(step)}",
                                             partial=staging if accelerator.is_main_process else None):
            self.backend.save_state(staging / "state", self.model, self.optimizer, self.scheduler)
            accelerator.wait_for_everyone()  # every process's files are written before publish lists them
            gathered = self.backend.full_state_dict(self.model)  # collective: every process takes part
            if accelerator.is_main_process:
                self.save_outputs(staging, gathered)
                state = {"step": step, "total_steps": self.total_steps, "stage": self.config.stage,
                         "skipped": len(self.skips), "stopped_early": self.stopped_at is not None}
                checkpoints.publish(self.run_dir, step, state, self.config.save.keep_last)
        accelerator.wait_for_everyone()

    def _resume(self) -> int:
        if self.accelerator.is_main_process:
            checkpoints.recover(self.run_dir)
        self.accelerator.wait_for_everyone()
        found = checkpoints.latest(self.run_dir)
        if found is None:
            if self.accelerator.is_main_process:
                print(f"no checkpoint in {self.run_dir}: starting from step 0")
            return 0
        self.backend.load_state(found / "state", self.model, self.optimizer, self.scheduler)
        state = checkpoints.read_state(found)
        step = state["step"]
        if state.get("stopped_early"):
            self.stopped_at = step
        if self.accelerator.is_main_process:
            print(f"resumed from {found} (step {step} of {self.total_steps})")
        return step

    def _finish(self, log: MetricsLog | None, seconds: float, steps_done: int) -> dict[str, Any]:
        accelerator = self.accelerator
        summary: dict[str, Any] = {}
        if accelerator.is_main_process:
            final = checkpoints.latest(self.run_dir)
            outputs = {}
            for name in ("model", "adapter"):  # what save_outputs wrote: RUN/model, RUN/adapter
                if (final / name).is_dir():
                    outputs[name] = str(self.run_dir / name)
                    target = self.run_dir / name
                    with checkpoints.reporting_full_disk(target, f"the final {name}"), \
                            io.atomic_directory(target) as staging:
                        for item in (final / name).iterdir():
                            (staging / item.name).write_bytes(item.read_bytes())
            if len(self.skips):
                self.skips.write(self.run_dir / "skipped.jsonl")
                print(f"skipped {len(self.skips)} samples: {self.skips.summary()} (see {self.run_dir / 'skipped.jsonl'})")
            summary = {"stage": self.config.stage, "steps": steps_done, "planned_steps": self.total_steps,
                       "stopped_early": self.stopped_at is not None, "seconds": round(seconds, 2),
                       **outputs, "skipped": len(self.skips)}
            checkpoints.write_json_atomic(self.run_dir / "summary.json", summary)
            log.close()
        accelerator.wait_for_everyone()
        return summary
