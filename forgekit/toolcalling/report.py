"""Before/after reporting for tool-calling evaluations: a comparison table, a bar plot, generations side by side.

Inputs are the reports `forgekit.toolcalling.evaluate.evaluate_tool_calling` returns and the per-turn
predictions files it writes, so the notebook cells stay one call each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgekit.toolcalling.evaluate import CATEGORIES, MEASURES

__all__ = ["comparison_rows", "comparison_table", "plot_comparison", "side_by_side", "write_results"]

_LABELS = {"seen_tools": "seen tools", "held_out_tools": "held-out tools", "multi_turn": "multi-turn",
           "no_call": "no-call"}
_COLUMNS = ("exact match", "call turns", *(_LABELS.get(m, m) for m in MEASURES), "text turns", "conversations")
_PLOTTED = tuple(c for c in _COLUMNS if c != "text turns")


def comparison_rows(reports: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """{model: {column: accuracy}}: the headline turn-level exact match and beside it the call-turn exact
    match, then the separate measures (`evaluate.MEASURES`: seen tools in new requests, held-out tools,
    parallel, single, multi-turn, no-call; turn-level), the text turns, and last the stricter
    conversation-level exact match (`conversations`). A measure the report lacks (held-out tools on a test
    file without `metadata.held_out`) is None."""
    out = {}
    for name, rep in reports.items():
        measures = rep.get("measures") or {c: rep["by_category"][c] for c in CATEGORIES}
        row: dict[str, float | None] = {"exact match": rep["exact_match"], "call turns": rep["call_turns"]["exact_match"]}
        row.update({_LABELS.get(m, m): (measures.get(m) or {}).get("exact_match") for m in MEASURES})
        row["text turns"] = rep["text_turns"]["exact_match"]
        row["conversations"] = rep["conversation_exact_match"]
        out[name] = row
    return out


def comparison_table(reports: dict[str, dict]) -> str:
    """A Markdown table, one row per model: the `comparison_rows` columns (turn-level exact match unless the
    column says `call turns` or `conversations`), the score of a model that never calls, then failure counts
    (turns)."""
    rows = comparison_rows(reports)
    failures = list(next(iter(reports.values()))["failures"])
    head = ["model", *_COLUMNS, *failures]
    never = next(iter(reports.values())).get("never_call_score")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = ["—" if row[c] is None else f"{row[c]:.3f}" for c in _COLUMNS]
        cells += [str(reports[name]["failures"][f]) for f in failures]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    if never is not None:
        lines.append(f"\nA model that never calls a tool scores {never:.3f} exact match (the share of text turns).")
    return "\n".join(lines)


def plot_comparison(reports: dict[str, dict], path: str | Path, title: str = "Tool-calling exact match") -> Path:
    """Grouped bars, one per model: turn-level exact match overall (with the score of a model that never calls
    marked), call-turn exact match, the separate measures, and conversation-level exact match; saved as a PNG
    at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparison_rows(reports)
    columns = list(_PLOTTED)
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(11, 4))
    for k, (name, row) in enumerate(rows.items()):
        xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(columns))]
        values = [row[c] or 0.0 for c in columns]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
    n = next(iter(reports.values()))
    if n.get("never_call_score") is not None:
        ax.hlines(n["never_call_score"], -0.45, 0.45, colors="black", linestyles="--", linewidth=1)
        ax.annotate("never calls", (0.45, n["never_call_score"]), fontsize=7, va="center", xytext=(2, 0),
                    textcoords="offset points")
    labels = ["exact match\n(all turns)", "call\nturns", *(c.replace(" ", "\n", 1) for c in columns[2:-1]),
              "whole\nconversations"]
    ax.set_xticks(range(len(columns)), labels, fontsize=8)
    ax.axvline(len(columns) - 1.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("exact match")
    ax.set_title(f"{title}: {n['turns']} turns of {n['conversations']} held-out test conversations")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short(value: Any, limit: int = 110) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def side_by_side(predictions: dict[str, str | Path], test_path: str | Path, n: int = 6) -> str:
    """A Markdown table of the first call turn of `n` conversations (a mix of categories): the request, the
    gold answer, and each model's generation with its outcome.

    Args:
        predictions: {model: per-turn predictions JSONL written by `evaluate_tool_calling`}.
        test_path: the test JSONL the predictions were made on (for the user messages).
        n: rows to show.
    """
    tests = [json.loads(line) for line in Path(test_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    runs = {name: [json.loads(line) for line in Path(p).read_text().splitlines()] for name, p in predictions.items()}
    first = next(iter(runs.values()))
    picked, per_category = [], dict.fromkeys(CATEGORIES, 0)
    for i, row in enumerate(first):  # round-robin over categories, first turn of each conversation
        if row["turn"] == min(r["turn"] for r in first if r["conversation"] == row["conversation"]) and (
            per_category[row["category"]] < max(1, n // len(CATEGORIES))
        ):
            picked.append(i)
            per_category[row["category"]] += 1
    head = ["request", "gold", *runs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in picked[:n]:
        row = first[i]
        msgs = tests[row["conversation"]]["messages"][: row["turn"]]
        user = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        gold = row["gold_calls"] if row["gold_calls"] else "(answers in text)"
        cells = [f"{_short(r[i]['generated'], 90)} **{r[i]['outcome']}**" for r in runs.values()]
        lines.append("| " + " | ".join([_short(user, 80), _short(gold, 90), *cells]) + " |")
    return "\n".join(lines)


def write_results(path: str | Path, reports: dict[str, dict], **extra: Any) -> Path:
    """Save the evaluations (without their samples) and any extra fields (training summary, settings) as JSON."""
    payload = {"evaluations": {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in reports.items()},
               **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    return path
