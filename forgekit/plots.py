"""Plots from run directories (matplotlib), shared by the notebooks: curves of any metric in metrics.jsonl.

    from forgekit.plots import plot_runs
    plot_runs({"lora": run_a, "full": run_b}, metrics=("loss", "eval_loss"), path="curves.png")

Each run is a run directory (or a `finetune` result dict with `run_dir`); rows come from `metrics.jsonl`
(`forgekit.runs.read_metrics`). An optional `offsets` shifts a run along the x axis, so a stage-2 run
can be drawn after its stage 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["metric_series", "plot_runs"]

_KIND = {"loss": "train", "learning_rate": "train", "grad_norm": "train", "tokens_per_second": "train",
         "mfu": "train", "peak_memory_gb": "train", "eval_loss": "eval", "perplexity": "eval",
         "eval_accuracy": "eval"}
_LABEL = {"loss": "training loss", "eval_loss": "eval loss", "learning_rate": "learning rate",
          "grad_norm": "gradient norm", "tokens_per_second": "real tokens / s", "mfu": "MFU",
          "peak_memory_gb": "peak GPU memory (GB)", "perplexity": "eval perplexity",
          "eval_accuracy": "eval accuracy", "step": "optimizer step", "tokens": "training tokens seen"}


def _run_dir(run: str | Path | Mapping[str, Any]) -> Path:
    return Path(run["run_dir"]) if isinstance(run, Mapping) else Path(run)


def metric_series(run: str | Path | Mapping[str, Any], metric: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of `metric` in a run's metrics.jsonl; x is `step` or `tokens` (training tokens seen).

    Raises:
        ValueError: unknown metric or x.
    """
    from forgekit.runs import read_metrics

    if metric not in _KIND:
        raise ValueError(f"metric {metric!r}: expected one of {sorted(_KIND)}")
    if x not in ("step", "tokens"):
        raise ValueError(f"x {x!r}: expected 'step' or 'tokens'")
    rows = read_metrics(_run_dir(run))
    tokens_at = {r["step"]: r["tokens"] for r in rows if r.get("kind") == "train"}
    xs, ys = [], []
    for r in rows:
        if r.get("kind") != _KIND[metric] or r.get(metric) is None:
            continue
        if x == "tokens":
            if r["step"] not in tokens_at and r["step"] != 0:
                continue
            xs.append(tokens_at.get(r["step"], 0))
        else:
            xs.append(r["step"])
        ys.append(r[metric])
    return xs, ys


def plot_runs(
    runs: Mapping[str, str | Path | Mapping[str, Any]],
    metrics: Sequence[str] = ("loss", "eval_loss"),
    *,
    x: str = "step",
    offsets: Mapping[str, float] | None = None,
    logy: bool = False,
    title: str | None = None,
    path: str | Path | None = None,
) -> Any:
    """One panel per metric, one line per run; returns the matplotlib Figure (saved to `path` if given)."""
    import matplotlib

    if path is not None and matplotlib.get_backend().lower() not in ("agg",) and not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, run in runs.items():
            xs, ys = metric_series(run, metric, x)
            if not xs:
                continue
            shift = (offsets or {}).get(label, 0)
            marker = "o" if _KIND[metric] == "eval" or len(xs) < 12 else None
            ax.plot([v + shift for v in xs], ys, marker=marker, markersize=4, label=label)
        ax.set_xlabel(_LABEL[x])
        ax.set_ylabel(_LABEL[metric])
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False
