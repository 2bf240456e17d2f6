"""The trackers get metrics.jsonl's tokens/s and MFU: `ThroughputInLogs` puts the Reporter's figures into each
training log before the trackers' callbacks (MLflow, W&B, TensorBoard) see it, and the Reporter stays after them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from forgekit.worker.metrics import Reporter, ThroughputInLogs


class Rows:
    def __init__(self):
        self.rows = []

    def write(self, row):
        self.rows.append(row)


class Tracker(TrainerCallback):
    """What MLflowCallback does with a log: keep its numbers."""

    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs))


def test_the_trackers_see_the_rows_tokens_per_second_and_mfu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 2**30)
    plan = SimpleNamespace(total_steps=3, eval_every=10, hardware=SimpleNamespace(use_gpu=True))
    rows = Rows()
    reporter = Reporter(plan, rows, None, 0, 2, flops_per_token=6e9, peak_tflops=989.0)
    tracker = Tracker()
    handler = CallbackHandler([DefaultFlowCallback(), tracker, reporter], None, None, None, None)
    ThroughputInLogs.install(SimpleNamespace(callback_handler=handler), reporter)
    assert [type(c).__name__ for c in handler.callbacks] == ["DefaultFlowCallback", "ThroughputInLogs", "Tracker",
                                                             "Reporter"]
    args = SimpleNamespace(logging_strategy="steps", logging_steps=1, logging_first_step=False)
    state, control = TrainerState(), TrainerControl()
    reporter.on_train_begin(args, state, control)
    for step in (1, 2, 3):
        state.global_step, state.num_input_tokens_seen = step, 4096 * step
        handler.on_log(args, state, control, {"loss": 2.0 / step, "learning_rate": 1e-4, "grad_norm": 1.0})
    assert [r["step"] for r in rows.rows] == [1, 2, 3]
    assert [t["tokens_per_second"] for t in tracker.seen] == [r["tokens_per_second"] for r in rows.rows]
    assert all(t["tokens_per_second"] > 0 for t in tracker.seen)
    assert [t["mfu"] for t in tracker.seen] == [r["mfu"] for r in rows.rows]
    # timed once per step: the training time is the sum of the steps' intervals, not counted twice
    assert reporter.timed_tokens == 3 * 4096
    handler.on_log(args, state, control, {"eval_loss": 1.0})  # an evaluation log: nothing added
    assert "tokens_per_second" not in tracker.seen[-1]


def test_on_a_cpu_only_tokens_per_second_is_added():
    plan = SimpleNamespace(total_steps=1, eval_every=1, hardware=SimpleNamespace(use_gpu=False))
    reporter = Reporter(plan, Rows(), None, 0, 1)
    state = TrainerState()
    reporter.on_train_begin(None, state, None)
    state.global_step, state.num_input_tokens_seen = 1, 100
    logs = {"loss": 1.0}
    tps = reporter.throughput(state, logs)
    assert logs == {"loss": 1.0, "tokens_per_second": round(tps, 2)} and tps == pytest.approx(logs["tokens_per_second"],
                                                                                            abs=0.01)
