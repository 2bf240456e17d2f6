"""The worker's trainer for `task: preference_tuning`: TRL's DPOTrainer (KTOTrainer for `loss_type: kto`) on the plan.

The same plan as any run (batch, schedule, precision, DeepSpeed dict: `loop.training_arguments`), the same model
(`worker.model.load_model`: LoRA or full, activation checkpointing per layer), the same reporter and checkpoints;
only the trainer differs. The rows come tokenized from the driver (`forgekit.preference`), so TRL's own dataset
preparation is skipped. The reference:

* LoRA: the base model with the adapter disabled (TRL's `use_adapter`), no second copy of the weights. TRL copies a
  model's existing adapter as a frozen "ref" adapter; for a new adapter (zero LoRA B: the base exactly) that copy is
  dropped. A continued adapter (an SFT stage's, `initial_adapter_model_ckpt_path`) keeps it: the SFT policy is the
  reference, as DPO after SFT means.
* full: TRL's reference copy (sharded under ZeRO-3 like the policy); none at all with precomputed log-probs.
* `precompute_ref_log_probs` (default): TRL computes them once, before the first step, and caches them beside the
  tokenized rows (a `datasets` cache file keyed by the data and the model's weights), so a rerun or resume reuses
  them; each step then skips the reference forward pass.
* SimPO (reference-free): TRL's length-normalised `sigmoid_norm` loss with constant reference log-probs, 0 for the
  chosen answer and -(γ/β)·|rejected| for the rejected one: β·(mean log p(chosen) - mean log p(rejected)) - γ,
  SimPO's margin, with no reference forward at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["preference_trainer"]


def _pretokenized(base: type, *, simpo_shift: float | None) -> type:
    """`base` (TRL's DPOTrainer or KTOTrainer) on rows tokenized by forgekit; with `simpo_shift` (γ/β), SimPO's
    constant reference log-probs instead of a reference model's."""

    class Pretokenized(base):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if getattr(self, "calculate_KL", False):  # KTO: each row's KL completion is the previous row's (TRL's rule)
                def rotate(batch: dict) -> dict:
                    return {"KL_completion_ids": [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]}

                dataset = dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)
            return dataset

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            if simpo_shift is None:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            return dataset.map(lambda row: {"ref_chosen_logps": 0.0,
                                            "ref_rejected_logps": -simpo_shift * len(row["rejected_ids"])})

    return Pretokenized


def preference_trainer(plan: Any, model: Any, tokenizer: Any, train_ds: Any, valid_ds: Any, collator: Any,
                       reporter: Any, publisher: Any, bf16: bool, cpu_autocast: bool, *, resumed: bool, rank: int,
                       run_dir: Path) -> Any:
    """TRL's preference trainer with the plan's arguments (the inputs `loop._trainer` gets; `collator` is unused:
    TRL pads prompt and answers itself)."""
    from peft import PeftModel
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from forgekit.config import PreferenceTuningConfig
    from forgekit.worker import model as m
    from forgekit.worker.loop import trainer_callbacks, training_arguments

    cfg = plan.config
    pref = cfg.preference_tuning_config or PreferenceTuningConfig()
    args = training_arguments(plan, publisher, bf16, has_eval=valid_ds is not None, resumed=resumed, run_dir=run_dir)
    scaling = pref.logprob_processor_scaling_config
    args.update(
        beta=pref.beta, max_length=plan.context_length, disable_dropout=True,  # policy == reference at step 0
        precompute_ref_log_probs=pref.precompute_ref_log_probs or pref.reference_free,
        precompute_ref_batch_size=scaling.batch_size if scaling else None,
        pad_to_multiple_of=plan.pad_to_multiple_of if plan.pad_to_multiple_of > 1 else None,
    )
    if pref.loss_type == "kto":
        base, args = KTOTrainer, KTOConfig(**args, desirable_weight=pref.desirable_weight,
                                           undesirable_weight=pref.undesirable_weight)
    else:
        loss = "sigmoid_norm" if pref.reference_free else pref.loss_type
        rpo = {"loss_type": [loss, "sft"], "loss_weights": [1.0, pref.rpo_alpha]} if pref.rpo_alpha else {
            "loss_type": [loss]}
        base, args = DPOTrainer, DPOConfig(**args, **rpo, label_smoothing=pref.label_smoothing)
    cls = m.trainer_class(cpu_autocast, _pretokenized(base, simpo_shift=pref.simpo_gamma / pref.beta
                                                      if pref.reference_free else None))
    drop = [c for c in ("length",) if c in train_ds.column_names]
    trainer = cls(model=model, args=args, processing_class=tokenizer, callbacks=trainer_callbacks(plan, reporter, rank, run_dir),
                  train_dataset=train_ds.remove_columns(drop),
                  eval_dataset=valid_ds.remove_columns(drop) if valid_ds is not None else None)
    # a new adapter's "ref" copy is the base itself (LoRA B is zero); precomputed log-probs need no reference later
    if isinstance(trainer.model, PeftModel) and "ref" in trainer.model.peft_config and (
            plan.adapter_path is None or args.precompute_ref_log_probs):
        trainer.model.delete_adapter("ref")
    trainer.remove_callback(PrinterCallback)  # metrics.jsonl and the driver's progress bar replace it
    return trainer
