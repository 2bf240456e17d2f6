"""Export a checkpoint as one self-contained model directory for serving: LoRA merged into its base.

`forgekit merge CHECKPOINT OUT_DIR` (or `merge_checkpoint`) takes what a run wrote under
`<run dir>/checkpoints/step-N/`:

* a **LoRA adapter**: its base model (`adapter_config.json`'s `base_model_name_or_path`) is loaded in float32,
  the adapter merged into the weights (peft's `merge_and_unload`), and the merged model saved; before saving,
  the merged model's logits on a probe text are compared with the adapter model's (`verify`), so what is
  served is what was evaluated;
* **full weights**: re-saved, optionally in another dtype (a float32 CPU checkpoint as bfloat16, say).

The output holds safetensors weights, `config.json`, `generation_config.json` and the checkpoint's tokenizer
with the chat template the run trained with (vLLM, TGI, `transformers` and `forgekit generate` load it as
is), plus `forgekit_export.json` saying where it came from. It is written to a temporary sibling directory
and renamed into place: never visible half-written; an existing, non-empty `OUT_DIR` is an error unless
`overwrite`, which replaces only an earlier export (a directory with `forgekit_export.json`), never the
checkpoint, a directory holding it, or the working directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["DTYPES", "ExportError", "merge_checkpoint"]

DTYPES = ("auto", "bfloat16", "float16", "float32")
PROBE = "forgekit checks that the merged weights compute what the adapter computed: 1, 2, 3."


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked; the message names the path or option."""


def _torch_dtype(name: str, config: Any) -> Any:
    import torch

    if name == "auto":  # the base model's own dtype (bf16 for most hub models), float32 when it names none
        name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
        name = name.removeprefix("torch.")
    return getattr(torch, name)


def _probe_logits(model: Any, tokenizer: Any) -> Any:
    import torch

    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def merge_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, dtype: str = "auto", verify: bool = True,
                     overwrite: bool = False) -> dict[str, Any]:
    """Write `checkpoint` (LoRA adapter or full weights) to `out_dir` as one model directory.

    Args:
        checkpoint: a checkpoint directory (`adapter_config.json` for LoRA, else full weights).
        out_dir: where the model directory goes.
        dtype: `auto` (the base model's dtype), `bfloat16`, `float16` or `float32`.
        verify: compare the merged model's logits with the adapter model's on a probe text (float32; LoRA only).
        overwrite: replace an existing non-empty `out_dir`.

    Returns:
        What `forgekit_export.json` holds: source, kind (`merged_lora` | `full`), base, dtype, parameters and,
        when verified, `max_abs_logit_diff` (merged vs adapter) with `max_abs_logit`.

    Raises:
        ExportError: no checkpoint at `checkpoint`, an unknown dtype, `out_dir` not empty, or merged logits that
            differ from the adapter's.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgekit.generate import load_adapter

    src, out = Path(checkpoint), Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if not (src / "config.json").is_file() and not (src / "adapter_config.json").is_file():
        raise ExportError(f"{src}: not a checkpoint directory (no adapter_config.json or config.json)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    here, target, source = Path.cwd().resolve(), out.resolve(), src.resolve()
    if target == source or target in source.parents or target == here or target in here.parents:
        raise ExportError(f"{out}: is the checkpoint, holds it, or holds the working directory; write the export elsewhere")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out}: exists and is not empty; choose another directory or pass --overwrite")
        if not (out / "forgekit_export.json").is_file():
            raise ExportError(f"{out}: --overwrite replaces only an earlier export (it has no forgekit_export.json); "
                              "remove it yourself if it is meant to go")

    info: dict[str, Any] = {"source": str(src)}
    if (src / "adapter_config.json").is_file():
        model, tok, base = load_adapter(src, dtype=torch.float32)  # merge in float32, cast after
        model.eval()
        want = _probe_logits(model, tok) if verify else None
        model = model.merge_and_unload()
        info.update(kind="merged_lora", base=base)
        if want is not None:
            got = _probe_logits(model, tok)
            diff, scale = float((got - want).abs().max()), float(want.abs().max())
            info.update(max_abs_logit_diff=diff, max_abs_logit=scale)
            if diff > 1e-3 * max(1.0, scale):
                raise ExportError(f"{src}: the merged model's logits differ from the adapter's by {diff:.3g} "
                                  f"(largest logit {scale:.3g}); nothing was written")
        target = _torch_dtype(dtype, model.config if dtype != "auto" else _base_config(base))
    else:
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
        info.update(kind="full", base=None)
        target = _torch_dtype(dtype, model.config)
    model = model.to(target)
    info.update(dtype=str(target).removeprefix("torch."), parameters=sum(p.numel() for p in model.parameters()))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "forgekit_export.json").write_text(json.dumps(info, indent=1) + "\n")
        if out.exists():  # the earlier export moves aside whole and goes only once the new one is in place
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old.exists() and not out.exists():
                os.replace(old, out)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return info


def _base_config(base: str) -> Any:
    from transformers import AutoConfig

    from forgekit.models import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(base))
