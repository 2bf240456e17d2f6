"""The plan: every number a run derives, decided once on the driver, written as `plan.json`, executed by the workers.

`make_plan(cfg, hardware, prepared)` turns the user's config, the hardware and the tokenized data into a frozen
`Plan`: context length, micro batch, accumulation, epochs, optimizer steps, the evaluation and checkpoint
schedule, precision, padding multiple, the DeepSpeed dict and the model's resolved location. `forgekit validate`
prints it (`format_plan`), the launcher writes it into the run directory and hands it to the workers, which
execute it and never re-derive any of it; what only a worker's device can settle (attention kernel, Liger,
checkpointed layers) is listed as such and recorded by the worker in result.json's `levers`.

The step arithmetic (`steps`) is the transformers Trainer's own: each of `world` workers takes every world-th
example (the last batch short, never dropped), so an epoch is ceil(rows / (world x micro batch)) batches per
worker, and ceil(batches / accumulation) optimizer steps (the last one accumulating what is left).

The automatic batch size (`derive_batch_sizes`) is the Silogen engine's rule: total batch size is the number of
examples per optimizer step across all workers, `total = world_size * per_device * accumulation`; given a target
total and the largest micro batch that fits on one device, the per-device batch is the largest divisor of
`total / world_size` that fits, and accumulation makes up the rest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from forgekit import __version__
from forgekit.config import DECIDED_ON_WORKER, ConfigError, FinetuneConfig
from forgekit.hardware import Hardware, detect_hardware, precision_for
from forgekit.prepare import PreparedData, data_spec, prepare_data

__all__ = [
    "Plan",
    "Steps",
    "deepspeed_config",
    "default_micro_batch",
    "derive_batch_sizes",
    "describe_batch",
    "eval_schedule",
    "format_plan",
    "make_plan",
    "plan_run",
    "steps",
]

PLAN_FILE = "plan.json"
# tokens per micro batch when the config sets neither a batch size nor total_batch_size
CPU_TOKENS_PER_DEVICE, GPU_TOKENS_PER_DEVICE = 2048, 16384


# ------------------------------------------------------------------------------------------ batch and steps


def derive_batch_sizes(total_batch_size: int, max_per_device: int | None, world_size: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) for a target total batch size.

    Args:
        total_batch_size: examples per optimizer step over all workers.
        max_per_device: largest micro batch that fits on one device (None: no limit).
        world_size: number of training workers.

    Raises:
        ConfigError: the total is not a multiple of the number of workers.
    """
    if total_batch_size % world_size:
        raise ConfigError([
            f"total_batch_size: {total_batch_size} is not divisible by num_devices={world_size}; "
            f"use a multiple of {world_size}"
        ])
    per_worker = total_batch_size // world_size
    cap = min(per_worker, max_per_device or per_worker)
    per_device = max(d for d in range(1, cap + 1) if per_worker % d == 0)
    return per_device, per_worker // per_device


def describe_batch(per_device: int, accumulation: int, world_size: int) -> str:
    """One line for logs: how the total batch is made."""
    total = per_device * accumulation * world_size
    return (
        f"batch: {total} examples per optimizer step = {world_size} worker(s) x {per_device} per device "
        f"x {accumulation} accumulation step(s)"
    )


def default_micro_batch(context_length: int, use_gpu: bool) -> int:
    """The per-device batch when the config sets none: a power of two (1-16) filling a token budget (2,048 tokens
    on a CPU, 16,384 on a GPU) at `context_length`."""
    budget = GPU_TOKENS_PER_DEVICE if use_gpu else CPU_TOKENS_PER_DEVICE
    return int(min(16, max(1, 2 ** int(math.log2(max(budget // context_length, 1))))))


@dataclass(frozen=True)
class Steps:
    """Optimizer steps of a run: `total` = what the Trainer runs; `epochs` passes over the data (the last one
    possibly partial when `max_steps` cuts it)."""

    steps_per_epoch: int
    epochs: int
    total: int


def steps(rows: int, world_size: int, micro_batch: int, accumulation: int, *, epochs: int | None = None,
          max_steps: int | None = None, min_steps: int | None = None) -> Steps:
    """Steps per epoch and in all, as the transformers Trainer counts them on `world_size` workers.

    Exactly one rule applies, in this order: `max_steps` (the run stops there; epochs = as many as it needs),
    `epochs` (whole passes), `min_steps` (the fewest whole epochs that reach it: it is met, and overshot by less
    than one epoch).

    Args:
        rows: training rows (examples, or packed rows).
        world_size: training workers; each takes every world-th row.
        micro_batch: rows per worker per forward pass.
        accumulation: forward passes per optimizer step.
    """
    if rows < 1:
        raise ValueError("no training rows")
    batches = math.ceil(rows / (world_size * micro_batch))  # per worker; = ceil(ceil(rows / world) / micro)
    per_epoch = max(math.ceil(batches / accumulation), 1)
    if max_steps:
        return Steps(per_epoch, math.ceil(max_steps / per_epoch), max_steps)
    if not epochs:
        epochs = max(1, math.ceil((min_steps or 1) / per_epoch))
    return Steps(per_epoch, epochs, per_epoch * epochs)


def eval_schedule(steps_per_epoch: int, total: int, unit: str, frequency: int, has_eval: bool) -> dict[str, int]:
    """Where a run evaluates and checkpoints: every `frequency` steps or epochs (at least 1, at most `total`),
    and at the last step; with a validation set also once before the first step (the untrained baseline).

    Returns:
        {"eval_every", "checkpoints", "evaluations"}.
    """
    every = frequency if unit == "steps" else frequency * steps_per_epoch
    every = max(1, min(every, total))
    saves = total // every + int(total % every > 0)
    return {"eval_every": every, "checkpoints": saves, "evaluations": saves + 1 if has_eval else 0}


# ----------------------------------------------------------------------------------------------- DeepSpeed


def deepspeed_config(cfg: FinetuneConfig, *, bf16: bool | None = None, micro_batch: int | None = None,
                     accumulation: int | None = None) -> dict[str, Any] | None:
    """The DeepSpeed config of a run: `deepspeed.config_path` with "auto" fields filled from `cfg`.

    Fields that depend on the model (bucket sizes) stay "auto" here: the worker fills ZeRO-3's buckets from the
    loaded model (`perf.zero3_buckets`) and transformers the rest. An explicit value that contradicts the YAML
    raises ConfigError naming both. `bf16=None` leaves precision "auto" (decided where the GPU is known).
    `micro_batch` / `accumulation` default to the config's values (None where the plan derives them).
    """
    if cfg.deepspeed is None:
        return None
    import fsspec

    path = cfg.deepspeed.config_path
    try:
        with fsspec.open(path, "rt") as f:
            ds = json.load(f)
    except FileNotFoundError:
        raise ConfigError([f"deepspeed.config_path: {path} not found"]) from None
    except json.JSONDecodeError as e:
        raise ConfigError([f"deepspeed.config_path: {path}:{e.lineno}: invalid JSON: {e.msg}"]) from None
    per_device = micro_batch or cfg.train_batch_size_per_device
    accum = accumulation or cfg.gradient_accumulation_steps
    wanted = {
        "train_micro_batch_size_per_gpu": (per_device, "train_batch_size_per_device"),
        "gradient_accumulation_steps": (accum, "gradient_accumulation_steps"),
        "train_batch_size": (
            per_device * accum * cfg.num_devices if per_device and accum else None,
            "train_batch_size_per_device x gradient_accumulation_steps x num_devices",
        ),
        "gradient_clipping": (cfg.max_grad_norm, "max_grad_norm"),
    }
    problems = []
    for key, (value, yaml_key) in wanted.items():
        if value is None:
            continue
        have = ds.get(key, "auto")
        if have == "auto":
            ds[key] = value
        elif have != value:
            problems.append(f"deepspeed.config_path: {path}: {key}={have} contradicts {yaml_key}={value}")
    opt_lr = ds.get("optimizer", {}).get("params", {}).get("lr", "auto")
    if opt_lr != "auto" and opt_lr != cfg.learning_rate:
        problems.append(f"deepspeed.config_path: {path}: optimizer.params.lr={opt_lr} contradicts learning_rate={cfg.learning_rate}")
    if bf16 is not None:
        for key, want in (("bf16", bf16), ("fp16", False)):
            section = ds.setdefault(key, {})
            have = section.get("enabled", "auto")
            if have == "auto":
                section["enabled"] = want
            elif bool(have) != want:
                device = ("this run trains in bf16" if bf16
                          else "this run trains in fp32 (CPU workers, precision: fp32, or a GPU without bf16)")
                problems.append(f"deepspeed.config_path: {path}: {key}.enabled={have}, but {device}; set it to \"auto\"")
    if bf16 and "check_grad_overflow" not in ds["bf16"] and ds.get("zero_optimization", {}).get("stage", 0) in (1, 2):
        # ZeRO-1/2's bf16 overflow check scans every gradient tensor one by one (~8 small kernels each, 448
        # tensors for an 8B LoRA: 13% of its step on an H200, benchmarks/results/README.md). bf16 needs no loss
        # scaling, so the scan only ever skips steps whose gradients are no longer finite; forgekit stops such a
        # run instead (the worker's reporter), as plain PyTorch training would never skip them silently either.
        # A config that sets check_grad_overflow keeps its choice; ZeRO-3 ignores the key (it always skips).
        ds["bf16"]["check_grad_overflow"] = False
    if problems:
        raise ConfigError(problems)
    return ds


def known_bf16(cfg: FinetuneConfig, use_gpu: bool | None) -> bool | None:
    """Whether the workers will hold bf16 weights where the config alone decides it (None: the hardware does):
    CPU workers and `precision: fp32` train fp32 weights, `bf16` on GPUs trains bf16."""
    if use_gpu is False or cfg.precision == "fp32":
        return False
    return True if use_gpu and cfg.precision == "bf16" else None


# ---------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """Everything a run derives; the workers execute it as it is.

    Attributes:
        config: the user's config, validated once (values derived here are in `resolved`).
        hardware: the workers' devices.
        data: the tokenized data (paths on storage every worker reads) and its manifest.
        context_length, micro_batch, eval_batch, accumulation: tokens per row and rows per worker step.
        steps_per_epoch, num_epochs, total_steps: the Trainer's optimizer steps.
        eval_every, evaluations, checkpoints: the evaluation and checkpoint schedule (steps).
        precision: "bf16", "bf16-autocast" (CPU), "fp32", or "auto" (each worker's GPU decides).
        pad_to_multiple_of: padded batch lengths are rounded up to it (1 for packed rows).
        deepspeed: the DeepSpeed dict with forgekit's values filled in (None: no DeepSpeed).
        model_path: where the weights load from (a local directory, a Hub id the workers download, or an s3:// /
            gs:// directory each node copies into its cache once: `forgekit.prepare.local_copy`).
        adapter_path: the LoRA adapter to continue training (`initial_adapter_model_ckpt_path`), absolute or a URL.
        derived: the config fields whose values were derived (marked in config.yaml and `forgekit validate`).
    """

    config: FinetuneConfig
    hardware: Hardware
    data: PreparedData
    context_length: int
    micro_batch: int
    eval_batch: int
    accumulation: int
    steps_per_epoch: int
    num_epochs: int
    total_steps: int
    eval_every: int
    evaluations: int
    checkpoints: int
    precision: str
    pad_to_multiple_of: int
    deepspeed: dict[str, Any] | None
    model_path: str
    adapter_path: str | None
    derived: frozenset[str]

    @property
    def packing(self) -> bool:
        return self.data.spec.packing

    @property
    def world_size(self) -> int:
        return self.hardware.num_workers

    @property
    def total_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    @property
    def zero_stage(self) -> int:
        return int((self.deepspeed or {}).get("zero_optimization", {}).get("stage", 0))

    @cached_property
    def resolved(self) -> FinetuneConfig:
        """The config with the derived values filled in (config.yaml's content); `derived` names them."""
        values = {
            "context_length": self.context_length,
            "packing": self.packing,
            "train_batch_size_per_device": self.micro_batch,
            "gradient_accumulation_steps": self.accumulation,
            "eval_batch_size_per_device": self.eval_batch,
            "num_epochs": self.num_epochs,
        }
        cfg = self.config
        update = {k: v for k, v in values.items() if k in self.derived}
        # local paths as the workers (which run in another directory) and a re-run from elsewhere see them
        for key in ("train_path", "valid_path", "model_id", "initial_base_model_ckpt_path",
                    "initial_adapter_model_ckpt_path"):
            if _absolute(getattr(cfg, key)) != getattr(cfg, key):
                update[key] = _absolute(getattr(cfg, key))
        if cfg.deepspeed is not None and _absolute(cfg.deepspeed.config_path) != cfg.deepspeed.config_path:
            update["deepspeed"] = cfg.deepspeed.model_copy(update={"config_path": _absolute(cfg.deepspeed.config_path)})
        new = cfg.model_copy(update=update)
        new._derived = self.config.derived | set(self.derived)
        new._notes = self.config.notes
        return new

    @cached_property
    def quantization(self) -> dict[str, Any] | None:
        """How the base model loads quantized (`quant_conf`) and its weights' memory before and after, estimated from
        the model's config (`forgekit.quantization.quantized_weight_bytes`); None: not quantized."""
        from forgekit.quantization import is_quantized, quantized_weight_bytes

        q = self.config.quant_conf
        if not is_quantized(q):
            return None
        from transformers import AutoConfig

        bf16 = self.precision in ("bf16", "auto")
        weights = quantized_weight_bytes(AutoConfig.from_pretrained(self.model_path), q, dtype_bytes=2 if bf16 else 4)
        out: dict[str, Any] = {"method": q.get("quantization_type", "bits-and-bytes"), "bits": 8}
        if q.get("load_in_4bit"):
            out.update(bits=4, quant_type=q.get("bnb_4bit_quant_type", "fp4"),
                       double_quant=bool(q.get("bnb_4bit_use_double_quant")),
                       compute_dtype=q.get("bnb_4bit_compute_dtype") or ("bfloat16" if bf16 else "float32"),
                       quant_storage=q.get("bnb_4bit_quant_storage") or "uint8")
        return {
            **out,
            "weights_bytes": weights["unquantized"],
            "quantized_weights_bytes": weights["quantized"],
            "quantized_params": weights["quantized_params"],
        }

    def describe_batch(self) -> str:
        return describe_batch(self.micro_batch, self.accumulation, self.world_size)

    def to_json(self) -> dict[str, Any]:
        """plan.json's content: what the workers execute."""
        m = self.data.manifest
        return {
            "forgekit_version": __version__,
            "hardware": dataclasses.asdict(self.hardware),
            "data": {
                "cache_dir": str(self.data.cache_dir),
                "cache_key": m["cache_key"],
                "train_rows": m["train_rows"],
                "valid_rows": m.get("valid_rows"),
                "context_length": self.context_length,
                "packing": self.packing,
            },
            "batch": {
                "world_size": self.world_size,
                "micro_batch": self.micro_batch,
                "accumulation": self.accumulation,
                "total_batch": self.total_batch,
                "eval_batch": self.eval_batch,
            },
            "schedule": {
                "steps_per_epoch": self.steps_per_epoch,
                "num_epochs": self.num_epochs,
                "total_steps": self.total_steps,
                "min_num_update_steps": self.config.min_num_update_steps,
                "eval_every": self.eval_every,
                "evaluations": self.evaluations,
                "checkpoints": self.checkpoints,
            },
            "precision": self.precision,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "deepspeed": self.deepspeed,
            "model_path": self.model_path,
            "quantization": self.quantization,
            "derived": sorted(self.derived),
            "on_worker": self.on_worker(),
        }

    def on_worker(self) -> dict[str, str]:
        """What each worker's device settles, and how (result.json's `levers` records the outcome)."""
        out = {"attention": DECIDED_ON_WORKER["attn_implementation"][1] if self.config.attn_implementation == "auto"
               else self.config.attn_implementation}
        if self.config.gradient_checkpointing:
            out["checkpointed_layers"] = DECIDED_ON_WORKER["gradient_checkpointing"][1]
        if self.config.liger_kernel.enabled is None:
            out["liger"] = "on GPUs when liger-kernel is installed and knows the architecture"
        if self.precision == "auto":
            out["precision"] = "bf16 where the GPU supports it, else fp32"
        return out

    def write(self, run_dir: str | Path) -> Path | str:
        """Write plan.json into `run_dir`, local or remote (whole: renamed into place, or one PUT); its path (a URL
        for a remote run directory)."""
        from forgekit import storage

        path = storage.join(run_dir, PLAN_FILE)
        storage.write_text(path, json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return path if storage.is_remote(path) else Path(path)


def _absolute(value: str | None) -> str | None:
    """A relative local path that exists, made absolute (relative to the current directory); else as it is."""
    if not value or "://" in value or Path(value).is_absolute():
        return value
    local = Path(value).expanduser()
    return str(local.resolve()) if local.exists() else value


def make_plan(cfg: FinetuneConfig, hardware: Hardware, prepared: PreparedData) -> Plan:
    """The run's plan from the user's config, the hardware and the tokenized data.

    Raises:
        ConfigError: a derived value contradicts the config or its DeepSpeed file (e.g. the total batch size is
            not divisible by the workers, or the DeepSpeed file fixes another micro batch).
    """
    from forgekit.models import resolve_model_path

    derived: set[str] = set()
    ctx = cfg.context_length or prepared.manifest["context_length"]
    if cfg.context_length is None:
        derived.add("context_length")
    if cfg.packing is None:
        derived.add("packing")
    world = hardware.num_workers
    if cfg.total_batch_size:
        micro, accum = derive_batch_sizes(cfg.total_batch_size, cfg.max_batch_size_per_device, world)
        if (cfg.train_batch_size_per_device, cfg.gradient_accumulation_steps) != (micro, accum):
            derived |= {"train_batch_size_per_device", "gradient_accumulation_steps"}
    else:
        micro = cfg.train_batch_size_per_device or default_micro_batch(ctx, hardware.use_gpu)
        accum = cfg.gradient_accumulation_steps or 1
        derived |= {k for k in ("train_batch_size_per_device", "gradient_accumulation_steps") if getattr(cfg, k) is None}
    eval_batch = cfg.eval_batch_size_per_device or micro
    if cfg.eval_batch_size_per_device is None:
        derived.add("eval_batch_size_per_device")
    st = steps(prepared.manifest["train_rows"], world, micro, accum, epochs=cfg.num_epochs, max_steps=cfg.max_steps,
               min_steps=cfg.min_num_update_steps)
    if cfg.num_epochs is None:
        derived.add("num_epochs")
    freq = cfg.checkpoint_and_evaluation_frequency
    schedule = eval_schedule(st.steps_per_epoch, st.total, freq.unit, freq.frequency, prepared.valid_dir is not None)
    precision = precision_for(cfg.precision, hardware, cfg.task)
    bf16 = {"bf16": True, "fp32": False, "bf16-autocast": False}.get(precision)
    ds = deepspeed_config(cfg, bf16=bf16, micro_batch=micro, accumulation=accum)
    packed = prepared.spec.packing
    pad = 1 if packed else (cfg.pad_to_multiple_of or (1 if hardware.use_gpu else 64))
    return Plan(
        config=cfg, hardware=hardware, data=prepared, context_length=ctx, micro_batch=micro, eval_batch=eval_batch,
        accumulation=accum, steps_per_epoch=st.steps_per_epoch, num_epochs=st.epochs, total_steps=st.total,
        precision=precision, pad_to_multiple_of=pad, deepspeed=ds,
        model_path=_absolute(cfg.initial_base_model_ckpt_path or resolve_model_path(cfg.model_id)),
        adapter_path=_absolute(cfg.initial_adapter_model_ckpt_path), derived=frozenset(derived),
        **schedule,
    )


def plan_run(cfg: FinetuneConfig, *, use_gpu: bool | None = None, root: Path | None = None) -> Plan:
    """The plan of `cfg` on this machine without a cluster (`forgekit validate`, the notebooks' estimates): the
    hardware as `detect_hardware` sees it here (`use_gpu` overrides it), the data tokenized into the cache."""
    hw = detect_hardware(cfg, use_gpu=use_gpu)
    return make_plan(cfg, hw, prepare_data(cfg, data_spec(cfg, hw.use_gpu), root=root))


def format_plan(plan: Plan) -> str:
    """The plan as `# ` comment lines (what `forgekit validate` prints below the resolved config)."""
    p = plan
    epochs = f"{p.num_epochs} epoch(s)" + (" (derived)" if "num_epochs" in p.derived else "")
    lines = [
        p.describe_batch(),
        f"plan: {p.hardware.describe()}; precision {p.precision}",
        f"steps: {p.steps_per_epoch} per epoch x {epochs} -> {p.total_steps} optimizer steps"
        + (f" (max_steps {p.config.max_steps})" if p.config.max_steps else
           f" (min_num_update_steps {p.config.min_num_update_steps})" if p.config.num_epochs is None else ""),
        f"evaluation and checkpoint every {p.eval_every} step(s): {p.checkpoints} checkpoint(s), "
        f"{p.evaluations} evaluation(s)" + (" (with the baseline before training)" if p.evaluations else ""),
    ]
    if p.deepspeed is not None:
        lines.append(f"deepspeed: ZeRO stage {p.zero_stage} ({p.config.deepspeed.config_path})")
    if (q := p.quantization) is not None:
        how = (f"4-bit {q['quant_type']}" + (" + double quantization" if q["double_quant"] else "")
               + f", compute {q['compute_dtype']}, storage {q['quant_storage']}" if q["bits"] == 4 else "8-bit")
        lines.append(f"quantization: base model in {how} (bitsandbytes): weights {q['weights_bytes'] / 1e9:.2f} GB -> "
                     f"{q['quantized_weights_bytes'] / 1e9:.2f} GB ({q['quantized_params'] / 1e6:,.1f}M parameters "
                     "quantized); LoRA trains on it, checkpoints hold the adapter only")
    for key, how in p.on_worker().items():
        lines.append(f"on each worker: {key}: {how}")
    return "\n".join(f"# {line}" for line in lines) + "\n"
