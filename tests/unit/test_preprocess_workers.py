"""Tokenization in parallel processes (`num_preprocess_workers`, the Silogen engine's --num-preprocess-workers):
the same rows as one process, every chunk's problems reported, the automatic choice, and the CLI option."""

from __future__ import annotations

import json

import pytest
import yaml

from forgekit.config import load_config
from forgekit.data import DataError
from forgekit.prepare import PARALLEL_FROM, prepare_data, preprocess_workers


def _write(path, n: int, bad: tuple[int, ...] | None = None) -> str:
    lines = []
    for i in range(n):
        reply = {"role": "assistant", "content": f"Ticket {i} is routed to team {i % 7}."}
        if bad is not None:  # classification: a label, or one outside label_tokens (found only by tokenization)
            reply = {"role": "assistant", "content": "[[nope]]" if i in bad else "[[a]]"}
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"Where does ticket {i} go?"}, reply]}))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_parallel_tokenization_gives_the_same_rows_as_one_process(tmp_path, tiny_model_dir):
    from datasets import load_from_disk

    train = _write(tmp_path / "train.jsonl", 60)
    out = {}
    for workers in (1, 3):
        cfg = load_config({"model_id": str(tiny_model_dir), "train_path": train, "num_preprocess_workers": workers})
        prepared = prepare_data(cfg, use_gpu=False, root=tmp_path / f"cache{workers}")
        assert not prepared.manifest["cache_hit"]
        out[workers] = [dict(r) for r in load_from_disk(str(prepared.train_dir))]
    assert len(out[1]) == 60 and out[1] == out[3]


def test_every_chunks_problems_are_reported_with_their_lines(tmp_path, tiny_model_dir):
    labels = ["[[a]]", "[[b]]"]
    train = _write(tmp_path / "train.jsonl", 30, bad=(2, 17, 28))
    cfg = load_config({"model_id": str(tiny_model_dir), "train_path": train, "task": "classification",
                       "classifier_config": {"label_tokens": labels}, "num_preprocess_workers": 3})
    with pytest.raises(DataError) as e:
        prepare_data(cfg, use_gpu=False, root=tmp_path / "cache")
    # one bad label in each of the three chunks (lines 1-10, 11-20, 21-30), in file order
    assert e.value.total == 3 and [p.split(":", 2)[1] for p in e.value.problems] == ["3", "18", "29"]


def test_the_automatic_choice_and_the_explicit_value(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    auto = load_config({"model_id": "m", "train_path": "t.jsonl"})
    assert preprocess_workers(auto, PARALLEL_FROM - 1) == 1
    assert preprocess_workers(auto, PARALLEL_FROM) == 8  # one per core, at most 8
    two = load_config({"model_id": "m", "train_path": "t.jsonl", "num_preprocess_workers": 2})
    assert preprocess_workers(two, 10) == 2 and preprocess_workers(two, 1) == 1
    with pytest.raises(Exception, match="num_preprocess_workers"):
        load_config({"model_id": "m", "train_path": "t.jsonl", "num_preprocess_workers": 0})


def test_the_cli_option_becomes_the_config_field(tmp_path, monkeypatch):
    import forgekit.train
    from forgekit import cli

    seen = []
    monkeypatch.setattr(forgekit.train, "finetune", lambda config, overrides, **kw: seen.append(list(overrides)) or {})
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"model_id": "m", "train_path": "t.jsonl"}))
    assert cli.main(["sft", str(path), "--num-preprocess-workers", "4"]) == 0
    assert "num_preprocess_workers=4" in seen[0]
    assert load_config(path, seen[0]).num_preprocess_workers == 4
