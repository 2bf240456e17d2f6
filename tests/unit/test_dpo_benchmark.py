"""benchmarks/dpo_throughput.py without a GPU: its pairs hit their token lengths, its TRL sweep retries with
checkpointing only where nothing fitted, and its driver interleaves the repeats and keeps to its budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
dpo = pytest.importorskip("dpo_throughput")
run = pytest.importorskip("run")

OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_pairs_have_the_target_token_lengths_and_a_learnable_preference(tokenizer):
    from workload import lognormal_lengths

    from forgekit.preference import Pair, tokenize_pair

    rows = dpo.make_pairs(tokenizer, 12, 3, (60, 120, 128), (30, 80, 96))
    toks = [tokenize_pair(Pair(r["prompt"], r["chosen"], r["rejected"], None, "", 0), tokenizer) for r in rows]
    assert [len(t["prompt_ids"]) for t in toks] == lognormal_lengths(12, 3, 60, 120, cap=128, floor=24)
    assert [len(t["chosen_ids"]) for t in toks] == lognormal_lengths(12, 104, 30, 80, cap=96, floor=8)
    chosen = {w for r in rows for w in r["chosen"][0]["content"].split()[1:]}
    rejected = {w for r in rows for w in r["rejected"][0]["content"].split()[1:]}
    assert chosen and rejected and not chosen & rejected  # two vocabularies: the preference can be learnt
    stats = dpo.pair_stats(tokenizer, rows)
    assert stats["n"] == 12 and stats["longest_pair"] <= 128 + 96
    assert stats["tokens"] == sum(2 * len(t["prompt_ids"]) + len(t["chosen_ids"]) + len(t["rejected_ids"]) for t in toks)


def _timed(tps: float, steps: int = 3) -> dict:
    return {"ok": True, "times": [float(i) for i in range(steps)], "tokens": [int(tps * (i + 1)) for i in range(steps)],
            "losses": [0.6931] + [0.69] * (steps - 1), "peak_alloc_gb": 40.0}


@pytest.mark.parametrize(("oom", "expected_calls", "best"), [
    # Liger off runs out of memory, Liger on fits: it wins, no checkpointing retry (a fitting setting is faster)
    ({("0", "0")}, [["0/0", "1/0"]], "trl:ckpt=0,batch=2,liger=1"),
    # nothing fits without checkpointing: both again with it, Liger off first (its patches outlive a setting)
    ({("0", "0"), ("1", "0")}, [["0/0", "1/0"], ["0/1", "1/1"]], "trl:ckpt=1,batch=2,liger=1"),
])
def test_the_trl_sweep_retries_with_checkpointing_only_where_nothing_fitted(monkeypatch, tmp_path, oom, expected_calls,
                                                                           best):
    calls: list[list[str]] = []

    def fake_child(name, work, tag, timeout, extra=None, script=None):
        assert name == "trl-sweep" and script == dpo.CHILD
        settings = json.loads(extra[1])
        calls.append([f"{s['liger']}/{s['ckpt']}" for s in settings])
        assert all(s["steps"] == "3" and s["batch"] == "2" for s in settings)
        return {"ok": True, "settings": [
            {"setting": s, "ok": False, "error": OOM} if (s["liger"], s["ckpt"]) in oom
            else {"setting": s, **_timed(1000 + 500 * int(s["liger"]) - 300 * int(s["ckpt"]))} for s in settings]}

    monkeypatch.setattr(run, "run_child", fake_child)
    args = dpo.parse(["--work", str(tmp_path)])
    tables = []
    table = dpo.trl_sweep(args, tmp_path, 1e12, {"micro_batch": 2}, tables.append)
    assert calls == expected_calls and len(tables) == len(expected_calls)
    assert dpo.best_contender(table) == best


def test_a_sweep_child_that_dies_gives_its_setting_an_error_row_and_the_rest_still_runs(monkeypatch, tmp_path):
    calls: list[list[str]] = []

    def fake_child(name, work, tag, timeout, extra=None, script=None):
        settings = json.loads(extra[1])
        calls.append([s["liger"] for s in settings])
        if len(calls) == 1:  # died inside its first setting (a segfault: no record)
            return {"ok": False, "rc": -11, "settings": []}
        return {"ok": True, "settings": [{"setting": s, **_timed(2000)} for s in settings]}

    monkeypatch.setattr(run, "run_child", fake_child)
    table = dpo.trl_sweep(dpo.parse(["--work", str(tmp_path)]), tmp_path, 1e12, {"micro_batch": 2}, lambda t: None)
    assert calls == [["0", "1"], ["1"]]
    assert [r["status"] for r in table["rows"]] == ["error", "ok"] and "exited with -11" in table["rows"][0]["error"]
    assert dpo.best_contender(table) == "trl:ckpt=0,batch=2,liger=1"


@pytest.mark.parametrize(("budget", "expected", "not_run"), [
    (10_000, ["trl", "forgekit"] * 3, []),
    # trl 30 s and forgekit 90 s a run: after 240 s, 120 s are left, the third trl fits, the third forgekit (90 s) not
    (330, ["trl", "forgekit", "trl", "forgekit", "trl"], ["forgekit (repeat 3"]),
])
def test_the_driver_interleaves_the_repeats_and_keeps_to_its_budget(monkeypatch, tmp_path, tokenizer, budget,
                                                                   expected, not_run):
    clock, calls = [0.0], []
    rows = dpo.make_pairs(tokenizer, 8, 0, (60, 120, 128), (30, 80, 96))
    spec = {"data_stats": dpo.pair_stats(tokenizer, rows), "flops_per_token": 1e9, "flops_per_token_full": 3e9,
            **{k: v for k, v in {"steps": 3, "micro_batch": 2, "accumulation": 2, "pairs_per_step": 4, "lr": 5e-5,
                                 "beta": 0.1, "ref": "precompute"}.items()}}

    def fake_child(name, work, tag, timeout, extra=None, script=None):
        assert script == dpo.CHILD and timeout <= budget
        calls.append(name)
        clock[0] += 90 if name == "forgekit" else 30
        return _timed(3000 if name == "forgekit" else 2000) | {"wall_s": 90 if name == "forgekit" else 30}

    monkeypatch.setattr(dpo, "prepare", lambda args, work: spec)
    monkeypatch.setattr(run, "run_child", fake_child)
    monkeypatch.setattr(dpo.time, "time", lambda: clock[0])
    code = dpo.main(["--device", "cpu", "--trl", "liger=1", "--budget-s", str(budget), "--work", str(tmp_path),
                     "--out", str(tmp_path), "--tag", "t"])
    assert code == 0
    assert [c.split(":")[0] for c in calls] == expected and calls[0] == "trl:ckpt=0,batch=2,liger=1"
    result = json.loads((tmp_path / "t.json").read_text())
    assert [n.split(":")[0] for n in result["meta"]["not_run"]] == not_run
    by_name = {r["contender"]: r for r in result["rows"]}
    assert by_name["forgekit"]["tokens_per_s"] == pytest.approx(3000)
    md = (tmp_path / "t.md").read_text()
    assert "| forgekit | Ray worker, forgekit's defaults | 3,000 |" in md and "| 1.50× |" in md, md
    assert "not swept, micro-batch 2, Liger, no checkpointing" in md
