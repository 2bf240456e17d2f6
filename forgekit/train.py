"""Fine-tune: the launcher. Config → hardware → checks → data → plan → Ray Train workers → the run directory.

`finetune(config)` validates the config (once), starts or attaches to a Ray cluster, decides the hardware
(`forgekit.hardware`), runs every pre-flight check at once (`forgekit.checks`), tokenizes the data
(`forgekit.prepare`), derives the plan (`forgekit.plan`), writes the run directory and launches the workers
(`forgekit.worker.train_worker`), which execute the plan. Features and the config fields that drive them:

- Workers: `num_devices` Ray workers, GPUs when the cluster has them (`use_gpu`), else CPU processes (gloo).
  `worker_resources` are the Ray resources of each (`trainer_resources` is not used by Ray 2.60).
  `RAY_ADDRESS` / `address=` attaches to a running cluster; otherwise a local one starts with the dashboard off.
- Engine: transformers `Trainer` with DeepSpeed from `deepspeed.config_path` ("auto" values filled from the
  plan; an explicit value that contradicts it is a `ConfigError` naming both). bf16 on GPUs that support it;
  on CPUs bf16 autocast with AMX / AVX512-BF16, else fp32. LoRA (`lora_config`, peft) or full-parameter; `gradient_checkpointing`; `attn_implementation`;
  `liger_kernel`; rope scaling when `context_length` exceeds the model's maximum.
- Stages: `initial_base_model_ckpt_path` (full weights) or `initial_adapter_model_ckpt_path` (LoRA adapter).
- Outputs (`output_dir/<run_name>/`): config.yaml, manifest.json, plan.json, metrics.jsonl (rank 0), checkpoints
  (`checkpoints/step-NNNNNN`: every node's part gathered, then published by an atomic rename; the
  `num_checkpoints_to_keep` best by eval loss kept by Ray, and the latest one, which a resume needs), result.json.
- Remote run directories: `output_dir: s3://bucket/runs` (or gs://) puts all of it on object storage: Ray Train
  writes the checkpoints through `RunConfig(storage_path=..., storage_filesystem=...)` (`forgekit.storage`), the
  small files are one PUT each, rank 0 mirrors metrics.jsonl every `FORGEKIT_METRICS_SYNC_S` seconds (10) and at
  evaluations, checkpoints and the end, and each worker uploads its `logs/rank-N.log` at the end. Remote data,
  models and adapters are checked before Ray starts and copied once into each node's cache.
- Resume: the same command with the same output dir continues from the last checkpoint (model, optimizer,
  scheduler, RNG, data position: the Trainer's own checkpoint format). Unset `run_name` is derived from
  the model and a hash of the config and data, so re-running the same command finds the same run.
  Ray's `FailureConfig` retries a run whose worker died, from its last checkpoint.
- Progress: a bar on the driver (steps, loss, evaluation losses) read from metrics.jsonl, and world rank 0's bar over
  each evaluation's batches in its log; when they show: `forgekit.progress` (`FORGEKIT_PROGRESS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgekit import faults
from forgekit.config import ConfigError, FinetuneConfig, format_config, load_config
from forgekit.progress import progress_enabled
from forgekit.worker.checkpoints import DIVERGED, cannot_resume, has_optimizer_state

__all__ = ["TrainingDiverged", "TrainingError", "finetune", "init_ray", "prepare_run", "run_name_for"]

log = logging.getLogger("forgekit")


class TrainingError(RuntimeError):
    """Training failed inside a worker; the message carries the worker's error."""


class TrainingDiverged(TrainingError):
    """The loss or the gradient norm was no longer finite: the workers stopped at that step, without a retry.

    The workers stop together (the logged loss and gradient norm are the same on every rank) and leave the message
    in `<run dir>/diverged.txt`; the driver raises this. A retry would only diverge again from the last checkpoint.
    """


# ----------------------------------------------------------------------------------------------- the run


def prepare_run(cfg: FinetuneConfig, *, cluster: dict[str, float] | None = None, attached: bool = False,
                local: bool = True) -> Any:
    """Hardware → checks → data → plan: the `Plan` of `cfg`, or one error listing every problem.

    Args:
        cfg: the validated config.
        cluster: the Ray cluster's resources (None: no cluster; the cluster is not checked).
        attached: the cluster is one forgekit attached to (what it lacks is a warning: it may autoscale).
        local: the cluster's GPUs are this machine's.

    Raises:
        ConfigError, DataError: every problem found (nothing was trained).
    """
    from forgekit.checks import check_plan, preflight, raise_problems
    from forgekit.errors import ForgekitError
    from forgekit.hardware import detect_hardware
    from forgekit.plan import make_plan
    from forgekit.prepare import data_spec, prepare_data

    hw = detect_hardware(cfg, cluster, local=local)
    errors = preflight(cfg, hw, cluster, attached=attached)
    if not errors:
        try:
            prepared = prepare_data(cfg, data_spec(cfg, hw.use_gpu))
        except ForgekitError as e:
            errors.append(e)
    raise_problems(errors)
    plan = make_plan(cfg, hw, prepared)
    for warning in check_plan(plan):
        log.warning("forgekit: %s", warning)
    return plan


def run_name_for(cfg: FinetuneConfig, data_key: str) -> str:
    """The run directory name: `cfg.run_name`, else `<model>-<lora|full>-<hash of config and data>`."""
    if cfg.run_name:
        return cfg.run_name
    payload = cfg.model_dump(mode="json", exclude={"output_dir", "run_name"})
    digest = hashlib.sha256(json.dumps([payload, data_key], sort_keys=True).encode()).hexdigest()[:8]
    model = Path(cfg.model_id.rstrip("/")).name.lower()
    return f"{model}-{'lora' if cfg.lora_config else 'full'}-{digest}"



# Ray Train settings for a cluster forgekit starts on this machine (see init_ray)
LOCAL_CLUSTER_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


# whether this process's Ray cluster is one init_ray started here (not one attached to, nor one the caller started)
_started_local_cluster = False


def _local_accelerator_labels() -> dict[str, float]:
    """The memory-specific A100 label (`accelerator_type:A100-40G` / `A100-80G`) of this machine's GPUs.

    Ray labels every A100 node `accelerator_type:A100` and leaves the memory-specific labels to be added by hand
    (`ray.util.accelerators`); LLMForge's configs (and forgekit's 1x/8xA100-80G ones) ask for `A100-80G`. A local
    cluster forgekit starts adds it, so those configs run on an A100 machine as they would on their cluster.
    """
    import torch

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    if "A100" not in props.name:
        return {}
    return {f"accelerator_type:A100-{'80G' if props.total_memory > 60 * 2**30 else '40G'}": 1.0}


def unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at a Ray cluster address (`host:port` or `ray://host:port`), or None.

    None too for addresses Ray resolves itself (`auto`, `local`, a bare host): only a TCP connection to the given
    port is tried, which is what a cluster's head (GCS or Ray Client server) accepts.
    """
    import socket

    if address.startswith(("http://", "https://")):  # a dashboard (jobs API) address: ray.init explains that
        return None
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


def init_ray(address: str | None = None, num_devices: int = 1) -> None:
    """Connect to a Ray cluster (`address`, else `$RAY_ADDRESS`) or start a quiet local one; no-op if connected.

    A local cluster has the dashboard off, `max(cpu_count, num_devices)` CPUs (so 2 CPU workers fit a
    2-core laptop), every local GPU (an A100 also labelled `A100-40G` / `A100-80G`), and Ray Train's preemption watcher off with a 0.5 s worker poll (set
    `RAY_TRAIN_ENABLE_PREEMPTION_WATCHER` / `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` to choose otherwise; on a cluster
    you attach to, Ray's defaults apply unless you set them).
    """
    global _started_local_cluster
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    _started_local_cluster = False
    # workers inherit these: quiet libraries, and no tokenizer thread pools fighting over a laptop's cores
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "PYTHONWARNINGS": "ignore",
        "FORGEKIT_VERBOSE": "0",
        "FORGEKIT_PROGRESS": "",  # 1: world rank 0 draws the evaluation bar into its log (forgekit.progress)
        faults.VARIABLE: "",
    }
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in env.items()}}
    if address:
        why = unreachable(address)
        if why:  # ray.init would retry for minutes, printing GCS time-outs
            source = "RAY_ADDRESS" if address == os.environ.get("RAY_ADDRESS") else "--address"
            raise ConfigError([f"{source}={address}: no Ray cluster answers there ({why}); start one with "
                               "`ray start --head`, or unset it to let forgekit start a local cluster"])
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=_verbose())
        return
    # a cluster of its own, on this machine: nothing drains its node, so Ray Train's preemption watcher (one more
    # actor process to start) has nothing to watch, and polling the workers every 0.5 s instead of 2 s notices
    # the end of a run sooner: 3-5 s less per run on 2 cores (benchmarks/startup_overhead.py: 17.1-19.5 s -> 14.1-14.2 s)
    runtime_env["env_vars"].update({k: os.environ.get(k, v) for k, v in LOCAL_CLUSTER_TRAIN_ENV.items()})
    import torch

    cpus = max(os.cpu_count() or 1, num_devices)
    gpus = torch.cuda.device_count()
    for attempt in range(5):
        try:
            ray.init(
                num_cpus=cpus,
                num_gpus=gpus,
                resources=_local_accelerator_labels(),
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=_verbose(),  # worker output goes to run_dir/logs/; errors reach the driver as exceptions
                configure_logging=True,
                runtime_env=runtime_env,
            )
            _started_local_cluster = True
            return
        except Exception as e:  # Ray gives a busy machine 30 s to start its node, then gives up
            if "timed out during startup" not in str(e) or attempt == 4:
                raise
            log.warning("forgekit: the local Ray node was slow to start (busy machine?); retrying")
            ray.shutdown()


def _verbose() -> bool:
    """FORGEKIT_VERBOSE=1 streams every worker's output (Ray, DeepSpeed, transformers) to the terminal."""
    return os.environ.get("FORGEKIT_VERBOSE", "") not in ("", "0")


def _scaling_config(cfg: FinetuneConfig, use_gpu: bool) -> Any:
    """Ray's `ScalingConfig` for the run: `num_devices` workers with `worker_resources` each.

    `trainer_resources` (an LLMForge field) reserved resources for Ray Train's coordinator actor. Ray Train 2.60
    (Train V2, which forgekit's checkpoint reporting needs) has a controller that reserves nothing and raises
    on the parameter (ray-project/ray#49454), so a non-empty value is reported and left out.
    """
    import ray.train

    from forgekit.checks import worker_resources

    if cfg.trainer_resources:
        log.warning("forgekit: trainer_resources %s is not used: Ray Train 2.60 runs its training controller "
                    "without reserved resources (ray-project/ray#49454); worker_resources sets the workers'",
                    dict(cfg.trainer_resources))
    return ray.train.ScalingConfig(num_workers=cfg.num_devices, use_gpu=use_gpu,
                                   resources_per_worker=worker_resources(cfg, use_gpu))


def _prepare_run_dir(run_dir: str | Path, plan: Any) -> bool:
    """Create or re-open the run directory, local or remote (config.yaml, manifest.json, plan.json); True when it
    already holds a finished run."""
    from forgekit import storage

    if not storage.is_remote(run_dir):
        _claim_run_dir(Path(run_dir))
    cfg_text = format_config(plan.resolved)
    config_file = storage.join(run_dir, "config.yaml")
    if storage.exists(config_file):
        if _strip_comments(storage.read_text(config_file)) != _strip_comments(cfg_text):
            raise ConfigError([
                f"run_name: {run_dir} holds a run with a different config; resuming it would mix two runs. "
                "Choose another run_name (or output_dir), or delete that directory"
            ])
        return storage.exists(storage.join(run_dir, "result.json"))
    storage.write_text(config_file, cfg_text)  # (a local run directory is created with it)
    storage.write_text(storage.join(run_dir, "manifest.json"), json.dumps(plan.data.manifest, indent=2))
    plan.write(run_dir)
    return False


# the run directories this process holds the lock of: {run dir: the open lock file}
_RUN_DIR_LOCKS: dict[str, Any] = {}
LOCK_FILE = ".forgekit.lock"


def _claim_run_dir(run_dir: Path) -> None:
    """Create the local run directory and take its lock, or a ConfigError that says why not (never a traceback).

    The lock is an exclusive `flock` on `<run dir>/.forgekit.lock`, held while this process trains there: a second
    `forgekit finetune` on the same directory is refused (two writers would log every metrics row twice and
    delete each other's checkpoints). The kernel drops it when the process dies, so a killed run leaves no stale
    lock. A later run of this same process (a notebook re-running a cell) takes it over.
    """
    import fcntl
    import socket

    from forgekit.config import RUN_NAME

    if not RUN_NAME.fullmatch(run_dir.name) or run_dir.resolve().parent != run_dir.parent.resolve():
        raise ConfigError([f"run_name: {run_dir.name!r} would put the run outside output_dir ({run_dir.parent})"])
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # output_dir (or a parent) is a file, or cannot be written
        raise ConfigError([f"output_dir: cannot create the run directory {run_dir}: {e.strerror or e}"
                           + (f" ({e.filename})" if e.filename and str(e.filename) != str(run_dir) else "")]) from None
    held = _RUN_DIR_LOCKS.pop(str(run_dir), None)
    if held is not None:
        held.close()
    try:
        lock = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
    except OSError as e:
        raise ConfigError([f"output_dir: cannot write in the run directory {run_dir}: {e.strerror or e}"]) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ConfigError([f"run_name: {run_dir} is in use by another forgekit finetune ({holder}); wait for it to "
                           "end (then the same command resumes or returns its result), or choose another run_name"]) from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
    _RUN_DIR_LOCKS[str(run_dir)] = lock


def _release_run_dir(run_dir: str | Path) -> None:
    """Give up the run directory's lock (`_claim_run_dir`), if this process holds it."""
    lock = _RUN_DIR_LOCKS.pop(str(run_dir), None)
    if lock is not None:
        lock.close()


def _fit(trainer: Any) -> Any:
    """`trainer.fit()`, where Ctrl-C ends in a KeyboardInterrupt (the CLI: exit 130 and the command that resumes).

    Ray Train 2.60 installs its own SIGINT handler inside `fit()` (`DataParallelTrainer._register_sigint_handler`),
    which aborts the run and lets `fit()` return or raise as if it had failed. Chaining onto that handler records
    the interrupt; forgekit's handler (Python's) is put back afterwards.
    """
    import signal
    import threading

    interrupted = threading.Event()
    register = getattr(trainer, "_register_sigint_handler", None)
    if register is not None:
        def chained(controller: Any) -> None:
            register(controller)
            ray_handler = signal.getsignal(signal.SIGINT)

            def handler(signum: int, frame: Any) -> None:
                interrupted.set()
                if callable(ray_handler):
                    ray_handler(signum, frame)

            signal.signal(signal.SIGINT, handler)

        trainer._register_sigint_handler = chained
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        result = trainer.fit()
    except (Exception, SystemExit):  # Ray's handler may sys.exit(0) on a repeated Ctrl-C
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt
    return result


def _strip_comments(text: str) -> str:
    return "\n".join(line.split(" #")[0].rstrip() for line in text.splitlines() if not line.startswith("#"))


class _Progress(threading.Thread):
    """Driver-side progress bar (steps, loss, ETA) fed by rank 0's metrics.jsonl; works in terminals and notebooks.

    A remote metrics.jsonl (rank 0 uploads it every `forgekit.worker.metrics.SYNC_SECONDS` and at evaluations) is
    read whole every 5 s.
    """

    def __init__(self, metrics_file: str | Path, enabled: bool) -> None:
        from forgekit import storage

        super().__init__(daemon=True)
        self.remote = storage.is_remote(metrics_file)
        self.metrics_file, self.enabled = metrics_file if self.remote else Path(metrics_file), enabled
        self.stop = threading.Event()
        self._offset, self._inode = 0, None

    def _new_remote_rows(self) -> list[dict]:
        from forgekit import storage

        try:
            lines = storage.read_text(self.metrics_file).splitlines()
        except storage.StorageError:  # not there yet (or the storage did not answer this time)
            return []
        if len(lines) < self._offset:  # replaced by a retried worker's
            self._offset = 0
        rows = []
        for line in lines[self._offset:]:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        self._offset = len(lines)
        return rows

    def new_rows(self) -> list[dict]:
        """The complete lines written since the last call. A retried worker replaces the file with the lines up
        to its checkpoint (`_Reporter.reset_metrics`): then reading starts over from the top."""
        if self.remote:
            return self._new_remote_rows()
        try:
            st = self.metrics_file.stat()
        except FileNotFoundError:
            return []
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._offset, self._inode = 0, st.st_ino
        with self.metrics_file.open() as f:
            f.seek(self._offset)
            chunk = f.read()
        lines = chunk.split("\n")
        self._offset += len(chunk.encode()) - len(lines[-1].encode())
        rows = []
        for line in lines[:-1]:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        return rows

    def run(self) -> None:
        if not self.enabled:
            return
        from forgekit.progress import progress_bar

        bar, evals_shown = None, set()
        while not self.stop.wait(5.0 if self.remote else 1.0):
            for row in self.new_rows():
                if bar is None and row.get("max_steps"):
                    bar = progress_bar(row["max_steps"], "fine-tuning", "step", progress=True)
                if bar is None:
                    continue
                if row.get("kind") == "train":
                    bar.n = row["step"]
                    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                    bar.refresh()
                elif row.get("kind") == "eval" and row["step"] not in evals_shown:
                    evals_shown.add(row["step"])
                    bar.write(f"step {row['step']}: eval_loss {row['eval_loss']:.4f}")
        if bar is not None:
            bar.close()


def finetune(
    config: str | Path | FinetuneConfig,
    overrides: Sequence[str] = (),
    *,
    default: bool = False,
    address: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Fine-tune a model as `config` says; return result.json's content plus `run_dir`.

    Args:
        config: a YAML path or a validated config.
        overrides: dotted `key=value` overrides (`learning_rate=2e-4`).
        default: default mode (only `model_id` and `train_path` needed).
        address: Ray cluster address; default `$RAY_ADDRESS`, else a local cluster.
        progress: show a progress bar on the driver (None: in a terminal or notebook, or with FORGEKIT_PROGRESS=1;
            `forgekit.progress.progress_enabled`).

    Raises:
        ConfigError, DataError: the config or data is invalid (nothing was trained).
        TrainingError: a worker failed (its error message is included).
        TrainingDiverged: the loss or gradient norm stopped being finite (the run stopped there, not retried).
    """
    cfg = config if isinstance(config, FinetuneConfig) and not overrides else load_config(config, overrides, default=default)
    init_ray(address, cfg.num_devices)
    import ray

    # a cluster forgekit did not start (an address, or the caller's own ray.init()) may autoscale: warn only
    attached = not _started_local_cluster
    plan = prepare_run(cfg, cluster=ray.cluster_resources(), attached=attached,
                       local=not attached or not (address or os.environ.get("RAY_ADDRESS")))
    log.info("forgekit: %s", plan.describe_batch())
    run_name = run_name_for(plan.resolved, plan.data.manifest["cache_key"])
    from forgekit import storage

    # a local directory, or a URL (s3://bucket/runs/<run_name>) that Ray Train and forgekit write through fsspec
    run_dir = (storage.join(cfg.output_dir, run_name) if storage.is_remote(cfg.output_dir)
               else Path(cfg.output_dir).expanduser().resolve() / run_name)
    if _prepare_run_dir(run_dir, plan):
        _release_run_dir(run_dir)
        log.info("%s already finished; its result:", run_dir)
        return {**json.loads(storage.read_text(storage.join(run_dir, "result.json"))), "run_dir": str(run_dir)}

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from forgekit.worker import train_worker

    storage_path, storage_fs = storage.ray_storage(cfg.output_dir)
    keep = ray.train.CheckpointConfig(
        num_to_keep=cfg.num_checkpoints_to_keep,
        checkpoint_score_attribute="eval_loss" if plan.data.valid_dir else None,
        checkpoint_score_order="min",
    )
    trainer = TorchTrainer(
        train_worker,
        # a re-run after the driver itself died (Ctrl-C, kill -9, lost machine) resumes from resume_from
        train_loop_config={"plan": plan, "run_dir": str(run_dir), "resume_from": _last_checkpoint(run_dir),
                           "faults": os.environ.get(faults.VARIABLE, "")},  # (tests only: forgekit.faults)
        torch_config=TorchConfig(backend="nccl" if plan.hardware.use_gpu else "gloo"),
        scaling_config=_scaling_config(cfg, plan.hardware.use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=keep,
            failure_config=ray.train.FailureConfig(max_failures=int(os.environ.get("FORGEKIT_MAX_FAILURES", "1"))),
        ),
    )
    storage.remove(storage.join(run_dir, DIVERGED))  # a re-run after lowering the learning rate starts clean
    started = time.time()
    sessions = _record_session(run_dir, started)
    bar = _Progress(storage.join(run_dir, "metrics.jsonl"), progress_enabled(progress))
    bar.start()
    try:
        result = _fit(trainer)
    except Exception as e:  # Ray wraps worker failures; surface the worker's own message
        raise TrainingError(f"training failed in a worker: {_worker_error(e)}") from e
    finally:
        bar.stop.set()
        bar.join(timeout=5)
        _release_run_dir(run_dir)
    if result.error is not None:
        raise TrainingError(f"training failed in a worker: {_worker_error(result.error)}")
    if storage.exists(storage.join(run_dir, DIVERGED)):
        raise TrainingDiverged(storage.read_text(storage.join(run_dir, DIVERGED)).strip())
    summary = _summarize(run_dir, result, wall=time.time() - started, sessions=sessions)
    storage.write_text(storage.join(run_dir, "result.json"), json.dumps(summary, indent=2))
    return {**summary, "run_dir": str(run_dir)}


def _last_checkpoint(run_dir: str | Path) -> str | None:
    """The newest complete checkpoint in the run directory (published by an atomic rename; on object storage,
    marked uploaded once every node's part was in), if any. One that a stopped run was writing is ignored, and
    said so; locally, where this process holds the run directory's lock, it is deleted."""
    import shutil

    from forgekit import storage
    from forgekit.runs import list_checkpoints
    from forgekit.worker.checkpoints import CHECKPOINTS

    done = list_checkpoints(run_dir)
    if storage.is_remote(run_dir):
        listed = {str(c).rstrip("/").rsplit("/", 1)[-1] for c in done}
        for name in (n for n in storage.listdir(storage.join(run_dir, CHECKPOINTS)) if n.startswith("step-")
                     and n not in listed):
            log.warning("forgekit: ignoring %s: an incomplete checkpoint (the run was stopped while uploading it)",
                        storage.join(run_dir, CHECKPOINTS, name))
    else:
        for partial in sorted((Path(run_dir) / CHECKPOINTS).glob(".tmp-step-*")):  # gathered, never published
            log.warning("forgekit: ignoring %s: a checkpoint the run was writing when it stopped (deleted)", partial)
            shutil.rmtree(partial, ignore_errors=True)
        for partial in (c for c in done if not (c / "trainer_state.json").is_file()):
            log.warning("forgekit: ignoring %s: an incomplete checkpoint (the run was stopped while writing it)", partial)
        done = [c for c in done if (c / "trainer_state.json").is_file()]
    if done and not has_optimizer_state(done[-1]):
        raise ConfigError([cannot_resume(done[-1])])
    if done:
        step = str(done[-1]).rstrip("/").rsplit("step-", 1)[-1].lstrip("0") or "0"
        log.info("forgekit: resuming from step %s (%s)", step, done[-1])
    return str(done[-1]) if done else None


def _worker_error(e: BaseException) -> str:
    """The workers' error for a user: forgekit's own messages where a worker raised one (`DiskFull`: Ray's snippet
    of the traceback would cut it), else Ray's text with the cause."""
    failures = [getattr(f, "_base_exc", f) for f in (getattr(e, "worker_failures", None) or {}).values()]
    own = [str(f) for f in failures if type(f).__module__.startswith("forgekit.")]
    if own:
        return "\n".join(dict.fromkeys(own))
    text = str(e)
    for cause in (getattr(e, "__cause__", None), getattr(e, "cause", None)):
        if cause is not None:
            text = f"{text}\n{cause}"
    return text.strip()


SESSIONS = "sessions.jsonl"  # one line per `finetune` session on the run directory: {"started": <epoch s>}


def _record_session(run_dir: str | Path, started: float) -> list[float]:
    """Append this session's start to the run directory's sessions.jsonl; return every session's start."""
    from forgekit import storage

    path = storage.join(run_dir, SESSIONS)
    text = (storage.read_text(path) if storage.exists(path) else "") + json.dumps({"started": round(started, 3)}) + "\n"
    storage.write_text(path, text)
    return [json.loads(line)["started"] for line in text.splitlines() if line.strip()]


def _earlier_sessions_seconds(starts: Sequence[float], rows: list[dict]) -> float:
    """The wall time of the sessions before the last: each from its start to the last metrics row it wrote (a
    session that was killed left no end time; what it did after its last row is lost work, not counted)."""
    total = 0.0
    for start, nxt in itertools.pairwise(starts):
        times = [r["time"] for r in rows if "time" in r and start <= r["time"] < nxt]
        total += (max(times) - start) if times else 0.0
    return total


def _summarize(run_dir: str | Path, result: Any, wall: float, sessions: Sequence[float] = ()) -> dict[str, Any]:
    from forgekit import storage
    from forgekit.runs import list_checkpoints, read_metrics

    rows = read_metrics(run_dir)  # one read (a GET on object storage)
    train, evals, final = ([r for r in rows if r.get("kind") == kind] for kind in ("train", "eval", "final"))
    checkpoints = list_checkpoints(run_dir)
    best_ckpt = result.best_checkpoints[0][0].path if evals and result.best_checkpoints else None
    if best_ckpt and storage.is_remote(run_dir):  # Ray's path is inside the bucket: the URL, as the run dir's
        best_ckpt = f"{storage.scheme(run_dir)}://{best_ckpt}"
    # the best of the trained model's evaluations: step 0 is the untrained baseline (first_eval_loss), no checkpoint
    trained = [r for r in evals if "eval_loss" in r and r["step"] > 0]
    best = min(trained, key=lambda r: r["eval_loss"]) if trained else None
    if best:
        ckpt_for_best = {str(c).rsplit("/", 1)[-1]: c for c in checkpoints}.get(f"step-{best['step']:06d}")
        best_ckpt = str(ckpt_for_best) if ckpt_for_best else best_ckpt
    info = final[-1] if final else {}
    out = {
        "best_checkpoint": str(best_ckpt) if best_ckpt else (str(checkpoints[-1]) if checkpoints else None),
        "last_checkpoint": str(checkpoints[-1]) if checkpoints else None,
        "checkpoints": [str(c) for c in checkpoints],
        "best_eval_loss": best["eval_loss"] if best else None,
        "first_eval_loss": evals[0]["eval_loss"] if evals else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "final_train_loss": train[-1]["loss"] if train else None,
        # the final row has the last step: with logging_steps > 1 the last train row can be earlier
        "steps": info.get("step", train[-1]["step"] if train else 0),
        "train_tokens": info.get("train_tokens", train[-1]["tokens"] if train else 0),
        "tokens_per_second": info.get("tokens_per_second"),
        # every session of the run (a resumed run's earlier ones too); the last session alone beside it
        "wall_seconds": round(wall + _earlier_sessions_seconds(sessions, rows), 2),
        "last_session_wall_seconds": round(wall, 2),
        "sessions": max(len(sessions), 1),
        "train_seconds": info.get("train_seconds"),
    }
    from forgekit.worker.metrics import CLASSIFICATION_EVAL_KEYS

    for key in (*CLASSIFICATION_EVAL_KEYS, "trainable_params", "total_params", "mfu", "peak_memory_gb", "precision",
                "world_size", "levers"):
        if key in info:
            out[key] = info[key]
    if evals and "eval_accuracy" in evals[-1]:
        out["best_eval_accuracy"] = max(r.get("eval_accuracy", 0.0) for r in evals)
    return out
