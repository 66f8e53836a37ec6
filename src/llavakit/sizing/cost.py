"""FLOPs and memory of one training step, from the model's shapes and a stage's trainable parts.

FLOPs per sample (matmuls only; norms, activations and the AnyRes packing are noise next to them).
A stack of N matmul parameters over T tokens costs 2·N·T forward, another 2·N·T for the gradients
of its inputs when anything below it trains, and 2·N_trained·T for its weights' gradients: 6·N·T
when all of it trains (the usual rule), 4·N·T for the frozen LLM of stage-1 (the projector below it
trains), 2·N·T for a frozen tower with nothing below it. Attention adds 4·layers·T²·width forward
per sequence (QKᵀ and the weighted sum, full square), twice that backward when the stack backprops.
The LLM's input embedding is a lookup, not a matmul (counted only when tied to the output layer).

Memory per GPU. The training loop keeps fp32 weights and autocasts to bf16 (accelerate's mixed
precision), so: weights 4 B per parameter, gradients 4 B and AdamW's two moments 8 B per trained
parameter; DDP holds all of it on every GPU, FSDP / ZeRO-3 a 1/N shard plus the gathered layers in
flight (two layers' fp32 weights); LoRA trains only the adapters (and what the stage trains outside
the LLM). Activations are the tensors autograd keeps for the backward, per token and layer, counted
from what the layers save (bf16 on GPU, fp32 on CPU; values per token):

- decoder layer (RMSNorm, attention with SDPA, gated MLP), trained: 7·d + 2·kv + 4·I (norm inputs
  and outputs, q, k, v, the attention output and its copy, gate, up, activation, product);
  frozen (the backward only passes through: frozen linears keep no inputs): 4·d + 2·kv + 3·I;
- encoder layer (LayerNorm, attention, GELU MLP), trained: 9·d + 2·I; frozen with nothing below it
  training: nothing (no graph is recorded);
- logits: per token, vocab values at the activation width plus three fp32 ones: the loss keeps the
  log-softmax, and its backward holds the gradient of that and of its input at once;
- with activation checkpointing, each layer keeps its input (d) and one layer at a time is
  recomputed with its full activations.

The peak adds gradients and activations only under gradient accumulation (``MemoryEstimate.total``).

Not counted: the CUDA context and allocator fragmentation (a few GiB), the data pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig

from llavakit.config import LlavaConfig

GIB = 2 ** 30
WEIGHT_BYTES, GRAD_BYTES, ADAM_BYTES = 4, 4, 8  # fp32 master weights, their gradients, AdamW's m and v


@dataclass(frozen=True)
class Stack:
    """The shape of a transformer stack, as its layers' activations and attention need it."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_width: int  # key/value heads x head width (== hidden without grouped-query attention)
    gated: bool  # SwiGLU-style MLP (decoder) or a plain two-layer MLP (vision encoder)

    @classmethod
    def from_hf(cls, hf_config: dict, gated: bool) -> Stack:
        config = AutoConfig.for_model(**hf_config)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, heads,
                   kv_heads * head_dim, gated)

    def saved_values(self, trained: bool) -> int:
        """Values autograd keeps per token and layer (see the module's docstring)."""
        d, kv, inter = self.hidden, self.kv_width, self.intermediate
        if self.gated:
            return 7 * d + 2 * kv + 4 * inter if trained else 4 * d + 2 * kv + 3 * inter
        return 9 * d + 2 * inter if trained else 0

    def attention_flops(self, tokens: int) -> int:
        """Forward attention FLOPs of one sequence of ``tokens`` (QKᵀ and the weighted sum)."""
        return 4 * self.layers * tokens * tokens * self.hidden


@dataclass(frozen=True)
class Sample:
    """One planned training sample: tokens through the LLM, crops through the vision tower."""

    tokens: int
    crops: int
    vision_tokens_per_crop: int  # tokens through the tower per crop (a CLS token included)
    projected_tokens: int  # tower tokens the projector maps (per crop, CLS dropped, times crops)


@dataclass(frozen=True)
class Trainability:
    """Trained parameter counts per part, as ``params.stage_counts`` gives them."""

    vision: int
    projector: int
    llm: int  # LoRA adapters included
    adapters: int = 0  # LoRA adapter parameters (not in the base model's counts)

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.llm


@dataclass(frozen=True)
class ModelShape:
    vision: Stack
    llm: Stack
    vocab: int
    vision_params: int
    projector_params: int
    llm_params: int
    llm_matmul_params: int  # the LLM less its input-embedding lookup (kept when tied to the output)
    largest_llm_layer: int  # parameters of one decoder layer (FSDP gathers layer by layer)
    vision_width: int  # features entering the projector
    projector_depth: int

    @property
    def total(self) -> int:
        return self.vision_params + self.projector_params + self.llm_params


def model_shape(config: LlavaConfig, model) -> ModelShape:
    """Shapes and counts of a (meta) model built from ``config``."""
    from llavakit.sizing.params import part_counts

    counts = part_counts(model)
    language_model = model.language_model
    embedding = language_model.get_input_embeddings().weight
    output = language_model.get_output_embeddings().weight
    matmul = counts["llm"] - (0 if output is embedding else embedding.numel())
    layers = language_model.model.layers
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    return ModelShape(
        vision=Stack.from_hf(config.vision.hf_config, gated=False),
        llm=Stack.from_hf(config.llm.hf_config, gated=True),
        vocab=embedding.shape[0], vision_params=counts["vision"], projector_params=counts["projector"],
        llm_params=counts["llm"], llm_matmul_params=matmul, largest_llm_layer=largest,
        vision_width=config.vision.hidden_size * config.vision.num_feature_layers,
        projector_depth=config.projector.depth)


def flops_per_sample(shape: ModelShape, sample: Sample, trained: Trainability) -> dict[str, float]:
    """Training FLOPs of one sample, per part and in total (the rule in the module's docstring)."""
    vision_tokens = sample.crops * sample.vision_tokens_per_crop
    vision_trains = trained.vision > 0
    vision = 2 * shape.vision_params * vision_tokens + sample.crops * shape.vision.attention_flops(
        sample.vision_tokens_per_crop)
    if vision_trains:
        vision *= 3
    projector = 2 * shape.projector_params * sample.projected_tokens * (
        1 + (trained.projector > 0) + vision_trains)
    llm_forward = 2 * shape.llm_matmul_params * sample.tokens + shape.llm.attention_flops(sample.tokens)
    # the input gradients always flow (something trains at or below every LLM layer), weights' when trained
    llm = 3 * llm_forward - 2 * (shape.llm_matmul_params - min(trained.llm, shape.llm_matmul_params)) * sample.tokens
    return {"vision": float(vision), "projector": float(projector), "llm": float(llm),
            "total": float(vision + projector + llm)}


def activation_bytes(shape: ModelShape, sample: Sample, trained: Trainability, micro_batch: int,
                     checkpointing: bool, width: int) -> int:
    """Bytes autograd keeps for one micro-batch (``width`` bytes per activation value)."""
    tokens = micro_batch * sample.tokens
    llm, vision = shape.llm, shape.vision
    llm_trained = trained.llm > 0
    per_layer = llm.saved_values(llm_trained)
    if checkpointing:
        values = tokens * (llm.layers * llm.hidden + per_layer)
    else:
        values = tokens * llm.layers * per_layer
    logits = tokens * shape.vocab * (width + 3 * 4)
    vision_values = 0
    vision_tokens = micro_batch * sample.crops * sample.vision_tokens_per_crop
    if trained.vision:
        vision_per_layer = vision.saved_values(trained=True)
        vision_values = vision_tokens * (vision.layers * vision.hidden + vision_per_layer if checkpointing
                                         else vision.layers * vision_per_layer)
    projector_values = 0
    if trained.projector or trained.vision:  # its input, the GELU's input and output per hidden layer
        projected = micro_batch * sample.projected_tokens
        projector_values = projected * (shape.vision_width + 2 * (shape.projector_depth - 1) * llm.hidden)
    return (values + vision_values + projector_values) * width + logits


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    accumulates: bool  # several micro-batches per optimizer step on this GPU

    @property
    def total(self) -> int:
        """The peak. Gradients and activations meet in full only under gradient accumulation (the
        gradients of the step's earlier micro-batches wait through the later ones' forward); without
        it they trade places: the backward frees each layer's activations as its gradients appear,
        and the gradients are freed after the optimizer step, before the next forward."""
        if self.accumulates:
            return self.weights + self.optimizer + self.gradients + self.activations
        return self.weights + self.optimizer + max(self.gradients, self.activations)

    def to_json(self, gpu_bytes: int) -> dict:
        gib = {key: round(value / GIB, 2) for key, value in (
            ("weights", self.weights), ("gradients", self.gradients), ("optimizer", self.optimizer),
            ("activations", self.activations), ("total", self.total))}
        return {**gib, "fits": self.total <= gpu_bytes}


def memory(shape: ModelShape, trained: Trainability, sample: Sample, micro_batch: int, gpus: int,
           sharded: bool, checkpointing: bool, width: int = 2, accumulation: int = 1) -> MemoryEstimate:
    """Bytes per GPU of one training step: DDP (``sharded`` false) or FSDP / ZeRO-3 over ``gpus``,
    ``accumulation`` micro-batches per optimizer step."""
    weights = WEIGHT_BYTES * (shape.total + trained.adapters)
    gradients, optimizer = GRAD_BYTES * trained.total, ADAM_BYTES * trained.total
    if sharded:
        weights = weights // gpus + 2 * WEIGHT_BYTES * shape.largest_llm_layer
        gradients, optimizer = gradients // gpus, optimizer // gpus
    return MemoryEstimate(weights, gradients, optimizer,
                          activation_bytes(shape, sample, trained, micro_batch, checkpointing, width),
                          accumulation > 1)
