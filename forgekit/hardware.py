"""What the run trains on, decided once on the driver: CPU or GPU workers, how many, which device, bf16 or not.

`detect_hardware(cfg, cluster)` reads the Ray cluster's resources (or, with no cluster, this machine) and returns
a frozen `Hardware`; every later stage (the checks, the data's packing default, the plan's batch and precision,
the worker) reads it instead of asking the device again. Where the driver cannot see the workers' GPUs (a cluster
it attached to, without an accelerator label it knows), `bf16` is None and the workers settle precision `auto`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hardware", "cpu_has_bf16", "detect_hardware", "precision_for"]

log = logging.getLogger("forgekit")

# Ray's accelerator_type labels (ray.util.accelerators) of GPUs with and without bf16 arithmetic
_BF16_GPUS = ("A100", "A10G", "A10", "A40", "L4", "L40", "L40S", "H100", "H200", "H20", "GH200", "B100", "B200",
              "GB200", "RTX", "A6000", "A5000", "A4000", "MI250", "MI300")
_NO_BF16_GPUS = ("V100", "T4", "P100", "P4", "K80", "M60")


@dataclass(frozen=True)
class Hardware:
    """The workers' devices.

    Attributes:
        use_gpu: GPU workers (NCCL) or CPU processes (gloo).
        num_workers: training workers (`num_devices`).
        device: the GPU's name (`NVIDIA H100 80GB HBM3`) or Ray accelerator label (`H100`), else "cpu".
        bf16: whether the GPU computes in bf16 (None: unknown here; each worker's GPU decides).
        cpu_bf16: whether this CPU has bf16 instructions (AMX / AVX512-BF16), for CPU workers' autocast.
        local: the devices are this machine's (no cluster, or a cluster forgekit started here).
    """

    use_gpu: bool
    num_workers: int
    device: str
    bf16: bool | None
    cpu_bf16: bool
    local: bool = True

    def describe(self) -> str:
        kind = f"{self.num_workers} GPU worker(s), {self.device}" if self.use_gpu else f"{self.num_workers} CPU worker(s)"
        return kind + ("" if self.local else " (a cluster forgekit attached to)")


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (Intel AMX or AVX512-BF16, read from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _accelerator_label(cluster: Mapping[str, float]) -> str | None:
    labels = sorted(k.split(":", 1)[1] for k in cluster if k.startswith("accelerator_type:"))
    return labels[0] if labels else None


def _label_bf16(label: str | None) -> bool | None:
    if not label:
        return None
    name = label.upper()
    if any(g in name for g in _NO_BF16_GPUS):
        return False
    return True if any(g.upper() in name for g in _BF16_GPUS) else None


def detect_hardware(cfg, cluster: Mapping[str, float] | None = None, *, local: bool = True,
                    use_gpu: bool | None = None) -> Hardware:
    """The run's hardware: `use_gpu` if given, else `cfg.use_gpu` if set, else GPUs when `cluster` (Ray's
    resources) has them, or with no cluster when this machine has a CUDA device.

    Args:
        cfg: the validated config (`use_gpu`, `num_devices`).
        cluster: `ray.cluster_resources()` of the cluster the run will use; None: this machine alone
            (`forgekit validate` without a cluster).
        local: the cluster's GPUs are this machine's (a local cluster), so their properties are read here.
    """
    import torch

    has_gpu = cluster.get("GPU", 0) > 0 if cluster is not None else torch.cuda.is_available()
    if use_gpu is None:
        use_gpu = cfg.use_gpu if cfg.use_gpu is not None else has_gpu
    device, bf16 = "cpu", False
    if use_gpu:
        if local and torch.cuda.is_available():
            device, bf16 = torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported()
        else:
            label = _accelerator_label(cluster or {})
            device, bf16 = label or "GPU", _label_bf16(label)
    return Hardware(use_gpu=bool(use_gpu), num_workers=cfg.num_devices, device=device, bf16=bf16,
                    cpu_bf16=cpu_has_bf16() if not use_gpu else False, local=local)


def precision_for(precision: str, hw: Hardware, task: str | None = None) -> str:
    """What `precision` becomes on `hw` for `task`: "bf16" (bf16 weights), "bf16-autocast" (CPU: fp32 weights, bf16
    matrix products; `auto`'s choice on CPUs with bf16 instructions, except for preference tuning), "fp32", or "auto"
    where the workers' GPU decides (bf16 when it supports it).

    Raises:
        ConfigError: `precision: bf16` on GPUs known not to support it.
    """
    from forgekit.config import ConfigError

    if precision == "fp32":
        return "fp32"
    if not hw.use_gpu:
        # on a CPU bf16 is a speed lever only (the weights stay fp32), on by default where the CPU has the
        # instructions: the quickstart's eval loss within 0.2% of fp32's at lr 2e-4 and 2e-3, 1.34x its tokens/s
        # (benchmarks/cpu_precision_default.py)
        if precision == "bf16" and not hw.cpu_bf16:
            log.warning("forgekit: precision: bf16, but this CPU has no bf16 instructions (AMX / AVX512-BF16): fp32")
        # except preference tuning under auto: its rewards are differences of policy and reference log-probs, which
        # bf16 rounding turns into noise (step 0's rewards are not 0, its reward accuracy 0.6, not a tie)
        wanted = precision == "bf16" or (precision == "auto" and task != "preference_tuning")
        return "bf16-autocast" if wanted and hw.cpu_bf16 else "fp32"
    if hw.bf16 is None:
        return "auto" if precision == "auto" else "bf16"
    if precision == "bf16" and not hw.bf16:
        raise ConfigError([f"precision: bf16, but {hw.device} does not support bf16; use precision: auto (fp32 there)"])
    return "bf16" if hw.bf16 else "fp32"
