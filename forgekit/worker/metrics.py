"""What a worker reports while it trains: metrics.jsonl (rank 0), throughput and MFU, divergence, checkpoints.

`MetricsFile` is rank 0's metrics.jsonl (a resumed run drops the lines past its checkpoint); `Reporter` is the
Trainer callback that writes a row per logging step and per evaluation, stops a run whose loss or gradient norm is
no longer finite, always checkpoints the last step, and hands each saved checkpoint to the `CheckpointPublisher`.
`EvaluationProgress` is world rank 0's bar over an evaluation's batches (`forgekit.progress`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from forgekit import faults
from forgekit.worker.checkpoints import CHECKPOINTS, DIVERGED, CheckpointPublisher

__all__ = ["CLASSIFICATION_EVAL_KEYS", "PREFERENCE_KEYS", "EvaluationProgress", "MetricsFile", "Reporter",
           "ThroughputInLogs"]

# what a classification evaluation reports (classifier_config.eval_metrics), as the Trainer names it
CLASSIFICATION_EVAL_KEYS = ("eval_accuracy", "eval_f1", "eval_prauc")
# what TRL's DPO / KTO trainers log for preference runs (evaluations: with the eval_ prefix); accuracies is the
# share of pairs whose chosen reward beats the rejected one, margins the mean difference
PREFERENCE_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                   "logps/rejected", "kl")


# seconds between two uploads of metrics.jsonl to a remote run directory (also at each evaluation, checkpoint and
# the end): one PUT of the whole file costs 8-15 ms against a local S3 server for 100-10,000 rows (18 KiB-1.8 MiB),
# more on a real bucket; every 10 s is at most ~1% of a step-per-second run, and the driver's progress bar polls
# the file every 5 s anyway
SYNC_SECONDS = float(os.environ.get("FORGEKIT_METRICS_SYNC_S", "10"))


class MetricsFile:
    """metrics.jsonl of a run; only rank 0 writes. For a run directory on object storage, rank 0 appends to a
    node-local copy and uploads it whole (`sync`) every `SYNC_SECONDS`, at evaluations, checkpoints and the end."""

    def __init__(self, run_dir: str | Path, rank: int) -> None:
        from forgekit import storage
        from forgekit.worker.checkpoints import node_dir

        self.path, self.rank = node_dir(run_dir) / "metrics.jsonl", rank
        self.remote = storage.join(run_dir, "metrics.jsonl") if storage.is_remote(run_dir) else None
        self.synced = time.monotonic()

    def sync(self) -> None:
        """Upload the local copy to the remote run directory (one PUT: readers see a whole file)."""
        from forgekit import storage

        if self.rank == 0 and self.remote and self.path.exists():
            storage.write_text(self.remote, self.path.read_text())
            self.synced = time.monotonic()

    def reset(self, after_step: int | None) -> list[dict]:
        """Fresh run: start the file. Resumed run: drop lines past the checkpoint (the steps are redone); the rows
        kept (rank 0)."""
        if self.rank != 0:
            return []
        from forgekit import storage

        kept, rows = [], []
        source = self.remote or self.path  # a resumed run may be on another node than the one that wrote it
        if after_step is not None and storage.exists(source):
            for line in storage.read_text(source).splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if row.get("step", 0) <= after_step and row.get("kind") in ("train", "eval"):
                        kept.append(line)
                        rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)
        self.sync()
        return rows

    def write(self, row: dict) -> None:
        if self.rank == 0:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.remote and (row.get("kind") != "train" or time.monotonic() - self.synced >= SYNC_SECONDS):
                self.sync()


class EvaluationProgress(TrainerCallback):
    """A bar over each evaluation's batches (this worker's share), for world rank 0 only.

    transformers' own `ProgressCallback` is off (`disable_tqdm`): its training bar would repeat the driver's, and it
    draws one per node, not one per run. A worker writes into `logs/rank-N.log` (streamed with FORGEKIT_VERBOSE=1),
    no terminal, so the bar is there only with `FORGEKIT_PROGRESS=1` (`forgekit.progress.progress_enabled`).
    """

    def __init__(self) -> None:
        self.bar = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        from forgekit.progress import progress_bar

        if self.bar is None:
            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            self.bar = progress_bar(total, f"evaluating (step {state.global_step})", "batch")
        self.bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Reporter(TrainerCallback):
    """The Trainer callback of every worker (rows are written by rank 0 only).

    Args:
        plan: the run's plan (`total_steps`, `eval_every`, precision).
        metrics: rank 0's metrics.jsonl.
        publisher: publishes each checkpoint the Trainer saves.
        rank, world: world rank and size.
        flops_per_token, peak_tflops: for MFU on GPUs (None: not reported).
        stop_on_nonfinite: stop at a non-finite loss or gradient norm (off where DeepSpeed skips such steps).
    """

    def __init__(self, plan: Any, metrics: MetricsFile, publisher: CheckpointPublisher, rank: int, world: int, *,
                 flops_per_token: float | None = None, peak_tflops: float | None = None,
                 stop_on_nonfinite: bool = True) -> None:
        self.plan, self.metrics, self.publisher, self.rank, self.world = plan, metrics, publisher, rank, world
        self.max_steps, self.every = plan.total_steps, plan.eval_every
        self.flops_per_token, self.peak, self.stop_on_nonfinite = flops_per_token, peak_tflops, stop_on_nonfinite
        self.on_gpu = plan.hardware.use_gpu
        # the run's training time and the tokens trained in it, over every session of a resumed run
        self.last_time, self.last_tokens, self.train_time, self.timed_tokens = None, 0, 0.0, 0
        self._timed_step, self._tps = None, 0.0  # the last logged step `throughput` timed, and its tokens/s
        self.diverged: str | None = None  # the message, once the loss or gradient norm is no longer finite
        self.profiler = None  # forgekit.profiling's callback on rank 0 with profile_steps

    def mfu(self, tps: float) -> float | None:
        """Model FLOPs utilisation at `tps` real tokens/s over all workers, to 4 significant digits."""
        from forgekit.flops import mfu

        value = mfu(tps, self.flops_per_token, self.world, self.peak) if self.flops_per_token else None
        return float(f"{value:.4g}") if value else None

    def _gpu_fields(self, tps: float | None) -> dict[str, Any]:
        if not self.on_gpu:
            return {}
        import torch

        out: dict[str, Any] = {"peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
        mfu = self.mfu(tps) if tps else None
        if mfu:
            out["mfu"] = mfu
        return out

    def resume(self, rows: list[dict]) -> None:
        """Continue the run's training time and tokens from the rows kept up to the checkpoint (`MetricsFile.reset`):
        result.json's throughput is the whole run's, not the last session's."""
        last = next((r for r in reversed(rows) if r.get("kind") == "train" and "train_seconds" in r), None)
        if last is not None:
            self.train_time, self.timed_tokens = last["train_seconds"], last["tokens"]

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_tokens = time.perf_counter(), state.num_input_tokens_seen

    def on_evaluate(self, args, state, control, **kwargs):
        self.last_time = time.perf_counter()  # evaluation time is not training time

    def throughput(self, state: Any, logs: dict | None = None) -> float:
        """The real tokens/s of the steps since the last training log (timed once per logged step, however often
        it is asked); with `logs`, `tokens_per_second` and (on GPUs) `mfu` are added to that dict, which every
        later callback of the Trainer sees (`ThroughputInLogs` puts this before the trackers')."""
        if self._timed_step != state.global_step:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            dt = max(now - self.last_time, 1e-9)
            self._tps = (tokens - self.last_tokens) / dt
            self.train_time += dt
            self.timed_tokens += tokens - self.last_tokens
            self.last_time, self.last_tokens, self._timed_step = now, tokens, state.global_step
        if logs is not None:
            logs["tokens_per_second"] = round(self._tps, 2)
            mfu = self.mfu(self._tps) if self.on_gpu and self._tps else None
            if mfu:
                logs["mfu"] = mfu
        return self._tps

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        base = {"step": state.global_step, "max_steps": self.max_steps, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            tokens = state.num_input_tokens_seen
            tps = self.throughput(state)
            row = {"kind": "train", **base, "loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                   "grad_norm": logs.get("grad_norm"), "tokens": tokens, "tokens_per_second": round(tps, 2),
                   "train_seconds": round(self.train_time, 3), "time": time.time()}
            row.update({k: logs[k] for k in PREFERENCE_KEYS if k in logs})
            if self.profiler is not None and state.global_step in self.profiler.steps:
                row["profiled"] = True  # the profiler slowed this step (forgekit.profiling)
            self.metrics.write({**row, **self._gpu_fields(tps)})
            if self.stop_on_nonfinite and not all(math.isfinite(logs.get(k, 0.0) or 0.0) for k in ("loss", "grad_norm")):
                # stop every rank here (they all log the same reduced values), with no evaluation or checkpoint of
                # the broken weights; raising would make Ray retry from the last checkpoint
                self.diverged = (
                    f"training diverged at step {state.global_step}: loss {logs['loss']}, gradient norm "
                    f"{logs.get('grad_norm')}; the weights are no longer finite. Lower learning_rate (or "
                    f"max_grad_norm), or look for broken examples; {CHECKPOINTS}/ holds the checkpoints before it.")
                control.should_training_stop = True
                control.should_evaluate = control.should_save = False
        elif "eval_loss" in logs:
            row = {"kind": "eval", **base, "eval_loss": logs["eval_loss"],
                   "perplexity": math.exp(min(logs["eval_loss"], 50.0)), "time": time.time()}
            row.update({k: logs[k] for k in CLASSIFICATION_EVAL_KEYS if k in logs})
            row.update({f"eval_{k}": logs[f"eval_{k}"] for k in PREFERENCE_KEYS if f"eval_{k}" in logs})
            self.metrics.write(row)

    def on_step_end(self, args, state, control, **kwargs):
        faults.slow_step()
        if state.global_step >= self.max_steps and state.global_step % self.every:
            control.should_save = True  # the last step is always checkpointed (and evaluated)
            control.should_evaluate = args.eval_strategy != "no"
        if control.should_save:  # before the Trainer writes a checkpoint the disk has no room for
            self.publisher.check_space(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        metrics = {"step": state.global_step}
        for row in reversed(state.log_history):
            if "eval_loss" in row and row.get("step") == state.global_step:
                metrics["eval_loss"] = row["eval_loss"]
                break
        self.metrics.sync()  # a resume from this checkpoint keeps the rows up to it
        self.publisher.publish(state.global_step, metrics)

    def finish(self, trainer: Any, *, trainable: int, total: int, precision: str, levers: dict[str, Any]) -> None:
        """The final row (rank 0): totals, what the run used, and what the Trainer executed (compared with the
        plan by the tests); or diverged.txt."""
        if self.rank != 0:
            return
        if self.diverged:
            from forgekit import storage

            self.metrics.sync()
            storage.write_text(storage.join(self.publisher.run_dir, DIVERGED), self.diverged + "\n")
            return
        state, args = trainer.state, trainer.args
        tps = self.timed_tokens / self.train_time if self.train_time else None
        batches = len(trainer.get_train_dataloader())  # per worker and epoch, as the Trainer counts them
        row = {
            "kind": "final", "step": state.global_step, "train_tokens": state.num_input_tokens_seen,
            "train_seconds": round(self.train_time, 2), "tokens_per_second": round(tps, 2) if tps else None,
            "trainable_params": trainable, "total_params": total, "precision": precision,
            "world_size": self.world, "levers": levers,
            "executed": {"max_steps": state.max_steps, "num_train_epochs": state.num_train_epochs,
                         "steps_per_epoch": max(math.ceil(batches / args.gradient_accumulation_steps), 1),
                         "micro_batch": state.train_batch_size, "accumulation": args.gradient_accumulation_steps,
                         "world_size": args.world_size, "eval_steps": state.eval_steps if args.eval_strategy != "no" else None,
                         "save_steps": state.save_steps},
            **self._gpu_fields(tps),
        }
        evals = [r for r in state.log_history if "eval_accuracy" in r]
        if evals:
            row.update({k: evals[-1][k] for k in CLASSIFICATION_EVAL_KEYS if k in evals[-1]})
        self.metrics.write(row)


class ThroughputInLogs(TrainerCallback):
    """Puts the Reporter's tokens/s and MFU into each training log before the trackers' callbacks log it, so that
    MLflow, W&B and TensorBoard get the series metrics.jsonl has (the same values). The Trainer runs the trackers'
    callbacks before the ones passed to it; `install` puts this one right after `DefaultFlowCallback`, while the
    Reporter itself stays after the trackers (MLflow logs a checkpoint's files before the Reporter publishes them)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            self.reporter.throughput(state, logs)

    @classmethod
    def install(cls, trainer: Any, reporter: Reporter) -> None:
        from transformers.trainer_callback import DefaultFlowCallback

        callbacks = trainer.callback_handler.callbacks
        at = next((i + 1 for i, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)), 0)
        callbacks.insert(at, cls(reporter))

