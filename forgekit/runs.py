"""Read a run directory: metrics, result, checkpoints (the run directory is the interface to a finished run).

Layout (written by `forgekit.train.finetune`)::

    <output_dir>/<run_name>/
        config.yaml          resolved config
        manifest.json        data manifest
        metrics.jsonl        {"kind": "train" | "eval" | "final", "step", ...} one JSON object per line
        checkpoints/step-NNNNNN/   Hugging Face format (adapter or full weights + tokenizer + trainer state), and
                             forgekit_checkpoint.json (the base model as named and as found: forgekit.models)
        result.json          summary (best_checkpoint, best_eval_loss, first_eval_loss, steps, ...)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["checkpoint_size", "checkpoint_step", "cost_per_million_tokens", "list_checkpoints", "read_config", "read_metrics", "read_result",
           "run_dir_of", "run_summary", "throughput"]


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of `metrics.jsonl`, optionally only one kind (`train`, `eval`, `final`); [] if none yet.

    A line being written while this reads (the last, without its newline) is skipped. `run_dir` may be on object
    storage (s3://, gs://): rank 0 mirrors the file there while the run trains.
    """
    from forgekit import storage

    path = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(path):
        return []
    rows = []
    for line in storage.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """`result.json` of a finished run.

    Raises:
        FileNotFoundError: the run has not finished (or never started) — the message says which.
    """
    from forgekit import storage

    path = storage.join(run_dir, "result.json")
    if not storage.exists(path):
        state = "has not finished" if storage.exists(storage.join(run_dir, "config.yaml")) else "does not exist"
        raise FileNotFoundError(f"{run_dir}: run {state} (no result.json)")
    return json.loads(storage.read_text(path))


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run used, as a dict."""
    import yaml

    from forgekit import storage

    return yaml.safe_load(storage.read_text(storage.join(run_dir, "config.yaml")))


def list_checkpoints(run_dir: str | Path) -> list[Path] | list[str]:
    """Published checkpoints of a run, oldest first (half-copied ones are never listed: they are renamed in).

    For a run directory on object storage, their URLs (`s3://.../checkpoints/step-000003`): those whose every
    part was uploaded (they hold the marker rank 0 writes after the upload; a killed upload leaves none).
    """
    from forgekit import storage
    from forgekit.worker.checkpoints import CHECKPOINTS, UPLOADED

    if storage.is_remote(run_dir):
        root = storage.join(run_dir, CHECKPOINTS)
        names = [n for n in storage.listdir(root) if n.startswith("step-")]
        return [c for c in (storage.join(root, n) for n in names) if storage.exists(storage.join(c, UPLOADED))]
    root = Path(run_dir) / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def run_dir_of(run: str | Path | Mapping[str, Any]) -> str | Path:
    """A run directory, or the `run_dir` of a `finetune` result: a Path, or the URL of a remote one (s3://...)."""
    run = run["run_dir"] if isinstance(run, Mapping) else run
    return run if isinstance(run, str) and "://" in run else Path(run)


# ------------------------------------------------------------------------------- sizes, throughput, summaries


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
    run_dir = run_dir_of(run)
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
    result = read_result(run_dir_of(run))
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
