"""The TRL sweep's arithmetic: which settings to run, in which order, which to skip, which won; spreads of repeats.

Pure functions (no torch), shared by ``benchmarks/run.py`` (the driver) and ``benchmarks/contenders.py`` (the
in-process sweep child), tested in ``tests/unit/test_benchmark_harness.py``.

A setting is an option dict of the ``trl`` contender: ``{"ckpt": "0"|"1", "batch": "2"|"4", "liger": "0"|"1"}``
(plus ``attn`` when given). Its memory need is monotone in each axis: checkpointing off needs more than on, batch 4
more than batch 2, Liger off more than on. A setting that needs at least as much as one that ran out of memory is
skipped (its row says which one), never run.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

AXES = {"ckpt": ("1", "0"), "batch": ("2", "4"), "liger": ("0", "1")}


def settings(ckpt: Sequence[str] = ("1", "0"), batch: Sequence[str] = ("2", "4"), liger: Sequence[str] = ("0", "1"),
             attn: str | None = None) -> list[dict[str, str]]:
    """Every combination, in the order the sweep runs them: Liger off first (its kernels patch the model classes for
    the rest of the process), then by increasing memory need, so an out-of-memory comes last in its group."""
    out = []
    for lg in sorted(liger):
        for ck in sorted(ckpt, reverse=True):  # "1" (checkpointing on, less memory) first
            for b in sorted(batch, key=int):
                out.append({"ckpt": ck, "batch": b, "liger": lg} | ({"attn": attn} if attn else {}))
    return out


def option_string(setting: dict[str, str]) -> str:
    """``{"ckpt": "0", "batch": "4", "liger": "1"}`` -> ``"ckpt=0,batch=4,liger=1"`` (the contender's option text)."""
    return ",".join(f"{k}={v}" for k, v in setting.items())


def describe(setting: dict[str, str]) -> str:
    """A table cell: ``"batch 4, Liger, no checkpointing"``."""
    parts = [f"batch {setting.get('batch', '2')}", "Liger" if setting.get("liger") == "1" else "no Liger",
             "checkpointing" if setting.get("ckpt", "1") == "1" else "no checkpointing"]
    return ", ".join(parts + ([f"attn {setting['attn']}"] if setting.get("attn") else []))


def needs_at_least(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether setting `a` needs at least the memory of `b` (same attention): no axis of `a` needs less."""
    return (a.get("attn") == b.get("attn") and int(a["batch"]) >= int(b["batch"])
            and a["ckpt"] <= b["ckpt"] and a["liger"] <= b["liger"])


def skipped_by(setting: dict[str, str], out_of_memory: Iterable[dict[str, str]]) -> dict[str, str] | None:
    """The setting that ran out of memory and needs no more than `setting` (so `setting` would too), or None."""
    return next((o for o in out_of_memory if needs_at_least(setting, o)), None)


def is_oom(error: str | None) -> bool:
    """Whether a contender's error text is a GPU out-of-memory (torch's OutOfMemoryError or the CUDA message)."""
    text = (error or "").lower()
    return "out of memory" in text or "outofmemoryerror" in text


def steady_tokens_per_s(result: dict) -> float | None:
    """Real tokens per second from the end of step 1 to the end of the last step."""
    t, n = result.get("times") or [], result.get("tokens") or []
    if len(t) < 2 or t[-1] <= t[0]:
        return None
    return (n[-1] - n[0]) / (t[-1] - t[0])


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and count of the values that are not None (all None when there are none)."""
    v = [x for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def sweep_row(setting: dict[str, str], record: dict) -> dict[str, Any]:
    """One row of the sweep table from one setting's record (a run, an error, or a skip)."""
    row: dict[str, Any] = {"setting": setting, "options": option_string(setting), "label": describe(setting),
                           "ok": bool(record.get("ok")), "tokens_per_s": None, "peak_alloc_gb": record.get("peak_alloc_gb")}
    if record.get("skipped"):
        row.update(status="skipped", error=record["skipped"])
    elif record.get("ok"):
        row.update(status="ok", tokens_per_s=steady_tokens_per_s(record))
        if row["tokens_per_s"] is None:
            row.update(ok=False, status="error", error="fewer than 2 timed steps")
    else:
        err = str(record.get("error") or "not run")
        row.update(status="out of memory" if is_oom(err) else "error", error=err[-300:])
    return row


def pick_best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest row that ran; on equal speed the one needing less memory, then the earlier one. None if none ran."""
    ran = [(i, r) for i, r in enumerate(rows) if r.get("ok") and r.get("tokens_per_s")]
    if not ran:
        return None
    return max(ran, key=lambda ir: (ir[1]["tokens_per_s"], -(ir[1].get("peak_alloc_gb") or 0.0), -ir[0]))[1]


def alternatives(item: str) -> list[str]:
    """``"hf:ckpt=0|hf:ckpt=1"`` -> ``["hf:ckpt=0", "hf:ckpt=1"]``: the contender to run, then the ones to run in its
    place if it runs out of memory (e.g. the usual recipe without checkpointing where it fits)."""
    return [a for a in item.split("|") if a]
