"""Numbers the cookbooks reason with: schedules, batch plans, parameter counts, checkpoint sizes, memory, cost.

Everything here is cheap and reads artifacts or configs, never trains:

- data: `split_jsonl` (stage halves), `token_lengths` and `padding_waste` (padded vs real tokens);
- schedule: `lr_schedule` (transformers' own schedulers on a dummy optimizer), `batch_size_table`
  (the automatic batch-size rule for several world sizes), `training_plan` (epochs, steps, evaluations a
  config resolves to);
- model: `count_parameters` / `lora_parameter_table` (trainable vs total, full or LoRA, built on the meta
  device: no weights are loaded), `checkpoint_size` (bytes on disk: served weights vs resume state);
- runs: `track_worker_memory` (peak RSS of the Ray Train workers), `run_summary`, `throughput`,
  `cost_per_million_tokens`;
- benchmarks: `lever_ladder`, `contenders`, `seqlen_results` (the committed H100 results);
- display: `markdown_table`, `plot_lr_schedules`, `plot_lines`, `plot_bars`.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

__all__ = [
    "BENCHMARK_RESULTS",
    "WorkerMemory",
    "batch_size_table",
    "checkpoint_size",
    "checkpoint_step",
    "contenders",
    "cost_per_million_tokens",
    "count_parameters",
    "lever_ladder",
    "lora_parameter_table",
    "lr_schedule",
    "markdown_table",
    "padding_waste",
    "plot_bars",
    "plot_lines",
    "plot_lr_schedules",
    "run_summary",
    "seqlen_results",
    "split_jsonl",
    "throughput",
    "token_lengths",
    "track_worker_memory",
    "training_plan",
]

# the committed benchmark results of a source checkout (absent from an installed wheel: pass a path)
BENCHMARK_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _run_dir(run: str | Path | Mapping[str, Any]) -> Path:
    return Path(run["run_dir"]) if isinstance(run, Mapping) else Path(run)


# ----------------------------------------------------------------------------------------------------- data


def split_jsonl(path: str | Path, out_dir: str | Path, parts: int = 2, *, seed: int | None = 0) -> list[Path]:
    """Split a JSONL file into `parts` files of (nearly) equal size: `part-1.jsonl`, `part-2.jsonl`, ...

    Lines are copied unchanged (empty lines dropped); with `seed`, they are shuffled first (the same seed gives
    the same parts), with `seed=None` the file order is kept (part 1 = the first lines).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `parts` < 2, or fewer lines than parts.
    """
    path = Path(path)
    if parts < 2:
        raise ValueError(f"parts must be >= 2, got {parts}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < parts:
        raise ValueError(f"{path}: {len(lines)} non-empty line(s), cannot split into {parts} parts")
    if seed is not None:
        random.Random(seed).shuffle(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(parts):
        chunk = lines[i * len(lines) // parts : (i + 1) * len(lines) // parts]
        target = out / f"part-{i + 1}.jsonl"
        target.write_text("".join(f"{line}\n" for line in chunk), encoding="utf-8")
        paths.append(target)
    return paths


def token_lengths(config: Any, overrides: Sequence[str] = (), *, default: bool = False) -> tuple[list[int], int]:
    """(token length of every training example, context length) as the run would tokenize them.

    Uses `forgekit.prepare.prepare_data` (tokenized once, cached), with packing switched off so each length
    is one example.
    """
    from datasets import load_from_disk

    from forgekit.config import FinetuneConfig, load_config
    from forgekit.prepare import prepare_data

    cfg = config if isinstance(config, FinetuneConfig) else load_config(config, overrides, default=default)
    if cfg.packing:
        cfg = cfg.model_copy(update={"packing": False})
    prepared = prepare_data(cfg, use_gpu=False)
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


# ------------------------------------------------------------------------------------------------- schedule


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
    from forgekit.plan import derive_batch_sizes
    from forgekit.config import ConfigError

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
    """What a config resolves to before anything trains: batch, epochs, optimizer steps, evaluations.

    The values `forgekit validate` prints (via `prepare_data`), plus the step arithmetic of the training
    worker: steps per epoch = ceil(ceil(rows / devices) / per-device batch / accumulation); the run takes
    `max_steps` if set, else epochs x steps per epoch; it evaluates and checkpoints every
    `checkpoint_and_evaluation_frequency` (and at the last step, and once before training when it has a
    validation file).

    Returns:
        {"train_rows", "num_devices", "per_device", "accumulation", "total_batch", "num_epochs",
        "num_epochs_derived", "min_num_update_steps", "steps_per_epoch", "max_steps", "eval_every",
        "evaluations", "checkpoints_written"}.
    """
    from forgekit.config import FinetuneConfig, load_config
    from forgekit.prepare import prepare_data

    cfg = config if isinstance(config, FinetuneConfig) else load_config(config, overrides, default=default)
    prepared = prepare_data(cfg, use_gpu=use_gpu)
    r, rows = prepared.resolved, prepared.manifest["train_rows"]
    per_device, accum, world = r.train_batch_size_per_device, r.gradient_accumulation_steps, r.num_devices
    batches_per_epoch = math.ceil(math.ceil(rows / world) / per_device)
    steps_per_epoch = max(math.ceil(batches_per_epoch / accum), 1)
    max_steps = r.max_steps or steps_per_epoch * r.num_epochs
    freq = r.checkpoint_and_evaluation_frequency
    every = freq.frequency if freq.unit == "steps" else freq.frequency * steps_per_epoch
    every = max(1, min(every, max_steps))
    saves = max_steps // every + int(max_steps % every > 0)
    return {
        "train_rows": rows,
        "num_devices": world,
        "per_device": per_device,
        "accumulation": accum,
        "total_batch": per_device * accum * world,
        "num_epochs": r.num_epochs,
        "num_epochs_derived": "num_epochs" in r.derived,
        "min_num_update_steps": r.min_num_update_steps,
        "steps_per_epoch": steps_per_epoch,
        "max_steps": max_steps,
        "eval_every": every,
        "evaluations": (saves + 1) if r.valid_path else 0,
        "checkpoints_written": saves,
    }


# ---------------------------------------------------------------------------------------------------- model


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


_WEIGHTS = re.compile(r"^(adapter_model|model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
_TOKENIZER = re.compile(r"^(tokenizer.*|chat_template.*|special_tokens_map\.json|vocab\.json|merges\.txt|added_tokens\.json)$")
_RESUME = re.compile(r"^(optimizer.*|scheduler\.pt|rng_state.*|trainer_state\.json|training_args\.bin|latest|zero_to_.*\.py)$")


def checkpoint_size(path: str | Path) -> dict[str, int]:
    """Bytes on disk of a checkpoint directory, by what they are for.

    - `weights`: what you serve or export (`adapter_model.*` for LoRA, `model*.safetensors` for full);
    - `resume_state`: what only resuming needs (DeepSpeed's `global_step*/` model + optimizer states,
      optimizer, scheduler, RNG, trainer state);
    - `tokenizer`: tokenizer files and chat template; `other`: configs, README;
    - `total`: everything.

    Raises:
        FileNotFoundError: not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a checkpoint directory")
    sizes = {"weights": 0, "resume_state": 0, "tokenizer": 0, "other": 0}
    for f in root.rglob("*"):
        if not f.is_file():
            continue
        top = f.relative_to(root).parts[0]
        if f.parent != root and top.startswith("global_step"):
            kind = "resume_state"
        elif _WEIGHTS.match(f.name):
            kind = "weights"
        elif _TOKENIZER.match(f.name):
            kind = "tokenizer"
        elif _RESUME.match(f.name):
            kind = "resume_state"
        else:
            kind = "other"
        sizes[kind] += f.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step of a checkpoint directory named `step-NNNNNN` (as forgekit publishes them).

    Raises:
        ValueError: the name is not of that form.
    """
    m = re.fullmatch(r"step-(\d+)", Path(path).name)
    if not m:
        raise ValueError(f"{path}: expected a checkpoint directory named step-NNNNNN")
    return int(m.group(1))


# ----------------------------------------------------------------------------------------------------- runs


class WorkerMemory:
    """Peak resident memory (RSS) of the Ray Train worker processes started under this process.

    Use through `track_worker_memory()`. A thread looks at this process's descendants every `interval`
    seconds; for each training worker (process title `ray::RayTrainWorker...`) it reads the kernel's
    high-water mark of resident memory (`VmHWM` in /proc/PID/status on Linux, so peaks between two samples
    are not missed; elsewhere the current RSS, sampled). Workers of a Ray cluster this process did not
    start (RAY_ADDRESS) are not its descendants and are not seen: `peak_gb` is then None.
    """

    TITLE = "ray::RayTrainWorker"

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_bytes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def workers(self) -> int:
        """Number of training worker processes seen."""
        return len(self.peak_bytes)

    @property
    def peak_gb(self) -> float | None:
        """The largest worker's peak RSS in GiB (each worker holds a full copy of the model on CPU), or None."""
        return max(self.peak_bytes.values()) / 2**30 if self.peak_bytes else None

    @property
    def total_peak_gb(self) -> float | None:
        """Sum of the workers' peaks in GiB: an upper bound of what the machine needed for them, or None."""
        return sum(self.peak_bytes.values()) / 2**30 if self.peak_bytes else None

    def _sample(self) -> None:
        import psutil

        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        for p in children:
            try:
                cmd = p.cmdline()
                if not cmd or not cmd[0].startswith(self.TITLE):
                    continue
                peak = _vm_hwm(p.pid)
                if peak is None:
                    peak = p.memory_info().rss
            except (psutil.Error, OSError):
                continue  # exited between listing and reading
            self.peak_bytes[p.pid] = max(self.peak_bytes.get(p.pid, 0), peak)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _vm_hwm(pid: int) -> int | None:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def track_worker_memory(interval: float = 0.25) -> WorkerMemory:
    """Context manager measuring the peak RSS of the training workers of the `finetune` calls inside it.

        with track_worker_memory() as mem:
            result = finetune(config)
        mem.peak_gb   # GiB, the largest worker (None if no worker was seen)
    """
    return WorkerMemory(interval)


def cost_per_million_tokens(tokens_per_second: float | None, price_per_hour: float) -> float | None:
    """Price of training on one million tokens at this throughput: price_per_hour / (3600 x tokens/s) x 1e6.

    Args:
        tokens_per_second: real (non-padding) tokens per second of the whole run (all devices together).
        price_per_hour: what the hardware the run used costs per hour (all its devices).

    Returns:
        Cost in the price's currency, or None when the throughput is unknown or zero.

    Raises:
        ValueError: a negative price.
    """
    if price_per_hour < 0:
        raise ValueError(f"price_per_hour must be >= 0, got {price_per_hour}")
    if not tokens_per_second:
        return None
    return price_per_hour / (3600.0 * tokens_per_second) * 1e6


def throughput(run: str | Path | Mapping[str, Any], price_per_hour: float | None = None) -> dict[str, Any]:
    """Throughput of a finished run from its result.json and metrics.jsonl.

    Returns:
        {"tokens_per_second" (real tokens over training time, result.json), "steady_tokens_per_second"
        (median of the per-step rates after the first step, which includes warm-up), "train_tokens",
        "train_seconds", "wall_seconds" (incl. start-up, evaluation, checkpoints), "overall_tokens_per_second"
        (train tokens / wall seconds), "mfu" and "peak_memory_gb" (GPU runs; else None), and with a price:
        "cost_per_million_tokens" (at the training rate), "cost_per_million_tokens_overall" and "run_cost"}.
    """
    from forgekit.runs import read_metrics, read_result

    run_dir = _run_dir(run)
    result = read_result(run_dir)
    rates = [r["tokens_per_second"] for r in read_metrics(run_dir, "train") if r.get("tokens_per_second")]
    steady = rates[1:] or rates
    wall = result.get("wall_seconds") or 0.0
    out = {
        "tokens_per_second": result.get("tokens_per_second"),
        "steady_tokens_per_second": _median(steady) if steady else None,
        "train_tokens": result.get("train_tokens"),
        "train_seconds": result.get("train_seconds"),
        "wall_seconds": wall,
        "overall_tokens_per_second": result["train_tokens"] / wall if wall and result.get("train_tokens") else None,
        "mfu": result.get("mfu"),
        "peak_memory_gb": result.get("peak_memory_gb"),
    }
    if price_per_hour is not None:
        out["cost_per_million_tokens"] = cost_per_million_tokens(out["tokens_per_second"], price_per_hour)
        out["cost_per_million_tokens_overall"] = cost_per_million_tokens(out["overall_tokens_per_second"], price_per_hour)
        out["run_cost"] = price_per_hour * wall / 3600.0
    return out


def run_summary(run: str | Path | Mapping[str, Any], *, peak_rss_gb: float | None = None) -> dict[str, Any]:
    """One row comparing a finished run with others: parameters, checkpoint bytes, time, memory, losses.

    Args:
        run: a run directory or `finetune` result.
        peak_rss_gb: the peak worker RSS measured around the run (`track_worker_memory`), if any.

    Returns:
        {"trainable_params", "total_params", "trainable_share", "weights_mb", "resume_state_mb",
        "checkpoint_mb" (of the best checkpoint, MB = 1e6 bytes), "train_seconds", "wall_seconds",
        "tokens_per_second", "peak_gpu_memory_gb" (GPU runs), "peak_worker_rss_gb", "first_eval_loss",
        "best_eval_loss", "final_train_loss"}.
    """
    from forgekit.runs import read_result

    result = read_result(_run_dir(run))
    ckpt = result.get("best_checkpoint") or result.get("last_checkpoint")
    sizes = checkpoint_size(ckpt) if ckpt and Path(ckpt).is_dir() else {}
    trainable, total = result.get("trainable_params"), result.get("total_params")
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total if trainable and total else None,
        "weights_mb": sizes["weights"] / 1e6 if sizes else None,
        "resume_state_mb": sizes["resume_state"] / 1e6 if sizes else None,
        "checkpoint_mb": sizes["total"] / 1e6 if sizes else None,
        "train_seconds": result.get("train_seconds"),
        "wall_seconds": result.get("wall_seconds"),
        "tokens_per_second": result.get("tokens_per_second"),
        "peak_gpu_memory_gb": result.get("peak_memory_gb"),
        "peak_worker_rss_gb": peak_rss_gb,
        "first_eval_loss": result.get("first_eval_loss"),
        "best_eval_loss": result.get("best_eval_loss"),
        "final_train_loss": result.get("final_train_loss"),
    }


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


# ----------------------------------------------------------------------------------------------- benchmarks


def _read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such benchmark result (run from a source checkout, or pass its path)")
    return json.loads(path.read_text())


def _lever_values(rung: Mapping[str, Any]) -> dict[str, Any]:
    levers = dict(rung.get("levers") or {})
    levers.setdefault("compile", False)
    levers.setdefault("rows" if levers.get("packed") else "batch", None)
    return levers


def lever_ladder(
    path: str | Path = BENCHMARK_RESULTS / "levers-llama8b-h100.json", price_per_hour: float | None = None
) -> list[dict[str, Any]]:
    """The H100 optimisation ladder (`benchmarks/levers.py` output): each rung, what it changed, what it gave.

    A rung is compared with the earlier successful rung whose levers differ from it in the fewest values
    (ties: the latest), so side branches (e.g. flex_attention + Liger) are measured against their own parent.

    Returns:
        One row per rung in file order: {"rung", "tokens_per_s" (None when it failed), "speedup" (vs the
        first rung), "compared_with", "change" ("key: old → new" for each lever that differs), "gain"
        (tokens/s ratio vs `compared_with`), "mfu", "peak_alloc_gb", "ok", "error"}, and with a price (of
        one GPU per hour): "cost_per_million_tokens".
    """
    data = _read_json(path)
    rungs = data.get("ladder")
    if not rungs:
        raise ValueError(f"{path}: no 'ladder' rows (expected benchmarks/levers.py --parts ladder output)")
    base = rungs[0].get("tokens_per_s")
    rows: list[dict[str, Any]] = []
    done: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (levers, row) of successful rungs
    for rung in rungs:
        levers = _lever_values(rung)
        ok = rung.get("tokens_per_s") is not None and "error" not in rung
        parent = None
        best = None
        for p_levers, p_row in done:
            diff = sum(1 for k in set(levers) | set(p_levers) if levers.get(k) != p_levers.get(k))
            if best is None or diff <= best:
                best, parent = diff, (p_levers, p_row)
        change = ""
        if parent is not None:
            p_levers = parent[0]
            change = ", ".join(
                f"{k}: {_lever(p_levers.get(k))} → {_lever(levers.get(k))}" for k in sorted(set(levers) | set(p_levers))
                if levers.get(k) != p_levers.get(k)
            )
        tps = rung.get("tokens_per_s") if ok else None
        row = {
            "rung": rung["rung"],
            "tokens_per_s": tps,
            "speedup": tps / base if tps and base else None,
            "compared_with": parent[1]["rung"] if parent else None,
            "change": change,
            "gain": tps / parent[1]["tokens_per_s"] if tps and parent else None,
            "mfu": rung.get("mfu") if ok else None,
            "peak_alloc_gb": rung.get("peak_alloc_gb"),
            "ok": ok,
            "error": None if ok else _short_error(rung.get("error", "no result")),
        }
        if price_per_hour is not None:
            row["cost_per_million_tokens"] = cost_per_million_tokens(tps, price_per_hour)
        rows.append(row)
        if ok:
            done.append((levers, row))
    return rows


def _lever(value: Any) -> str:
    return "–" if value is None else str(value)


def _short_error(text: str) -> str:
    return "out of memory" if "out of memory" in text.lower() else text.split(":")[0][:60]


def contenders(
    path: str | Path = BENCHMARK_RESULTS / "llama8b-h100.json",
    price_per_hour: float | None = None,
    more: dict[str, str | Path] | None = None,
) -> list[dict[str, Any]]:
    """Contenders on identical work (`benchmarks/run.py` output): median tokens/s, spread, MFU, memory.

    Args:
        path: a `benchmarks/run.py` result (JSON).
        price_per_hour: the price of one GPU per hour, for the cost column.
        more: `{label: path}` of further results of the same work (a later measurement, say); their rows follow,
            named "contender (label)", and their speedup is against the first row of `path` too. A result of
            other work (model, steps, tokens per step or data differ) is a ValueError.

    Returns:
        One row per contender: {"contender", "tokens_per_s", "min_tokens_per_s", "max_tokens_per_s",
        "speedup" (vs the first row), "mfu", "peak_alloc_gb", "first_loss", "final_loss", "repeats_ok"}, and
        with a price (of one GPU per hour): "cost_per_million_tokens".
    """
    sources = [(None, _read_json(path))] + [(label, _read_json(p)) for label, p in (more or {}).items()]
    work = ("model", "steps", "tokens_per_step", "data_stats")  # what makes two results comparable
    for (label, data), p in zip(sources[1:], (more or {}).values()):
        differ = [k for k in work if data.get("meta", {}).get(k) != sources[0][1].get("meta", {}).get(k)]
        if differ:
            raise ValueError(f"{p} ({label}): not the same work as {path} (meta {', '.join(differ)} differ); "
                             "its speedup and losses would not compare")
    rows = []
    base = None
    for label, r in ((label, r) for label, data in sources for r in data.get("rows", [])):
        tps = r.get("tokens_per_s")
        base = base or tps
        spread = r.get("tokens_per_s_all") or [tps]
        rows.append({
            "contender": r["contender"] + (f" ({label})" if label else ""),
            "tokens_per_s": tps,
            "min_tokens_per_s": min(spread) if tps else None,
            "max_tokens_per_s": max(spread) if tps else None,
            "speedup": tps / base if tps and base else None,
            "mfu": r.get("mfu"),
            "peak_alloc_gb": r.get("peak_alloc_gb"),
            "first_loss": r.get("first_loss"),
            "final_loss": r.get("final_loss"),
            "repeats_ok": f"{r.get('ok', 0)}/{r.get('repeats', 0)}",
        })
        if price_per_hour is not None:
            rows[-1]["cost_per_million_tokens"] = cost_per_million_tokens(tps, price_per_hour)
    if not rows:
        raise ValueError(f"{path}: no 'rows' (expected benchmarks/run.py output)")
    return rows


def seqlen_results(path: str | Path = BENCHMARK_RESULTS / "seqlen-llama8b-h100.json") -> list[dict[str, Any]]:
    """Longest-sequence results (`benchmarks/levers.py --parts seqlen`): tokens, step time, MFU, memory."""
    data = _read_json(path)
    rows = [
        {k: r.get(k) for k in ("seq_len", "ok", "step_s", "tokens_per_s", "mfu", "peak_alloc_gb")}
        for r in data.get("seqlen", [])
    ]
    if not rows:
        raise ValueError(f"{path}: no 'seqlen' rows (expected benchmarks/levers.py --parts seqlen output)")
    return rows


# -------------------------------------------------------------------------------------------------- display


def _fmt(value: Any, spec: str | None) -> str:
    if value is None:
        return "–"
    if spec:
        return format(value, spec)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   formats: Mapping[str, str] | None = None) -> str:
    """A Markdown table of dict rows (for `IPython.display.Markdown`); None shows as –.

    Args:
        rows: the rows.
        columns: keys to show, in order (default: the first row's keys).
        formats: format specs per column, e.g. `{"waste": ".1%"}`.
    """
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), formats.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _pyplot(path: str | Path | None) -> Any:
    import matplotlib

    if path is not None and matplotlib.get_backend().lower() != "agg" and not _interactive():
        matplotlib.use("Agg")  # a script or test saving a figure needs no display
    import matplotlib.pyplot as plt

    return plt


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def _save(fig: Any, path: str | Path | None) -> None:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)


def plot_lr_schedules(
    curves: Mapping[str, Sequence[float]],
    *,
    runs: Mapping[str, str | Path | Mapping[str, Any]] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Any:
    """Learning rate against optimizer step: computed curves (lines) and, optionally, what runs logged (dots).

    Args:
        curves: label → rates of steps 1..N (from `lr_schedule`).
        runs: label → run directory (or result); their `learning_rate` rows of metrics.jsonl are drawn as dots.
        title: figure title.
        path: save the figure there (PNG).
    """
    from forgekit.plots import metric_series

    plt = _pyplot(path)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, rates in curves.items():
        ax.plot(range(1, len(rates) + 1), rates, label=label)
    for label, run in (runs or {}).items():
        xs, ys = metric_series(run, "learning_rate")
        ax.plot(xs, ys, "o", markersize=4, label=f"{label} (logged)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, path)
    return fig


def plot_lines(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    *,
    group: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    logx: bool = False,
    logy: bool = False,
    title: str | None = None,
    path: str | Path | None = None,
) -> Any:
    """`y` against `x` from dict rows, one line per value of `group`; rows missing x or y are skipped.

    Returns the matplotlib Figure (saved to `path` if given).
    """
    plt = _pyplot(path)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    lines: dict[Any, list[tuple[Any, Any]]] = {}
    for r in rows:
        if r.get(x) is not None and r.get(y) is not None:
            lines.setdefault(r.get(group) if group else y, []).append((r[x], r[y]))
    for label, points in lines.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=str(label))
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, path)
    return fig


def plot_bars(
    rows: Sequence[Mapping[str, Any]],
    label: str,
    values: Sequence[str],
    *,
    titles: Mapping[str, str] | None = None,
    logy: Sequence[str] = (),
    notes: Mapping[str, str] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Any:
    """One bar panel per value column, one bar per row (labelled by `rows[i][label]`); None values are marked.

    Args:
        rows: dict rows (e.g. from `markdown_table`'s inputs).
        label: the key naming each bar.
        values: keys to plot, one panel each.
        titles: panel titles per key (default: the key).
        logy: keys whose panel uses a log scale.
        notes: label → text written where a row has no value (e.g. "out of memory").
        title: figure title.
        path: save the figure there (PNG).
    """
    plt = _pyplot(path)
    names = [str(r[label]) for r in rows]
    # many bars: one panel per line; few: up to three panels side by side
    cols = 1 if len(rows) > 6 else min(3, len(values))
    nrows = math.ceil(len(values) / cols)
    width = min(12.0, max(4.0, 0.6 * len(rows) + 2.0))
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(values):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, values):
        ys = [r.get(key) for r in rows]
        heights = [y if y is not None else 0 for y in ys]
        log = key in logy
        if log:
            ax.set_yscale("log")
        bars = ax.bar(range(len(rows)), heights, color=[f"C{i % 10}" for i in range(len(rows))])
        top = max(heights) if any(heights) else 1
        for i, (bar, y) in enumerate(zip(bars, ys)):
            x = bar.get_x() + bar.get_width() / 2
            if y is None:  # no value (e.g. the run failed): say why, upright along the empty slot
                text = (notes or {}).get(names[i], "n/a")
                ax.text(x, top * 0.02 if not log else min(h for h in heights if h) if any(heights) else 1, text,
                        ha="center", va="bottom", fontsize=7, rotation=90, color="dimgray")
            else:
                ax.text(x, y * 1.08 if log else y + top * 0.01, _fmt(y, None), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), names, rotation=35 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center", fontsize=8)
        ax.set_title((titles or {}).get(key, key), fontsize=10)
        if not log:
            ax.set_ylim(0, top * 1.25)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig
