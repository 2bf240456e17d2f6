"""`train_worker`: one Ray Train worker, top to bottom: data → model → Trainer(+DeepSpeed) → train or resume."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["train_worker"]


def train_worker(wc: dict[str, Any]) -> None:
    """Execute `wc["plan"]` in `wc["run_dir"]`, resuming from Ray's checkpoint or `wc["resume_from"]`."""
    import ray.train
    import transformers
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    import forgekit
    from forgekit import faults, storage
    from forgekit.models import base_model_metadata
    from forgekit.tracking import continue_mlflow_run
    from forgekit.worker import model as m
    from forgekit.worker.checkpoints import CheckpointPublisher, cannot_resume, has_optimizer_state, node_dir
    from forgekit.worker.metrics import MetricsFile, ThroughputInLogs
    from forgekit.worker.preference import preference_trainer
    from forgekit.worker.tracking import RunTracking

    faults.use(wc.get("faults"))  # (tests only: the driver's FORGEKIT_FAULTS)
    # run_dir: where this node writes (logs, profiles): the run directory, or a node-local mirror of a remote one
    plan, run_dir = wc["plan"], node_dir(wc["run_dir"])
    cfg, ctx = plan.config, ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _quiet(run_dir, rank)
    plan = _local_data(_local_models(plan, ctx.get_local_rank()), ctx.get_local_rank())
    bf16, cpu_autocast, precision = m.settle_precision(plan.precision) if plan.hardware.use_gpu else (
        False, plan.precision == "bf16-autocast", plan.precision)

    # data: tokenized once on the driver, on storage every node reads (or fetched by _local_data)
    train_ds, tokenizer = load_from_disk(str(plan.data.train_dir)), AutoTokenizer.from_pretrained(plan.data.tokenizer_dir)
    valid_ds = load_from_disk(str(plan.data.valid_dir)) if plan.data.valid_dir else None

    # model, seeded first (LoRA's A matrices and new embedding rows are drawn at random), with the speed levers
    transformers.set_seed(cfg.seed)
    model, levers, collator, (trainable, total) = _model_and_levers(plan, tokenizer, bf16, cpu_autocast, world)
    if rank == 0:
        print(f"forgekit levers: {levers}", flush=True)

    publisher = CheckpointPublisher(wc["run_dir"], rank, world, ctx.get_local_rank())
    publisher.metadata = {"forgekit_version": forgekit.__version__,  # the base as named and as found here
                          "base_model": base_model_metadata(cfg.model_id, cfg.initial_base_model_ckpt_path, plan.model_path),
                          "initial_adapter_model_ckpt_path": cfg.initial_adapter_model_ckpt_path}
    publisher.start()
    checkpoint = ray.train.get_checkpoint()  # after a worker failure; after a driver restart the driver found it
    if checkpoint is None and wc.get("resume_from"):
        where, fs = storage.ray_storage(wc["resume_from"], "resume_from")  # a local path or a URL
        checkpoint = ray.train.Checkpoint(path=where, filesystem=fs)
    reporter = _reporter(plan, model, MetricsFile(wc["run_dir"], rank), publisher, rank, world)
    if checkpoint is not None:
        continue_mlflow_run(wc["run_dir"])  # the MLflow run of the first session, where it has one
    build = preference_trainer if cfg.task == "preference_tuning" else _trainer  # TRL's DPO/KTO trainers
    trainer = build(plan, model, tokenizer, train_ds, valid_ds, collator, reporter, publisher, bf16, cpu_autocast,
                    resumed=checkpoint is not None, rank=rank, run_dir=run_dir)
    trainer.add_callback(RunTracking(plan, wc["run_dir"], resumed=checkpoint is not None))  # after the providers'
    ThroughputInLogs.install(trainer, reporter)  # tokens/s and MFU reach the trackers with each training log

    try:
        if checkpoint is None:
            reporter.metrics.reset(after_step=None)
            trainer.train()
        else:
            with checkpoint.as_directory() as ckpt_dir:
                if not has_optimizer_state(ckpt_dir):  # Ray retrying a failed worker from a weights-only checkpoint
                    raise RuntimeError(cannot_resume(ckpt_dir))
                step = json.loads((Path(ckpt_dir) / "trainer_state.json").read_text())["global_step"]
                reporter.resume(reporter.metrics.reset(after_step=step))
                trainer.train(resume_from_checkpoint=str(publisher.stage_for_resume(ckpt_dir, step)))
    except Exception as e:
        error = publisher.failed(e)  # no staging left behind; a full disk named as such
        if error is e:
            raise
        raise error from e
    reporter.finish(trainer, trainable=trainable, total=total, precision=precision, levers=levers)
    publisher.finish()
    _upload_node_files(wc["run_dir"], run_dir, rank)


def _local_models(plan: Any, local_rank: int) -> Any:
    """The plan with an s3:// or gs:// model or adapter replaced by this node's copy in its cache: the node's first
    worker downloads it (once per version: the driver's copy, on the same machine), the others wait for it."""
    import dataclasses

    from forgekit import storage
    from forgekit.prepare import local_copy
    from forgekit.worker.checkpoints import barrier

    base_key = "initial_base_model_ckpt_path" if plan.config.initial_base_model_ckpt_path else "model_id"
    keys = {"model_path": base_key, "adapter_path": "initial_adapter_model_ckpt_path"}
    remote = {f: getattr(plan, f) for f in keys if getattr(plan, f) and storage.is_remote(getattr(plan, f))}
    if not remote:
        return plan
    if local_rank == 0:
        for field, url in remote.items():
            local_copy(url, keys[field])
    barrier()
    return dataclasses.replace(plan, **{f: local_copy(url, keys[f]) for f, url in remote.items()})


def _local_data(plan: Any, local_rank: int) -> Any:
    """The plan with its tokenized data on this node (`forgekit.prepare.node_data`): the driver's cache where this
    node sees it, else the shared cache's copy (`FORGEKIT_CACHE=s3://...`), which the node's first worker downloads
    while the others wait."""
    import dataclasses

    from forgekit.prepare import node_data
    from forgekit.worker.checkpoints import barrier

    if plan.data.shared_dir:
        if local_rank == 0:
            node_data(plan.data)
        barrier()
    return dataclasses.replace(plan, data=node_data(plan.data))


def _upload_node_files(run_dir: str, local_dir: Path, rank: int) -> None:
    """For a run directory on object storage: each worker's logs/rank-N.log, and rank 0's other files (profiles,
    TensorBoard events; metrics.jsonl is mirrored while the run trains)."""
    from forgekit import storage

    if not storage.is_remote(run_dir):
        return
    log_file = local_dir / "logs" / f"rank-{rank}.log"
    if log_file.is_file():
        sys.stdout.flush()
        storage.write_text(storage.join(run_dir, "logs", log_file.name), log_file.read_text(errors="replace"))
    if rank == 0:
        for sub in sorted(p for p in local_dir.iterdir() if p.is_dir() and p.name != "logs"):
            storage.upload_dir(sub, storage.join(run_dir, sub.name))


def _quiet(run_dir: Path, rank: int) -> None:
    """Each worker's output goes to <run dir>/logs/rank-N.log (the driver shows a progress bar), unless
    FORGEKIT_VERBOSE=1 streams it."""
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    if os.environ.get("FORGEKIT_VERBOSE", "") in ("", "0"):
        sys.stdout = sys.stderr = open(run_dir / "logs" / f"rank-{rank}.log", "a", buffering=1)  # noqa: SIM115


def _model_and_levers(plan: Any, tokenizer: Any, bf16: bool, cpu_autocast: bool, world: int) -> tuple:
    """The model with forgekit's speed levers applied (forgekit.perf; each measured in benchmarks/results), what
    they became on this device, the data collator, and (trainable, total) parameters. On CPU: sdpa, no Liger, no
    compile."""
    import importlib.util

    import torch

    from forgekit import perf
    from forgekit.prepare import collate
    from forgekit.worker import model as m

    cfg, on_gpu = plan.config, plan.hardware.use_gpu
    attn = perf.pick_attention(cfg.attn_implementation, packing=plan.packing, on_gpu=on_gpu)
    liger = cfg.liger_kernel.enabled
    if liger is None:
        # (not for preference runs: Liger's fused loss would replace the forward TRL fuses its output layer into)
        liger = on_gpu and cfg.task != "preference_tuning" and importlib.util.find_spec("liger_kernel") is not None
    # a quantized base loads straight onto this worker's device (Ray Train set it)
    device = torch.cuda.current_device() if on_gpu else "cpu"
    model, liger = m.load_model(cfg, tokenizer, torch.bfloat16 if bf16 else torch.float32, attn, liger,
                                source=plan.model_path, context_length=plan.context_length, adapter=plan.adapter_path,
                                device=device, zero_stage=plan.zero_stage)
    if cfg.generation_config.stopping_sequences:  # saved with every checkpoint, where forgekit's generation reads them
        perf._base_model(model).generation_config.stop_strings = list(cfg.generation_config.stopping_sequences)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    every = 0
    if cfg.gradient_checkpointing:
        every = 1
        if on_gpu:  # checkpoint only as many layers as memory requires
            # a paired preference row is two sequences in one forward (TRL concatenates chosen and rejected)
            pref = cfg.preference_tuning_config
            paired = cfg.task == "preference_tuning" and (pref is None or pref.loss_type != "kto")
            rows = plan.micro_batch * (2 if paired else 1)
            every = perf.checkpoint_period(perf._base_model(model).config, rows * plan.context_length,
                                           m.free_activation_bytes(model, trainable, plan.zero_stage, world), liger=liger)
    checkpointed = perf.set_activation_checkpointing(model, every) if every else 0
    buckets = perf.zero3_buckets(plan.deepspeed, model) if plan.deepspeed else {}
    # bf16 autocast on a CPU: LoRA updates added to the layer outputs in fp32, not rounded away in bf16
    fp32_sums = perf.lora_sum_in_fp32(model) if cpu_autocast and cfg.lora_config else 0
    # logits and loss at supervised positions only (not where Liger's fused loss replaced the forward: the function
    # leaves it; nor for classification, whose metrics read the logits of every row)
    supervised_logits = cfg.supervised_logits and cfg.task not in ("classification", "preference_tuning") and (
        perf.supervised_logits_only(model))  # (TRL's preference trainers fuse the output layer themselves)
    compiled = cfg.torch_compile and plan.zero_stage < 3
    if compiled:
        perf.compile_decoder_layers(model, dynamic=True)
    levers = {"attention": attn, "liger": liger, "checkpointed_layers": checkpointed, "compiled": bool(compiled),
              "packing": plan.packing, "pad_to_multiple_of": plan.pad_to_multiple_of, "zero_stage": plan.zero_stage,
              "supervised_logits": supervised_logits, **buckets, **({"lora_fp32_sums": fp32_sums} if fp32_sums else {})}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collator(features: list[dict]) -> dict:
        batch = collate(features, pad_token_id=pad_id, padding=cfg.padding, context_length=plan.context_length,
                        multiple=plan.pad_to_multiple_of)
        if attn == perf.VARLEN and "position_ids" in batch:
            batch.update(perf.varlen_kwargs(batch["position_ids"]))  # document boundaries, once, on the CPU
        return batch

    return model, levers, collator, (trainable, sum(p.numel() for p in model.parameters()))


def _reporter(plan: Any, model: Any, metrics: Any, publisher: Any, rank: int, world: int) -> Any:
    """The Trainer callback, with MFU's FLOPs per token on GPUs and the non-finite stop where nothing else stops."""
    from forgekit.worker.metrics import Reporter

    cfg, flops, peak = plan.config, None, None
    if plan.hardware.use_gpu:
        import torch

        from forgekit import perf
        from forgekit.flops import model_flops_per_token, peak_tflops

        tl = plan.data.manifest.get("token_length", {})
        seq = tl.get("weighted_mean") or tl.get("mean") or plan.context_length
        lora = bool(cfg.lora_config or cfg.initial_adapter_model_ckpt_path)
        flops = model_flops_per_token(perf._base_model(model).config, seq, lora=lora)
        peak = peak_tflops(torch.cuda.get_device_name())
    ds = plan.deepspeed
    # a non-finite gradient norm stops the run where nothing else would: no DeepSpeed, or ZeRO-1/2 with their bf16
    # overflow check off (forgekit's default); ZeRO-3 and ZeRO-0's bf16 optimizer skip such steps themselves
    stop = not ds or (plan.zero_stage in (1, 2) and not ds.get("bf16", {}).get("check_grad_overflow", False))
    reporter = Reporter(plan, metrics, publisher, rank, world, flops_per_token=flops, peak_tflops=peak,
                        stop_on_nonfinite=stop)
    # an adapter checkpoint holds no generation_config.json of its own (a full model's save writes it)
    if cfg.generation_config.stopping_sequences:
        from forgekit import perf

        publisher.generation_config = perf._base_model(model).generation_config
    return reporter


def _trainer(plan: Any, model: Any, tokenizer: Any, train_ds: Any, valid_ds: Any, collator: Any, reporter: Any,
             publisher: Any, bf16: bool, cpu_autocast: bool, *, resumed: bool, rank: int, run_dir: Path) -> Any:
    """The transformers Trainer with the plan's batch, schedule, precision and DeepSpeed dict."""
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from forgekit.worker import model as m

    cfg = plan.config
    args = TrainingArguments(**training_arguments(plan, publisher, bf16, has_eval=valid_ds is not None,
                                                  resumed=resumed, run_dir=run_dir))
    metrics_fns = {}
    if cfg.task == "classification":
        label_ids = tokenizer.convert_tokens_to_ids(cfg.classifier_config.label_tokens)
        metrics_fns = m.classification_fns(label_ids, cfg.classifier_config.eval_metrics)
    callbacks = trainer_callbacks(plan, reporter, rank, run_dir)
    trainer = m.trainer_class(cpu_autocast)(
        model=model, args=args, data_collator=collator, processing_class=tokenizer, callbacks=callbacks,
        train_dataset=train_ds.remove_columns([c for c in ("length",) if c in train_ds.column_names]),
        eval_dataset=valid_ds.remove_columns(["length"]) if valid_ds is not None else None, **metrics_fns,
    )
    trainer.remove_callback(PrinterCallback)  # metrics.jsonl and the driver's progress bar replace it
    return trainer


def training_arguments(plan: Any, publisher: Any, bf16: bool, *, has_eval: bool, resumed: bool,
                       run_dir: Path) -> dict[str, Any]:
    """The TrainingArguments keywords of the plan's batch, schedule, precision and DeepSpeed dict (the Trainer's,
    and TRL's preference configs', which extend TrainingArguments)."""
    from forgekit import perf
    from forgekit.tracking import logger_setup

    cfg = plan.config
    report_to, logging_dir = logger_setup(cfg, run_dir)
    if logging_dir:  # transformers 5 dropped TrainingArguments.logging_dir; its TensorBoard callback reads this
        os.environ["TENSORBOARD_LOGGING_DIR"] = logging_dir
    return {
        "output_dir": str(publisher.staging), "per_device_train_batch_size": plan.micro_batch,
        "per_device_eval_batch_size": plan.eval_batch, "gradient_accumulation_steps": plan.accumulation,
        "learning_rate": cfg.learning_rate, "lr_scheduler_type": cfg.lr_scheduler_type,
        "warmup_steps": cfg.num_warmup_steps, "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
        "neftune_noise_alpha": cfg.neftune_noise_alpha, "num_train_epochs": plan.num_epochs,
        "max_steps": plan.total_steps, "logging_steps": cfg.logging_steps,
        "eval_strategy": "steps" if has_eval else "no", "eval_steps": plan.eval_every, "save_strategy": "steps",
        "save_steps": plan.eval_every,
        "save_total_limit": 1,  # staging only: Ray keeps the published checkpoints
        # the baseline; a resumed run already has it, and RunTracking turns it off there once the trackers have
        # logged these arguments (the same as the first session's: MLflow rejects a changed param)
        "eval_on_start": has_eval,
        "bf16": bf16, "use_cpu": not plan.hardware.use_gpu,
        "gradient_checkpointing": False,  # set per layer (perf.set_activation_checkpointing)
        "optim": perf.fused_optimizer_name(plan.hardware.use_gpu), "deepspeed": plan.deepspeed, "seed": cfg.seed,
        # transformers' bars off: the driver draws training's, rank 0 evaluation's (trainer_callbacks)
        "data_seed": cfg.seed, "report_to": report_to, "disable_tqdm": True, "remove_unused_columns": False,
        "dataloader_num_workers": 0, "include_num_input_tokens_seen": "all" if plan.packing else "non_padding",
        "save_only_model": not cfg.save_optimizer_state, "ddp_find_unused_parameters": False,
    }


def trainer_callbacks(plan: Any, reporter: Any, rank: int, run_dir: Path) -> list:
    """The reporter, and on rank 0 the evaluation bar (where bars show: `forgekit.progress`) and with profile_steps
    the PyTorch profiler's callback."""
    from forgekit.progress import progress_enabled
    from forgekit.worker.metrics import EvaluationProgress

    cfg, callbacks = plan.config, [reporter]
    if rank == 0 and progress_enabled():
        callbacks.append(EvaluationProgress())
    if cfg.profile_steps and rank == 0:
        from forgekit.profiling import step_profiler

        if cfg.profile_steps[0] > plan.total_steps:
            print(f"forgekit: profile_steps {list(cfg.profile_steps)} start after the last step ({plan.total_steps}): "
                  "nothing is profiled", flush=True)
        reporter.profiler = step_profiler(run_dir, *cfg.profile_steps, on_gpu=plan.hardware.use_gpu)
        callbacks.append(reporter.profiler)
    return callbacks
