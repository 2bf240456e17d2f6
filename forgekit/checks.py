"""Pre-flight checks: every problem a run would hit, found before any worker starts, reported at once.

`preflight(cfg, hardware, cluster)` runs each check and returns the errors it found (an empty list: go);
`raise_problems` merges them into one error (`forgekit.errors.merge`: data problems stay a `DataError`, a mix is
one `ConfigError`). Each check is a plain function that raises a `ForgekitError`; add one to `CHECKS`' list.
The data's tokenization and the plan come after these (their problems are the data's, or the derived values').
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from forgekit.config import ConfigError, FinetuneConfig
from forgekit.errors import ForgekitError, merge
from forgekit.hardware import Hardware, precision_for

__all__ = ["check_cluster", "check_plan", "cluster_fit_problems", "hub_unreachable", "preflight", "raise_problems",
           "validate_notes", "worker_resources"]

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

    precision = precision_for(cfg.precision, hw, cfg.task)
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


# ------------------------------------------------------------------------------------------ the model


@functools.cache
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (None: it can, or a proxy decides).

    One TCP connection to `$HF_ENDPOINT` (3 s at most): without it, each Hub request retries for ~50 s before it
    fails. `HF_HUB_OFFLINE` set counts as unreachable (the user said so).
    """
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy reaches the Hub, or not: the Hub client says
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=3):
            return None
    except OSError as e:
        return f"{url.hostname}: {e.strerror or e}"


def _work_offline(why: str) -> None:
    """The Hub clients of this process (huggingface_hub, transformers, datasets) use only their caches from now on:
    a request fails at once instead of retrying for a minute."""
    import sys

    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        log.info("forgekit: the Hugging Face Hub is unreachable (%s): working offline, from the local cache", why)
    os.environ["HF_HUB_OFFLINE"] = "1"  # for processes started from here (a local Ray cluster's workers)
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _model_source(cfg: FinetuneConfig) -> tuple[str, str]:
    """(config key, value) of the weights the run starts from."""
    if cfg.initial_base_model_ckpt_path:
        return "initial_base_model_ckpt_path", cfg.initial_base_model_ckpt_path
    return "model_id", cfg.model_id


def _local_model_dir(cfg: FinetuneConfig) -> Path | None:
    """The local model directory the run loads (an embedded model's materialized copy included), if any."""
    from forgekit import storage
    from forgekit.models import _lookup, is_fetched, model_dir

    key, value = _model_source(cfg)
    if storage.is_remote(value):
        return None
    if Path(value).is_dir():
        return Path(value)
    info = _lookup(value) if key == "model_id" else None
    return model_dir(info.name) if info is not None and is_fetched(model_dir(info.name)) else None


def _embedded_hint(value: str) -> str:
    from forgekit.models import EMBEDDED_MODELS

    near = difflib.get_close_matches(value.lower(), [n.lower() for n in EMBEDDED_MODELS], n=1, cutoff=0.75)
    name = next((n for n in EMBEDDED_MODELS if n.lower() == near[0]), None) if near else None
    return f" (did you mean the embedded model '{name}'?)" if name else ""


def check_model(cfg: FinetuneConfig, hw: Hardware) -> None:
    """The weights the run starts from can be loaded, without running code nobody asked to run.

    A local path must be a directory with a `config.json` of a model type transformers knows (or custom code,
    `auto_map`, with `trust_remote_code: true`); a Hub id is looked up once, quickly: an unreachable Hub makes this
    process work offline (from the cache) instead of retrying for a minute. A `context_length` past the model's
    positions needs RoPE positions to scale (`validate` prints the scaling), and an explicit `rope_scaling` factor
    that covers it.
    """
    from forgekit import storage
    from forgekit.models import _lookup

    key, value = _model_source(cfg)
    if storage.is_remote(value) or (key == "model_id" and _lookup(value) is not None):
        return  # check_storage, and the embedded model's own fetch (check_tokenizer), report those
    path = Path(value)
    if key == "initial_base_model_ckpt_path" and not path.is_dir():
        return  # check_paths says so
    if not path.exists():
        looks_local = value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1
        if looks_local or not _HUB_ID.fullmatch(value):
            raise ConfigError([f"{key}: {value}: directory not found (a local model directory, an embedded model's "
                               f"name or a Hugging Face Hub id org/name){_embedded_hint(value)}"])
        why = hub_unreachable()
        if why:
            from huggingface_hub import try_to_load_from_cache

            _work_offline(why)
            if not isinstance(try_to_load_from_cache(value, "config.json"), str):
                raise ConfigError([f"{key}: {value}: not a local directory nor an embedded model, and the Hugging "
                                   f"Face Hub is unreachable from here ({why}) with no copy in its cache"
                                   f"{_embedded_hint(value)}"])
        return
    if not path.is_dir():
        raise ConfigError([f"{key}: {value}: a file, not a model directory"])
    if not (path / "config.json").is_file():
        raise ConfigError([f"{key}: {value}: a directory without config.json, so not a Hugging Face model "
                           "directory (save one with save_pretrained)"])
    _check_model_config(cfg, key, value, path / "config.json")


def _check_model_config(cfg: FinetuneConfig, key: str, value: str, config_file: Path) -> None:
    from transformers import CONFIG_MAPPING

    try:
        conf = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError([f"{key}: {config_file}: not a readable JSON model config ({e})"]) from None
    problems = []
    model_type = conf.get("model_type")
    if model_type not in CONFIG_MAPPING:
        if conf.get("auto_map") and not cfg.trust_remote_code:
            problems.append(f"{key}: {value}: its config.json names custom code (auto_map: "
                            f"{', '.join(sorted(conf['auto_map']))}), which runs when the model loads; set "
                            "trust_remote_code: true to run it (only for code you trust)")
        elif not conf.get("auto_map"):
            import transformers

            problems.append(f"{key}: {value}: model_type {model_type!r} is unknown to transformers "
                            f"{transformers.__version__}")
    problems += _context_problems(cfg, conf)
    if problems:
        raise ConfigError(problems)


def _context_problems(cfg: FinetuneConfig, conf: dict) -> list[str]:
    """A context past the model's maximum: only with RoPE positions, and a rope_scaling factor that covers it."""
    model_max, ctx = conf.get("max_position_embeddings") or conf.get("n_positions"), cfg.context_length
    if not (model_max and ctx and ctx > model_max):
        return []
    if not any(k in conf for k in ("rope_theta", "rope_parameters", "rope_scaling")):
        return [f"context_length: {ctx} exceeds the model's max_position_embeddings {model_max}, and its positions "
                "are not RoPE (nothing to scale); lower context_length"]
    factor = (cfg.rope_scaling or {}).get("factor")
    if isinstance(factor, (int, float)) and factor * model_max < ctx:
        return [f"rope_scaling.factor: {factor} x max_position_embeddings {model_max} = {factor * model_max:g} "
                f"positions, fewer than context_length {ctx}; use a factor of at least {ctx / model_max:g}"]
    return []


def rope_extension(cfg: FinetuneConfig) -> str | None:
    """The RoPE scaling the run applies to reach `context_length` past the model's maximum (None: none needed)."""
    found = _local_model_dir(cfg)
    try:
        conf = json.loads((found / "config.json").read_text()) if found else {}
    except (OSError, ValueError):
        return None
    model_max, ctx = conf.get("max_position_embeddings") or conf.get("n_positions"), cfg.context_length
    if not (model_max and ctx and ctx > model_max):
        return None
    scaling = cfg.rope_scaling or {"rope_type": "linear", "factor": ctx / model_max}
    how = ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in scaling.items())
    source = "rope_scaling" if cfg.rope_scaling else "derived: linear"
    return f"context: {ctx} tokens > the model's {model_max} positions: RoPE scaling {{{how}}} ({source})"


_LORA_LAYERS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


def check_lora_targets(cfg: FinetuneConfig, hw: Hardware) -> None:
    """`lora_config.target_modules` name modules of the model, matched as peft matches them.

    The model is built from its config on the meta device (no weights, no memory); peft's own
    `check_target_module_exists` decides each module, so `layers_to_transform`, `exclude_modules` and regex
    targets count as they will in the run. A list entry that matches nothing is an error too (a typo next to a
    correct name would train fewer layers than asked, silently).
    """
    if not cfg.is_lora:
        return
    found = _local_model_dir(cfg)
    if found is None or not (found / "config.json").is_file():
        return  # check_model reports a missing model; a Hub model's config is the workers' to fetch
    import warnings

    from accelerate import init_empty_weights
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers import AutoConfig, AutoModelForCausalLM

    targets = cfg.lora_config.get("target_modules")
    if targets == "all-linear":
        return
    try:
        config = AutoConfig.from_pretrained(found, trust_remote_code=cfg.trust_remote_code)
        with init_empty_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - check_model / check_tokenizer explain a model that does not load
        log.debug("forgekit: cannot build %s on the meta device to check target_modules: %s", found, e)
        return
    if targets is None:
        if config.model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise ConfigError([f"lora_config.target_modules: unset, and peft has no default for model_type "
                               f"{config.model_type!r}; name them (or use 'all-linear')"])
        return
    modules = [(name, type(m).__name__) for name, m in model.named_modules() if name]
    layer_names = sorted({n.rsplit(".", 1)[-1] for n, t in modules if t in _LORA_LAYERS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wanted = [targets] if isinstance(targets, str) else list(targets)
        problems = []
        for target in wanted:
            one = LoraConfig(**{**cfg.lora_config, "target_modules": target if isinstance(targets, str) else [target]})
            hits = [t for n, t in modules if check_target_module_exists(one, n)]
            if not hits:
                near = difflib.get_close_matches(str(target), layer_names, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                problems.append(f"lora_config.target_modules: {target!r} matches no module of {config.model_type} "
                                f"(as peft matches names){hint}; its layers: {', '.join(layer_names)}")
            elif not any(t in _LORA_LAYERS for t in hits):
                problems.append(f"lora_config.target_modules: {target!r} matches only {', '.join(sorted(set(hits)))}, "
                                f"which LoRA cannot adapt; name layers such as {', '.join(layer_names[:4])}")
    if problems:
        raise ConfigError(problems)


def check_logger(cfg: FinetuneConfig, hw: Hardware) -> None:
    """The logger provider's package is installed (here; the workers need it too)."""
    from forgekit.tracking import check_logger as check

    check(cfg)


def check_tokenizer(cfg: FinetuneConfig, hw: Hardware) -> None:
    """The model is there (`check_model`), and its (or the checkpoint's) tokenizer loads, with the prompt format
    and label tokens applied (one problem for a model that is not there, not the tokenizer's too)."""
    from forgekit.prepare import load_tokenizer

    check_model(cfg, hw)
    try:
        load_tokenizer(cfg)
    except ConfigError as e:  # a typo of an embedded model's name reads as a Hub id: say which name was meant
        hint = "" if cfg.initial_base_model_ckpt_path else _embedded_hint(cfg.model_id)
        if not hint:
            raise
        raise ConfigError([p + hint for p in e.problems]) from None


def check_data(cfg: FinetuneConfig, hw: Hardware) -> None:
    """Both data files read and every record is a valid conversation for the task (`file:line` problems)."""
    from forgekit.data import is_hf_dataset_name
    from forgekit.prepare import read_data

    names = [p for p in (cfg.train_path, cfg.valid_path) if p and is_hf_dataset_name(p)]
    why = hub_unreachable() if names else None
    if why:  # datasets would retry each request for a minute: from the cache, or one message at once
        _work_offline(why)
    read_data(cfg)


def check_quantization(cfg: FinetuneConfig, hw: Hardware) -> None:
    """`quant_conf` can load here: bitsandbytes installed, its CPU kernels run (CPU workers use this machine's
    library), and the DeepSpeed ZeRO stage can shard the quantized weights. GPU workers check their GPU's kernels
    before loading (the driver may have no GPU, and a CUDA context here would hold GPU memory for the whole run)."""
    from forgekit.plan import deepspeed_config
    from forgekit.quantization import is_quantized, quantization_problems

    if not is_quantized(cfg.quant_conf):
        return
    try:
        ds = deepspeed_config(cfg) if cfg.deepspeed is not None else None
    except ConfigError:  # check_deepspeed reports it
        ds = None
    stage = int(ds.get("zero_optimization", {}).get("stage", 0)) if ds else None
    problems = quantization_problems(cfg.quant_conf, use_gpu=None if hw.use_gpu else False, zero_stage=stage)
    if problems:
        raise ConfigError(problems)


CHECKS: list[Callable[[FinetuneConfig, Hardware], None]] = [
    check_deepspeed, check_paths, check_storage, check_tokenizer, check_lora_targets, check_logger, check_data,
    check_quantization,
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


# ------------------------------------------------------------------------------------- after the data: the plan


def check_plan(plan: Any) -> list[str]:
    """What the data and the plan say about the run: errors raised, warnings returned (the launcher logs them).

    - error: fewer training rows (after over-length drops) than workers: a worker would have no example of its
      own (the sampler repeats examples to give it some), so `num_devices` must come down;
    - warning: fewer rows than one optimizer step takes (micro batch x accumulation x workers): every step is
      that one short batch, smaller than the batch size the config asks for;
    - warning: more CPU workers than this machine has cores (a local cluster runs them oversubscribed).

    Raises:
        ConfigError: the training set is smaller than the number of workers.
    """
    rows, world, per_step = plan.data.manifest["train_rows"], plan.world_size, plan.total_batch
    if rows < world:
        raise ConfigError([f"num_devices: {world} workers, but the training set has {rows} row(s) after "
                           f"over-length drops (manifest: {plan.data.manifest.get('dropped_overlength', 0)} dropped): "
                           f"each worker needs examples of its own; lower num_devices to at most {rows}, or add data"])
    warnings = []
    if rows < per_step:
        warnings.append(f"the training set has {rows} row(s), fewer than one optimizer step takes ({per_step}: "
                        f"{plan.micro_batch} per worker x {plan.accumulation} accumulation x {world} worker(s)): each "
                        f"step trains on {rows}")
    cores = os.cpu_count() or 1
    if plan.hardware.local and not plan.hardware.use_gpu and world > cores:
        warnings.append(f"num_devices: {world} CPU workers on this machine's {cores} cores: they run oversubscribed "
                        f"(slower than {cores}); lower num_devices to {cores}, or attach a larger cluster")
    return warnings


def validate_notes(plan: Any, *, cluster_checked: bool) -> list[str]:
    """Lines `forgekit validate` prints about what it could not check, and what the run will do on its own."""
    import torch

    notes = []
    if not cluster_checked:
        gpus = torch.cuda.device_count()
        local = (f"this machine has {os.cpu_count() or 1} CPU core(s)" + (f" and {gpus} GPU(s)" if gpus else "")
                 + f" for {plan.world_size} {'GPU' if plan.hardware.use_gpu else 'CPU'} worker(s)")
        notes.append(f"cluster: not checked: no cluster (num_devices and worker_resources are checked against the Ray "
                     f"cluster that forgekit finetune uses); {local}")
        if plan.hardware.use_gpu and plan.world_size > gpus:
            notes.append(f"num_devices: {plan.world_size} GPU workers, this machine has {gpus} GPU(s): a local cluster "
                         "could not host them")
    extension = rope_extension(plan.resolved)
    if extension:
        notes.append(extension)
    return notes
