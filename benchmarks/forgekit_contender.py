"""The ``forgekit`` benchmark contender: ``forgekit finetune`` on a generated YAML, timed from outside.

It runs forgekit's real path (data preparation on the driver, a Ray Train worker, the Trainer with DeepSpeed)
through ``forgekit.train.finetune``, the function the ``forgekit finetune`` command calls, and reads the
figures from the run directory it writes: per-step times and cumulative tokens from ``metrics.jsonl``
(rank 0's ``time`` and ``tokens``; where a row has no ``time``, the moment the line appeared), losses, peak
memory. Time to first step counts from the benchmark's spawn of this process (``FKB_T0``), so Ray start,
data preparation, model loading and DeepSpeed initialisation are all in it.

Options (``forgekit:k=v,...``): ``rows`` packed rows (or examples) per device batch (default 2), ``packing``
(1), ``zero`` DeepSpeed stage 2 or 3 or ``none`` (2 on GPU, none on CPU), ``liger`` (1 on GPU), ``attn``
(config default unless given), ``ckpt`` gradient_checkpointing (config default unless given), ``workers``
(1), ``profile=A-B`` (profile_steps [A, B]; with ``FKB_PROFILE_OUT=DIR`` the run's ``profile/`` is copied
there before the run directory is removed), and any ``set.KEY=VALUE`` passed through as a config override.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import yaml

T0 = float(os.environ.get("FKB_T0", time.time()))
REPO = Path(__file__).resolve().parents[1]


class PartialRun(RuntimeError):
    """A run that failed after logging some steps; ``record`` holds what it measured."""

    def __init__(self, message: str, record: dict) -> None:
        super().__init__(message)
        self.record = record


class LineClock(threading.Thread):
    """Records when each training line of a metrics.jsonl appears (a fallback for rows without ``time``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.stop = path, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.path.exists():
                for line in self.path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if row.get("kind") == "train":
                        self.seen.setdefault(row["step"], time.time())
            time.sleep(0.05)


def forgekit_config(spec: dict, opts: dict, out_dir: Path) -> dict:
    """The YAML config (as a dict) that makes forgekit do the benchmark's work."""
    cuda = spec["device"] == "cuda"
    rows = int(opts.get("rows", 2))  # 2 x 2048 per micro-batch fits an H100 (80 GB); 4 was faster on an H200
    packing = opts.get("packing", "1") == "1"
    per_row = spec["max_length"] if packing else spec["data_stats"]["mean"]
    workers = int(opts.get("workers", 1))
    # tokens per optimizer step summed over the workers, as the single-process contenders do them
    accum = max(1, round(spec["tokens_per_step"] / (rows * per_row * workers)))
    cfg: dict[str, Any] = {
        "model_id": spec["model_dir"],
        "train_path": spec["data"],
        "task": "instruction_tuning",
        "context_length": spec["max_length"],
        "packing": packing,
        "num_devices": workers,
        "use_gpu": cuda,
        "train_batch_size_per_device": rows,
        "gradient_accumulation_steps": accum,
        "max_steps": spec["steps"],
        "learning_rate": spec["lr"],
        "lr_scheduler_type": "constant",
        "num_warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "lora_config": dict(spec["lora"]),
        "liger_kernel": {"enabled": opts.get("liger", "1" if cuda else "0") == "1"},
        "seed": spec["seed"],
        "output_dir": str(out_dir),
        "run_name": f"bench-{os.getpid()}",
        "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": spec["steps"]},
        "logging_steps": 1,
        # the final checkpoint is not timed; weights only keeps an 8B full fine-tune's (~110 GB with the ZeRO
        # optimizer shards) within the host's disk
        "save_optimizer_state": False,
    }
    zero = opts.get("zero", "2" if cuda else "none")
    if zero != "none":
        cfg["deepspeed"] = {"config_path": str(REPO / "deepspeed_configs" / f"zero_{zero}.json")}
    if "attn" in opts:
        cfg["attn_implementation"] = opts["attn"]
    if "ckpt" in opts:
        cfg["gradient_checkpointing"] = opts["ckpt"] == "1"
    if "profile" in opts:  # profile=6-8: profile_steps [6, 8] (a list cannot be written inside the option)
        cfg["profile_steps"] = [int(x) for x in opts["profile"].split("-")]
    for key, value in opts.items():
        if key.startswith("set."):
            cfg[key[4:]] = yaml.safe_load(value)
    return cfg


def run_forgekit(spec: dict, opts: dict) -> dict:
    """Run ``forgekit finetune`` on the benchmark's work; its figures in the harness's record format."""
    from forgekit.runs import read_metrics
    from forgekit.train import finetune

    tmp = Path(spec["tmp"])
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = forgekit_config(spec, opts, tmp / "runs")
    path = tmp / "forgekit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_dir = Path(cfg["output_dir"]) / cfg["run_name"]
    clock = LineClock(run_dir / "metrics.jsonl")
    clock.start()
    error: Exception | None = None
    try:
        result = finetune(path, progress=False)
    except Exception as e:  # noqa: BLE001 - the steps it logged before failing are still measurements
        error, result = e, {}
    finally:
        clock.stop.set()
        clock.join(timeout=2)
    rows = read_metrics(result.get("run_dir", run_dir), kind="train") if run_dir.exists() else []
    profile = Path(result.get("run_dir", run_dir)) / "profile"
    if profile.is_dir() and os.environ.get("FKB_PROFILE_OUT"):  # profile=A-B: keep the profile
        shutil.copytree(profile, Path(os.environ["FKB_PROFILE_OUT"]) / f"profile-{cfg['run_name']}", dirs_exist_ok=True)
    # the run directory is scratch (an 8B full fine-tune's final checkpoint is still 16 GB)
    shutil.rmtree(tmp / "runs", ignore_errors=True)
    times = [r.get("time") or clock.seen.get(r["step"]) for r in rows]
    record: dict[str, Any] = {
        "times": times,
        "tokens": [r["tokens"] for r in rows],
        "losses": [r["loss"] for r in rows],
        "grad_norms": [r.get("grad_norm") for r in rows],
        "t_first_step": times[0] - T0 if times and times[0] else None,
        "config": {"yaml": cfg, "command": f"forgekit finetune {path}"},
        "forgekit_result": {k: v for k, v in result.items() if not isinstance(v, (dict, list))},
        "worker_tokens_per_second": [r.get("tokens_per_second") for r in rows],
        "worker_mfu": [r.get("mfu") for r in rows],
    }
    peaks = [r["peak_memory_gb"] for r in rows if r.get("peak_memory_gb") is not None]
    if peaks:
        record["peak_alloc_gb"] = max(peaks)
    if error is not None:
        # the harness records the failure; the partial figures travel in the message's record
        raise PartialRun(f"{type(error).__name__}: {error}", record) from error
    return record
