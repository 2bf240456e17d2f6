"""benchmarks/readers.py: the committed benchmark results read as the optimize_cost cookbook shows them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
sys.path.insert(0, str(RESULTS.parent))
from readers import contenders, lever_ladder, seqlen_results


def test_lever_ladder_reads_the_committed_results():
    raw = json.loads((RESULTS / "levers-llama8b-h100.json").read_text())["ladder"]
    rows = lever_ladder(RESULTS / "levers-llama8b-h100.json", price_per_hour=3.0)
    assert [r["rung"] for r in rows] == [r["rung"] for r in raw]
    assert rows[0]["speedup"] == 1.0 and rows[0]["compared_with"] is None
    by = {r["rung"]: r for r in rows}
    raw_by = {r["rung"]: r for r in raw}
    for r in rows:
        if "error" in raw_by[r["rung"]]:
            assert not r["ok"] and r["tokens_per_s"] is None and r["gain"] is None
        else:
            assert r["tokens_per_s"] == raw_by[r["rung"]]["tokens_per_s"]
            assert r["cost_per_million_tokens"] == pytest.approx(3.0 / (3600 * r["tokens_per_s"]) * 1e6)
    # each lever is measured against its parent: the one differing in fewest levers, ties to the latest
    assert by["packed-flex"]["compared_with"] == "packed-sdpa" and by["packed-flex"]["change"] == "attn: sdpa → flex_attention"
    assert by["packed-flex"]["gain"] == pytest.approx(raw_by["packed-flex"]["tokens_per_s"] / raw_by["packed-sdpa"]["tokens_per_s"])
    assert by["+compile"]["compared_with"] == "+ckpt/4"
    assert any(r["error"] == "out of memory" for r in rows)


def test_lever_ladder_parent_rule_on_a_small_file(tmp_path):
    path = tmp_path / "ladder.json"
    path.write_text(json.dumps({"ladder": [
        {"rung": "a", "levers": {"x": 1, "y": 1}, "tokens_per_s": 100.0},
        {"rung": "b", "levers": {"x": 2, "y": 1}, "tokens_per_s": 150.0},
        {"rung": "c", "levers": {"x": 1, "y": 2}, "error": "CUDA out of memory"},
        {"rung": "d", "levers": {"x": 2, "y": 2}, "tokens_per_s": 300.0},
    ]}))
    rows = lever_ladder(path)
    assert [r["compared_with"] for r in rows] == [None, "a", "a", "b"]  # d: c failed, never a parent
    assert rows[3]["gain"] == 2.0 and rows[3]["speedup"] == 3.0 and rows[3]["change"] == "y: 1 → 2"
    with pytest.raises(FileNotFoundError, match="no such benchmark result"):
        lever_ladder(tmp_path / "missing.json")


def test_contenders_and_seqlen_read_the_committed_results():
    raw = json.loads((RESULTS / "llama8b-h100.json").read_text())["rows"]
    rows = contenders(RESULTS / "llama8b-h100.json")
    assert [r["contender"] for r in rows] == [r["contender"] for r in raw]
    for r, src in zip(rows, raw):
        assert r["tokens_per_s"] == src["tokens_per_s"]
        assert r["min_tokens_per_s"] <= r["tokens_per_s"] <= r["max_tokens_per_s"]
    assert rows[0]["speedup"] == 1.0
    # a later measurement of the same work joins the table, its speedup against the same first row
    later = RESULTS / "llama8b-h200-lora-8k-no-overflow-scan.json"
    both = contenders(RESULTS / "llama8b-h200-side-by-side.json", more={"later": later})
    new = json.loads(later.read_text())["rows"][0]
    assert both[-1]["contender"] == f"{new['contender']} (later)" and both[-1]["tokens_per_s"] == new["tokens_per_s"]
    assert both[-1]["speedup"] == pytest.approx(new["tokens_per_s"] / both[0]["tokens_per_s"])
    # other work (6 steps, not 14) does not join: its losses and speed-up would not compare
    with pytest.raises(ValueError, match=r"not the same work .*\(meta steps differ\)"):
        contenders(RESULTS / "llama8b-h200.json", more={"later": later})
    seq = seqlen_results(RESULTS / "seqlen-llama8b-h100.json")
    assert [r["seq_len"] for r in seq] == [r["seq_len"] for r in json.loads((RESULTS / "seqlen-llama8b-h100.json").read_text())["seqlen"]]

