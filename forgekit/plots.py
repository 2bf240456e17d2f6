"""Plots from run directories (matplotlib), shared by the notebooks: curves of any metric in metrics.jsonl.

    from forgekit.plots import plot_runs
    plot_runs({"lora": run_a, "full": run_b}, metrics=("loss", "eval_loss"), path="curves.png")

Each run is a run directory (or a `finetune` result dict with `run_dir`); rows come from `metrics.jsonl`
(`forgekit.runs.read_metrics`). An optional `offsets` shifts a run along the x axis, so a stage-2 run
can be drawn after its stage 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from forgekit.runs import run_dir_of

__all__ = ["markdown_table", "metric_series", "plot_bars", "plot_lines", "plot_lr_schedules", "plot_runs"]

_KIND = {"loss": "train", "learning_rate": "train", "grad_norm": "train", "tokens_per_second": "train",
         "mfu": "train", "peak_memory_gb": "train", "eval_loss": "eval", "perplexity": "eval",
         "eval_accuracy": "eval",
         **{f"{pre}rewards/{k}": kind for pre, kind in (("", "train"), ("eval_", "eval"))
            for k in ("chosen", "rejected", "accuracies", "margins")}}
_LABEL = {"loss": "training loss", "eval_loss": "eval loss", "learning_rate": "learning rate",
          "grad_norm": "gradient norm", "tokens_per_second": "real tokens / s", "mfu": "MFU",
          "peak_memory_gb": "peak GPU memory (GB)", "perplexity": "eval perplexity",
          "eval_accuracy": "eval accuracy", "step": "optimizer step", "tokens": "training tokens seen",
          **{f"{pre}rewards/{k}": f"{where} {what}" for pre, where in (("", "training"), ("eval_", "eval"))
             for k, what in (("chosen", "reward, chosen"), ("rejected", "reward, rejected"),
                             ("accuracies", "reward accuracy"), ("margins", "reward margin"))}}


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
    rows = read_metrics(run_dir_of(run))
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
    plt = _pyplot(path)
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
    _save(fig, path)
    return fig


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


# ------------------------------------------------------------------------------------- tables and other plots


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


def _save(fig: Any, path: str | Path | None) -> None:
    """Save to a local path or a URL (`s3://`, `gs://`: a remote run directory), through `forgekit.storage`."""
    import io

    from forgekit import storage

    fig.tight_layout()
    if path is None:
        return
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=Path(str(path)).suffix.lstrip(".") or "png")
    storage.write_bytes(path, buf.getvalue())


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
