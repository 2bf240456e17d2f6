"""Read a run directory: metrics, result, checkpoints (the run directory is the interface to a finished run).

Layout (written by `forgekit.train.finetune`)::

    <output_dir>/<run_name>/
        config.yaml          resolved config
        manifest.json        data manifest
        metrics.jsonl        {"kind": "train" | "eval" | "final", "step", ...} one JSON object per line
        checkpoints/step-NNNNNN/   Hugging Face format (adapter or full weights + tokenizer + trainer state)
        result.json          summary (best_checkpoint, best_eval_loss, first_eval_loss, steps, ...)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["list_checkpoints", "read_config", "read_metrics", "read_result"]


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of `metrics.jsonl`, optionally only one kind (`train`, `eval`, `final`); [] if none yet.

    A line being written while this reads (the last, without its newline) is skipped.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
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
    path = Path(run_dir) / "result.json"
    if not path.exists():
        state = "has not finished" if (Path(run_dir) / "config.yaml").exists() else "does not exist"
        raise FileNotFoundError(f"{run_dir}: run {state} (no result.json)")
    return json.loads(path.read_text())


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run used, as a dict."""
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Published checkpoints of a run, oldest first (half-copied ones are never listed: they are renamed in)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
