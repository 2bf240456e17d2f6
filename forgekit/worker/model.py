"""The worker's model: weights (+ context extension, Liger, label tokens, LoRA), precision, and the Trainer class.

Also the classification metrics the Trainer computes at each evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["classification_fns", "classification_metrics", "free_activation_bytes", "load_model", "settle_precision",
           "trainer_class"]

log = logging.getLogger("forgekit")


def settle_precision(precision: str) -> tuple[bool, bool, str]:
    """(bf16 weights, bf16 autocast on the CPU, the name result.json records) for the plan's precision on this
    worker: "auto" (a GPU the driver could not see) becomes bf16 where the GPU supports it; "bf16" on a GPU that
    lacks it fails here rather than training in another precision."""
    import torch

    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    elif precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"precision: bf16, but {torch.cuda.get_device_name()} does not support bf16")
    return precision == "bf16", precision == "bf16-autocast", precision


def trainer_class(cpu_autocast: bool, base: type | None = None) -> type:
    """The transformers Trainer (or `base`, a subclass: TRL's preference trainers), or with `cpu_autocast` one that
    runs each forward pass (training and evaluation) under bf16 autocast on the CPU.

    Weights, gradients and the optimizer stay fp32 (DeepSpeed, if used, trains in fp32); only the matrix
    products run in bf16, as `torch.autocast` decides. Measured: benchmarks/results/README.md (CPU).
    """
    import torch
    from transformers import Trainer

    base = base or Trainer
    if not cpu_autocast:
        return base

    class CpuAutocastTrainer(base):
        def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
            return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled)

    return CpuAutocastTrainer


def load_model(cfg: Any, tokenizer: Any, dtype: Any, attn: str, liger: bool, *, source: str, context_length: int,
               adapter: str | None = None, device: int | str = "cpu", zero_stage: int = 0) -> tuple[Any, bool]:
    """Base (or stage-1 full weights) + optional context extension, Liger, label tokens and LoRA; with `quant_conf`
    the base loads quantized by bitsandbytes straight onto `device` (this worker's GPU index, or "cpu": a
    bitsandbytes model is never moved afterwards) and LoRA trains on it (QLoRA).

    Returns the model and whether Liger's kernels were applied (False where liger-kernel is missing or does
    not know the architecture: `perf.apply_liger` warns).

    Raises:
        ConfigError: this worker's device cannot run `quant_conf` (`forgekit.quantization.quantization_problems`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from forgekit.models import base_model_name
    from forgekit.quantization import bnb_config, quantization_problems

    # the driver checked the installation and the CPU; a GPU worker checks its own GPU's kernels
    problems = quantization_problems(cfg.quant_conf, use_gpu=device != "cpu", zero_stage=zero_stage)
    if problems:
        from forgekit.config import ConfigError

        raise ConfigError(problems)

    remote_code = cfg.trust_remote_code  # a model with custom code needs it; checked on the driver (forgekit.checks)
    model_config = AutoConfig.from_pretrained(source, trust_remote_code=remote_code)
    model_max = getattr(model_config, "max_position_embeddings", None)
    extra: dict[str, Any] = {}
    if model_max and context_length > model_max:
        # context extension: stretch RoPE so positions beyond the pretrained range map into it
        scaling = dict(cfg.rope_scaling or {"rope_type": "linear", "factor": context_length / model_max})
        rope = dict(getattr(model_config, "rope_parameters", None) or {})
        rope.update(scaling)
        rope.setdefault("rope_theta", getattr(model_config, "rope_theta", 10000.0))
        model_config.rope_parameters = rope
        model_config.max_position_embeddings = context_length
        extra["config"] = model_config
    elif cfg.rope_scaling:
        rope = dict(getattr(model_config, "rope_parameters", None) or {})
        rope.update(cfg.rope_scaling)
        model_config.rope_parameters = rope
        extra["config"] = model_config
    quant = bnb_config(cfg.quant_conf, compute_dtype=dtype)  # the 4-bit matmuls in the training dtype by default
    if quant is not None:
        extra.update(quantization_config=quant, device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn,
                                                 trust_remote_code=remote_code, **extra)
    model.config.use_cache = False
    if liger:
        from forgekit.perf import apply_liger

        liger = apply_liger(model, **cfg.liger_kernel.kwargs)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    # QLoRA without peft's prepare_model_for_kbit_training: with use_gradient_checkpointing=False (forgekit
    # checkpoints per layer itself, non-reentrant: no enable_input_require_grads needed) it only freezes the base,
    # as get_peft_model does, and casts the unquantized weights (embeddings, output layer, norms) to fp32. That cast
    # costs 2 bytes per such parameter (2.1 GB for Llama-3.1-8B's embeddings and output layer) for weights that
    # stay frozen, and DeepSpeed's bf16 engine casts them back to bf16 anyway; here they keep the training dtype,
    # as in a bf16 LoRA run. benchmarks/qlora.py measures both (variant "qlora-fp32-cast").
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    elif cfg.lora_config:
        from peft import LoraConfig, get_peft_model

        lora = dict(cfg.lora_config)
        if cfg.task == "classification" and not lora.get("modules_to_save") and not lora.get("trainable_token_indices"):
            # the new label tokens need trained embedding rows (and output rows: tied or not)
            label_ids = tokenizer.convert_tokens_to_ids(cfg.classifier_config.label_tokens)
            lora["trainable_token_indices"] = {"embed_tokens": label_ids}
            if not model.config.tie_word_embeddings:
                lora["modules_to_save"] = ["lm_head"]
        lora.setdefault("task_type", "CAUSAL_LM")
        model = get_peft_model(model, LoraConfig(**lora))
    if adapter or cfg.lora_config:
        # adapter checkpoints record the base as the user named it (adapter_config.json, peft's model card), not where
        # this node found it, so plain peft loads them elsewhere; a continued adapter had recorded its own. (Not for
        # full weights: their config.json records no base, and TRL loads a full run's reference from this name.)
        named = base_model_name(cfg.model_id, cfg.initial_base_model_ckpt_path)
        for adapter_config in model.peft_config.values():
            adapter_config.base_model_name_or_path = named
        base = model.get_base_model()
        base.config.name_or_path = base.name_or_path = named
    return model, liger


def free_activation_bytes(model: Any, trainable: int, zero_stage: int, world: int) -> float:
    """GPU memory left for activations: device memory minus weights, gradients and AdamW state (estimate)."""
    import torch

    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state = trainable * 16  # fp32 master weights + two AdamW moments + bf16 gradients, per trainable parameter
    if zero_stage >= 1:
        state /= world
    if zero_stage >= 3:
        weights /= world
    return max(total - weights - state - 3 * 2**30, 0.0)  # 3 GiB: CUDA context, workspaces, fragmentation


def classification_fns(label_ids: list[int], metrics: Sequence[str] = ("accuracy",)) -> dict[str, Any]:
    """Classification metrics at each trained (label) position: `accuracy` (the predicted token, over the whole
    vocabulary, is the label), and on request `f1` (macro F1, a prediction outside the label tokens counting as
    wrong) and `prauc` (macro average precision, one class against the rest, of the softmax over the label tokens).
    """
    import numpy as np
    import torch

    ids = torch.tensor(label_ids)

    def preprocess_logits_for_metrics(logits: Any, labels: Any) -> Any:
        # [argmax over the vocabulary, logits of the label tokens]: kept per position instead of the full vocabulary
        scores = logits[..., ids.to(logits.device)].float()
        return torch.cat([logits.argmax(dim=-1, keepdim=True).float(), scores], dim=-1)

    def compute_metrics(pred: Any) -> dict[str, float]:
        out, labels = np.asarray(pred.predictions), np.asarray(pred.label_ids)
        out, labels = out[:, :-1], labels[:, 1:]  # the token at t predicts label t+1
        mask = labels != -100
        return classification_metrics(out[mask][:, 0].astype(np.int64), out[mask][:, 1:], labels[mask], label_ids, metrics)

    return {"compute_metrics": compute_metrics, "preprocess_logits_for_metrics": preprocess_logits_for_metrics}


def classification_metrics(predicted: Any, label_logits: Any, labels: Any, label_ids: Sequence[int],
                           metrics: Sequence[str] = ("accuracy",)) -> dict[str, float]:
    """Accuracy (always), macro F1 and macro PR-AUC of a classification evaluation.

    Args:
        predicted: `[n]` the predicted token ids (argmax over the vocabulary).
        label_logits: `[n, k]` the logits of the k label tokens.
        labels: `[n]` the gold token ids (each one of `label_ids`).
        label_ids: the k label tokens' ids, in class order.
        metrics: which of "accuracy", "f1", "prauc" to compute.
    """
    import numpy as np

    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if not len(labels):
        return {"accuracy": 0.0}
    out = {"accuracy": float((predicted == labels).mean())}
    classes = [c for c in label_ids if (labels == c).any()]  # classes absent from the evaluation set have no recall
    if "f1" in metrics:
        f1s = []
        for c in classes:
            tp = float(((predicted == c) & (labels == c)).sum())
            fp, fn = float(((predicted == c) & (labels != c)).sum()), float(((predicted != c) & (labels == c)).sum())
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        out["f1"] = float(np.mean(f1s))
    if "prauc" in metrics:
        z = np.asarray(label_logits, dtype=np.float64)
        probs = np.exp(z - z.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        aps = []
        for j, c in enumerate(label_ids):
            if c not in classes:
                continue
            order = np.argsort(-probs[:, j], kind="stable")
            hits = (labels[order] == c).astype(np.float64)
            precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            aps.append(float((precision_at * hits).sum() / hits.sum()))  # average precision = area under P-R
        out["prauc"] = float(np.mean(aps))
    return out
