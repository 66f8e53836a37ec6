"""Training configuration: one typed schema for YAML files, CLI overrides and Python.

A config names a stage; the stage's preset (seeds 000 and 003) fills every field the file leaves
out. Which parameters train, and at what learning rate, is data: an ordered list of rules
(regex -> lr, or frozen), first match wins, as in big_vision.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llavakit.checkpoint import hub
from llavakit.data.dataset import DataSettings
from llavakit.errors import LlavakitError, validation_summary
from llavakit.train.loss_weights import LossReduction

Stage = Literal["stage1", "stage1.5", "stage2", "continue", "dpo"]


class TrainConfigError(LlavakitError):
    """A training config that cannot work, found before training starts."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamRule(_Strict):
    """Parameters whose name matches ``pattern`` (re.search) get this lr, or are frozen."""

    pattern: str = Field(description="regular expression searched in the parameter name (re.search)")
    lr: float | None = Field(None, description="learning rate of the matched parameters (None: optim.lr)")
    frozen: bool = Field(False, description="true: the matched parameters do not train")
    weight_decay: float | None = Field(
        None, description="weight decay of the matched parameters (None: optim.weight_decay; biases, norms and "
                          "vectors are never decayed)")


class ModelInit(_Strict):
    """Where the weights start: a checkpoint (continue) or pretrained parts plus a new projector."""

    checkpoint: str | None = Field(None, description="continue from a checkpoint: any directory or hub id "
                                                     "llavakit.load accepts")
    build: dict[str, Any] | None = Field(
        None, description="build from pretrained parts: LlavaConfig data (see the model config below) whose vision "
                          "and llm name `pretrained` paths; the projector starts new")

    @model_validator(mode="after")
    def _one_source(self) -> ModelInit:
        if (self.checkpoint is None) == (self.build is None):
            raise ValueError("model: give exactly one of checkpoint (continue training) or build (from parts)")
        return self

    def require_loadable(self) -> None:
        """A missing directory or a hub id that cannot be had (offline, no network) is refused when a
        config is read to run, in one line, not after the trainer has started and the download has
        retried. Not a validator: a recipe validates stages whose checkpoints earlier stages make."""
        if self.checkpoint is not None:
            hub.require(self.checkpoint, "checkpoint")
        for part in ("vision", "llm"):
            pretrained = ((self.build or {}).get(part) or {}).get("pretrained")
            if isinstance(pretrained, str):
                hub.require(pretrained, f"build.{part}.pretrained")


class DataSource(_Strict):
    """One data file or folder of shards, or a YAML mixture of several."""

    path: str = Field(description="a LLaVA .json / .jsonl file, a .parquet file or folder of Parquet shards "
                                  "(LLaVA-OneVision-Data), a WebDataset .tar or folder of them, or a .yaml mixture")
    image_folder: str | None = Field(None, description="the folder image paths in the data are relative to "
                                                       "(None: the data file's folder)")
    video_folder: str | None = Field(None, description="the folder video paths in the data are relative to "
                                                       "(None: the data file's folder)")


class DataConfig(_Strict):
    """The training data and how it becomes batches."""

    sources: list[DataSource] = Field(description="data files, concatenated in this order")
    settings: DataSettings = Field(DataSettings(), description="how samples become token sequences")
    packing: bool = Field(False, description="several samples per row, with no attention across samples")
    group_by_length: bool = Field(True, description="batches of samples of similar modality and length")
    length_prepass: bool = Field(
        True, description="measure every sample before step 1 (lengths for group_by_length, bad samples left out "
                          "up front); false: plan from the sample count alone, so a run over millions of samples "
                          "starts at once, and a bad sample is met in its batch (settings.on_error decides); "
                          "needs group_by_length: false")

    @model_validator(mode="after")
    def _grouping_needs_lengths(self) -> DataConfig:
        if self.group_by_length and not self.length_prepass:
            raise ValueError("data.group_by_length needs the lengths of data.length_prepass: set "
                             "group_by_length: false to start without the pre-pass")
        return self
    num_workers: int = Field(0, ge=0, description="worker processes that build the next steps' batches while "
                                                  "the model trains (0: built in the training process; the "
                                                  "batches are the same either way, DPO's pairs included)")


class OptimConfig(_Strict):
    """AdamW and its learning-rate schedule."""

    lr: float = Field(2e-5, description="base learning rate (parameters no `trainable` rule gives another)")
    weight_decay: float = Field(0.0, description="AdamW weight decay (never on biases, norms and vectors)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, description="AdamW epsilon")
    grad_clip: float | None = Field(1.0, description="clip the global gradient norm to this (None: no clipping)")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="share of the steps with a linear warm-up")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after the warm-up")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the decay ends at this fraction of each lr")


class LoraSettings(_Strict):
    """LoRA on the language model through peft; composes with any stage."""

    rank: int = Field(16, ge=1, description="LoRA rank r")
    alpha: int = Field(32, description="LoRA alpha (the update is scaled by alpha / rank)")
    dropout: float = Field(0.0, description="dropout on the adapters' input")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="names of the LLM's linear layers that get adapters")
    lr: float | None = Field(None, description="learning rate of the adapters (None: optim.lr)")
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: quantize the frozen LLM (needs CUDA and bitsandbytes)")
    save_merged: bool = Field(
        True, description="also save the adapters merged into a full model (model/), which load, eval "
        "and serve read directly; false: only the peft adapter (adapter/), for merge-lora or --adapter")

    @field_validator("quantize")
    @classmethod
    def _quantization_available(cls, quantize: str) -> str:
        if quantize != "none":
            import torch
            from transformers.utils import is_bitsandbytes_available

            if not (torch.cuda.is_available() and is_bitsandbytes_available()):
                raise ValueError(f"quantize={quantize!r} (QLoRA) needs CUDA and bitsandbytes, and this machine "
                                 f"has {'no CUDA' if not torch.cuda.is_available() else 'no bitsandbytes'}")
        return quantize

    @model_validator(mode="after")
    def _peft_installed(self) -> LoraSettings:
        # refused now rather than after the model is built; the command line names the extra
        if importlib.util.find_spec("peft") is None:
            raise ModuleNotFoundError("lora needs peft, which is not installed", name="peft")
        return self


class DpoSettings(_Strict):
    """Direct preference optimisation (stage: dpo)."""

    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference model")
    loss: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="sigmoid (DPO), ipo or hinge (SLiC)")
    reference: Literal["model", "precomputed"] = Field(
        "model", description="model: a frozen copy of the starting model; precomputed: ref_chosen_logp and "
                             "ref_rejected_logp stored in the data")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO: assumed share of flipped "
                                                                  "preference labels (sigmoid loss)")


class SaveConfig(_Strict):
    """Checkpoints under RUN/checkpoints/step-NNNNNNNN (the final model also in RUN/model)."""

    every_steps: int | None = Field(None, description="save a checkpoint every N steps (None: only at the end)")
    keep_last: int = Field(2, ge=1, description="checkpoints kept; older ones are deleted")
    projector_only: bool = Field(False, description="stage-1: save the connector alone, referencing the frozen "
                                                    "pretrained parts")


class StopAtLoss(_Strict):
    """End the stage early once the mean training loss of the last ``window`` steps is below
    ``below`` (after ``min_steps``). For drills whose skill is learned abruptly at a step that
    varies from run to run: the epoch count covers the late case, this ends the early one."""

    below: float = Field(gt=0, description="end once the mean loss of the window is below this")
    window: int = Field(50, ge=1, description="steps averaged")
    min_steps: int = Field(0, ge=0, description="never end before this step")


Tracker = Literal["tensorboard", "wandb", "jsonl"]


class WandbSettings(_Strict):
    """Weights & Biases run settings, used when ``report_to`` lists ``wandb`` (``pip install wandb``)."""

    project: str = Field("llavakit", description="W&B project the run is logged to")
    entity: str | None = Field(None, description="W&B team or user (None: the account's default)")
    name: str | None = Field(None, description="run name (None: the output_dir's folder name)")
    tags: list[str] = Field([], description="tags attached to the run")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (files under RUN/wandb, synced later with `wandb sync`) or disabled; "
                          "None: $WANDB_MODE, else online")


class InLoopEval(_Strict):
    """Evaluation during training: the tasks run in-process on the model being trained (eval mode,
    then back to train mode with every RNG restored, so the losses do not change), their scores are
    logged with the losses, and ``best_metric`` keeps the best model in ``RUN/best``."""

    tasks: list[str] = Field(min_length=1, description="built-in task names or task YAML files, as `llavakit eval "
                                                        "--tasks` takes them")
    every_steps: int = Field(ge=1, description="evaluate after every N optimizer steps")
    at_end: bool = Field(True, description="also evaluate after the last step")
    limit: int | None = Field(None, ge=1, description="only the first N samples of each task (None: all)")
    data_root: str | None = Field(None, description="the folder the tasks' data_dirs are relative to (`llavakit "
                                                    "eval --data-root`; for synth_* tasks the synthetic world)")
    split: str | None = Field(
        "dev", description="for tasks that name held-out splits (the synth_* tasks), the one read: dev by default, "
                           "since scores seen during training (best_metric) are used to choose; None: each task's "
                           "own file (synth: test). Tasks with one file read it")
    batch_size: int = Field(8, ge=1, description="prompts generated together")
    best_metric: str | None = Field(
        None, description="'task/score' (e.g. synth_color/accuracy): keep the model with the best value in RUN/best "
                          "(None: keep none)")
    greater_is_better: bool = Field(True, description="whether a larger best_metric is better")

    @model_validator(mode="after")
    def _best_metric_form(self) -> InLoopEval:
        if self.best_metric is not None and self.best_metric.count("/") != 1:
            raise ValueError(f"eval.best_metric={self.best_metric!r}: expected 'task/score', e.g. "
                             "'synth_color/accuracy'")
        return self


class TrainConfig(_Strict):
    """One training stage: `llavakit train CONFIG.yaml`. The stage's preset fills what the file omits."""

    stage: Stage = Field(description="which preset fills the fields the file leaves out (trainable parts, "
                                     "learning rates, template)")
    model: ModelInit = Field(description="where the weights start")
    data: DataConfig = Field(description="the training data")
    output_dir: str = Field(description="the run folder: checkpoints, model/, metrics.jsonl, summary.json")
    overwrite: bool = Field(False, description="train into an output_dir that already holds a run, replacing it "
                                               "(its checkpoints, model, logs); without it such a folder is "
                                               "refused unless the run is resumed")
    trainable: list[ParamRule] = Field(
        [], description="rules giving parameters a learning rate or freezing them; the first rule whose pattern "
                        "matches a parameter name wins, unmatched parameters train at optim.lr; a list here "
                        "replaces the preset's")
    optim: OptimConfig = Field(OptimConfig(), description="optimizer and schedule")
    lora: LoraSettings | None = Field(None, description="LoRA adapters on the LLM, whose own weights then stay "
                                                        "frozen (None: no LoRA)")
    dpo: DpoSettings | None = Field(None, description="DPO settings (stage dpo; defaults when omitted)")
    micro_batch_size: int = Field(4, ge=1, description="samples per forward pass on one process")
    global_batch_size: int = Field(16, ge=1, description="samples per optimizer step over all processes "
                                                         "(a multiple of micro_batch_size x processes)")
    epochs: float = Field(1.0, gt=0, description="passes over the data (fractions allowed)")
    max_steps: int | None = Field(None, description="optimizer steps; overrides epochs (None: from epochs)")
    stop_at_loss: StopAtLoss | None = Field(None, description="end the stage early once the loss is low "
                                                              "(None: run every step)")
    seed: int = Field(0, description="seed of the sample order and of every RNG")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="mixed precision (auto: bf16 on GPU, fp32 on CPU)")
    # How trained tokens are averaged (train.loss_weights): token (LLaVA: every trained token counts
    # the same, so long answers dominate), sample (every sample counts the same) or square (InternVL
    # 2.5: a sample of n trained tokens weighs sqrt(n)).
    loss_reduction: LossReduction = Field(
        "token", description="how trained tokens are averaged: token (LLaVA, every token counts 1), sample "
                             "(every sample counts 1) or square (a sample of n tokens weighs sqrt(n))")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass "
                                                            "(LLM and vision tower) to save memory")
    attention: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="the LLM's attention implementation")
    # auto: whatever the launcher set up (one process, DDP, or accelerate's FSDP/DeepSpeed config);
    # fsdp: shard parameters, gradients and optimizer state (FSDP2), on GPUs or CPU processes.
    distributed: Literal["auto", "fsdp"] = Field(
        "auto", description="auto: what the launcher set up (one process, DDP, or accelerate's FSDP / DeepSpeed "
                            "config); fsdp: shard parameters, gradients and optimizer state (FSDP2), on GPUs or "
                            "CPU processes")
    save: SaveConfig = Field(SaveConfig(), description="checkpoints")
    log_every: int = Field(1, ge=1, description="write a metrics record every N steps (and at the last step)")
    report_to: list[Tracker] = Field(
        ["tensorboard", "jsonl"], description="where metrics go: tensorboard (RUN/tensorboard), wandb, jsonl "
                                              "(RUN/metrics.jsonl, always written: `llavakit plot` reads it)")
    wandb: WandbSettings = Field(WandbSettings(), description="the W&B run, when report_to lists wandb")
    tensorboard: bool = Field(True, description="false drops tensorboard from report_to (kept for older configs)")
    eval: InLoopEval | None = Field(None, description="evaluation during training (None: none)")

    @field_validator("attention")
    @classmethod
    def _attention_available(cls, attention: str) -> str:
        if attention == "flash_attention_2":
            import torch
            from transformers.utils import is_flash_attn_2_available

            if not is_flash_attn_2_available():
                lacking = "flash-attn 2.3.3 or later" if torch.cuda.is_available() else "CUDA GPU"
                raise ValueError(f"flash_attention_2 needs a CUDA GPU and the flash-attn package (pip install "
                                 f"flash-attn), and this machine has no {lacking}; use sdpa")
        return attention

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if "jsonl" not in self.report_to:  # metrics.jsonl is the log every tool reads: always written
            self.report_to = [*self.report_to, "jsonl"]
        if not self.tensorboard:
            self.report_to = [t for t in self.report_to if t != "tensorboard"]
        if self.eval is not None and self.distributed == "fsdp":
            raise ValueError("eval: evaluation during training generates on one process, which a model sharded "
                             "by distributed=fsdp cannot do; evaluate the saved checkpoints with `llavakit eval`")
        if self.stage == "dpo" and self.dpo is None:
            self.dpo = DpoSettings()
        if self.stage == "dpo" and self.loss_reduction != "token":
            raise ValueError(f"loss_reduction={self.loss_reduction!r} is for next-token stages; DPO's loss is "
                             "one term per preference pair already")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} must be a multiple of micro_batch_size="
                f"{self.micro_batch_size} (times the number of processes)"
            )
        return self


# Stage presets (seeds 000, 003): stage-1 aligns the projector on captions with the `plain`
# template at lr 1e-3; stage-1.5 / 2 train everything, the vision tower 5-10x slower.
PRESETS: dict[str, dict[str, Any]] = {
    "stage1": {
        "trainable": [{"pattern": r"^(multi_modal_projector\.|image_newline$)", "lr": 1e-3},
                      {"pattern": ".", "frozen": True}],
        "optim": {"lr": 1e-3},
        "data": {"settings": {"template": "plain"}},
    },
    "stage1.5": {
        "trainable": [{"pattern": r"^vision_tower\.", "lr": 2e-6}, {"pattern": ".", "lr": 1e-5}],
        "optim": {"lr": 1e-5},
    },
    "stage2": {
        "trainable": [{"pattern": r"^vision_tower\.", "lr": 2e-6}, {"pattern": ".", "lr": 1e-5}],
        "optim": {"lr": 1e-5},
    },
    "continue": {  # the Interleave recipe: continue a stage-2 model on new data, same rates
        "trainable": [{"pattern": r"^vision_tower\.", "lr": 2e-6}, {"pattern": ".", "lr": 1e-5}],
        "optim": {"lr": 1e-5},
    },
    "dpo": {
        "trainable": [{"pattern": r"^vision_tower\.", "frozen": True}, {"pattern": ".", "lr": 5e-7}],
        "optim": {"lr": 5e-7},
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``optim.lr=1e-4`` -> {"optim": {"lr": 1e-4}} (the value is parsed as YAML)."""
    if "=" not in text:
        raise TrainConfigError(f"override {text!r}: expected key.path=value")
    path, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw)
    for key in reversed(path.strip().split(".")):
        value = {key: value}
    return value


def build_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    stage = data.get("stage")
    if stage not in PRESETS:
        raise TrainConfigError(f"{source}: stage {stage!r} is unknown; choose from {', '.join(PRESETS)}")
    merged = deep_merge(PRESETS[stage], data)
    if "trainable" in data:  # a user's rule list replaces the preset's, never mixes with it
        merged["trainable"] = data["trainable"]
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise TrainConfigError(f"{source}: invalid training config: {validation_summary(err)}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides and the stage preset; paths stay as written,
    relative ones resolved against the YAML file's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise TrainConfigError(f"{path}: cannot read ({err})") from None
    for override in overrides:
        data = deep_merge(data, parse_override(override))
    data = _resolve_paths(data, path.parent)
    config = build_config(data, str(path))
    try:
        config.model.require_loadable()
    except ValueError as err:
        raise TrainConfigError(f"{path}: invalid training config: model: {err}") from None
    return config


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolve(value: str | None) -> str | None:
        if value is None or Path(value).is_absolute() or value.count("/") == 1 and not (base / value).exists():
            return value  # absolute, or a hub id
        return str((base / value).resolve())

    data = copy.deepcopy(data)
    for source in data.get("data", {}).get("sources", []):
        for key in ("path", "image_folder", "video_folder"):
            if source.get(key):
                source[key] = resolve(source[key])
    if data.get("output_dir"):
        data["output_dir"] = resolve(data["output_dir"])
    evaluation = data.get("eval") or {}
    if isinstance(evaluation, dict):
        if evaluation.get("data_root"):
            evaluation["data_root"] = resolve(evaluation["data_root"])
        if isinstance(evaluation.get("tasks"), list):  # task files, not built-in names
            evaluation["tasks"] = [resolve(t) if isinstance(t, str) and t.endswith((".yaml", ".yml")) else t
                                   for t in evaluation["tasks"]]
    model = data.get("model", {})
    if model.get("checkpoint"):
        model["checkpoint"] = resolve(model["checkpoint"])
    for part in ("vision", "llm"):
        spec = (model.get("build") or {}).get(part, {})
        if spec.get("pretrained"):
            spec["pretrained"] = resolve(spec["pretrained"])
    return data
