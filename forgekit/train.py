"""Fine-tune: launch Ray Train workers that run the transformers Trainer with DeepSpeed; write the run directory.

Features and the config fields that drive them (one place, top to bottom):

- Workers: `num_devices` Ray workers, GPUs when the cluster has them (`use_gpu`), else CPU processes (gloo).
  `worker_resources` are the Ray resources of each (`trainer_resources` is not used by Ray 2.60).
  `RAY_ADDRESS` / `address=` attaches to a running cluster; otherwise a local one starts with the dashboard off.
- Engine: transformers `Trainer` with DeepSpeed from `deepspeed.config_path` ("auto" values filled from this
  config; an explicit value that contradicts it is a `ConfigError` naming both). bf16 on GPUs that support
  it, fp32 on CPU. LoRA (`lora_config`, peft) or full-parameter; `gradient_checkpointing`;
  `attn_implementation`; `liger_kernel`; rope scaling when `context_length` exceeds the model's maximum.
- Stages: `initial_base_model_ckpt_path` (full weights) or `initial_adapter_model_ckpt_path` (LoRA adapter).
- Outputs (`output_dir/<run_name>/`): config.yaml, manifest.json, metrics.jsonl (rank 0), checkpoints
  (`checkpoints/step-NNNNNN`: every node's part gathered, then published by an atomic rename; the
  `num_checkpoints_to_keep` best by eval loss kept by Ray, and the latest one, which a resume needs), result.json.
- Resume: the same command with the same output dir continues from the last checkpoint (model, optimizer,
  scheduler, RNG, data position: the Trainer's own checkpoint format). Unset `run_name` is derived from
  the model and a hash of the config and data, so re-running the same command finds the same run.
  Ray's `FailureConfig` retries a run whose worker died, from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgekit.batching import describe_batch
from forgekit.config import ConfigError, FinetuneConfig, format_config, load_config
from forgekit.tracking import check_logger, logger_setup

__all__ = ["TrainingError", "deepspeed_config", "finetune", "init_ray", "run_name_for"]

log = logging.getLogger("forgekit")
CHECKPOINTS = "checkpoints"


class TrainingError(RuntimeError):
    """Training failed inside a worker; the message carries the worker's error."""


class TrainingDiverged(TrainingError):
    """The loss or the gradient norm was no longer finite: the workers stopped at that step, without a retry.

    The workers stop together (the logged loss and gradient norm are the same on every rank) and leave the message
    in `<run dir>/diverged.txt`; the driver raises this. A retry would only diverge again from the last checkpoint.
    """


DIVERGED = "diverged.txt"


# ----------------------------------------------------------------------------------------------- driver


def run_name_for(cfg: FinetuneConfig, data_key: str) -> str:
    """The run directory name: `cfg.run_name`, else `<model>-<lora|full>-<hash of config and data>`."""
    if cfg.run_name:
        return cfg.run_name
    payload = cfg.model_dump(mode="json", exclude={"output_dir", "run_name"})
    digest = hashlib.sha256(json.dumps([payload, data_key], sort_keys=True).encode()).hexdigest()[:8]
    model = Path(cfg.model_id.rstrip("/")).name.lower()
    return f"{model}-{'lora' if cfg.lora_config else 'full'}-{digest}"


def known_bf16(cfg: FinetuneConfig, use_gpu: bool | None) -> bool | None:
    """Whether the workers will hold bf16 weights, where the config alone decides it (None: the worker does).

    CPU workers and `precision: fp32` train fp32 weights (a CPU's `bf16` is autocast over fp32 weights); `bf16` on
    GPUs trains bf16 (a GPU without it fails on the worker); `auto` on GPUs depends on the GPU.
    """
    if use_gpu is False or cfg.precision == "fp32":
        return False
    return True if use_gpu and cfg.precision == "bf16" else None


def deepspeed_config(cfg: FinetuneConfig, *, bf16: bool | None = None) -> dict[str, Any] | None:
    """The DeepSpeed config of a run: `deepspeed.config_path` with "auto" fields filled from `cfg`.

    Fields that depend on the model (bucket sizes) stay "auto" here: the worker fills ZeRO-3's buckets from the
    loaded model (`perf.zero3_buckets`) and transformers the rest. An explicit value that
    contradicts the YAML raises ConfigError naming both. `bf16=None` leaves precision "auto" (decided on the
    worker, which knows its device).
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
    per_device, accum = cfg.train_batch_size_per_device, cfg.gradient_accumulation_steps
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


def prepare_checked(cfg: FinetuneConfig, use_gpu: bool | None) -> Any:
    """`prepare_data`, then the DeepSpeed file against the resolved config; when the model or the data fail,
    the DeepSpeed file's problems are reported with theirs (one ConfigError), not one stage at a time."""
    from forgekit.data import DataError
    from forgekit.prepare import prepare_data

    try:
        prepared = prepare_data(cfg, use_gpu=use_gpu)
    except (ConfigError, DataError) as e:
        try:  # what the config as written decides: the file exists, parses, and agrees with explicit values
            deepspeed_config(cfg, bf16=known_bf16(cfg, use_gpu))
        except ConfigError as ds:
            raise ConfigError(ds.problems + (e.as_problems() if isinstance(e, DataError) else e.problems)) from None
        raise
    # with the derived values too (precision "auto" on a GPU is decided on the worker)
    deepspeed_config(prepared.resolved, bf16=known_bf16(prepared.resolved, use_gpu))
    return prepared


# Ray Train settings for a cluster forgekit starts on this machine (see init_ray)
LOCAL_CLUSTER_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# what a classification evaluation reports (classifier_config.eval_metrics), as the Trainer names it
CLASSIFICATION_EVAL_KEYS = ("eval_accuracy", "eval_f1", "eval_prauc")


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
        "FORGEKIT_SLOW_STEP_SECONDS": "0",
        "FORGEKIT_TEST_DIE_ONCE_AFTER_STEP": "",
        "FORGEKIT_TEST_WORKER_PER_NODE": "",
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


def _worker_resources(cfg: FinetuneConfig, use_gpu: bool) -> dict[str, float]:
    res = dict(cfg.worker_resources)
    res.setdefault("GPU", 1) if use_gpu else res.pop("GPU", None)
    res.setdefault("CPU", 1)
    return res


def cluster_fit_problems(cfg: FinetuneConfig, use_gpu: bool, have: dict[str, float]) -> list[str]:
    """What a Ray cluster with resources `have` lacks for the run's workers, as config problems (empty: it fits).

    Ray does not fail a request it cannot meet: it waits for the resources to appear, which on a fixed cluster (one
    machine, say) is forever. The common case is a config copied from another GPU type: LLMForge's configs ask for
    `worker_resources: {accelerator_type:A100-80G: 0.001}`, which an H100 machine never has (and a Ray cluster's
    A100 nodes only when labelled so by hand; a local cluster forgekit starts labels its A100s itself).
    """
    need, n = _worker_resources(cfg, use_gpu), cfg.num_devices
    problems = []
    for key, per_worker in sorted(need.items()):
        total, avail = per_worker * n, have.get(key, 0.0)
        if avail + 1e-9 >= total:
            continue
        if key not in cfg.worker_resources:  # forgekit's own request: one GPU (or CPU) per worker
            fit = int(avail // per_worker)
            hint = (f"lower num_devices to at most {fit}" if fit else
                    "run on a machine with a GPU, or set use_gpu: false" if key == "GPU" else "add nodes")
            if key == "CPU":  # a local cluster has max(cores, num_devices) CPUs as its first run asked
                hint += " (in a notebook, ray.shutdown() first lets the next run size a new local cluster)"
            problems.append(f"num_devices: {n} {'GPU' if use_gpu else 'CPU'} workers need {total:g} {key}, "
                            f"the Ray cluster has {avail:g}; {hint}")
            continue
        msg = (f"worker_resources.{key}: {n} worker(s) x {per_worker:g} need {total:g}, "
               f"the Ray cluster has {avail:g}")
        if key.startswith("accelerator_type:"):
            types = sorted(k.split(":", 1)[1] for k in have if k.startswith("accelerator_type:"))
            msg += (f" (its accelerator types: {', '.join(types) or 'none'}); set the type this cluster has, "
                    "or remove the key to take any GPU")
        problems.append(msg)
    return problems


def _check_cluster_fits(cfg: FinetuneConfig, use_gpu: bool, attached: bool) -> None:
    """A config error before any worker starts when the cluster cannot host the workers; on a cluster forgekit
    attached to (which may be autoscaling: nodes with the resources can still come), a warning instead."""
    import ray

    problems = cluster_fit_problems(cfg, use_gpu, ray.cluster_resources())
    if problems and not attached:
        raise ConfigError(problems)
    for p in problems:
        log.warning("forgekit: %s; Ray waits until the cluster has it (an autoscaling cluster adds nodes)", p)


def _scaling_config(cfg: FinetuneConfig, use_gpu: bool) -> Any:
    """Ray's `ScalingConfig` for the run: `num_devices` workers with `worker_resources` each.

    `trainer_resources` (an LLMForge field) reserved resources for Ray Train's coordinator actor. Ray Train 2.60
    (Train V2, which forgekit's checkpoint reporting needs) has a controller that reserves nothing and raises
    on the parameter (ray-project/ray#49454), so a non-empty value is reported and left out.
    """
    import ray.train

    if cfg.trainer_resources:
        log.warning("forgekit: trainer_resources %s is not used: Ray Train 2.60 runs its training controller "
                    "without reserved resources (ray-project/ray#49454); worker_resources sets the workers'",
                    dict(cfg.trainer_resources))
    return ray.train.ScalingConfig(num_workers=cfg.num_devices, use_gpu=use_gpu,
                                   resources_per_worker=_worker_resources(cfg, use_gpu))


def _prepare_run_dir(run_dir: Path, cfg: FinetuneConfig, manifest: dict) -> bool:
    """Create or re-open the run directory; True when it already holds a finished run."""
    cfg_text = format_config(cfg)
    config_file = run_dir / "config.yaml"
    if config_file.exists():
        if _strip_comments(config_file.read_text()) != _strip_comments(cfg_text):
            raise ConfigError([
                f"run_name: {run_dir} holds a run with a different config; resuming it would mix two runs. "
                "Choose another run_name (or output_dir), or delete that directory"
            ])
        return (run_dir / "result.json").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file.write_text(cfg_text)
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return False


def _strip_comments(text: str) -> str:
    return "\n".join(line.split(" #")[0].rstrip() for line in text.splitlines() if not line.startswith("#"))


class _Progress(threading.Thread):
    """Driver-side progress bar (steps, loss, ETA) fed by rank 0's metrics.jsonl; works in terminals and notebooks."""

    def __init__(self, metrics_file: Path, enabled: bool) -> None:
        super().__init__(daemon=True)
        self.metrics_file, self.enabled = metrics_file, enabled
        self.stop = threading.Event()
        self._offset, self._inode = 0, None

    def new_rows(self) -> list[dict]:
        """The complete lines written since the last call. A retried worker replaces the file with the lines up
        to its checkpoint (`_Reporter.reset_metrics`): then reading starts over from the top."""
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
        from tqdm.auto import tqdm

        bar, evals_shown = None, set()
        while not self.stop.wait(1.0):
            for row in self.new_rows():
                if bar is None and row.get("max_steps"):
                    bar = tqdm(total=row["max_steps"], desc="fine-tuning", unit="step", dynamic_ncols=True)
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
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune a model as `config` says; return result.json's content plus `run_dir`.

    Args:
        config: a YAML path or a validated config.
        overrides: dotted `key=value` overrides (`learning_rate=2e-4`).
        default: default mode (only `model_id` and `train_path` needed).
        address: Ray cluster address; default `$RAY_ADDRESS`, else a local cluster.
        progress: show a progress bar on the driver.

    Raises:
        ConfigError, DataError: the config or data is invalid (nothing was trained).
        TrainingError: a worker failed (its error message is included).
        TrainingDiverged: the loss or gradient norm stopped being finite (the run stopped there, not retried).
    """
    loaded = isinstance(config, FinetuneConfig) and not overrides
    cfg = config if loaded else load_config(config, overrides, default=default)
    cfg = _absolute_paths(cfg)  # workers run in another directory
    init_ray(address, cfg.num_devices)
    import ray

    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    # a cluster forgekit did not start (an address, or the caller's own ray.init()) may autoscale: warn only
    _check_cluster_fits(cfg, use_gpu, attached=not _started_local_cluster)
    check_logger(cfg)  # a missing package fails here, not in every worker after Ray started
    prepared = prepare_checked(cfg, use_gpu)
    cfg = prepared.resolved
    log.info("forgekit: %s", describe_batch(cfg.train_batch_size_per_device, cfg.gradient_accumulation_steps,
                                            cfg.num_devices))
    run_name = run_name_for(cfg, prepared.manifest["cache_key"])
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    run_dir = output_dir / run_name
    if _prepare_run_dir(run_dir, cfg, prepared.manifest):
        log.info("%s already finished; its result:", run_dir)
        return {**json.loads((run_dir / "result.json").read_text()), "run_dir": str(run_dir)}

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    worker_config = {
        "config": cfg.model_dump(mode="json"),
        "train_dir": str(prepared.train_dir),
        "valid_dir": str(prepared.valid_dir) if prepared.valid_dir else None,
        "tokenizer_dir": str(prepared.tokenizer_dir),
        "run_dir": str(run_dir),
        "manifest": prepared.manifest,
        # a re-run after the driver itself died (Ctrl-C, kill -9, lost machine) resumes from here
        "resume_from": _last_checkpoint(run_dir),
    }
    keep = ray.train.CheckpointConfig(
        num_to_keep=cfg.num_checkpoints_to_keep,
        checkpoint_score_attribute="eval_loss" if prepared.valid_dir else None,
        checkpoint_score_order="min",
    )
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=worker_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=_scaling_config(cfg, use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(output_dir),
            checkpoint_config=keep,
            failure_config=ray.train.FailureConfig(max_failures=int(os.environ.get("FORGEKIT_MAX_FAILURES", "1"))),
        ),
    )
    (run_dir / DIVERGED).unlink(missing_ok=True)  # a re-run after lowering the learning rate starts clean
    started = time.time()
    bar = _Progress(run_dir / "metrics.jsonl", progress)
    bar.start()
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker failures; surface the worker's own message
        raise TrainingError(f"training failed in a worker: {_worker_error(e)}") from e
    finally:
        bar.stop.set()
        bar.join(timeout=5)
    if result.error is not None:
        raise TrainingError(f"training failed in a worker: {_worker_error(result.error)}")
    if (run_dir / DIVERGED).is_file():
        raise TrainingDiverged((run_dir / DIVERGED).read_text().strip())
    summary = _summarize(run_dir, result, wall=time.time() - started)
    (run_dir / ".result.json.tmp").write_text(json.dumps(summary, indent=2))
    os.replace(run_dir / ".result.json.tmp", run_dir / "result.json")
    return {**summary, "run_dir": str(run_dir)}


def _last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint in the run directory (published by an atomic rename), if any."""
    from forgekit.runs import list_checkpoints

    done = [c for c in list_checkpoints(run_dir) if (c / "trainer_state.json").is_file()]
    if done and not has_optimizer_state(done[-1]):
        raise ConfigError([_cannot_resume(done[-1])])
    return str(done[-1]) if done else None


def _cannot_resume(checkpoint: str | Path) -> str:
    """Why a run cannot resume from a weights-only checkpoint, and what to do instead (driver and worker)."""
    return (
        f"save_optimizer_state: checkpoint {checkpoint} holds no optimizer state (the run had "
        "save_optimizer_state: false), so the run cannot resume exactly. Start a new stage from it with "
        "initial_base_model_ckpt_path (full weights) or initial_adapter_model_ckpt_path (LoRA) and another "
        "run_name, or delete the run directory."
    )


def has_optimizer_state(checkpoint: str | Path) -> bool:
    """Whether a Trainer checkpoint can resume a run (optimizer state: torch's file or DeepSpeed's shards)."""
    ckpt = Path(checkpoint)
    return (ckpt / "optimizer.pt").is_file() or any(ckpt.glob("global_step*"))


def _absolute_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """Local relative paths (relative to the current directory, as on the command line) made absolute."""
    updates: dict[str, Any] = {}

    def fix(value: str | None) -> str | None:
        if not value or "://" in value or Path(value).is_absolute():
            return value
        local = Path(value).expanduser()
        return str(local.resolve()) if local.exists() else value

    for key in ("train_path", "valid_path", "model_id", "initial_base_model_ckpt_path", "initial_adapter_model_ckpt_path"):
        new = fix(getattr(cfg, key))
        if new != getattr(cfg, key):
            updates[key] = new
    if cfg.deepspeed is not None and fix(cfg.deepspeed.config_path) != cfg.deepspeed.config_path:
        updates["deepspeed"] = cfg.deepspeed.model_copy(update={"config_path": fix(cfg.deepspeed.config_path)})
    if not updates:
        return cfg
    new = cfg.model_copy(update=updates)
    new._derived = cfg.derived
    return new


def _worker_error(e: BaseException) -> str:
    text = str(e)
    for cause in (getattr(e, "__cause__", None), getattr(e, "cause", None)):
        if cause is not None:
            text = f"{text}\n{cause}"
    return text.strip()


def _summarize(run_dir: Path, result: Any, wall: float) -> dict[str, Any]:
    from forgekit.runs import list_checkpoints, read_metrics

    train = read_metrics(run_dir, kind="train")
    evals = read_metrics(run_dir, kind="eval")
    final = read_metrics(run_dir, kind="final")
    checkpoints = list_checkpoints(run_dir)
    best_ckpt = result.best_checkpoints[0][0].path if evals and result.best_checkpoints else None
    # the best of the trained model's evaluations: step 0 is the untrained baseline (first_eval_loss), no checkpoint
    trained = [r for r in evals if "eval_loss" in r and r["step"] > 0]
    best = min(trained, key=lambda r: r["eval_loss"]) if trained else None
    if best:
        ckpt_for_best = {c.name: c for c in checkpoints}.get(f"step-{best['step']:06d}")
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
        "wall_seconds": round(wall, 2),
        "train_seconds": info.get("train_seconds"),
    }
    for key in (*CLASSIFICATION_EVAL_KEYS, "trainable_params", "total_params", "mfu", "peak_memory_gb", "precision",
                "world_size", "levers"):
        if key in info:
            out[key] = info[key]
    if evals and "eval_accuracy" in evals[-1]:
        out["best_eval_accuracy"] = max(r.get("eval_accuracy", 0.0) for r in evals)
    return out


# ----------------------------------------------------------------------------------------------- worker


def _train_worker(wc: dict[str, Any]) -> None:
    """One Ray Train worker: data → model → Trainer(+DeepSpeed) → train (resuming if a checkpoint exists)."""
    import ray.train
    import torch
    import transformers
    from datasets import load_from_disk
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from forgekit import perf
    from forgekit.prepare import collate

    transformers.logging.set_verbosity_error()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = FinetuneConfig.model_validate(wc["config"])  # re-validate on the worker
    run_dir = Path(wc["run_dir"])
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    if not _verbose():  # the driver shows a progress bar; each worker's own output is kept in a file
        import sys

        sys.stdout = sys.stderr = open(logs / f"rank-{rank}.log", "a", buffering=1)  # noqa: SIM115
    on_gpu = torch.cuda.is_available()
    bf16, cpu_autocast = _precision(cfg.precision, on_gpu)

    # --- data (tokenized once on the driver; the cache dir must be reachable from every node)
    for key in ("train_dir", "valid_dir", "tokenizer_dir"):
        if wc[key] and not Path(wc[key]).exists():
            raise FileNotFoundError(
                f"{wc[key]} is not visible on this node; set FORGEKIT_CACHE to storage shared by all nodes"
            )
    train_ds = load_from_disk(wc["train_dir"])
    valid_ds = load_from_disk(wc["valid_dir"]) if wc["valid_dir"] else None
    tokenizer = AutoTokenizer.from_pretrained(wc["tokenizer_dir"])
    packed = "position_ids" in train_ds.column_names
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # --- speed levers (forgekit.perf; each measured in benchmarks/results): attention kernel, Liger, selective
    # activation checkpointing, compiled decoder layers, fused AdamW. On CPU: sdpa, no Liger, no compile.
    attn = perf.pick_attention(cfg.attn_implementation, packing=packed, on_gpu=on_gpu)
    ds = deepspeed_config(cfg, bf16=bf16)
    zero_stage = int((ds or {}).get("zero_optimization", {}).get("stage", 0))
    liger = cfg.liger_kernel.enabled
    if liger is None:
        import importlib.util

        liger = on_gpu and importlib.util.find_spec("liger_kernel") is not None
    compile_layers = cfg.torch_compile and zero_stage < 3

    multiple = cfg.pad_to_multiple_of or (1 if on_gpu else 64)  # few batch shapes: flat CPU memory (config.py)

    def data_collator(features: list[dict]) -> dict:
        batch = collate(features, pad_token_id=pad_id, padding=cfg.padding, context_length=cfg.context_length,
                        multiple=multiple)
        if attn == perf.VARLEN and "position_ids" in batch:
            batch.update(perf.varlen_kwargs(batch["position_ids"]))  # document boundaries, once, on the CPU
        return batch

    # --- model (seeded first: LoRA's A matrices and new embedding rows are drawn at random)
    transformers.set_seed(cfg.seed)
    model, liger = _load_model(cfg, tokenizer, torch.bfloat16 if bf16 else torch.float32, attn, liger)
    generation = perf._base_model(model).generation_config
    if cfg.generation_config.stopping_sequences:  # saved with every checkpoint, where forgekit's generation reads them
        generation.stop_strings = list(cfg.generation_config.stopping_sequences)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    every = 0
    if cfg.gradient_checkpointing:
        every = 1
        if on_gpu:  # checkpoint only as many layers as memory requires
            every = perf.checkpoint_period(
                perf._base_model(model).config,
                cfg.train_batch_size_per_device * cfg.context_length,
                _free_activation_bytes(model, trainable, zero_stage, world),
                liger=liger,
            )
    checkpointed = perf.set_activation_checkpointing(model, every) if every else 0
    buckets = perf.zero3_buckets(ds, model) if ds else {}
    # bf16 autocast on a CPU: LoRA updates added to the layer outputs in fp32, not rounded away in bf16
    fp32_sums = perf.lora_sum_in_fp32(model) if cpu_autocast and cfg.lora_config else 0
    # logits and loss at supervised positions only (not where Liger's fused loss replaced the forward: the function
    # leaves it; nor for classification, whose metrics read the logits of every row)
    supervised_logits = (cfg.supervised_logits and cfg.task != "classification"
                         and perf.supervised_logits_only(model))
    if compile_layers:
        perf.compile_decoder_layers(model, dynamic=True)
    levers = {"attention": attn, "liger": liger, "checkpointed_layers": checkpointed,
              "compiled": bool(compile_layers), "packing": packed, "pad_to_multiple_of": 1 if packed else multiple,
              "zero_stage": zero_stage, "supervised_logits": supervised_logits, **buckets,
              **({"lora_fp32_sums": fp32_sums} if fp32_sums else {})}
    if rank == 0:
        print(f"forgekit levers: {levers}", flush=True)

    # --- schedule: the Trainer's own epoch/step arithmetic, mirrored to place evaluations in steps
    per_device, accum = cfg.train_batch_size_per_device, cfg.gradient_accumulation_steps
    batches_per_epoch = math.ceil(math.ceil(len(train_ds) / world) / per_device)
    steps_per_epoch = max(batches_per_epoch // accum + int(batches_per_epoch % accum > 0), 1)
    max_steps = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    freq = cfg.checkpoint_and_evaluation_frequency
    eval_every = freq.frequency if freq.unit == "steps" else freq.frequency * steps_per_epoch
    eval_every = max(1, min(eval_every, max_steps))
    has_eval = valid_ds is not None

    # Ray hands every worker the latest checkpoint of this run after a worker failure; after a driver restart
    # the driver found it in the run directory
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and wc.get("resume_from"):
        checkpoint = ray.train.Checkpoint(path=wc["resume_from"])
    # one per run directory: two runs of the same name in different output_dirs must not share (and clear) it
    where = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    if _node_per_worker():
        where += f"-w{rank}"  # a node of its own
    staging = Path(tempfile.gettempdir()) / "forgekit-staging" / f"{run_dir.name}-{where}-{os.getuid()}"
    if _node_local_rank(ctx) == 0:
        shutil.rmtree(staging, ignore_errors=True)
    if rank == 0:  # parts gathered by an interrupted attempt (before the first save's barrier, so before any copy)
        for stale in (run_dir / CHECKPOINTS).glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    report_to, logging_dir = logger_setup(cfg, run_dir)
    if logging_dir:  # transformers 5 dropped TrainingArguments.logging_dir; its TensorBoard callback reads this
        os.environ["TENSORBOARD_LOGGING_DIR"] = logging_dir
    args = TrainingArguments(
        output_dir=str(staging),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=cfg.eval_batch_size_per_device or per_device,
        gradient_accumulation_steps=accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.num_warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        num_train_epochs=cfg.num_epochs,
        max_steps=max_steps,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=1,  # staging only: Ray keeps the published checkpoints
        eval_on_start=has_eval and checkpoint is None,  # the baseline; a resumed run already has it
        bf16=bf16,
        use_cpu=not on_gpu,
        gradient_checkpointing=False,  # set per layer above (perf.set_activation_checkpointing)
        optim=perf.fused_optimizer_name(on_gpu),
        deepspeed=ds,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="all" if packed else "non_padding",
        save_only_model=not cfg.save_optimizer_state,
        ddp_find_unused_parameters=False,
    )
    reporter = _reporter_class()(run_dir, rank, world, max_steps, eval_every, model, cfg, packed, trainable, total, on_gpu,
                                 "bf16" if bf16 else "bf16-autocast" if cpu_autocast else "fp32")
    reporter.levers = levers
    # an adapter checkpoint holds no generation_config.json of its own (a full model's save writes it)
    reporter.generation_config = generation if cfg.generation_config.stopping_sequences else None
    # a non-finite gradient norm stops the run where nothing else would: no DeepSpeed, or ZeRO-1/2 with their bf16
    # overflow check off (forgekit's default); ZeRO-3 and ZeRO-0's bf16 optimizer skip such steps themselves
    reporter.stop_on_nonfinite = not ds or (zero_stage in (1, 2) and not ds.get("bf16", {}).get("check_grad_overflow", False))
    metrics_fns = {}
    if cfg.task == "classification":
        label_ids = tokenizer.convert_tokens_to_ids(cfg.classifier_config.label_tokens)
        metrics_fns = _classification_fns(label_ids, cfg.classifier_config.eval_metrics)
    callbacks = [reporter]
    if cfg.profile_steps and rank == 0:
        from forgekit.profiling import step_profiler

        if cfg.profile_steps[0] > max_steps:
            print(f"forgekit: profile_steps {list(cfg.profile_steps)} start after the last step ({max_steps}): "
                  "nothing is profiled", flush=True)
        callbacks.append(step_profiler(run_dir, *cfg.profile_steps, on_gpu=on_gpu))
        reporter.profiler = callbacks[-1]
    trainer_class = _CpuAutocastTrainer() if cpu_autocast else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_ds.remove_columns([c for c in ("length",) if c in train_ds.column_names]),
        eval_dataset=valid_ds.remove_columns(["length"]) if valid_ds is not None else None,
        data_collator=data_collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        **metrics_fns,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics.jsonl and the driver's progress bar replace it

    # --- train, or resume from the Trainer checkpoint inside the Ray checkpoint
    if checkpoint is None:
        reporter.reset_metrics(after_step=None)
        trainer.train()
    else:
        with checkpoint.as_directory() as ckpt_dir:
            if not has_optimizer_state(ckpt_dir):  # Ray retrying a failed worker from a weights-only checkpoint
                raise RuntimeError(_cannot_resume(ckpt_dir))
            step = json.loads((Path(ckpt_dir) / "trainer_state.json").read_text())["global_step"]
            reporter.reset_metrics(after_step=step)
            local = staging / f"checkpoint-{step}"
            if _node_local_rank(ctx) == 0 and not local.exists():
                shutil.copytree(ckpt_dir, local)
            _barrier()
            trainer.train(resume_from_checkpoint=str(local))
    reporter.finish(trainer)
    _barrier()
    if _node_local_rank(ctx) == 0:
        shutil.rmtree(staging, ignore_errors=True)


def _precision(precision: str, on_gpu: bool) -> tuple[bool, bool]:
    """(bf16 weights, bf16 autocast on the CPU) for the `precision` key on this worker's device."""
    import torch

    if on_gpu:
        supported = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not supported:
            raise RuntimeError(f"precision: bf16, but {torch.cuda.get_device_name()} does not support bf16")
        return precision != "fp32" and supported, False
    from forgekit.generate import cpu_has_bf16

    supported = cpu_has_bf16()
    if precision == "bf16" and not supported:  # on a CPU bf16 is only a speed lever: the weights are fp32 anyway
        log.warning("forgekit: precision: bf16, but this CPU has no bf16 instructions (AMX / AVX512-BF16): fp32")
    return False, precision == "bf16" and supported


def _CpuAutocastTrainer() -> type:  # a class, built on first use (transformers imports lazily)
    """The Trainer with bf16 autocast on the CPU around each forward pass (training and evaluation).

    Weights, gradients and the optimizer stay fp32 (DeepSpeed, if used, trains in fp32); only the matrix
    products run in bf16, as `torch.autocast` decides. Measured: benchmarks/results/README.md (CPU).
    """
    import torch
    from transformers import Trainer

    class CpuAutocastTrainer(Trainer):
        def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
            return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled)

    return CpuAutocastTrainer


def _load_model(cfg: FinetuneConfig, tokenizer: Any, dtype: Any, attn: str, liger: bool) -> tuple[Any, bool]:
    """Base (or stage-1 full weights) + optional context extension, Liger, label tokens and LoRA.

    Returns the model and whether Liger's kernels were applied (False where liger-kernel is missing or does
    not know the architecture: `perf.apply_liger` warns)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from forgekit.models import resolve_model_path

    source = resolve_model_path(cfg.initial_base_model_ckpt_path or cfg.model_id)
    model_config = AutoConfig.from_pretrained(source)
    model_max = getattr(model_config, "max_position_embeddings", None)
    extra: dict[str, Any] = {}
    if cfg.context_length and model_max and cfg.context_length > model_max:
        # context extension: stretch RoPE so positions beyond the pretrained range map into it
        scaling = dict(cfg.rope_scaling or {"rope_type": "linear", "factor": cfg.context_length / model_max})
        rope = dict(getattr(model_config, "rope_parameters", None) or {})
        rope.update(scaling)
        rope.setdefault("rope_theta", getattr(model_config, "rope_theta", 10000.0))
        model_config.rope_parameters = rope
        model_config.max_position_embeddings = cfg.context_length
        extra["config"] = model_config
    elif cfg.rope_scaling:
        rope = dict(getattr(model_config, "rope_parameters", None) or {})
        rope.update(cfg.rope_scaling)
        model_config.rope_parameters = rope
        extra["config"] = model_config
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn, **extra)
    model.config.use_cache = False
    if liger:
        from forgekit.perf import apply_liger

        liger = apply_liger(model, **cfg.liger_kernel.kwargs)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if cfg.initial_adapter_model_ckpt_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.initial_adapter_model_ckpt_path, is_trainable=True)
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
    return model, liger


def _free_activation_bytes(model: Any, trainable: int, zero_stage: int, world: int) -> float:
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


def _classification_fns(label_ids: list[int], metrics: Sequence[str] = ("accuracy",)) -> dict[str, Any]:
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


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _node_per_worker() -> bool:
    """FORGEKIT_TEST_WORKER_PER_NODE=1 (tests only): every worker acts as the only one of a node of its own, with
    its own staging dir (and rank 1 a second slower to publish), so that one machine exercises what a multi-node
    run does with checkpoints."""
    return bool(os.environ.get("FORGEKIT_TEST_WORKER_PER_NODE"))


def _node_local_rank(ctx: Any) -> int:
    """This worker's rank among the workers of its node (Ray groups workers by node IP)."""
    return 0 if _node_per_worker() else ctx.get_local_rank()


def _publishing_dir(run_dir: Path, step: int) -> Path:
    """Where every node's part of checkpoint `step` is gathered before the checkpoint is renamed into place."""
    return run_dir / CHECKPOINTS / f".tmp-step-{step:06d}"


def _publish(checkpoint: Any, dir_name: str) -> Any:
    """Ray upload function (world rank 0, storage on a local or shared file system): rename the gathered
    checkpoint into place, so that it appears whole, with every node's part, or not at all."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    target = Path(storage.experiment_fs_path) / dir_name
    gathered = Path(checkpoint.path)
    if target.exists():  # left by an interrupted attempt that got this far: replace it, never merge into it
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        os.replace(target, old)
        os.replace(gathered, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(gathered, target)
    return ray.train.Checkpoint(path=str(target))


def _reporter_class() -> type:
    """The Trainer callback class (defined lazily: importing forgekit.train must not import transformers)."""
    from transformers import TrainerCallback

    class _Reporter(TrainerCallback):
        """Rank 0 writes metrics.jsonl; checkpoints are published through Ray (on_save)."""

        def __init__(self, run_dir, rank, world, max_steps, every, model, cfg, packed, trainable, total, on_gpu, precision):
            self.run_dir, self.rank, self.world, self.max_steps, self.every = run_dir, rank, world, max_steps, every
            self.metrics_file = run_dir / "metrics.jsonl"
            self.cfg, self.packed, self.trainable, self.total, self.on_gpu, self.precision = cfg, packed, trainable, total, on_gpu, precision
            self.last_time, self.last_tokens, self.train_time, self.session_tokens = None, 0, 0.0, 0
            self.flops_per_token = None
            self.generation_config = None  # saved into adapter checkpoints when the run has stopping sequences
            self.stop_on_nonfinite = True  # off where DeepSpeed's overflow check skips such steps itself
            self.diverged: str | None = None  # the message, once the loss or gradient norm is no longer finite
            self.profiler = None  # forgekit.profiling's callback on rank 0 with profile_steps
            if on_gpu:
                import torch

                from forgekit.flops import model_flops_per_token, peak_tflops

                base = model.get_base_model() if hasattr(model, "get_base_model") else model
                lengths = run_dir / "manifest.json"
                tl = json.loads(lengths.read_text()).get("token_length", {}) if lengths.exists() else {}
                seq = tl.get("weighted_mean") or tl.get("mean") or cfg.context_length
                self.flops_per_token = model_flops_per_token(base.config, seq, lora=bool(cfg.lora_config or cfg.initial_adapter_model_ckpt_path))
                self.peak = peak_tflops(torch.cuda.get_device_name())

        def mfu(self, tps: float) -> float:
            """Model FLOPs utilisation at `tps` real tokens/s over all workers, to 4 significant digits."""
            return float(f"{tps * self.flops_per_token / (self.world * self.peak * 1e12):.4g}")

        # metrics.jsonl --------------------------------------------------------------------------------------
        def reset_metrics(self, after_step: int | None) -> None:
            """Fresh run: start the file. Resumed run: drop lines past the checkpoint (the steps are redone)."""
            if self.rank != 0:
                return
            kept = []
            if after_step is not None and self.metrics_file.exists():
                for line in self.metrics_file.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        row = json.loads(line)
                        if row.get("step", 0) <= after_step and row.get("kind") in ("train", "eval"):
                            kept.append(line)
            tmp = self.metrics_file.with_suffix(".tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, self.metrics_file)

        def _write(self, row: dict) -> None:
            if self.rank == 0:
                with self.metrics_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time, self.last_tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_evaluate(self, args, state, control, **kwargs):
            self.last_time = time.perf_counter()  # evaluation time is not training time

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            now = time.perf_counter()
            if "loss" in logs:
                tokens = state.num_input_tokens_seen
                dt = max(now - self.last_time, 1e-9)
                tps = (tokens - self.last_tokens) / dt
                self.train_time += dt
                self.session_tokens += tokens - self.last_tokens
                row = {
                    "kind": "train",
                    "step": state.global_step,
                    "max_steps": self.max_steps,
                    "epoch": round(state.epoch or 0.0, 4),
                    "loss": logs["loss"],
                    "learning_rate": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"),
                    "tokens": tokens,
                    "tokens_per_second": round(tps, 2),
                    "time": time.time(),
                }
                if self.profiler is not None and state.global_step in self.profiler.steps:
                    row["profiled"] = True  # the profiler slowed this step (forgekit.profiling)
                if self.on_gpu:
                    import torch

                    row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                    if self.flops_per_token and self.peak:
                        row["mfu"] = self.mfu(tps)
                self._write(row)
                self.last_time, self.last_tokens = now, tokens
                if self.stop_on_nonfinite and not all(math.isfinite(logs.get(k, 0.0) or 0.0) for k in ("loss", "grad_norm")):
                    # stop every rank here (they all log the same reduced values), with no evaluation or checkpoint
                    # of the broken weights; raising would make Ray retry from the last checkpoint
                    self.diverged = (
                        f"training diverged at step {state.global_step}: loss {logs['loss']}, gradient norm "
                        f"{logs.get('grad_norm')}; the weights are no longer finite. Lower learning_rate (or "
                        f"max_grad_norm), or look for broken examples; {CHECKPOINTS}/ holds the checkpoints before it.")
                    control.should_training_stop = True
                    control.should_evaluate = control.should_save = False
            elif "eval_loss" in logs:
                row = {
                    "kind": "eval",
                    "step": state.global_step,
                    "max_steps": self.max_steps,
                    "epoch": round(state.epoch or 0.0, 4),
                    "eval_loss": logs["eval_loss"],
                    "perplexity": math.exp(min(logs["eval_loss"], 50.0)),
                    "time": time.time(),
                }
                row.update({k: logs[k] for k in CLASSIFICATION_EVAL_KEYS if k in logs})
                self._write(row)

        def on_step_end(self, args, state, control, **kwargs):
            slow = float(os.environ.get("FORGEKIT_SLOW_STEP_SECONDS") or 0)
            if slow:  # debugging aid: stretch each step to interrupt a run at a chosen point (see tests)
                time.sleep(slow)
            if state.global_step >= self.max_steps and state.global_step % self.every:
                control.should_save = True  # the last step is always checkpointed (and evaluated)
                control.should_evaluate = args.eval_strategy != "no"

        def on_save(self, args, state, control, **kwargs):
            """Publish checkpoint-N as `checkpoints/step-N`: never visible half-written, on one node or many.

            On a local or shared file system, the first worker of every node copies its node's part (the Trainer
            wrote each rank's shards on the rank's own node) into one gathering dir; after a barrier, world rank
            0 reports it to Ray, whose upload function renames it into place. On remote storage (s3://, gs://)
            each node's part is uploaded by Ray into the same prefix. Each node then deletes its local copy.
            """
            import ray.train

            _barrier()  # every rank has written its shard of checkpoint-N
            ctx = ray.train.get_context()
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            metrics = {"step": state.global_step}
            for row in reversed(state.log_history):
                if "eval_loss" in row and row.get("step") == state.global_step:
                    metrics["eval_loss"] = row["eval_loss"]
                    break
            first_on_node = _node_local_rank(ctx) == 0 and local.exists()
            if first_on_node and self.generation_config is not None and not (local / "generation_config.json").exists():
                self.generation_config.save_pretrained(local)
            dir_name = f"{CHECKPOINTS}/step-{state.global_step:06d}"
            if _local_storage():
                gathered = _publishing_dir(self.run_dir, state.global_step)
                if first_on_node:
                    if _node_per_worker() and self.rank == 1:
                        time.sleep(1.0)  # a slower node (see tests): nothing may be visible before its part is in
                    shutil.copytree(local, gathered, dirs_exist_ok=True)
                _barrier()  # every node's part is in
                publish = self.rank == 0 and gathered.exists()
                checkpoint = ray.train.Checkpoint.from_directory(str(gathered)) if publish else None
                ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name,
                                 checkpoint_upload_fn=_publish)
            else:
                checkpoint = ray.train.Checkpoint.from_directory(str(local)) if first_on_node else None
                ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)
            if first_on_node:  # published: the Trainer rotates its output dir on world rank 0's node only
                shutil.rmtree(local, ignore_errors=True)
            # testing aid: rank 1 (else 0) dies once after the checkpoint of step N, as a lost worker would; Ray's
            # FailureConfig restarts the workers, which resume from that checkpoint (see tests)
            die_at = os.environ.get("FORGEKIT_TEST_DIE_ONCE_AFTER_STEP")
            marker = self.run_dir / ".forgekit-test-died"
            if die_at and int(die_at) == state.global_step and self.rank == min(1, self.world - 1) and not marker.exists():
                marker.touch()
                os._exit(1)

        def finish(self, trainer: Any) -> None:
            import torch

            if self.rank != 0:
                return
            if self.diverged:
                (self.run_dir / DIVERGED).write_text(self.diverged + "\n")
                return
            tps = self.session_tokens / self.train_time if self.train_time else None
            row = {
                "kind": "final",
                "step": trainer.state.global_step,
                "train_tokens": trainer.state.num_input_tokens_seen,
                "train_seconds": round(self.train_time, 2),
                "tokens_per_second": round(tps, 2) if tps else None,
                "trainable_params": self.trainable,
                "total_params": self.total,
                "precision": self.precision,
                "world_size": self.world,
                "levers": getattr(self, "levers", None),
            }
            if self.on_gpu:
                row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                if self.flops_per_token and self.peak and tps:
                    row["mfu"] = self.mfu(tps)
            evals = [r for r in trainer.state.log_history if "eval_accuracy" in r]
            if evals:
                row.update({k: evals[-1][k] for k in CLASSIFICATION_EVAL_KEYS if k in evals[-1]})
            self._write(row)

    return _Reporter


def _local_storage() -> bool:
    import ray.train
    from pyarrow.fs import LocalFileSystem

    return isinstance(ray.train.get_context().get_storage().storage_filesystem, LocalFileSystem)
