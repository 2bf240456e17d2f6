"""Data preparation on the driver, once: records → prompt format → token ids + label mask (+ packing), cached.

`prepare_data(cfg, spec)` reads and validates the data, renders every conversation with the prompt format,
tokenizes it with its label mask (-100 = not trained), applies the over-length policy, optionally packs
examples into rows, and saves the result as `datasets` folders with a `manifest.json`. The cache key is a
hash of the data, the tokenizer (vocabulary, added tokens, chat template), the prompt format and the
`DataSpec` (context length, packing); a second run with the same inputs reuses the folder.

Data only: the batch, epochs and steps are the plan's (`forgekit.plan`). The one value derived here is the
context length when the config leaves it unset (the data's 95th percentile, a power of two, at most the
model's maximum): it decides which examples fit. `collate` turns rows into a batch.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from forgekit import __version__, storage
from forgekit.config import ConfigError, FinetuneConfig
from forgekit.data import DataError, Example, data_fingerprint, is_hf_dataset_name, read_examples
from forgekit.formats import (
    FormatError,
    render,
    resolve_prompt_format,
    role_format_to_jinja,
    tokenize_rendered,
)
from forgekit.models import cache_root, remove_stale_temp, shared_cache, temp_dir

__all__ = [
    "DataSpec",
    "PreparedData",
    "cache_root",
    "collate",
    "count_real_tokens",
    "data_spec",
    "load_tokenizer",
    "node_data",
    "pack_rows",
    "prepare_data",
    "preview_data",
    "publish",
    "read_data",
]

log = logging.getLogger("forgekit")
PREP_VERSION = 3  # 3: a message's weight 0 trains nothing of that turn. Bump when the on-disk format or tokenization rules change
STAGING = ".tmp-"  # prefix of a cache folder being built (renamed into place when complete)
MIN_CONTEXT = 512  # the smallest derived context length


@dataclass(frozen=True)
class DataSpec:
    """How the data is cut: `context_length` (None: derived from the data) and `packing`."""

    context_length: int | None
    packing: bool


def data_spec(cfg: FinetuneConfig, use_gpu: bool) -> DataSpec:
    """The config's context length and packing, packing's default filled for the hardware.

    Packing pays where attention can skip across examples cheaply (varlen / flex on GPUs); on CPU the per-example
    attention of a packed row costs about what the padding it saves did (optimize_cost's default run: 244 vs 235
    real tokens/s, docs/notebook_runs.md), so CPU runs keep padding.
    """
    packing = cfg.packing
    if packing is None:
        packing = use_gpu and cfg.task in ("instruction_tuning", "causal_lm") and cfg.padding == "longest"
    return DataSpec(context_length=cfg.context_length, packing=bool(packing))


@dataclass(frozen=True)
class PreparedData:
    """Tokenized datasets on disk (absolute paths) and their manifest (counts, lengths, `context_length`)."""

    train_dir: Path
    valid_dir: Path | None
    tokenizer_dir: Path
    manifest: dict[str, Any]
    cache_dir: Path
    spec: DataSpec
    shared_dir: str | None = None  # its copy in the shared cache (`FORGEKIT_CACHE=s3://...`), which workers fetch


def _model_path(cfg: FinetuneConfig) -> str:
    from forgekit.models import resolve_model_path

    if cfg.initial_base_model_ckpt_path:
        return local_copy(cfg.initial_base_model_ckpt_path, "initial_base_model_ckpt_path")
    return local_copy(resolve_model_path(cfg.model_id), "model_id")


def local_copy(path: str, key: str) -> str:
    """`path` itself, or for a model or checkpoint directory on object storage (s3://, gs://) its copy in the
    cache (`<cache>/remote/`, downloaded once per version of its files), where `from_pretrained` loads it."""
    from forgekit import storage

    if not storage.is_remote(path) or storage.scheme(path) == "hf":
        return path
    return str(storage.localize(path, cache_root() / "remote", key=key))


def load_tokenizer(cfg: FinetuneConfig) -> Any:
    """The tokenizer the run trains with: from the adapter or base checkpoint when continuing, else the model.

    For classification, the label tokens are added as special tokens; for role templates, the chat template
    is replaced by one that renders identically (so the saved tokenizer serves in the training format).
    """
    from transformers import AutoTokenizer

    source, key = _model_path(cfg), "initial_base_model_ckpt_path" if cfg.initial_base_model_ckpt_path else "model_id"
    adapter = cfg.initial_adapter_model_ckpt_path
    adapter = adapter and local_copy(adapter, "initial_adapter_model_ckpt_path")
    if adapter and (Path(adapter) / "tokenizer_config.json").exists():
        source, key = adapter, "initial_adapter_model_ckpt_path"
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:  # not a local model dir, and the Hub cannot serve it (offline, typo, gated)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError([f"{key}: {source}: cannot load its tokenizer (a local model directory, an embedded "
                           f"model's name, or a Hugging Face Hub id that is reachable from here): {first}"]) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg.classifier_config:
        new = [t for t in cfg.classifier_config.label_tokens if t not in tok.get_vocab()]
        if new:
            tok.add_tokens(new, special_tokens=True)
    fmt = resolve_prompt_format(cfg.generation_config.prompt_format, tok)
    if fmt is not None:
        tok.chat_template = role_format_to_jinja(fmt)
    return tok


def _model_max_length(cfg: FinetuneConfig) -> int | None:
    from transformers import AutoConfig

    try:
        mc = AutoConfig.from_pretrained(_model_path(cfg), trust_remote_code=cfg.trust_remote_code)
    except Exception:  # noqa: BLE001 - a hub id that cannot be reached; the worker will know
        return None
    return getattr(mc, "max_position_embeddings", None)


def _tokenizer_fingerprint(tok: Any) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps(tok.chat_template or "").encode())
    h.update(json.dumps([tok.eos_token, tok.pad_token, tok.bos_token]).encode())
    backend = getattr(tok, "backend_tokenizer", None)  # fast tokenizers: merges, normalizer, pre-tokenizer too
    if backend is not None:
        h.update(backend.to_str().encode())
    return h.hexdigest()


def _cache_key(cfg: FinetuneConfig, spec: DataSpec, tok: Any, model_max: int | None) -> tuple[str, dict]:
    fmt = cfg.generation_config.prompt_format
    parts = {
        "version": PREP_VERSION,
        "train": data_fingerprint(cfg.train_path),
        "valid": data_fingerprint(cfg.valid_path) if cfg.valid_path else None,
        "tokenizer": _tokenizer_fingerprint(tok),
        "prompt_format": fmt.model_dump() if hasattr(fmt, "model_dump") else fmt,
        "task": cfg.task,
        "context_length": spec.context_length,
        "model_max": model_max,
        "overlength": cfg.overlength,
        "packing": spec.packing,
        "labels": cfg.classifier_config.label_tokens if cfg.classifier_config else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20], parts


def _tokenize_all(examples: list[Example], tok: Any, cfg: FinetuneConfig, bar: Any = None) -> tuple[list, list]:
    """(ids, labels) per example; every format problem is collected as `file:line: problem`; `bar` counts them."""
    fmt = resolve_prompt_format(cfg.generation_config.prompt_format, tok)
    labels_ok = set(cfg.classifier_config.label_tokens) if cfg.classifier_config else None
    out, problems = [], []
    for ex in examples:
        if bar is not None:
            bar.update(1)
        where = f"{ex.source}:{ex.line}"
        if labels_ok is not None:
            last = [m for m in ex.messages if m["role"] == "assistant"][-1].get("content", "")
            if (last or "").strip() not in labels_ok:
                problems.append(
                    f"{where}: the last assistant message must be one of classifier_config.label_tokens "
                    f"({', '.join(sorted(labels_ok))}), got {last[:40]!r}"
                )
                continue
        try:
            rendered = render(ex.messages, tok, fmt, tools=ex.tools, task=cfg.task)
        except (FormatError, KeyError, TypeError) as e:
            problems.append(f"{where}: cannot format: {e}")
            continue
        out.append(tokenize_rendered(rendered, tok))
    if problems:
        raise DataError(problems[:50], len(problems))
    return out, [ex.line for ex in examples]


PARALLEL_FROM = 30000  # examples from which an unset num_preprocess_workers tokenizes in parallel (break-even on
# 2 cores: ~20,000; each spawned process costs ~3-4 s: benchmarks/results/preprocess-workers-cpu2*.json)
# at most 8: on a 16-core host 40,000 chats took 24.3 s in 1 process, 14.3 s in 8, 16.2 s in 16 (the writing after
# tokenizing is serial): benchmarks/results/preprocess-workers-h100host-16core.json
MAX_AUTO_WORKERS = 8


def preprocess_workers(cfg: FinetuneConfig, n_examples: int) -> int:
    """How many processes tokenize `n_examples`: `num_preprocess_workers`, else 1 below `PARALLEL_FROM` examples
    (a process costs ~3-4 s to start and import transformers) and one per usable CPU core up to `MAX_AUTO_WORKERS`."""
    if cfg.num_preprocess_workers is not None:
        return max(1, min(cfg.num_preprocess_workers, n_examples))
    if n_examples < PARALLEL_FROM:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_AUTO_WORKERS))


def _tokenize_chunk(examples: list[Example], tok: Any, cfg: FinetuneConfig) -> tuple[list, list, list[str], int]:
    """One worker's share: (rows, lines, problems, problem count); problems come back instead of raising."""
    try:
        rows, lines = _tokenize_all(examples, tok, cfg)
        return rows, lines, [], 0
    except DataError as e:
        return [], [], list(e.problems), e.total


def tokenize_examples(examples: list[Example], tok: Any, cfg: FinetuneConfig) -> tuple[list, list]:
    """`_tokenize_all` over `preprocess_workers` processes: contiguous chunks, results in the input's order, every
    chunk's problems reported together (the first 50, and the total), as one process would.

    The processes are spawned (not forked: the driver may already run Ray's threads) and get the tokenizer
    pickled; the rows are the same as one process's for any number of workers. This process draws one bar over the
    examples (`forgekit.progress`), advanced per example, or per chunk as the processes finish theirs.
    """
    from forgekit.progress import progress_bar

    workers = preprocess_workers(cfg, len(examples))
    bar = progress_bar(len(examples), f"tokenizing {Path(examples[0].source).name if examples else ''}", "example")
    if workers <= 1:
        with bar:
            return _tokenize_all(examples, tok, cfg, bar)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    size = math.ceil(len(examples) / workers)
    chunks = [examples[i:i + size] for i in range(0, len(examples), size)]
    rows: list = []
    lines: list = []
    problems: list[str] = []
    total = 0
    log.info("forgekit: tokenizing %d examples in %d processes", len(examples), len(chunks))
    with bar, ProcessPoolExecutor(len(chunks), mp_context=mp.get_context("spawn")) as pool:
        for r, ln, pr, n in pool.map(_tokenize_chunk, chunks, [tok] * len(chunks), [cfg] * len(chunks)):
            rows.extend(r)
            lines.extend(ln)
            problems.extend(pr)
            total += n
            bar.update(len(r))  # a chunk's examples, once its process is done (its problems: none counted)
    if problems:
        raise DataError(problems[:50], total)
    return rows, lines


def _pow2_context(lengths: list[int], model_max: int | None) -> int:
    p95 = float(np.percentile(lengths, 95)) if lengths else MIN_CONTEXT
    ctx = max(MIN_CONTEXT, 2 ** math.ceil(math.log2(max(p95, 1))))
    return min(ctx, model_max) if model_max else ctx


def _apply_length_policy(rows: list, ctx: int, policy: str) -> tuple[list, dict]:
    kept, dropped, truncated, unsupervised = [], 0, 0, 0
    for ids, labels in rows:
        if len(ids) > ctx:
            if policy == "drop":
                dropped += 1
                continue
            ids, labels = ids[:ctx], labels[:ctx]
            truncated += 1
        if all(x == -100 for x in labels[1:]):  # the first label is never predicted
            unsupervised += 1
            continue
        kept.append((ids, labels))
    return kept, {"dropped_overlength": dropped, "truncated": truncated, "dropped_unsupervised": unsupervised}


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bins of example indices whose total length fits `capacity`. Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def _to_columns(rows: list, ctx: int, packing: bool) -> tuple[dict, dict]:
    if not packing:
        cols = {"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows], "length": [len(r[0]) for r in rows]}
        return cols, {}
    bins = pack_rows([len(r[0]) for r in rows], ctx)
    cols: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for b in bins:
        ids, labels, pos = [], [], []
        for i in b:
            r_ids, r_labels = rows[i]
            ids += r_ids
            labels += [-100] + r_labels[1:]  # no example is predicted from the previous one's last token
            pos += list(range(len(r_ids)))
        cols["input_ids"].append(ids)
        cols["labels"].append(labels)
        cols["position_ids"].append(pos)
        cols["length"].append(len(ids))
    fill = sum(cols["length"]) / (len(bins) * ctx) if bins else 0.0
    return cols, {"packed_rows": len(bins), "examples_per_row": len(rows) / max(len(bins), 1), "pack_fill": fill}


def _length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    a = np.asarray(lengths)
    return {
        "mean": float(a.mean()),
        **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 95, 99)},
        "max": int(a.max()),
        "min": int(a.min()),
    }


def _check_valid_split(cfg: FinetuneConfig) -> None:
    if cfg.valid_path and is_hf_dataset_name(cfg.valid_path) and ":" not in cfg.valid_path:
        raise ConfigError([f"valid_path: {cfg.valid_path} names a Hugging Face dataset without a split, so it would "
                           f"evaluate on its train split; name one: {cfg.valid_path}:validation (or :test)"])


def read_data(cfg: FinetuneConfig) -> tuple[list, list | None]:
    """The training and validation examples, read and validated; DataError with the problems of both files.

    Raises:
        ConfigError: `valid_path` names a Hugging Face dataset without a split.
        DataError: the problems of both files, each `file:line: problem`.
    """
    _check_valid_split(cfg)
    examples, problems, total = {}, [], 0
    for key in ("train_path", "valid_path"):
        path = getattr(cfg, key)
        if path:
            try:
                if cfg.task == "preference_tuning":  # chosen/rejected pairs, not conversations
                    from forgekit.preference import read_pairs

                    loss = cfg.preference_tuning_config.loss_type if cfg.preference_tuning_config else "sigmoid"
                    examples[key] = read_pairs(path, loss)
                else:
                    examples[key] = read_examples(path, cfg.task)
            except DataError as e:
                problems += e.problems
                total += e.total
    if problems:
        raise DataError(problems, total=total)
    return examples["train_path"], examples.get("valid_path")


def _build(cfg: FinetuneConfig, spec: DataSpec, tok: Any, model_max: int | None, target: Path, key_parts: dict) -> dict:
    if cfg.task == "preference_tuning":  # pairs' rows (prompt, chosen, rejected ids): forgekit.preference
        from forgekit.preference import build_pairs

        return build_pairs(cfg, spec, tok, model_max, target, key_parts, read_data(cfg))
    started = time.time()
    train, valid = read_data(cfg)
    train_rows, _ = tokenize_examples(train, tok, cfg)
    valid_rows = None
    if valid is not None:
        valid_rows, _ = tokenize_examples(valid, tok, cfg)
    lengths = [len(r[0]) for r in train_rows]
    ctx = spec.context_length or _pow2_context(lengths, model_max)
    policy = cfg.overlength if cfg.overlength != "auto" else ("truncate" if cfg.task == "causal_lm" else "drop")
    kept, counts = _apply_length_policy(train_rows, ctx, policy)
    supervised = sum(sum(x != -100 for x in r[1][1:]) for r in train_rows)
    total = sum(max(len(r[0]) - 1, 0) for r in train_rows)
    share = supervised / total if total else 0.0
    if supervised == 0:
        raise DataError([
            f"{cfg.train_path}: no token is trained (0% supervised). Hint: task '{cfg.task}' trains "
            "assistant turns only; check the roles and generation_config.prompt_format"
        ])
    if share >= 0.999 and cfg.task != "causal_lm":
        raise DataError([
            f"{cfg.train_path}: every token is trained (100% supervised) although task is '{cfg.task}'. "
            "Hint: the prompt is being learnt too; use task: causal_lm if that is intended, else check the "
            "assistant template"
        ])
    if not kept:
        raise DataError([f"{cfg.train_path}: no example fits context_length={ctx} ({counts})"])
    tmp = temp_dir(target.parent, STAGING)
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()

    cols, pack_stats = _to_columns(kept, ctx, spec.packing)
    Dataset.from_dict(cols).save_to_disk(str(tmp / "train"))
    manifest: dict[str, Any] = {
        "forgekit_version": __version__,
        "cache_key": target.name,
        "inputs": key_parts,
        "train_path": cfg.train_path,
        "valid_path": cfg.valid_path,
        "task": cfg.task,
        "context_length": ctx,
        "context_length_derived": spec.context_length is None,
        "model_max_length": model_max,
        "overlength_policy": policy,
        "train_examples": len(train_rows),
        "train_examples_kept": len(kept),
        "train_rows": len(cols["input_ids"]),
        **counts,
        "train_tokens": int(sum(cols["length"])),
        "token_length": _length_stats(lengths),
        "supervised_tokens": int(supervised),
        "supervised_share": share,
        **pack_stats,
    }
    if valid_rows is not None:
        v_kept, v_counts = _apply_length_policy(valid_rows, ctx, policy)
        v_cols, _ = _to_columns(v_kept, ctx, False)
        Dataset.from_dict(v_cols).save_to_disk(str(tmp / "valid"))
        manifest.update(valid_examples=len(valid_rows), valid_rows=len(v_kept), valid_counts=v_counts)
    return publish(tmp, target, tok, manifest, started)


def publish(tmp: Path, target: Path, tok: Any, manifest: dict, started: float) -> dict:
    """Finish the datasets written into `tmp` (the tokenizer, manifest.json with the seconds since `started`) and
    rename it to `target` atomically; the manifest as published (another process's, had it finished first)."""
    tok.save_pretrained(str(tmp / "tokenizer"))
    manifest["prepare_seconds"] = round(time.time() - started, 2)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if target.exists():  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return json.loads((target / "manifest.json").read_text())


def prepare_data(cfg: FinetuneConfig, spec: DataSpec | None = None, *, use_gpu: bool | None = None,
                 root: Path | None = None) -> PreparedData:
    """Validate, tokenize and cache the config's data.

    Args:
        cfg: a validated config.
        spec: context length and packing (`data_spec`); None: `data_spec(cfg, use_gpu)`.
        use_gpu: for packing's default when `spec` is None: None = `cfg.use_gpu`, else whether this machine
            has a CUDA device.
        root: cache root (default `cache_root()`, and with `FORGEKIT_CACHE` on object storage, the cache there:
            a build is uploaded to `<FORGEKIT_CACHE>/prepared/<key>`, and another machine's build found there is
            downloaded instead of tokenizing again).

    Raises:
        DataError: the data has problems (each `file:line: problem`).
        ConfigError: the model's tokenizer cannot be loaded.
    """
    if spec is None:
        if use_gpu is None:
            import torch

            use_gpu = cfg.use_gpu if cfg.use_gpu is not None else torch.cuda.is_available()
        spec = data_spec(cfg, use_gpu)
    _check_valid_split(cfg)
    tok = load_tokenizer(cfg)
    model_max = _model_max_length(cfg)
    key, parts = _cache_key(cfg, spec, tok, model_max)
    target = ((root or cache_root()) / "prepared" / key).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temp(target.parent, STAGING):  # a build killed mid-write (kill -9, a lost machine)
        log.info("forgekit: removed %s, left by an interrupted data preparation", stale)
    shared = None if root else shared_cache()
    shared_dir = storage.join(shared, "prepared", key) if shared else None
    in_shared = bool(shared_dir) and _in_shared(shared_dir)  # one look at the bucket per call
    if not (target / "manifest.json").exists() and in_shared:
        _fetch_shared(shared_dir, target)
    if (target / "manifest.json").exists():
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["cache_hit"] = True
    else:
        manifest = _build(cfg, spec, tok, model_max, target, parts)
        manifest["cache_hit"] = False
    if shared_dir and not in_shared:
        _share(target, shared_dir)
    return PreparedData(
        train_dir=target / "train",
        valid_dir=(target / "valid") if (target / "valid").exists() else None,
        tokenizer_dir=target / "tokenizer",
        manifest=manifest,
        cache_dir=target,
        spec=spec,
        shared_dir=shared_dir,
    )


def _share(target: Path, shared_dir: str) -> None:
    """Upload a cache entry to the shared cache, its manifest last: whoever finds the manifest finds every file."""
    for sub in sorted(p for p in target.iterdir() if p.is_dir()):
        storage.upload_dir(sub, storage.join(shared_dir, sub.name), "FORGEKIT_CACHE")
    storage.write_text(storage.join(shared_dir, "manifest.json"), (target / "manifest.json").read_text(), "FORGEKIT_CACHE")


def _in_shared(shared_dir: str) -> bool:
    """Whether the shared cache holds the entry whole (its manifest is uploaded last)."""
    return storage.exists(storage.join(shared_dir, "manifest.json"), "FORGEKIT_CACHE")


def _fetch_shared(shared_dir: str, target: Path) -> None:
    """Download the shared cache's complete entry to `target`, renamed into place whole."""
    tmp = temp_dir(target.parent, STAGING)
    storage.download_dir(shared_dir, tmp, "FORGEKIT_CACHE")
    if target.exists():  # another process of this machine was first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)


def node_data(data: PreparedData) -> PreparedData:
    """`data` on this machine: as it is where its cache folder is here (the driver's machine, a shared file system),
    else fetched from the shared cache into this machine's `cache_root()`.

    Raises:
        FileNotFoundError: neither is there (a local `FORGEKIT_CACHE` that the nodes do not share).
    """
    if data.cache_dir.exists() or not data.shared_dir:
        for path in (data.train_dir, data.valid_dir, data.tokenizer_dir):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path} is not visible on this node; set FORGEKIT_CACHE to storage shared "
                                        "by all nodes (a shared file system, or s3:// / gs://)")
        return data
    target = (cache_root() / "prepared" / data.cache_dir.name).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target / "manifest.json").exists():
        if not _in_shared(data.shared_dir):
            raise FileNotFoundError(f"{data.shared_dir}: the tokenized data is not in the shared cache (FORGEKIT_CACHE)")
        _fetch_shared(data.shared_dir, target)
    return replace(data, train_dir=target / "train", tokenizer_dir=target / "tokenizer", cache_dir=target,
                   valid_dir=target / "valid" if data.valid_dir else None)


def collate(
    features: list[dict],
    *,
    pad_token_id: int,
    padding: str = "longest",
    context_length: int | None = None,
    multiple: int = 1,
) -> dict:
    """A training batch from dataset rows.

    Unpacked rows are right-padded (to the longest row, rounded up to `multiple` when longer than it but not
    past `context_length`, or to `context_length` with `padding="max_length"`) with an attention mask; labels
    are -100 on padding. Packed rows (with `position_ids`) are flattened into one row without padding or
    attention mask, and `use_cache=False`: transformers then builds a block-diagonal
    causal mask from the position ids, so no example attends to another. Real (non-pad) tokens: `count_real_tokens(batch)`.
    """
    import torch

    if "position_ids" in features[0]:
        cat = {k: [x for f in features for x in f[k]] for k in ("input_ids", "labels", "position_ids")}
        batch: dict[str, Any] = {k: torch.tensor([v], dtype=torch.long) for k, v in cat.items()}
        # transformers detects packed rows only without a KV cache: a cache would make every example see the others
        batch["use_cache"] = False
        return batch
    longest = max(len(f["input_ids"]) for f in features)
    width = -(-longest // multiple) * multiple if longest > multiple else longest  # short batches: as they are
    if context_length:
        width = max(longest, min(width, context_length))
        if padding == "max_length":
            width = max(width, context_length)
    ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def count_real_tokens(batch: dict) -> int:
    """Non-pad tokens in a batch made by `collate`."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def preview_data(prepared: PreparedData, n: int = 3, color: bool | None = None) -> str:
    """Text showing `n` tokenized training rows with the trained spans marked, and the supervised share.

    Trained text is shown green on a terminal (`color=True`), otherwise between ⟦ and ⟧.
    """
    import sys

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    if color is None:
        color = sys.stdout.isatty()
    on, off = ("\033[1;32m", "\033[0m") if color else ("⟦", "⟧")
    tok = AutoTokenizer.from_pretrained(str(prepared.tokenizer_dir))
    ds = load_from_disk(str(prepared.train_dir))
    m = prepared.manifest
    out = [
        f"{m['train_rows']} training rows from {m['train_examples']} examples; context_length {m['context_length']}; "
        f"{m['supervised_share']:.1%} of tokens are trained (marked {on}like this{off}).",
    ]
    for i in range(min(n, len(ds))):
        row = ds[i]
        ids, labels = row["input_ids"], row["labels"]
        sup = sum(x != -100 for x in labels)
        out.append(f"\n--- row {i}: {len(ids)} tokens, {sup} trained ({sup / max(len(ids), 1):.1%}) ---")
        text, run, trained = [], [], None
        for tid, lab in zip(ids, labels):
            t = lab != -100
            if trained is not None and t != trained:
                piece = tok.decode(run)
                text.append(f"{on}{piece}{off}" if trained else piece)
                run = []
            run.append(tid)
            trained = t
        if run:
            piece = tok.decode(run)
            text.append(f"{on}{piece}{off}" if trained else piece)
        out.append("".join(text))
    return "\n".join(out)
