"""The Ray Train worker: executes a `forgekit.plan.Plan` (`train_worker`), never re-deriving it.

- `loop`: `train_worker`, the loop top to bottom (data, model, Trainer, train or resume, finish);
- `model`: weights, LoRA, precision, the Trainer class, classification metrics;
- `metrics`: metrics.jsonl and the Trainer callback (throughput, MFU, divergence, last-step checkpoint);
- `checkpoints`: staging and the atomic publishing of every node's part.
"""

from forgekit.worker.loop import train_worker

__all__ = ["train_worker"]
