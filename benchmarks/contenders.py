"""One benchmark contender in one process: train the shared workload for a fixed step count and time it.

Run by ``benchmarks/run.py`` (one child process per contender and repeat, so memory peaks and compile
caches never leak between contenders)::

    python benchmarks/contenders.py CONTENDER --spec spec.json --out result.json

Contenders:

- ``hf``: plain transformers ``Trainer`` + peft, the usual recipe: batches padded to the longest example,
  SDPA, gradient checkpointing on every layer, bf16, fused AdamW.
- ``trl``: TRL ``SFTTrainer`` with best-fit-decreasing packing (padding-free rows of ``max_length``); options
  ``ckpt`` (1), ``batch`` (2), ``liger`` (0), ``attn`` (sdpa), as the others take them.
- ``trl-sweep`` (with ``--settings``): several ``trl`` settings in one process, one record each
  (``run.py --trl-sweep`` runs it and picks TRL at its best).
- ``levers:k=v,...``: transformers ``Trainer`` on forgekit's packed rows and collate with forgekit.perf's
  levers (``attn`` (default auto: forgekit_varlen on a GPU), ``liger`` (1 on GPU), ``ckpt`` period (1),
  ``compile`` (0), ``rows`` per micro-batch (4), ``pad`` multiple (0), ``fp8`` (0; 1: the frozen base
  matmuls in float8 through torchao, which the wheelhouse must carry)): the worker's training step without Ray
  and DeepSpeed, to tell the levers' gain from the cost of the real path.
- ``forgekit``: ``forgekit finetune`` on a generated YAML (Ray worker + DeepSpeed), timed from outside
  (``benchmarks/forgekit_contender.py``).

Each writes a JSON result: per-step wall times and cumulative real (non-pad) tokens, the logged losses,
time to first step (from the parent's spawn time, ``FKB_T0``), peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

T0 = float(os.environ.get("FKB_T0", time.time()))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parse_options(text: str) -> dict[str, str]:
    """``"attn=sdpa,liger=1"`` -> ``{"attn": "sdpa", "liger": "1"}``."""
    out = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise ValueError(f"contender option {part!r} is not key=value")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


class TokenMeter:
    """Counts real tokens per forward pass: the collator queues each batch's count, the model pops it."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.total = 0

    def wrap(self, collate: Any) -> Any:
        def counted(features: list[dict]) -> dict:
            batch = collate(features)
            self.pending.append(sum(len(f["input_ids"]) for f in features))
            return batch

        return counted

    def hook(self, module: Any, args: Any, kwargs: Any) -> None:
        if module.training and self.pending:
            self.total += self.pending.popleft()


def _callback(meter: TokenMeter | None, record: dict, t0: float = T0) -> Any:
    """The end of each optimizer step and the real tokens so far into `record`: `meter`'s count, or with None the
    Trainer's own non-padding count (`include_num_input_tokens_seen`)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            now = time.time()
            if not record["times"]:
                record["t_first_step"] = now - t0
            record["times"].append(now)
            record["tokens"].append(meter.total if meter is not None else state.num_input_tokens_seen)

    return Clock()


def _lora_config(spec: dict) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **spec["lora"])


def _load_model(spec: dict, attn: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    cuda = spec["device"] == "cuda"
    return AutoModelForCausalLM.from_pretrained(
        spec["model_dir"],
        dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation=attn,
        device_map="cuda" if cuda else None,
    )


def _rows(spec: dict, tok: Any) -> list[dict]:
    from workload import tokenize

    lines = Path(spec["data"]).read_text().splitlines()
    return tokenize(tok, [json.loads(x) for x in lines], spec["max_length"])


def _train_args(spec: dict, out: str, **kw: Any) -> dict:
    cuda = spec["device"] == "cuda"
    return {
        "output_dir": out,
        "max_steps": spec["steps"],
        "learning_rate": spec["lr"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "bf16": cuda,
        "use_cpu": not cuda,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": spec["seed"],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,  # the token meter's queue needs the collator in this process
        **kw,
    }


def _finish(trainer: Any, record: dict, meter: TokenMeter) -> dict:
    import torch

    record["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    record["grad_norms"] = [h.get("grad_norm") for h in trainer.state.log_history if "loss" in h]
    if torch.cuda.is_available():
        record["peak_alloc_gb"] = torch.cuda.max_memory_allocated() / 2**30
        record["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        record["gpu"] = gpu_identity()
    return record


def gpu_identity() -> str:
    """``"NVIDIA H100 80GB HBM3 GPU-1a2b3c4d"``: the device's name and the start of its UUID (which card ran it)."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    uuid = str(getattr(props, "uuid", "") or "")
    return f"{props.name} GPU-{uuid[:8]}" if uuid else props.name


def hf_batch(tokens_per_step: int, mean_len: float, batch: int | None = None) -> tuple[int, int]:
    """(micro-batch, accumulation) whose examples per step carry the step's tokens most closely: a padded-batch
    recipe counts examples, not tokens. Micro-batches of 4, 3 or 2 (the larger on a tie), unless `batch` is set."""
    def pair(b: int) -> tuple[int, int]:
        return b, max(1, round(tokens_per_step / (b * mean_len)))

    if batch:
        return pair(batch)
    return min((pair(b) for b in (4, 3, 2)), key=lambda ba: abs(ba[0] * ba[1] * mean_len - tokens_per_step))


def run_hf(spec: dict, opts: dict) -> dict:
    """transformers Trainer + peft, padded to the longest example in each batch."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = _rows(spec, tok)
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    batch, accum = hf_batch(spec["tokens_per_step"], mean_len, int(opts["batch"]) if "batch" in opts else None)
    model = get_peft_model(_load_model(spec, opts.get("attn", "sdpa")), _lora_config(spec))
    meter, record = TokenMeter(), {"times": [], "tokens": [], "config": {"batch": batch, "accum": accum}}
    model.register_forward_pre_hook(meter.hook, with_kwargs=True)
    collate = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    args = TrainingArguments(**_train_args(spec, spec["tmp"], per_device_train_batch_size=batch,
                                           gradient_accumulation_steps=accum,
                                           gradient_checkpointing=opts.get("ckpt", "1") == "1"))
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=meter.wrap(collate), callbacks=[_callback(meter, record)])
    trainer.train()
    return _finish(trainer, record, meter)


def run_trl(spec: dict, opts: dict, t0: float = T0) -> dict:
    """TRL SFTTrainer with BFD packing (padding-free), LoRA through its ``peft_config``.

    Options: ``ckpt`` gradient checkpointing (1), ``batch`` packed rows per micro-batch (2), ``liger`` TRL's
    ``use_liger_kernel`` (0), ``attn`` attention implementation (sdpa).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = _rows(spec, tok)
    batch, ckpt, liger = int(opts.get("batch", 2)), opts.get("ckpt", "1") == "1", opts.get("liger", "0") == "1"
    attn = opts.get("attn", "sdpa")
    accum = max(1, round(spec["tokens_per_step"] / (batch * spec["max_length"])))
    meter = TokenMeter()
    record = {"times": [], "tokens": [], "config": {"batch": batch, "accum": accum, "ckpt": ckpt, "liger": liger,
                                                    "attn": attn}}
    cfg = SFTConfig(**_train_args(spec, spec["tmp"], per_device_train_batch_size=batch,
                                  gradient_accumulation_steps=accum, gradient_checkpointing=ckpt,
                                  max_length=spec["max_length"], packing=True, packing_strategy="bfd",
                                  use_liger_kernel=liger))
    set_seed(spec["seed"])  # the LoRA initialisation draws before the Trainer seeds; the same in every setting
    trainer = SFTTrainer(model=_load_model(spec, attn), args=cfg, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=_lora_config(spec))
    trainer.data_collator = meter.wrap(trainer.data_collator)
    trainer.add_callback(_callback(meter, record, t0))
    trainer.model.register_forward_pre_hook(meter.hook, with_kwargs=True)
    trainer.train()
    return _finish(trainer, record, meter)


def run_trl_sweep(spec: dict, settings: list[dict], out: Path, runner: Any = None) -> dict:
    """The TRL settings one after the other in this process (imports and CUDA start paid once; each setting loads
    the model afresh): one record per setting, written to `out` after each, so a crash loses only the setting it
    hit. `runner(spec, setting, t0=...)` runs one setting (default `run_trl`; DPO's: ``dpo_throughput.py``). An
    out-of-memory is that setting's record; a setting needing at least the memory of one that ran out is skipped
    (``sweep.skipped_by``). Liger-off settings must come first (``sweep.settings`` orders them): Liger's
    kernels patch the model classes for the rest of the process."""
    import gc

    import torch
    from sweep import is_oom, option_string, skipped_by

    cuda = torch.cuda.is_available()
    records: list[dict] = []
    for setting in settings:
        oom = [r["setting"] for r in records if not r.get("ok") and is_oom(r.get("error"))]
        record: dict[str, Any] = {"setting": setting}
        if (cause := skipped_by(setting, oom)) is not None:
            record.update(ok=False, skipped=f"needs at least the memory of {option_string(cause)}, which ran out")
        else:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            started = time.time()
            try:
                record.update((runner or run_trl)(spec, setting, t0=started), ok=True)
            except Exception as e:  # noqa: BLE001 - an OOM or error is this setting's row; the sweep goes on
                record.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
                record["peak_alloc_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            record["setting_s"] = time.time() - started
        gc.collect()  # the failed setting's trainer and model go before the next loads
        if cuda:
            torch.cuda.empty_cache()
        records.append(record)
        out.write_text(json.dumps({"ok": True, "partial": True, "settings": records}))
    return {"settings": records}


def _packed_dataset(rows: list[dict], capacity: int) -> Any:
    """forgekit's best-fit-decreasing packing: rows of <= capacity tokens with per-example position ids."""
    from datasets import Dataset

    from forgekit.prepare import pack_rows

    packed: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for b in pack_rows([len(r["input_ids"]) for r in rows], capacity):
        ids, labels, pos = [], [], []
        for i in b:
            ids += rows[i]["input_ids"]
            labels += [-100] + rows[i]["labels"][1:]
            pos += list(range(len(rows[i]["input_ids"])))
        packed["input_ids"].append(ids)
        packed["labels"].append(labels)
        packed["position_ids"].append(pos)
    return Dataset.from_dict(packed)


def float8_base_layers(model: Any) -> int:
    """Swap the frozen base ``nn.Linear`` of every LoRA layer for torchao's ``Float8Linear`` (rowwise scales: the
    forward and the input-gradient matmuls in float8 on an H100; the adapters stay bf16). The number swapped.

    The base weight is frozen, so its weight-gradient matmul never runs; torchao still casts the weight to float8
    on every forward (no cache), so the gain is the matmul's minus that cast. Compile the layers (``compile=1``) to
    fuse the casts, as torchao advises.
    """
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:
        raise RuntimeError("fp8=1 needs torchao: add it to the wheelhouse (EXTRA=torchao==<version for the host's "
                           "torch> ../shared/device/make_wheelhouse.sh)") from e
    import torch

    def base_only(module: Any, fqn: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return True  # a container: look inside
        return fqn.endswith("base_layer") and module.in_features % 16 == 0 and module.out_features % 16 == 0

    before = sum(1 for n, _ in model.named_modules() if n.endswith("base_layer"))
    convert_to_float8_training(model, module_filter_fn=base_only, config=Float8LinearConfig.from_recipe_name("rowwise"))
    swapped = sum(1 for n, m in model.named_modules() if n.endswith("base_layer") and type(m).__name__ == "Float8Linear")
    if not swapped:
        raise RuntimeError(f"fp8=1: none of the {before} LoRA base layers became Float8Linear")
    return swapped


def run_levers(spec: dict, opts: dict) -> dict:
    """forgekit's training step (packed rows, forgekit.perf levers) in a plain Trainer, no Ray/DeepSpeed."""
    from peft import get_peft_model
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from forgekit import perf
    from forgekit.prepare import collate

    cuda = spec["device"] == "cuda"
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = _rows(spec, tok)
    per_batch = int(opts.get("rows", 4))
    accum = max(1, round(spec["tokens_per_step"] / (per_batch * spec["max_length"])))
    attn = perf.pick_attention(opts.get("attn", "auto"), packing=True, on_gpu=cuda)
    model = _load_model(spec, attn)
    model.config.use_cache = False
    liger = opts.get("liger", "1" if cuda else "0") == "1" and perf.apply_liger(model)
    model = get_peft_model(model, _lora_config(spec))
    fp8 = float8_base_layers(model) if opts.get("fp8", "0") == "1" else 0
    ckpt_layers = perf.set_activation_checkpointing(model, int(opts.get("ckpt", "1")))
    compiled = perf.compile_decoder_layers(model) if opts.get("compile", "0") == "1" else 0
    pad = int(opts.get("pad", "0"))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def collate_fn(features: list[dict]) -> dict:
        batch = collate(features, pad_token_id=pad_id)
        if pad > 1:
            batch = perf.pad_packed_batch(batch, pad, pad_id)
        if attn == perf.VARLEN:  # document boundaries once, on the CPU, for every layer
            batch |= perf.varlen_kwargs(batch["position_ids"])
        return batch

    meter = TokenMeter()
    record = {"times": [], "tokens": [], "config": {"rows": per_batch, "accum": accum, "attn": attn,
                                                    "liger": liger, "ckpt_layers": ckpt_layers,
                                                    "compiled_layers": compiled, "pad": pad, "fp8_layers": fp8}}
    model.register_forward_pre_hook(meter.hook, with_kwargs=True)
    args = TrainingArguments(**_train_args(spec, spec["tmp"], per_device_train_batch_size=per_batch,
                                           gradient_accumulation_steps=accum, gradient_checkpointing=False,
                                           optim=perf.fused_optimizer_name(cuda),
                                           remove_unused_columns=False))
    trainer = Trainer(model=model, args=args, train_dataset=_packed_dataset(rows, spec["max_length"]),
                      data_collator=meter.wrap(collate_fn), callbacks=[_callback(meter, record)])
    trainer.train()
    return _finish(trainer, record, meter)


def run_save_model(spec: dict, opts: dict) -> dict:
    """Build and save the random model the contenders load (not a contender)."""
    from workload import save_random_model

    started = time.time()
    save_random_model(spec["model_name"], Path(spec["tokenizer_dir"]), Path(spec["model_dir"]),
                      seed=spec["seed"], device=spec["device"])
    return {"seconds": time.time() - started}


RUNNERS = {"hf": run_hf, "trl": run_trl, "levers": run_levers, "save-model": run_save_model}


def main(argv: list[str] | None = None, runners: dict[str, Any] | None = None) -> int:
    """Run one contender and write its JSON result (with the error, if it failed). `runners` replace or add
    contenders by name (``trl`` also runs the sweep's settings): ``dpo_throughput.py``'s DPO contenders."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("contender")
    p.add_argument("--spec", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--settings", default="[]", help="trl-sweep only: JSON list of trl option dicts, in run order")
    a = p.parse_args(argv)
    name, _, option_text = a.contender.partition(":")
    spec = json.loads(a.spec.read_text())
    spec.setdefault("tmp", str(a.out.parent / f"tmp-{os.getpid()}"))
    if name == "trl-sweep":  # --settings: the sweep's option dicts (JSON); the result file grows after each one
        result = {"contender": "trl-sweep", **run_trl_sweep(spec, json.loads(a.settings), a.out,
                                                            runner=(runners or {}).get("trl")), "ok": True}
        a.out.write_text(json.dumps(result))
        return 0
    if name == "forgekit" and "forgekit" not in (runners or {}):
        from forgekit_contender import run_forgekit

        RUNNERS["forgekit"] = run_forgekit
    table = {**RUNNERS, **(runners or {})}
    if name not in table:
        p.error(f"unknown contender {name!r}; choose from {sorted(table)} or forgekit")
    result: dict[str, Any] = {"contender": a.contender}
    try:
        result.update(table[name](spec, parse_options(option_text)))
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - the parent reports the failure and goes on with the next contender
        result.update(getattr(e, "record", {}))  # steps a forgekit run logged before it failed
        result.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        print(result["traceback"], file=sys.stderr)
    a.out.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
