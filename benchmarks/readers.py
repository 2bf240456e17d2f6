"""Readers of the committed benchmark results (benchmarks/results/): the lever ladder, the contenders' table,
the sequence-length sweep. They live beside the benchmarks, not in the package: an installed wheel has no results.

    import sys; sys.path.insert(0, "<repo>/benchmarks")
    from readers import contenders, lever_ladder
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forgekit.runs import cost_per_million_tokens

__all__ = ["BENCHMARK_RESULTS", "contenders", "lever_ladder", "seqlen_results"]

BENCHMARK_RESULTS = Path(__file__).resolve().parent / "results"


def _read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such benchmark result (run from a source checkout, or pass its path)")
    return json.loads(path.read_text())


def _lever_values(rung: Mapping[str, Any]) -> dict[str, Any]:
    levers = dict(rung.get("levers") or {})
    levers.setdefault("compile", False)
    levers.setdefault("rows" if levers.get("packed") else "batch", None)
    return levers


def lever_ladder(
    path: str | Path = BENCHMARK_RESULTS / "levers-llama8b-h100.json", price_per_hour: float | None = None
) -> list[dict[str, Any]]:
    """The H100 optimisation ladder (`benchmarks/levers.py` output): each rung, what it changed, what it gave.

    A rung is compared with the earlier successful rung whose levers differ from it in the fewest values
    (ties: the latest), so side branches (e.g. flex_attention + Liger) are measured against their own parent.

    Returns:
        One row per rung in file order: {"rung", "tokens_per_s" (None when it failed), "speedup" (vs the
        first rung), "compared_with", "change" ("key: old → new" for each lever that differs), "gain"
        (tokens/s ratio vs `compared_with`), "mfu", "peak_alloc_gb", "ok", "error"}, and with a price (of
        one GPU per hour): "cost_per_million_tokens".
    """
    data = _read_json(path)
    rungs = data.get("ladder")
    if not rungs:
        raise ValueError(f"{path}: no 'ladder' rows (expected benchmarks/levers.py --parts ladder output)")
    base = rungs[0].get("tokens_per_s")
    rows: list[dict[str, Any]] = []
    done: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (levers, row) of successful rungs
    for rung in rungs:
        levers = _lever_values(rung)
        ok = rung.get("tokens_per_s") is not None and "error" not in rung
        parent = None
        best = None
        for p_levers, p_row in done:
            diff = sum(1 for k in set(levers) | set(p_levers) if levers.get(k) != p_levers.get(k))
            if best is None or diff <= best:
                best, parent = diff, (p_levers, p_row)
        change = ""
        if parent is not None:
            p_levers = parent[0]
            change = ", ".join(
                f"{k}: {_lever(p_levers.get(k))} → {_lever(levers.get(k))}" for k in sorted(set(levers) | set(p_levers))
                if levers.get(k) != p_levers.get(k)
            )
        tps = rung.get("tokens_per_s") if ok else None
        row = {
            "rung": rung["rung"],
            "tokens_per_s": tps,
            "speedup": tps / base if tps and base else None,
            "compared_with": parent[1]["rung"] if parent else None,
            "change": change,
            "gain": tps / parent[1]["tokens_per_s"] if tps and parent else None,
            "mfu": rung.get("mfu") if ok else None,
            "peak_alloc_gb": rung.get("peak_alloc_gb"),
            "ok": ok,
            "error": None if ok else _short_error(rung.get("error", "no result")),
        }
        if price_per_hour is not None:
            row["cost_per_million_tokens"] = cost_per_million_tokens(tps, price_per_hour)
        rows.append(row)
        if ok:
            done.append((levers, row))
    return rows


def _lever(value: Any) -> str:
    return "–" if value is None else str(value)


def _short_error(text: str) -> str:
    return "out of memory" if "out of memory" in text.lower() else text.split(":")[0][:60]


def contenders(
    path: str | Path = BENCHMARK_RESULTS / "llama8b-h100.json",
    price_per_hour: float | None = None,
    more: dict[str, str | Path] | None = None,
) -> list[dict[str, Any]]:
    """Contenders on identical work (`benchmarks/run.py` output): median tokens/s, spread, MFU, memory.

    Args:
        path: a `benchmarks/run.py` result (JSON).
        price_per_hour: the price of one GPU per hour, for the cost column.
        more: `{label: path}` of further results of the same work (a later measurement, say); their rows follow,
            named "contender (label)", and their speedup is against the first row of `path` too. A result of
            other work (model, steps, tokens per step or data differ) is a ValueError.

    Returns:
        One row per contender: {"contender", "tokens_per_s", "min_tokens_per_s", "max_tokens_per_s",
        "speedup" (vs the first row), "mfu", "peak_alloc_gb", "first_loss", "final_loss", "repeats_ok"}, and
        with a price (of one GPU per hour): "cost_per_million_tokens".
    """
    sources = [(None, _read_json(path))] + [(label, _read_json(p)) for label, p in (more or {}).items()]
    work = ("model", "steps", "tokens_per_step", "data_stats")  # what makes two results comparable
    for (label, data), p in zip(sources[1:], (more or {}).values()):
        differ = [k for k in work if data.get("meta", {}).get(k) != sources[0][1].get("meta", {}).get(k)]
        if differ:
            raise ValueError(f"{p} ({label}): not the same work as {path} (meta {', '.join(differ)} differ); "
                             "its speedup and losses would not compare")
    rows = []
    base = None
    for label, r in ((label, r) for label, data in sources for r in data.get("rows", [])):
        tps = r.get("tokens_per_s")
        base = base or tps
        spread = r.get("tokens_per_s_all") or [tps]
        rows.append({
            "contender": r["contender"] + (f" ({label})" if label else ""),
            "tokens_per_s": tps,
            "min_tokens_per_s": min(spread) if tps else None,
            "max_tokens_per_s": max(spread) if tps else None,
            "speedup": tps / base if tps and base else None,
            "mfu": r.get("mfu"),
            "peak_alloc_gb": r.get("peak_alloc_gb"),
            "first_loss": r.get("first_loss"),
            "final_loss": r.get("final_loss"),
            "repeats_ok": f"{r.get('ok', 0)}/{r.get('repeats', 0)}",
        })
        if price_per_hour is not None:
            rows[-1]["cost_per_million_tokens"] = cost_per_million_tokens(tps, price_per_hour)
    if not rows:
        raise ValueError(f"{path}: no 'rows' (expected benchmarks/run.py output)")
    return rows


def seqlen_results(path: str | Path = BENCHMARK_RESULTS / "seqlen-llama8b-h100.json") -> list[dict[str, Any]]:
    """Longest-sequence results (`benchmarks/levers.py --parts seqlen`): tokens, step time, MFU, memory."""
    data = _read_json(path)
    rows = [
        {k: r.get(k) for k in ("seq_len", "ok", "step_s", "tokens_per_s", "mfu", "peak_alloc_gb")}
        for r in data.get("seqlen", [])
    ]
    if not rows:
        raise ValueError(f"{path}: no 'seqlen' rows (expected benchmarks/levers.py --parts seqlen output)")
    return rows
