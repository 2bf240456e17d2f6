"""Preference data: chosen/rejected pairs (or KTO's labelled completions), read, validated and tokenized once.

Every format users bring is read, each record validated with `file:line` problems:

* LLMForge: `{"chosen": [messages], "rejected": [messages]}`, two whole conversations sharing every turn but the
  last assistant one (TRL's "implicit prompt" form is the same);
* the Silogen engine: `{"prompt_messages": [...], "chosen_messages": [...], "rejected_messages": [...]}`;
* TRL conversational: `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`;
* KTO unpaired (`loss_type: kto`): `{"prompt": [messages], "completion": [messages], "label": true|false}`.

A pair is rejected when its chosen and rejected answers are the same, when the two conversations' prompts differ,
when an answer has no assistant turn, and when prompt + the longer answer exceeds the context length (TRL would
cut the answers silently). Tokenization is TRL's own rule for conversational data, so that the rows are those its
DPOTrainer would build: the prompt rendered by the tokenizer's chat template with the generation prompt, the
answer the rest of the rendered whole conversation (`prompt_ids`, `chosen_ids`, `rejected_ids`; KTO:
`prompt_ids`, `completion_ids`, `label`). The chat template is the run's (`prepare.load_tokenizer`: a role format
is turned into one), so a later stage and serving format prompts the same way.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forgekit import __version__
from forgekit.data import MAX_REPORTED, DataError, is_hf_dataset_name, validate_record

__all__ = ["FORMATS", "Pair", "build_pairs", "read_pairs", "tokenize_pair"]

# record keys of each format: (prompt, chosen, rejected); KTO: (prompt, completion, label)
FORMATS = {
    "llmforge": (None, "chosen", "rejected"),
    "silogen": ("prompt_messages", "chosen_messages", "rejected_messages"),
    "trl": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}


@dataclass(frozen=True)
class Pair:
    """One validated record: the prompt turns, the chosen answer's turns and the rejected one's (KTO: `rejected` is
    None and `label` says whether `chosen` is desirable), and where it came from."""

    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]] | None
    label: bool | None
    source: str
    line: int


def _format_of(record: dict) -> str | None:
    if "prompt_messages" in record or "chosen_messages" in record:
        return "silogen"
    if "completion" in record or "label" in record:
        return "kto"
    if "chosen" in record and "prompt" in record:
        return "trl"
    if "chosen" in record or "rejected" in record:
        return "llmforge"
    return None


def _messages(value: Any, key: str) -> tuple[list | None, str | None]:
    if not isinstance(value, list) or not value:
        return None, f"'{key}' must be a non-empty list of messages"
    if not all(isinstance(m, dict) for m in value):
        return None, f"'{key}': every message must be an object with role and content"
    return value, None


def _answer_problem(answer: list[dict], key: str) -> str | None:
    if not any(m.get("role") == "assistant" for m in answer) or answer[-1].get("role") != "assistant":
        return f"'{key}' has no assistant turn at its end (the answer that is preferred or not)"
    return None


def _check_record(record: Any, loss_type: str) -> tuple[Pair | None, list[str]]:
    """(the pair, []) or (None, its problems)."""
    if not isinstance(record, dict):
        return None, [f"expected a JSON object, got {type(record).__name__}"]
    fmt = _format_of(record)
    if fmt is None:
        keys = ", ".join(sorted(record)[:5]) or "none"
        return None, [f"not a preference record (keys found: {keys}); expected chosen + rejected (LLMForge), "
                      "prompt + chosen + rejected (TRL), prompt_messages + chosen_messages + rejected_messages "
                      "(Silogen) or prompt + completion + label (KTO)"]
    if (fmt == "kto") != (loss_type == "kto"):
        want = "prompt + completion + label records" if loss_type == "kto" else "chosen/rejected pairs"
        return None, [f"a {'KTO (unpaired)' if fmt == 'kto' else 'paired'} record, but loss_type {loss_type} "
                      f"trains on {want}"]
    prompt_key, chosen_key, rejected_key = FORMATS[fmt]
    missing = [k for k in FORMATS[fmt] if k and k not in record]
    if missing:
        return None, [f"missing {', '.join(repr(k) for k in missing)} ({fmt} format)"]
    texts = [k for k in FORMATS[fmt] if k and k != "label" and isinstance(record[k], str)]
    if texts:  # TRL's standard (plain-text) form, once per record
        return None, [f"{', '.join(repr(k) for k in texts)}: text; forgekit reads conversations: lists of "
                      "{role, content} messages (the chat template renders them)"]
    problems, parts = [], {}
    for key in (prompt_key, chosen_key) + ((rejected_key,) if fmt != "kto" else ()):
        if key:
            parts[key], why = _messages(record[key], key)
            problems += [why] if why else []
    if fmt == "kto" and not isinstance(record["label"], bool):
        problems.append(f"'label' must be true or false (got {record['label']!r})")
    if problems:
        return None, problems
    chosen = parts[chosen_key]
    rejected = parts.get(rejected_key) if fmt != "kto" else None
    if fmt == "llmforge":  # whole conversations: the prompt is every turn before the last (assistant) one
        if chosen[:-1] != rejected[:-1]:
            where = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
            return None, [f"the prompts differ between chosen and rejected (first at messages[{where}]); a pair "
                          "shares every turn but the last assistant one"]
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    else:
        prompt = parts[prompt_key]
    for key, answer in ((chosen_key, chosen), (rejected_key, rejected)):
        if answer is not None and (why := _answer_problem(answer, key)):
            problems.append(why)
    if rejected is not None and chosen == rejected:
        problems.append("chosen and rejected are the same answer: the pair prefers nothing")
    for key, answer in ((chosen_key, chosen), (rejected_key, rejected)):
        if answer is not None and not problems:  # roles, contents, order: the checks of a chat record
            problems += [f"{key}: {p}" for p in validate_record({"messages": prompt + answer}, "instruction_tuning")]
    if problems:
        return None, problems
    return Pair(prompt, chosen, rejected, record.get("label") if fmt == "kto" else None, "", 0), []


def read_pairs(path: str, loss_type: str = "sigmoid", max_reported: int = MAX_REPORTED) -> list[Pair]:
    """Read and validate every record of a preference file (local, fsspec URL or Hugging Face dataset name), with a
    bar over the records where bars show (`forgekit.progress`), as for chat data.

    Raises:
        DataError: the problems of every invalid line, each `file:line: problem`.
    """
    from forgekit.data import _hf_records, _read_text
    from forgekit.progress import progress_bar

    if is_hf_dataset_name(path):
        rows, unit = [(i + 1, rec, None) for i, rec in enumerate(_hf_records(path))], "row "
    else:
        rows, unit = [], ""
        for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line), None))
                except json.JSONDecodeError as e:
                    rows.append((lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"))
    pairs, problems, total = [], [], 0
    for lineno, record, parse_problem in progress_bar(len(rows), f"reading {path.rstrip('/').rsplit('/', 1)[-1]}",
                                                      "record", iterable=rows):
        pair, found = (None, [parse_problem]) if parse_problem else _check_record(record, loss_type)
        if found:
            total += len(found)
            problems += [f"{path}:{unit}{lineno}: {p}" for p in found][: max(0, max_reported - len(problems))]
            continue
        pairs.append(Pair(pair.prompt, pair.chosen, pair.rejected, pair.label, path, lineno))
    if total:
        raise DataError(problems, total)
    if not pairs:
        raise DataError([f"{path}: no records"])
    return pairs


def _ids(tok: Any, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def tokenize_pair(pair: Pair, tok: Any) -> dict[str, Any]:
    """The pair's rows as TRL builds them from conversational data: `prompt_ids` (the prompt with the generation
    prompt, cut where it stops being a prefix of the whole conversation) and `chosen_ids` / `rejected_ids` (KTO:
    `completion_ids` and `label`), the rest of each whole conversation."""
    prompt = _ids(tok, pair.prompt, generation_prompt=True)
    answers = [_ids(tok, pair.prompt + a) for a in (pair.chosen, pair.rejected) if a is not None]
    cut = min(_common_prefix(prompt, ids) for ids in answers)
    if pair.rejected is None:
        return {"prompt_ids": prompt[:cut], "completion_ids": answers[0][cut:], "label": bool(pair.label)}
    return {"prompt_ids": prompt[:cut], "chosen_ids": answers[0][cut:], "rejected_ids": answers[1][cut:]}


def _longest(row: dict) -> int:
    """Tokens of the row's longest sequence (prompt + the longer answer)."""
    return len(row["prompt_ids"]) + max(len(row.get(k, ())) for k in ("chosen_ids", "rejected_ids", "completion_ids"))


def _tokenize_all(pairs: list[Pair], tok: Any) -> list[dict]:
    from forgekit.progress import progress_bar

    rows, problems = [], []
    name = Path(pairs[0].source).name if pairs else ""
    for pair in progress_bar(len(pairs), f"tokenizing {name}", "pair", iterable=pairs):
        try:
            rows.append(tokenize_pair(pair, tok))
        except (ValueError, TypeError, KeyError) as e:  # no chat template, a template that rejects the roles
            problems.append(f"{pair.source}:{pair.line}: cannot format with the chat template: {e} (set "
                            "generation_config.prompt_format for a tokenizer without one)")
    if problems:
        raise DataError(problems[:MAX_REPORTED], len(problems))
    return rows


def _context(rows: list[dict], pairs: list[Pair], set_length: int | None, model_max: int | None) -> int:
    """The context length: the config's, else the power of two (at least 512) holding the longest pair, at most the
    model's maximum. DataError for every pair longer than it (each would lose the end of its answers)."""
    longest = max(_longest(r) for r in rows)
    pow2 = max(512, 2 ** math.ceil(math.log2(max(longest, 1))))
    ctx = set_length or min(pow2, model_max or pow2)
    over = [f"{p.source}:{p.line}: the pair is {_longest(r)} tokens (prompt {len(r['prompt_ids'])} + the longer "
            f"answer), longer than context_length {ctx}{'' if set_length else ' (the model maximum)'}: shorten it, "
            "remove it" + (", or raise context_length" if set_length else "")
            for p, r in zip(pairs, rows) if _longest(r) > ctx]
    if over:
        raise DataError(over[:MAX_REPORTED], len(over))
    return ctx


def _columns(rows: list[dict]) -> dict[str, list]:
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    # tokens a row puts through the model: the prompt once per answer (TRL concatenates chosen and rejected)
    cols["length"] = [sum(len(r["prompt_ids"]) + len(r[k]) for k in ("chosen_ids", "rejected_ids", "completion_ids")
                          if k in r) for r in rows]
    return cols


def _stats(lengths: list[int]) -> dict:
    a = np.asarray(lengths)
    return {"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 95)}, "max": int(a.max()),
            "min": int(a.min())}


def build_pairs(cfg: Any, spec: Any, tok: Any, model_max: int | None, target: Path, key_parts: dict,
                pairs: tuple[list[Pair], list[Pair] | None]) -> dict:
    """Tokenize the training (and validation) pairs into `target` (a `datasets` folder each, the tokenizer and
    manifest.json, published atomically) and return the manifest; `prepare.prepare_data`'s branch for
    `task: preference_tuning`."""
    from datasets import Dataset, disable_progress_bars

    from forgekit.prepare import publish

    started = time.time()
    train, valid = pairs
    train_rows = _tokenize_all(train, tok)
    valid_rows = _tokenize_all(valid, tok) if valid else None
    ctx = _context(train_rows + (valid_rows or []), train + (valid or []), spec.context_length, model_max)
    disable_progress_bars()
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    cols = _columns(train_rows)
    Dataset.from_dict(cols).save_to_disk(str(tmp / "train"))
    answers = sum(len(r.get("chosen_ids", r.get("completion_ids"))) + len(r.get("rejected_ids", ())) for r in train_rows)
    manifest: dict[str, Any] = {
        "forgekit_version": __version__, "cache_key": target.name, "inputs": key_parts, "task": cfg.task,
        "train_path": cfg.train_path, "valid_path": cfg.valid_path, "context_length": ctx,
        "context_length_derived": spec.context_length is None, "model_max_length": model_max,
        "overlength_policy": "error", "preference_format": "unpaired" if "label" in cols else "paired",
        "train_examples": len(train_rows), "train_examples_kept": len(train_rows), "train_rows": len(train_rows),
        "dropped_overlength": 0, "truncated": 0, "train_tokens": int(sum(cols["length"])),
        "token_length": _stats(cols["length"]), "supervised_tokens": int(answers),
        "supervised_share": answers / max(sum(cols["length"]), 1),
    }
    if "label" in cols:
        manifest["desirable"] = int(sum(cols["label"]))
    if valid_rows:
        Dataset.from_dict(_columns(valid_rows)).save_to_disk(str(tmp / "valid"))
        manifest.update(valid_examples=len(valid_rows), valid_rows=len(valid_rows))
    return publish(tmp, target, tok, manifest, started)
