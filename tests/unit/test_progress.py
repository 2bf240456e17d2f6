"""Progress bars of the long steps: shown with FORGEKIT_PROGRESS=1 (total, final count, rate), silent by default in
output that is no terminal (pytest captures it, as a CI log or a redirect would).

Reading and tokenizing a data file, generation, `forgekit eval-tools`, world rank 0's evaluation bar; the rule
itself (`forgekit.progress.progress_enabled`). The training bar and the evaluation bar of a real run:
tests/integration/test_checkpoint_portability.py.
"""

from __future__ import annotations

import json
import re

import pytest

from forgekit.progress import ENV, progress_bar, progress_enabled

CONVERSATIONS = [[{"role": "user", "content": f"Say {i}."}] for i in range(5)]


def _bar(err: str, desc: str) -> str:
    """The last state tqdm drew of the bar named `desc` (frames are separated by carriage returns)."""
    frames = [f for f in re.split(r"[\r\n]", err) if f.startswith(desc)]
    assert frames, f"no {desc!r} bar in stderr: {err[-500:]!r}"
    return frames[-1]


@pytest.fixture
def bars(monkeypatch):
    monkeypatch.setenv(ENV, "1")


@pytest.fixture
def default(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


class _Terminal:
    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_the_rule_call_then_variable_then_terminal(monkeypatch, default):
    assert not progress_enabled()  # pytest's captured stderr: no terminal
    assert progress_enabled(True) and not progress_enabled(False)
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert progress_enabled()
    with progress_bar(3, "x", "item") as bar:
        assert not bar.disable and bar.delay == 1.0  # a terminal: only steps over a second get a bar
    for value, on in (("1", True), ("on", True), ("0", False), ("off", False)):
        monkeypatch.setenv(ENV, value)
        assert progress_enabled() is on
        assert progress_enabled(not on) is (not on)  # the call decides over the variable
    monkeypatch.setenv(ENV, "1")
    with progress_bar(3, "x", "item") as bar:
        assert not bar.disable and bar.delay == 0  # asked for: at once


def test_reading_and_tokenizing_a_file_draw_bars(bars, tokenizer, tmp_path, capsys):
    from forgekit.config import load_config
    from forgekit.data import read_examples
    from forgekit.prepare import tokenize_examples

    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
            for i in range(7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config({"model_id": "unused", "train_path": str(path)})
    examples = read_examples(str(path))
    tokenized, _ = tokenize_examples(examples, tokenizer, cfg)
    assert len(tokenized) == 7
    err = capsys.readouterr().err
    reading, tokenizing = _bar(err, "reading train.jsonl"), _bar(err, "tokenizing train.jsonl")
    assert "7/7" in reading and "record/s" in reading
    assert "7/7" in tokenizing and "100%" in tokenizing and "example/s" in tokenizing


def test_reading_preference_pairs_draws_a_bar(bars, tmp_path, capsys):
    from forgekit.preference import read_pairs

    path = tmp_path / "pairs.jsonl"
    pair = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}]}
    path.write_text(json.dumps(pair) + "\n" * 2 + json.dumps(pair) + "\n")  # a blank line between: not a record
    assert len(read_pairs(str(path))) == 2
    reading = _bar(capsys.readouterr().err, "reading pairs.jsonl")
    assert "2/2" in reading and "record/s" in reading


def test_generation_draws_one_bar_per_call_and_none_by_default(tokenizer, tiny_model_dir, monkeypatch, capsys):
    from forgekit.generate import generate, load_for_generation

    loaded = load_for_generation(tiny_model_dir)
    monkeypatch.delenv(ENV, raising=False)
    capsys.readouterr()
    quiet = generate(loaded, CONVERSATIONS, max_new_tokens=2, batch_size=2)
    assert "generating" not in capsys.readouterr().err  # not a terminal: silent
    monkeypatch.setenv(ENV, "1")
    assert generate(loaded, CONVERSATIONS, max_new_tokens=2, batch_size=2) == quiet
    bar = _bar(capsys.readouterr().err, "generating")
    assert "5/5" in bar and "prompt/s" in bar
    assert generate(loaded, CONVERSATIONS[:1], max_new_tokens=2, progress=False) == quiet[:1]
    assert "generating" not in capsys.readouterr().err  # the call decides


@pytest.mark.parametrize("on", [True, False])
def test_eval_tools_draws_its_bars_with_the_variable_only(tiny_model_dir, tmp_path, monkeypatch, capsys, on):
    from forgekit.cli import main

    monkeypatch.setenv(ENV, "1") if on else monkeypatch.delenv(ENV, raising=False)
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"tools": tools, "messages": [
        {"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello!"}]}) + "\n" for i in range(3)))
    assert main(["eval-tools", str(tiny_model_dir), str(test), "-o", str(tmp_path / "r.json"),
                 "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    if on:
        assert "3/3" in _bar(err, "reading test.jsonl") and "3/3" in _bar(err, "generating")
    else:
        assert "generating" not in err and "reading test.jsonl" not in err


def test_the_evaluation_bar_counts_this_workers_batches(bars, capsys):
    from types import SimpleNamespace

    from forgekit.worker.metrics import EvaluationProgress

    callback, state = EvaluationProgress(), SimpleNamespace(global_step=4)
    for _ in range(2):  # two evaluations: a bar each
        for _ in range(3):
            callback.on_prediction_step(None, state, None, eval_dataloader=[0, 1, 2])
        callback.on_evaluate(None, state, None)
    err = capsys.readouterr().err
    assert "3/3" in _bar(err, "evaluating (step 4)") and "batch/s" in _bar(err, "evaluating (step 4)")
    assert callback.bar is None
