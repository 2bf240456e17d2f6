"""Pre-flight checks: every problem a run would hit, found before any worker starts, reported at once.

`preflight(cfg, hardware, cluster)` runs each check and returns the errors it found (an empty list: go);
`raise_problems` merges them into one error (`forgekit.errors.merge`: data problems stay a `DataError`, a mix is
one `ConfigError`). Each check is a plain function that raises a `ForgekitError`; add one to `CHECKS`' list.
The data's tokenization and the plan come after these (their problems are the data's, or the derived values').
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from forgekit.config import ConfigError, FinetuneConfig
from forgekit.errors import ForgekitError, merge
from forgekit.hardware import Hardware, precision_for

__all__ = ["check_cluster", "cluster_fit_problems", "preflight", "raise_problems", "worker_resources"]

log = logging.getLogger("forgekit")


def worker_resources(cfg: FinetuneConfig, use_gpu: bool) -> dict[str, float]:
    """The Ray resources of one worker: `worker_resources`, with one GPU (GPU runs) or one CPU by default."""
    res = dict(cfg.worker_resources)
    res.setdefault("GPU", 1) if use_gpu else res.pop("GPU", None)
    res.setdefault("CPU", 1)
    return res


def cluster_fit_problems(cfg: FinetuneConfig, use_gpu: bool, have: Mapping[str, float]) -> list[str]:
    """What a Ray cluster with resources `have` lacks for the run's workers, as config problems (empty: it fits).

    Ray does not fail a request it cannot meet: it waits for the resources to appear, which on a fixed cluster (one
    machine, say) is forever. The common case is a config copied from another GPU type: LLMForge's configs ask for
    `worker_resources: {accelerator_type:A100-80G: 0.001}`, which an H100 machine never has (and a Ray cluster's
    A100 nodes only when labelled so by hand; a local cluster forgekit starts labels its A100s itself).
    """
    need, n = worker_resources(cfg, use_gpu), cfg.num_devices
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


def check_cluster(cfg: FinetuneConfig, use_gpu: bool, cluster: Mapping[str, float], *, attached: bool) -> None:
    """A ConfigError when the cluster cannot host the workers; on a cluster forgekit attached to (which may be
    autoscaling: nodes with the resources can still come), a warning instead."""
    fit = cluster_fit_problems(cfg, use_gpu, cluster)
    if fit and not attached:
        raise ConfigError(fit)
    for p in fit:
        log.warning("forgekit: %s; Ray waits until the cluster has it (an autoscaling cluster adds nodes)", p)


# ------------------------------------------------------------------------------------------------ the checks


def check_deepspeed(cfg: FinetuneConfig, hw: Hardware) -> None:
    """The DeepSpeed file exists, parses, and agrees with the config's explicit values and its precision."""
    from forgekit.plan import deepspeed_config

    precision = precision_for(cfg.precision, hw)
    deepspeed_config(cfg, bf16={"bf16": True, "fp32": False, "bf16-autocast": False}.get(precision))


def check_paths(cfg: FinetuneConfig, hw: Hardware) -> None:
    """Checkpoints to start from exist (local paths), and `output_dir` is a directory that can be created."""
    problems = []
    for key in ("initial_base_model_ckpt_path", "initial_adapter_model_ckpt_path"):
        value = getattr(cfg, key)
        if value and "://" not in value and not Path(value).expanduser().is_dir():
            problems.append(f"{key}: {value} is not a directory" if Path(value).expanduser().exists()
                            else f"{key}: {value} not found")
    out = Path(cfg.output_dir).expanduser() if "://" not in cfg.output_dir else None
    if out is not None:
        existing = next((p for p in (out, *out.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            problems.append(f"output_dir: {cfg.output_dir}: {existing} is a file, not a directory")
        elif existing is not None and not _writable(existing):
            problems.append(f"output_dir: {cfg.output_dir}: {existing} cannot be written (permissions)")
    if problems:
        raise ConfigError(problems)


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK | os.X_OK)


def check_storage(cfg: FinetuneConfig, hw: Hardware) -> None:
    """Remote paths answer before any worker starts: `output_dir`'s bucket takes a write, the data's and the
    checkpoints' buckets are there (backend installed, credentials in the environment, server reachable)."""
    from forgekit import storage

    problems = []
    keys = ("output_dir", "train_path", "valid_path", "model_id", "initial_base_model_ckpt_path",
            "initial_adapter_model_ckpt_path")
    for key in keys:
        value = getattr(cfg, key)
        if value and storage.is_remote(value) and storage.scheme(value) != "hf":
            try:
                storage.check_reachable(value, key, write=key == "output_dir")
            except storage.StorageError as e:
                problems.extend(e.problems)
    if problems:
        raise storage.StorageError(problems)


def check_logger(cfg: FinetuneConfig, hw: Hardware) -> None:
    """The logger provider's package is installed (here; the workers need it too)."""
    from forgekit.tracking import check_logger as check

    check(cfg)


def check_tokenizer(cfg: FinetuneConfig, hw: Hardware) -> None:
    """The model's (or the checkpoint's) tokenizer loads, with the prompt format and label tokens applied."""
    from forgekit.prepare import load_tokenizer

    load_tokenizer(cfg)


def check_data(cfg: FinetuneConfig, hw: Hardware) -> None:
    """Both data files read and every record is a valid conversation for the task (`file:line` problems)."""
    from forgekit.prepare import read_data

    read_data(cfg)


CHECKS: list[Callable[[FinetuneConfig, Hardware], None]] = [
    check_deepspeed, check_paths, check_storage, check_logger, check_tokenizer, check_data,
]


def preflight(cfg: FinetuneConfig, hw: Hardware, cluster: Mapping[str, float] | None = None, *,
              attached: bool = False) -> list[ForgekitError]:
    """Every check's error (empty: the run can start).

    Args:
        cfg: the validated config.
        hw: the hardware the run trains on.
        cluster: the Ray cluster's resources (None: no cluster, as in `forgekit validate`: not checked).
        attached: the cluster is one forgekit attached to (it may autoscale): what it lacks is logged as a
            warning, not an error.
    """
    errors: list[ForgekitError] = []
    if cluster is not None:
        try:
            check_cluster(cfg, hw.use_gpu, cluster, attached=attached)
        except ConfigError as e:
            errors.append(e)
    for check in CHECKS:
        try:
            check(cfg, hw)
        except ForgekitError as e:
            errors.append(e)
    return errors


def raise_problems(errors: list[ForgekitError]) -> None:
    """Raise the errors as one (nothing when the list is empty)."""
    error = merge(errors)
    if error is not None:
        raise error
