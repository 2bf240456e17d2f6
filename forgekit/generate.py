"""Generation from any checkpoint (base model, LoRA adapter, full weights) for OpenAI-format conversations.

`load_for_generation` loads what a path holds: a model id or base model dir, a LoRA adapter dir (its base is
read from `adapter_config.json` and the adapter is merged for speed), or a full checkpoint, in bfloat16 on
GPUs and on CPUs with native bfloat16 matrix units (AMX / AVX512-BF16: several times faster than float32
there), else float32 (`default_dtype`). The tokenizer
comes from the checkpoint when it has one, because forgekit saves the tokenizer with the chat template the
run trained with; prompts are then rendered by `forgekit.formats.render`, exactly as in training (tool
conversations included). `generate` decodes greedily in left-padded batches and stops at the end-of-turn
token or at a stopping sequence of the run (`generation_config.stopping_sequences`, saved with each checkpoint);
a bar counts the prompts answered where bars show (`forgekit.progress`).

`generate_from_config` is the Silogen engine's `generate CONFIG OUTPUT` (`forgekit generate gen.yaml out.yaml`):
a YAML generation config (`GENERATE_CONFIG_EXAMPLE`: model, adapter, prompts file, sampling, optional
`quant_conf`), validated strictly, answered into YAML or JSONL records of `prompt`, `answer` and `correct_answers`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from forgekit.errors import ForgekitError

__all__ = [
    "GenerationError",
    "default_dtype",
    "eos_token_ids",
    "generate",
    "generate_from_config",
    "load_adapter",
    "load_base_for_config",
    "load_for_generation",
    "load_generate_config",
    "render_prompt",
]


class GenerationError(ForgekitError, RuntimeError):
    """A checkpoint cannot be loaded for generation; the message says what is missing."""


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file()


def default_dtype(device: str) -> Any:
    """The generation dtype for `device`: bfloat16 on CUDA and on CPUs with native bfloat16 matrix units
    (`FORGEKIT_GENERATE_DTYPE=float32` forces float32), else float32."""
    import os

    import torch

    forced = os.environ.get("FORGEKIT_GENERATE_DTYPE")
    if forced:
        return getattr(torch, forced)
    from forgekit.hardware import cpu_has_bf16

    if device.startswith("cuda") or (device == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return torch.float32


def load_for_generation(path: str | Path, *, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load a model and its tokenizer for generation.

    Args:
        path: a model id or alias (resolved with `forgekit.models.resolve_model_path`), a model dir, a LoRA
            adapter dir (`adapter_config.json`; its `base_model_name_or_path` is loaded and the adapter merged),
            or a full checkpoint dir.
        dtype: torch dtype; default `default_dtype(device)`.
        device: `cpu`, `cuda`, ...; default CUDA when available.

    Returns:
        `(model, tokenizer)`: the model in eval mode on `device`; the tokenizer pads on the left (for batched
        generation) and has a pad token.

    Raises:
        GenerationError: an adapter whose base model cannot be found.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgekit.models import resolve_model_path

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or default_dtype(device)
    local = Path(str(path))
    if (local / "adapter_config.json").is_file():
        model, tok, _ = load_adapter(local, dtype=dtype)
        model = model.merge_and_unload()
    else:
        source = resolve_model_path(str(path))
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return model, tok


def load_adapter(path: str | Path, *, dtype: Any, base: str | None = None,
                 quantization_config: Any = None) -> tuple[Any, Any, str]:
    """A LoRA adapter dir on its base model, not merged: `(peft model, tokenizer, base model id)`.

    The base is `base` where given (the same model elsewhere, e.g. a local copy), else the one the checkpoint records
    (`forgekit.models.adapter_base`: `base_model_name_or_path` of `adapter_config.json` where it resolves here, else
    where the run found it, from `forgekit_checkpoint.json`); the tokenizer is the adapter
    dir's when it has one (forgekit saves it with the training chat template and any tokens added in training, for
    which the embeddings are resized). `quantization_config` (a `BitsAndBytesConfig`) loads the base quantized, on
    the CPU or the first GPU.

    Raises:
        GenerationError: no base model named, or it cannot be loaded.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from forgekit.models import ModelError, adapter_base, resolve_model_path

    local = Path(str(path))
    adapter_cfg = local / "adapter_config.json"
    if base:
        base_id, base = base, resolve_model_path(base)
    else:
        try:
            base_id, base = adapter_base(local)
        except ModelError as e:
            raise GenerationError(str(e)) from None
    quantized = {}
    if quantization_config is not None:  # bitsandbytes places the layers itself: on the device given here
        import torch

        quantized = {"quantization_config": quantization_config,
                     "device_map": {"": 0 if torch.cuda.is_available() else "cpu"}}
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if _has_tokenizer(local) else base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **quantized)
    except OSError as e:
        raise GenerationError(f"{adapter_cfg}: cannot load the base model {base_id!r}: {e}") from None
    if len(tok) > model.get_input_embeddings().num_embeddings:  # tokens added in training (e.g. labels)
        model.resize_token_embeddings(len(tok))
    if (local / "generation_config.json").is_file():  # the run's (with its stopping_sequences: forgekit.train)
        model.generation_config = GenerationConfig.from_pretrained(local)
    return PeftModel.from_pretrained(model, str(local)), tok, base_id


def load_base_for_config(
    config: Any, overrides: Sequence[str] = (), *, default: bool = False, dtype: Any = None, device: str | None = None
) -> tuple[Any, Any]:
    """The model a run of `config` starts from, with the tokenizer that run trains with.

    For a before-training evaluation that formats prompts exactly as training will: when the config sets
    `generation_config.prompt_format`, the tokenizer's chat template is replaced by it (as in
    `forgekit.prepare.load_tokenizer`), and tool conversations are then rendered in the tagged format.

    Args:
        config: a YAML path or a validated `FinetuneConfig`.
        overrides: dotted overrides, as for `forgekit.train.finetune`.
        default: default mode (only model_id and train_path needed).
        dtype: see `load_for_generation`.
        device: see `load_for_generation`.
    """
    from forgekit.config import FinetuneConfig, load_config
    from forgekit.prepare import load_tokenizer

    cfg = config if isinstance(config, FinetuneConfig) else load_config(config, overrides, default=default)
    start = cfg.initial_adapter_model_ckpt_path or cfg.initial_base_model_ckpt_path or cfg.model_id
    model, _ = load_for_generation(start, dtype=dtype, device=device)
    tok = load_tokenizer(cfg)
    tok.padding_side = "left"
    return model, tok


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a turn: the tokenizer's EOS (the end-of-turn marker) and the model's own."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
    return list(dict.fromkeys(ids))


def _cut(text: str, stops: list[str]) -> str:
    """`text` up to the first stop string (generation ends with it; the answer does not include it)."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text


def render_prompt(messages: list[dict], tokenizer: Any, tools: list | None = None) -> str:
    """The prompt text for the next assistant turn, rendered as in training (tools included)."""
    from forgekit.formats import render

    return render(messages, tokenizer, None, tools=tools or None, add_generation_prompt=True).text


def _row_stops(prompt_len: int, budgets: list[int], stop_when: Any, tokenizer: Any, every: int) -> Any:
    """A stopping criterion that ends each row after its own number of new tokens, or as soon as
    `stop_when(text_so_far, n_new_tokens)` says so (checked every `every` tokens)."""
    import torch
    from transformers import StoppingCriteria

    class RowStops(StoppingCriteria):
        def __init__(self) -> None:
            self.budgets = torch.tensor(budgets)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            n = input_ids.shape[1] - prompt_len
            done = n >= self.budgets.to(input_ids.device)
            if stop_when is not None and n % every == 0:
                texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
                extra = torch.tensor([bool(stop_when(t, n)) for t in texts], device=input_ids.device)
                done = done | extra
            return done

    return RowStops()


def generate(
    model_or_path: Any,
    conversations: Sequence[list[dict]],
    tools: Sequence[list | None] | None = None,
    *,
    tokenizer: Any = None,
    max_new_tokens: int | Sequence[int] = 256,
    batch_size: int = 8,
    greedy: bool = True,
    temperature: float = 0.7,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    stop_when: Callable[[str, int], bool] | None = None,
    num_threads: int | None = None,
    progress: bool | None = None,
) -> list[str]:
    """The next assistant turn for each conversation.

    Args:
        model_or_path: a path or id for `load_for_generation`, or a loaded model (then pass `tokenizer`),
            or a `(model, tokenizer)` pair.
        conversations: OpenAI-format messages, each ending where the assistant should speak.
        tools: the tools offered in each conversation (a list per conversation, or None for none at all).
        tokenizer: the tokenizer for a loaded model.
        max_new_tokens: generation budget, for all conversations or one per conversation.
        batch_size: conversations per forward pass (prompts are sorted by budget and length, so a batch wastes
            little padding and few decoding steps).
        greedy: greedy decoding (deterministic); False samples with `temperature`.
        temperature: sampling temperature when not greedy.
        top_p: nucleus sampling when not greedy: sample from the most likely tokens that together hold `top_p` of
            the probability (None: all tokens).
        stop: strings that end a generation (cut before them), besides the run's `stopping_sequences`.
        stop_when: `(text so far, new tokens so far) -> bool`, checked every 8 tokens; a row stops when it is
            true (e.g. once it is clear that an answer will not contain what is being looked for).
        num_threads: CPU threads for PyTorch while generating (restored after); None keeps the current
            setting. One thread decodes a small model fastest on a busy machine: the per-token operations are
            too small to share, and every thread waits for the slowest at each of them.
        progress: a bar over the conversations answered, updated per batch (None: in a terminal or notebook, or
            with FORGEKIT_PROGRESS=1; `forgekit.progress.progress_enabled`).

    Returns:
        The generated texts, special tokens removed, in the order of `conversations`.
    """
    import torch

    if isinstance(model_or_path, (str, Path)):
        model, tok = load_for_generation(model_or_path)
    elif isinstance(model_or_path, tuple):
        model, tok = model_or_path
    else:
        model, tok = model_or_path, tokenizer
    if tok is None:
        raise ValueError("generate: a loaded model needs its tokenizer (tokenizer=...)")
    n = len(conversations)
    if tools is not None and len(tools) != n:
        raise ValueError(f"generate: {n} conversations but {len(tools)} tool lists")
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError(f"generate: {n} conversations but {len(budgets)} max_new_tokens")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _generate_batches(model, tok, conversations, tools, budgets, batch_size, greedy, temperature, stop_when,
                                 progress, top_p=top_p, stop=stop)
    finally:
        torch.set_num_threads(threads)


def _generate_batches(model: Any, tok: Any, conversations: Sequence[list[dict]], tools: Any, budgets: list[int],
                      batch_size: int, greedy: bool, temperature: float, stop_when: Any, progress: bool | None, *,
                      top_p: float | None = None, stop: Sequence[str] = ()) -> list[str]:
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from forgekit.progress import progress_bar

    n = len(conversations)
    stops = list(getattr(model.generation_config, "stop_strings", None) or [])  # the run's stopping_sequences
    stops += [s for s in stop if s not in stops]
    prompts = [render_prompt(list(c), tok, tools[i] if tools else None) for i, c in enumerate(conversations)]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(n), key=lambda i: (budgets[i] // 32, len(encoded[i])))
    device = next(model.parameters()).device
    outputs: list[str] = [""] * n
    bar = progress_bar(n, "generating", "prompt", progress)
    for b in range(0, n, batch_size):
        idx = order[b : b + batch_size]
        batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
        width = batch["input_ids"].shape[1]
        row_budgets = [budgets[i] for i in idx]
        config = GenerationConfig(
            max_new_tokens=max(row_budgets),
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None,
            eos_token_id=eos_token_ids(model, tok),
            pad_token_id=tok.pad_token_id,
            stop_strings=stops or None,
        )
        stop = None
        if stop_when is not None or len(set(row_budgets)) > 1:
            stop = StoppingCriteriaList([_row_stops(width, row_budgets, stop_when, tok, every=8)])
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=config, stopping_criteria=stop,
                                 **({"tokenizer": tok} if stops else {}))
        for i, row in zip(idx, out[:, width:]):
            outputs[i] = _cut(tok.decode(row[: budgets[i]], skip_special_tokens=True), stops).strip()
        bar.update(len(idx))
    bar.close()
    return outputs


# --- `forgekit generate CONFIG OUTPUT`: the Silogen engine's generation config

GENERATE_CONFIG_EXAMPLE = """\
model: smollm2-135m-instruct          # model id, alias or dir (the base, when adapter is set)
adapter: runs/<run>/checkpoints/step-000100   # optional LoRA adapter (its tokenizer and chat template are used)
prompts: questions.jsonl              # JSONL or YAML list: {prompt: "..."} or {messages: [...]}, + correct_answers
sampling:                             # optional; greedy by default
  temperature: 0.0                    # 0: greedy (deterministic); > 0 samples
  top_p: 1.0
  max_new_tokens: 256
  stop: []                            # strings that end an answer (cut before them)
batch_size: 8
quant_conf:                           # optional: load the model quantized (bitsandbytes), as in training
  quantization_type: bits-and-bytes
  load_in_4bit: true
"""


def _generate_config_models() -> tuple[type, type]:
    """The pydantic schema of a generation config (built on first use: pydantic loads only where it is needed)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="forbid")
        temperature: float = Field(0.0, ge=0, description="0 (the default): greedy decoding; above 0 samples.")
        top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling's probability mass (when sampling).")
        max_new_tokens: int = Field(256, ge=1, description="The longest answer, in tokens.")
        stop: list[str] = Field(default_factory=list, description="Strings that end an answer (cut before them).")

    class GenerateConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str = Field(..., description="Model id, alias or dir; the base model when adapter is set.")
        adapter: str | None = Field(None, description="A LoRA adapter dir; its tokenizer and chat template are used.")
        prompts: str = Field(..., description="JSONL or YAML list of {prompt: str} or {messages: [...]} records, "
                             "optionally with correct_answers (copied to the output).")
        sampling: Sampling = Field(default_factory=Sampling)
        batch_size: int = Field(8, ge=1)
        output_format: Literal["auto", "yaml", "jsonl"] = Field("auto", description="yaml or jsonl; auto: from the output file's suffix.")
        seed: int = Field(0, description="Seed for sampling.")
        quant_conf: dict[str, Any] | None = Field(None, description="Load the model quantized (forgekit.quantization).")

        @field_validator("quant_conf")
        @classmethod
        def _quant(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
            from forgekit.quantization import check_quant_conf

            if v is None:
                return v
            v, problems = check_quant_conf(v)
            if problems:
                raise ValueError(" | ".join(problems))
            return v

    return GenerateConfig, Sampling


def load_generate_config(source: str | Path | dict) -> Any:
    """A generation config (YAML file or dict), validated strictly: unknown keys and bad values are errors.

    Raises:
        ConfigError: every problem, each with its dotted key.
    """
    from pydantic import ValidationError

    from forgekit.config import ConfigError, _describe, _read_yaml

    schema, _ = _generate_config_models()
    name = None if isinstance(source, dict) else str(source)
    data = source if isinstance(source, dict) else _read_yaml(Path(source))
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            text = _describe(err, schema)
            key = ".".join(str(p) for p in err["loc"])
            problems.extend(text.removeprefix(f"{key}: ").split(" | ") if text.startswith(f"{key}: {key}") else [text])
        raise ConfigError(problems, name) from None


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """The records of a prompts file: JSONL, or a YAML list (`.yaml` / `.yml`), each `{prompt: str}` or
    `{messages: [...]}`, optionally with `correct_answers`.

    Raises:
        DataError: a record that is neither, with `file:line` (JSONL) or `file: record N` (YAML).
    """
    import yaml

    from forgekit.data import DataError

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError([f"{path}: cannot read the prompts: {e.strerror}"]) from None
    problems, rows = [], []
    if path.suffix in (".yaml", ".yml"):
        try:
            items = yaml.safe_load(text) or []
        except yaml.YAMLError as e:
            raise DataError([f"{path}: invalid YAML: {e}"]) from None
        if not isinstance(items, list):
            raise DataError([f"{path}: expected a list of prompt records"])
        numbered = [(f"{path}: record {i}", item) for i, item in enumerate(items, 1)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    numbered.append((f"{path}:{n}", f"invalid JSON: {e.msg}"))
    for where, item in numbered:
        ok = isinstance(item, dict) and (isinstance(item.get("prompt"), str) or (
            isinstance(item.get("messages"), list) and all(isinstance(m, dict) for m in item["messages"])))
        if isinstance(item, str) and item.startswith("invalid JSON: ") and path.suffix not in (".yaml", ".yml"):
            problems.append(f"{where}: {item}")
        elif ok:
            rows.append(item)
        else:
            problems.append(f"{where}: expected {{prompt: <text>}} or {{messages: [...]}}")
    if problems:
        raise DataError(problems[:20], total=len(problems))
    if not rows:
        raise DataError([f"{path}: no prompts"])
    return rows


def _load_for_config(cfg: Any) -> tuple[Any, Any]:
    """The model and tokenizer a generation config names, quantized where it says so."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgekit.models import resolve_model_path
    from forgekit.quantization import bnb_config, quantization_problems

    if not cfg.quant_conf:
        if cfg.adapter:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            model, tok, _ = load_adapter(cfg.adapter, dtype=default_dtype(device), base=cfg.model)
            model = model.merge_and_unload().to(device).eval()
            tok.padding_side = "left"
            tok.pad_token = tok.pad_token or tok.eos_token
            return model, tok
        return load_for_generation(cfg.model)
    problems = quantization_problems(cfg.quant_conf, use_gpu=torch.cuda.is_available())
    if problems:
        from forgekit.config import ConfigError

        raise ConfigError(problems)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    q = bnb_config(cfg.quant_conf, compute_dtype=dtype)
    if cfg.adapter:  # not merged: the adapter runs on top of the quantized layers
        model, tok, _ = load_adapter(cfg.adapter, dtype=dtype, base=cfg.model, quantization_config=q)
    else:
        source = resolve_model_path(cfg.model)
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, quantization_config=q, device_map={"": 0 if torch.cuda.is_available() else "cpu"})
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    return model.eval(), tok


def generate_from_config(config: str | Path | dict, output: str | Path, *,
                         progress: bool | None = None) -> list[dict[str, Any]]:
    """Answer every prompt of a generation config (`GENERATE_CONFIG_EXAMPLE`) and write the records to `output`.

    `progress`: a bar over the prompts answered (None: `forgekit.progress.progress_enabled`'s rule).

    Each record carries `prompt` (as the input gave it: text or messages), `answer`, and `correct_answers` where
    the input record has them. The output is a YAML list (`.yaml` / `.yml`, or `output_format: yaml`) or JSONL.

    Raises:
        ConfigError: the config is invalid (every problem, with its key), or the machine cannot load it quantized.
        DataError: a prompt record is malformed (`file:line`).
    """
    import torch
    import yaml

    cfg = load_generate_config(config)
    rows = read_prompts(cfg.prompts)
    model, tok = _load_for_config(cfg)
    torch.manual_seed(cfg.seed)
    s = cfg.sampling
    conversations = [r["messages"] if "messages" in r else [{"role": "user", "content": r["prompt"]}] for r in rows]
    answers = generate((model, tok), conversations, max_new_tokens=s.max_new_tokens, batch_size=cfg.batch_size,
                       greedy=s.temperature == 0, temperature=s.temperature or 1.0,
                       top_p=s.top_p if s.top_p < 1 else None, stop=s.stop, progress=progress)
    records = []
    for row, answer in zip(rows, answers):
        record = {"prompt": row["prompt"] if "prompt" in row else row["messages"], "answer": answer}
        if "correct_answers" in row:
            record["correct_answers"] = row["correct_answers"]
        records.append(record)
    out = Path(output)
    fmt = cfg.output_format if cfg.output_format != "auto" else ("yaml" if out.suffix in (".yaml", ".yml") else "jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "yaml":
        out.write_text(yaml.safe_dump(records, sort_keys=False, allow_unicode=True))
    else:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records
