"""Export a checkpoint for serving: one model directory (LoRA merged into its base), or a vLLM LoRA adapter.

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
checkpoint, a directory holding it, or the working directory. Weights are written in safetensors shards of at most
`max_shard_size` (5 GB, as on the Hub) with an index.

`forgekit export vllm CHECKPOINT OUT_DIR` (or `export_vllm`; the Silogen engine's `create_vllm_compatible_adapter`)
writes a LoRA checkpoint as an adapter directory vLLM's LoRA loader takes, checked against vLLM's constraints
(`check_vllm_adapter`): embedding and output-layer weights peft saved beside the adapter are removed where they
were not trained, kept and flagged where they were or where the vocabulary was extended (vLLM then needs the
merged model), and `forgekit_export.json` holds the `vllm serve` command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from forgekit.errors import ForgekitError

__all__ = ["DTYPES", "ExportError", "check_vllm_adapter", "export_vllm", "merge_checkpoint"]

DTYPES = ("auto", "bfloat16", "float16", "float32")
PROBE = "forgekit checks that the merged weights compute what the adapter computed: 1, 2, 3."


class ExportError(ForgekitError, ValueError):
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
                     overwrite: bool = False, max_shard_size: str | int = "5GB", base: str | None = None) -> dict[str, Any]:
    """Write `checkpoint` (LoRA adapter or full weights) to `out_dir` as one model directory.

    Args:
        checkpoint: a checkpoint directory (`adapter_config.json` for LoRA, else full weights).
        out_dir: where the model directory goes.
        dtype: `auto` (the base model's dtype), `bfloat16`, `float16` or `float32`.
        verify: compare the merged model's logits with the adapter model's on a probe text (float32; LoRA only).
        overwrite: replace an existing non-empty `out_dir`.
        max_shard_size: the largest safetensors file (`"5GB"`, `"500MB"`, or bytes); a larger model is written
            in shards with a `model.safetensors.index.json`, as on the Hub.
        base: the base model to merge a LoRA adapter into, where not its `base_model_name_or_path` (the same model
            elsewhere: `forgekit merge-adapter BASE ADAPTER OUT`).

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
    _check_paths(src, out, overwrite)

    info: dict[str, Any] = {"source": str(src)}
    if (src / "adapter_config.json").is_file():
        # the base the checkpoint names, where it resolves here, else where its run found it (forgekit_checkpoint.json)
        named, source = (base, base) if base else _adapter_base(src)
        model, tok, _ = load_adapter(src, dtype=torch.float32, base=source)  # merge in float32, cast after
        model.eval()
        want = _probe_logits(model, tok) if verify else None
        model = model.merge_and_unload()
        info.update(kind="merged_lora", base=named)
        if want is not None:
            got = _probe_logits(model, tok)
            diff, scale = float((got - want).abs().max()), float(want.abs().max())
            info.update(max_abs_logit_diff=diff, max_abs_logit=scale)
            if diff > 1e-3 * max(1.0, scale):
                raise ExportError(f"{src}: the merged model's logits differ from the adapter's by {diff:.3g} "
                                  f"(largest logit {scale:.3g}); nothing was written")
        target = _torch_dtype(dtype, model.config if dtype != "auto" else _base_config(source))
    else:
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
        info.update(kind="full", base=None)
        target = _torch_dtype(dtype, model.config)
    model = model.to(target)
    info.update(dtype=str(target).removeprefix("torch."), parameters=sum(p.numel() for p in model.parameters()))

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        tok.save_pretrained(tmp)

    _write_atomically(out, write, info)
    return info


def _check_paths(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse an export that is no checkpoint, or whose `out` would lose something that is not an earlier export."""
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


def _write_atomically(out: Path, write: Any, info: dict[str, Any]) -> None:
    """`write(tmp)` fills a temporary sibling of `out`, then `forgekit_export.json` (`info`); renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        tmp.mkdir()
        write(tmp)
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


def _adapter_base(src: Path) -> tuple[str, str]:
    """`forgekit.models.adapter_base`, its error an ExportError."""
    from forgekit.models import ModelError, adapter_base

    try:
        return adapter_base(src)
    except ModelError as e:
        raise ExportError(str(e)) from None


def _base_config(base: str) -> Any:
    from transformers import AutoConfig

    from forgekit.models import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(base))


# --- `forgekit export vllm`: the adapter as vLLM's LoRA loader takes it

# the ranks vLLM's --max-lora-rank accepts (its default: 16)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
_MERGE_HINT = "serve the merged model instead (`forgekit merge CHECKPOINT OUT`, then `vllm serve OUT`)"


def _read_adapter(src: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An adapter dir's `adapter_config.json` and tensors."""
    cfg_path = src / "adapter_config.json"
    if not cfg_path.is_file():
        what = "full weights: vLLM serves the directory as it is" if (src / "config.json").is_file() else "no adapter"
        raise ExportError(f"{src}: not a LoRA adapter (no adapter_config.json; {what})")
    config = json.loads(cfg_path.read_text())
    if (src / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        return config, load_file(src / "adapter_model.safetensors")
    if (src / "adapter_model.bin").is_file():
        import torch

        return config, torch.load(src / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise ExportError(f"{src}: no adapter_model.safetensors (or adapter_model.bin)")


def _base_tensors(base: str, keys: list[str]) -> dict[str, Any]:
    """The base model's tensors `keys` (those it has), read from its safetensors files without loading the model."""
    from safetensors import safe_open

    from forgekit.models import resolve_model_path

    root = Path(resolve_model_path(base))

    def fetch(name: str) -> Path | None:
        if root.is_dir():
            return root / name if (root / name).is_file() else None
        try:  # a Hub id: the files it has in the local cache, or downloaded where the Hub is reachable
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(str(root), name))
        except Exception:  # noqa: BLE001 - not there, offline, gated: the same to the caller
            return None

    index = fetch("model.safetensors.index.json")
    files = json.loads(index.read_text())["weight_map"] if index else {}
    found: dict[str, Any] = {}
    for key in keys:
        path = fetch(files[key]) if key in files else (fetch("model.safetensors") if not index else None)
        if path is None:
            continue
        with safe_open(path, framework="pt") as f:
            if key in f.keys():  # noqa: SIM118 - safe_open has keys(), not __contains__
                found[key] = f.get_tensor(key)
    return found


def _input_embedding_key(base_config: Any) -> str:
    """The name of the base model's input embedding weight (`model.embed_tokens.weight` for Llama)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(base_config)
    emb = model.get_input_embeddings()
    return next(f"{n}.weight" for n, m in model.named_modules() if m is emb)


def _same_weights(saved: Any, base: Any) -> bool:
    """Whether `saved` holds `base`'s values (compared in the lower precision of the two: an untrained copy)."""
    import torch

    if saved.shape != base.shape:
        return False
    low = saved.dtype if torch.finfo(saved.dtype).bits <= torch.finfo(base.dtype).bits else base.dtype
    return torch.equal(saved.to(low), base.to(low))


def check_vllm_adapter(config: dict[str, Any], tensor_names: list[str], base_config: Any) -> tuple[list[str], list[str], int]:
    """An adapter against vLLM's documented LoRA constraints: `(problems, notes, rank)`.

    Problems (vLLM refuses the adapter, or would serve it wrongly): not LoRA; `modules_to_save` (vLLM only takes
    None); DoRA; biases (`bias`, `lora_bias`); `fan_in_fan_out` (Conv1D layers); per-module ranks or alphas
    (`rank_pattern`, `alpha_pattern`: vLLM scales every module by lora_alpha / r); a rank above 512, the largest
    `--max-lora-rank`; LoRA on a layer that is not linear; tensors that are not LoRA weights (full embedding or
    output-layer weights, peft's trainable tokens). Notes: LoRA on the embedding or output layer, which vLLM loads
    only for architectures that list them as LoRA embedding modules.

    Args:
        config: `adapter_config.json`.
        tensor_names: the adapter's tensor names.
        base_config: the base model's transformers config (the layer types are read from it, on the meta device).

    Returns:
        The problems, the notes, and the largest rank (for `--max-lora-rank`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    problems, notes = [], []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type: {config.get('peft_type')}; vLLM serves LoRA adapters only")
    for key in ("r", "lora_alpha", "target_modules"):
        if config.get(key) is None:
            problems.append(f"{key}: missing; vLLM requires it in adapter_config.json")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save: {config['modules_to_save']}; vLLM only supports modules_to_save being None "
                        "(fully trained layers are not LoRA weights)")
    if config.get("use_dora"):
        problems.append("use_dora: true; vLLM does not support DoRA")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("bias / lora_bias: vLLM does not support adapter biases")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out: true (Conv1D layers); vLLM's LoRA layers are linear layers")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(f"{key}: {config[key]}; vLLM scales every module by lora_alpha / r, so modules with "
                            "their own rank or alpha would be served with the wrong scale")
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    rank = max(int(r) for r in ranks)
    if rank > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(f"r: {rank}; vLLM's largest --max-lora-rank is {VLLM_MAX_LORA_RANKS[-1]}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(base_config)
    modules = dict(model.named_modules())
    embedding_names = {n for n, m in modules.items() if m is model.get_input_embeddings()
                       or m is model.get_output_embeddings()}
    not_lora, not_linear, embedding_lora = [], set(), set()
    for name in tensor_names:
        if not name.endswith(_LORA_SUFFIXES):
            not_lora.append(name)
            continue
        module = name.removeprefix("base_model.model.").rsplit(".", 2 if name.endswith(".weight") else 1)[0]
        layer = modules.get(module)
        if module in embedding_names:
            embedding_lora.add(module.rsplit(".", 1)[-1])
        elif layer is not None and not isinstance(layer, torch.nn.Linear):
            not_linear.add(f"{module.rsplit('.', 1)[-1]} ({type(layer).__name__})")
    if not_lora:
        shown = ", ".join(not_lora[:4]) + (f" and {len(not_lora) - 4} more" if len(not_lora) > 4 else "")
        problems.append(f"tensors that are not LoRA weights: {shown}; vLLM's LoRA loader rejects them")
    if not_linear:
        problems.append(f"LoRA on layers that are not linear: {', '.join(sorted(not_linear))}; vLLM applies LoRA to "
                        "linear layers")
    if embedding_lora:
        notes.append(f"LoRA on {', '.join(sorted(embedding_lora))}: vLLM loads it only for architectures that list "
                     "these layers among their LoRA embedding modules; otherwise it rejects the adapter")
    return problems, notes, rank


def export_vllm(checkpoint: str | Path, out_dir: str | Path, *, name: str | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Write a LoRA checkpoint as an adapter directory vLLM's LoRA loader takes (`vllm serve --enable-lora`).

    What vLLM cannot load is taken out where that loses nothing: full embedding and output-layer weights that peft
    saved beside the adapter but that were not trained (equal to the base model's) are removed, with their
    `modules_to_save` entries. Weights that were trained, or that cover an extended vocabulary (tokens added in
    training), are kept, so that peft still loads the adapter as it was, and flagged: vLLM cannot serve them, the
    merged model (`forgekit merge`) is the way there. The result is checked with `check_vllm_adapter`; the tokenizer
    and the chat template the run trained with go beside it.

    Args:
        checkpoint: a LoRA checkpoint directory (`adapter_config.json`).
        out_dir: where the adapter directory goes.
        name: the adapter's name in the printed `vllm serve` command (default: `out_dir`'s name).
        overwrite: replace an earlier export in `out_dir`.

    Returns:
        What `forgekit_export.json` holds: source, kind (`vllm_lora`), base, `vllm_ready` (vLLM's LoRA loader takes
        the adapter), `problems` (why not) and `notes`, `removed` / `kept` (the non-LoRA tensors), `max_lora_rank`
        (the smallest `--max-lora-rank` that takes it) and `serve` (the `vllm serve` command).

    Raises:
        ExportError: not a LoRA checkpoint, its base model's config cannot be read, or `out_dir` is taken.
    """
    from transformers import AutoConfig, AutoTokenizer

    src, out = Path(checkpoint), Path(out_dir)
    config, tensors = _read_adapter(src)
    _check_paths(src, out, overwrite)
    base, source = _adapter_base(src)  # the name it records; where that model is here
    try:
        base_config = AutoConfig.from_pretrained(source)
    except OSError as e:
        raise ExportError(f"{src}: cannot read the base model {base!r}'s config: {e}") from None

    # non-LoRA tensors: embedding / output-layer copies (save_embedding_layers, modules_to_save), trainable tokens
    extra = [k for k in tensors if not k.endswith(_LORA_SUFFIXES)]
    tied = bool(getattr(base_config, "tie_word_embeddings", False))
    # the base model's name of each (peft writes copies as `...embed_tokens[.modules_to_save|.original_module].weight`)
    wanted = {k: re.sub(r"\.(modules_to_save|original_module)(\.default)?(?=\.)", "", k.removeprefix("base_model.model."))
              for k in extra}
    embedding = _input_embedding_key(base_config)
    originals = _base_tensors(source, sorted({*wanted.values(), embedding}))
    removed, kept, reasons = [], [], []
    for key in extra:
        original = originals.get(wanted[key])
        if original is None and tied and wanted[key].endswith("lm_head.weight"):  # tied: stored as the embedding
            original = originals.get(embedding)
        if "trainable_tokens" in key:
            kept.append(key)
            reasons.append(f"{key}: peft's trainable tokens (new or retrained token embeddings)")
        elif original is not None and _same_weights(tensors[key], original):
            removed.append(key)
        elif original is not None and tensors[key].shape[0] > original.shape[0]:
            kept.append(key)
            reasons.append(f"{key}: the vocabulary was extended in training ({original.shape[0]} -> "
                           f"{tensors[key].shape[0]} tokens)")
        else:
            kept.append(key)
            reasons.append(f"{key}: trained" if original is not None else f"{key}: not in the base model to compare")
    for key in removed:
        del tensors[key]
    cleaned = dict(config)
    if cleaned.get("modules_to_save"):
        still = [m for m in cleaned["modules_to_save"] if any(f".{m}." in f".{k}" for k in kept)]
        cleaned["modules_to_save"] = still or None

    problems, notes, rank = check_vllm_adapter(cleaned, list(tensors), base_config)
    problems = [p for p in problems if not p.startswith(("tensors that are not LoRA", "modules_to_save"))] + reasons
    if reasons:
        problems.append(f"vLLM's LoRA loader takes LoRA weights only: {_MERGE_HINT}")
    max_rank = next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), None)
    tok = AutoTokenizer.from_pretrained(src if (src / "tokenizer_config.json").is_file() else source)
    label = name or out.name
    served = str(Path(source).absolute()) if Path(source).is_dir() else source  # vLLM serves the base found here
    serve = f"vllm serve {served} --enable-lora --lora-modules {label}={out.resolve()}"
    if max_rank and max_rank > VLLM_DEFAULT_MAX_LORA_RANK:
        serve += f" --max-lora-rank {max_rank}"
    base_template = getattr(AutoTokenizer.from_pretrained(source), "chat_template", None)
    if tok.chat_template and tok.chat_template != base_template:
        serve += f" --chat-template {out.resolve() / 'chat_template.jinja'}"
        notes.append("the run trained with its own chat template: vLLM renders chats with the base model's unless "
                     "--chat-template points at this one (in the serve command)")
    info: dict[str, Any] = {
        "source": str(src), "kind": "vllm_lora", "base": base, "vllm_ready": not problems, "problems": problems,
        "notes": notes, "removed": removed, "kept": kept, "r": config.get("r"), "max_lora_rank": max_rank,
        "serve": serve if not problems else None,
    }

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: t.contiguous() for k, t in tensors.items()}, tmp / "adapter_model.safetensors",
                  metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(cleaned, indent=2, sort_keys=True) + "\n")
        tok.save_pretrained(tmp)
        if tok.chat_template and not (tmp / "chat_template.jinja").is_file():
            (tmp / "chat_template.jinja").write_text(tok.chat_template)
        if (src / "generation_config.json").is_file():  # the run's stop strings
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")

    _write_atomically(out, write, info)
    return info
