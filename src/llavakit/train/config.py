"""Training configuration: one typed schema for YAML files, CLI overrides and Python.

A config names a stage; the stage's preset (seeds 000 and 003) fills every field the file leaves
out. Which parameters train, and at what learning rate, is data: an ordered list of rules
(regex -> lr, or frozen), first match wins, as in big_vision.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llavakit.data.dataset import DataSettings
from llavakit.errors import LlavakitError
from llavakit.train.loss_weights import LossReduction

Stage = Literal["stage1", "stage1.5", "stage2", "continue", "dpo"]


class TrainConfigError(LlavakitError):
    """A training config that cannot work, found before training starts."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamRule(_Strict):
    """Parameters whose name matches ``pattern`` (re.search) get this lr, or are frozen."""

    pattern: str
    lr: float | None = None  # None: the optimizer's base lr
    frozen: bool = False
    weight_decay: float | None = None  # None: optimizer default (0 for biases, norms and vectors)


class ModelInit(_Strict):
    """Where the weights start: a checkpoint (continue) or pretrained parts plus a new projector."""

    checkpoint: str | None = None  # any directory or hub id llavakit.load accepts
    build: dict[str, Any] | None = None  # LlavaConfig data whose vision/llm name `pretrained` paths

    @model_validator(mode="after")
    def _one_source(self) -> ModelInit:
        if (self.checkpoint is None) == (self.build is None):
            raise ValueError("model: give exactly one of checkpoint (continue training) or build (from parts)")
        return self


class DataSource(_Strict):
    """One LLaVA JSON/JSONL file, or a YAML mixture of several."""

    path: str  # .json, .jsonl or .yaml (mixture)
    image_folder: str | None = None
    video_folder: str | None = None


class DataConfig(_Strict):
    sources: list[DataSource]
    settings: DataSettings = DataSettings()
    packing: bool = False  # several samples per row, no cross-sample attention
    group_by_length: bool = True  # batches of similar modality and length
    num_workers: int = 0


class OptimConfig(_Strict):
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class LoraSettings(_Strict):
    """LoRA on the language model through peft; composes with any stage."""

    rank: int = Field(16, ge=1)
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lr: float | None = None  # None: the optimizer's base lr
    quantize: Literal["none", "4bit", "8bit"] = "none"  # QLoRA needs CUDA and bitsandbytes


class DpoSettings(_Strict):
    beta: float = Field(0.1, gt=0)
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    reference: Literal["model", "precomputed"] = "model"  # a frozen copy, or logps stored in the data
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class SaveConfig(_Strict):
    every_steps: int | None = None  # None: only at the end
    keep_last: int = Field(2, ge=1)
    projector_only: bool = False  # stage-1: save the connector, reference the frozen parts


class StopAtLoss(_Strict):
    """End the stage early once the mean training loss of the last ``window`` steps is below
    ``below`` (after ``min_steps``). For drills whose skill is learned abruptly at a step that
    varies from run to run: the epoch count covers the late case, this ends the early one."""

    below: float = Field(gt=0)
    window: int = Field(50, ge=1)
    min_steps: int = Field(0, ge=0)


class TrainConfig(_Strict):
    stage: Stage
    model: ModelInit
    data: DataConfig
    output_dir: str
    # Train into an output_dir that already holds a run, replacing it (its checkpoints, model, logs).
    # Without it such a directory is refused unless the run is resumed.
    overwrite: bool = False
    trainable: list[ParamRule] = []
    optim: OptimConfig = OptimConfig()
    lora: LoraSettings | None = None
    dpo: DpoSettings | None = None
    micro_batch_size: int = Field(4, ge=1)
    global_batch_size: int = Field(16, ge=1)  # samples per optimizer step over all processes
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = None
    stop_at_loss: StopAtLoss | None = None  # None: run every step
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # How trained tokens are averaged (train.loss_weights): token (LLaVA: every trained token counts
    # the same, so long answers dominate), sample (every sample counts the same) or square (InternVL
    # 2.5: a sample of n trained tokens weighs sqrt(n)).
    loss_reduction: LossReduction = "token"
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # auto: whatever the launcher set up (one process, DDP, or accelerate's FSDP/DeepSpeed config);
    # fsdp: shard parameters, gradients and optimizer state (FSDP2), on GPUs or CPU processes.
    distributed: Literal["auto", "fsdp"] = "auto"
    save: SaveConfig = SaveConfig()
    log_every: int = Field(1, ge=1)
    tensorboard: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
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
        raise TrainConfigError(f"{source}: invalid training config:\n{err}") from None


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
    return build_config(data, str(path))


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
    model = data.get("model", {})
    if model.get("checkpoint"):
        model["checkpoint"] = resolve(model["checkpoint"])
    for part in ("vision", "llm"):
        spec = (model.get("build") or {}).get(part, {})
        if spec.get("pretrained"):
            spec["pretrained"] = resolve(spec["pretrained"])
    return data
