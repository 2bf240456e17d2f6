"""Estimates a user makes before training: token lengths and padding, the learning-rate schedule, batch plans for
several world sizes, a config's plan in numbers, parameter counts (full or LoRA), and cost per token.

Everything here is cheap and never trains: the data is tokenized once into the cache, models are built on the meta
device (no weights loaded), and `training_plan` is the run's own plan (`forgekit.plan`).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["batch_size_table", "count_parameters", "lora_parameter_table", "lr_schedule",
           "padding_waste", "token_lengths", "training_plan"]


def token_lengths(config: Any, overrides: Sequence[str] = (), *, default: bool = False) -> tuple[list[int], int]:
    """(token length of every training example, context length) as the run would tokenize them.

    Uses `forgekit.prepare.prepare_data` (tokenized once, cached), with packing switched off so each length
    is one example.
    """
    from datasets import load_from_disk

    from forgekit.config import FinetuneConfig, load_config
    from forgekit.prepare import DataSpec, prepare_data

    cfg = config if isinstance(config, FinetuneConfig) else load_config(config, overrides, default=default)
    prepared = prepare_data(cfg, DataSpec(context_length=cfg.context_length, packing=False))
    lengths = list(load_from_disk(str(prepared.train_dir))["length"])
    return lengths, prepared.manifest["context_length"]


def padding_waste(
    lengths: Sequence[int],
    batch_size: int,
    padding: str = "longest",
    *,
    context_length: int | None = None,
    seed: int = 42,
) -> dict[str, Any]:
    """Real vs computed tokens of one epoch over examples of these lengths, in micro-batches of `batch_size`.

    Batches are drawn in a shuffled order (as the Trainer's sampler does; `seed` fixes it) and padded as the
    collator pads them: `longest` to the longest example of each batch, `max_length` every row to
    `context_length`; `packed` packs examples into rows of `context_length` first (forgekit's packing,
    best-fit decreasing) and flattens each batch, so nothing is padded.

    Returns:
        {"padding", "batch_size", "batches", "real_tokens", "computed_tokens", "pad_tokens", "waste"
        (pad share of computed tokens), "rows" (packed rows or examples)}.

    Raises:
        ValueError: unknown padding, a batch size < 1, no lengths, or `max_length` / `packed` without a
            context length (or an example longer than it).
    """
    from forgekit.prepare import pack_rows

    if padding not in ("longest", "max_length", "packed"):
        raise ValueError(f"padding {padding!r}: expected 'longest', 'max_length' or 'packed'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lengths:
        raise ValueError("no lengths given")
    if padding != "longest":
        if not context_length:
            raise ValueError(f"padding {padding!r} needs context_length")
        if max(lengths) > context_length:
            raise ValueError(f"an example has {max(lengths)} tokens, more than context_length={context_length}")
    rows = [sum(lengths[i] for i in b) for b in pack_rows(list(lengths), context_length)] if padding == "packed" else list(lengths)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    real = computed = batches = 0
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        real += sum(batch)
        if padding == "longest":
            computed += max(batch) * len(batch)
        elif padding == "max_length":
            computed += context_length * len(batch)
        else:
            computed += sum(batch)
        batches += 1
    return {
        "padding": padding,
        "batch_size": batch_size,
        "batches": batches,
        "real_tokens": real,
        "computed_tokens": computed,
        "pad_tokens": computed - real,
        "waste": (computed - real) / computed,
        "rows": len(rows),
    }


def lr_schedule(
    lr_scheduler_type: str,
    learning_rate: float,
    max_steps: int,
    num_warmup_steps: int = 0,
    scheduler_kwargs: Mapping[str, Any] | None = None,
) -> list[float]:
    """The learning rate of optimizer steps 1..`max_steps` (item i is step i + 1), without training.

    transformers' `get_scheduler` (the one the Trainer uses) drives a dummy one-parameter optimizer; the value
    for step k is the rate that step updates with, which is what `metrics.jsonl` logs as `learning_rate`.

    Args:
        lr_scheduler_type: a config's `lr_scheduler_type` (linear, cosine, constant_with_warmup, ...).
        learning_rate: peak rate.
        max_steps: optimizer steps of the run.
        num_warmup_steps: linear warm-up steps from 0.
        scheduler_kwargs: extra scheduler arguments (e.g. `{"min_lr_rate": 0.1}` for cosine_with_min_lr).

    Raises:
        ValueError: max_steps < 1, negative warm-up, a scheduler transformers does not know, or one that
            needs `scheduler_kwargs` it was not given (transformers' message).
    """
    import torch
    from transformers import get_scheduler

    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if num_warmup_steps < 0:
        raise ValueError(f"num_warmup_steps must be >= 0, got {num_warmup_steps}")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    try:
        scheduler = get_scheduler(
            lr_scheduler_type, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=max_steps,
            scheduler_specific_kwargs=dict(scheduler_kwargs or {}),
        )
    except TypeError as e:  # a scheduler that needs arguments (e.g. warmup_stable_decay: num_decay_steps)
        raise ValueError(f"lr_scheduler_type {lr_scheduler_type!r} needs scheduler_kwargs: {e}") from None
    rates = []
    for _ in range(max_steps):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return rates


def batch_size_table(total_batch_size: int, max_per_device: int | None, world_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """`forgekit.plan.derive_batch_sizes` for each world size: how one total batch is made on each.

    A world size that does not divide the total gets the rule's error message in `note` instead of sizes.
    """
    from forgekit.config import ConfigError
    from forgekit.plan import derive_batch_sizes

    rows = []
    for world in world_sizes:
        row: dict[str, Any] = {"num_devices": world, "total_batch_size": total_batch_size}
        try:
            per_device, accum = derive_batch_sizes(total_batch_size, max_per_device, world)
        except ConfigError as e:
            row.update(per_device=None, accumulation=None, note=e.problems[0])
        else:
            row.update(per_device=per_device, accumulation=accum,
                       note=f"{world} x {per_device} x {accum} = {world * per_device * accum}")
        rows.append(row)
    return rows


def training_plan(config: Any, overrides: Sequence[str] = (), *, default: bool = False, use_gpu: bool = False) -> dict[str, Any]:
    """What a config resolves to before anything trains: the batch, epochs, optimizer steps and evaluations of its
    plan (`forgekit.plan.plan_run`, the numbers `forgekit validate` prints and the workers execute).

    Returns:
        {"train_rows", "num_devices", "per_device", "accumulation", "total_batch", "num_epochs",
        "num_epochs_derived", "min_num_update_steps", "steps_per_epoch", "max_steps", "eval_every",
        "evaluations", "checkpoints_written"}.
    """
    from forgekit.config import FinetuneConfig, load_config
    from forgekit.plan import plan_run

    cfg = config if isinstance(config, FinetuneConfig) else load_config(config, overrides, default=default)
    p = plan_run(cfg, use_gpu=use_gpu)
    return {
        "train_rows": p.data.manifest["train_rows"],
        "num_devices": p.world_size,
        "per_device": p.micro_batch,
        "accumulation": p.accumulation,
        "total_batch": p.total_batch,
        "num_epochs": p.num_epochs,
        "num_epochs_derived": "num_epochs" in p.derived,
        "min_num_update_steps": cfg.min_num_update_steps,
        "steps_per_epoch": p.steps_per_epoch,
        "max_steps": p.total_steps,
        "eval_every": p.eval_every,
        "evaluations": p.evaluations,
        "checkpoints_written": p.checkpoints,
    }


def count_parameters(model_id: str | Path, lora_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trainable and total parameters of a model, full fine-tuning or with a LoRA config, without weights.

    The model is built from its config on the meta device (no memory, a second or two even for 8B) and
    wrapped with peft as the training worker wraps it, so the counts are the ones `result.json` reports.

    Args:
        model_id: a model dir, embedded alias or Hub id (its config.json is read).
        lora_config: peft LoraConfig keywords (a config's `lora_config`); None = full fine-tuning.

    Returns:
        {"trainable", "total", "trainable_share"}.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from forgekit.models import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(str(model_id)))
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notices from peft/transformers internals
        model = AutoModelForCausalLM.from_config(config)
        if lora_config is not None:
            from peft import LoraConfig, get_peft_model

            lora = dict(lora_config)
            lora.setdefault("task_type", "CAUSAL_LM")
            model = get_peft_model(model, LoraConfig(**lora))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_share": trainable / total}


def lora_parameter_table(
    model_id: str | Path, ranks: Sequence[int], targets: Mapping[str, str | Sequence[str]], *, alpha_per_rank: float = 2.0
) -> list[dict[str, Any]]:
    """`count_parameters` for each LoRA rank and target-module set (lora_alpha = alpha_per_rank x r).

    Args:
        model_id: a model dir, embedded alias or Hub id.
        ranks: LoRA ranks r.
        targets: label → peft `target_modules` (a list of module names, or "all-linear").

    Returns:
        One row per (targets, r): {"targets", "r", "trainable", "total", "trainable_share"}, then one
        "full fine-tuning" row.
    """
    rows = []
    for label, modules in targets.items():
        modules = modules if isinstance(modules, str) else list(modules)
        for r in ranks:
            lora = {"r": r, "lora_alpha": alpha_per_rank * r, "target_modules": modules}
            rows.append({"targets": label, "r": r, **count_parameters(model_id, lora)})
    rows.append({"targets": "full fine-tuning", "r": None, **count_parameters(model_id)})
    return rows
