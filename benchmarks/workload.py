"""The benchmark's identical work for every contender: synthetic chat data, its tokens, and the model.

Data: chat examples (system, user, assistant) whose token lengths follow a log-normal distribution
(median 300, p95 1,400, capped at 2,048 by default). Words are single tokens of the tokenizer, so a target
length in tokens is met exactly; the assistant answers with words from a small Zipf-distributed set, so the
loss has something to learn. Labels are the assistant turn only (-100 elsewhere).

Models: the Llama-3.1-8B architecture with random bf16 weights (``llama8b``), a tiny Llama for smoke runs
(``tiny``), or the embedded SmolLM2-135M-Instruct (``smollm2``, through ``forgekit.models``). Every contender
loads the same saved weights with ``from_pretrained``, as a user would.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

SYSTEM = "You are a helpful assistant."

LLAMA_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def lognormal_lengths(n: int, seed: int, median: float = 300, p95: float = 1400, cap: int = 2048,
                      floor: int = 48) -> list[int]:
    """``n`` token lengths, log-normal with the given median and 95th percentile, clipped to [floor, cap]."""
    mu, sigma = math.log(median), math.log(p95 / median) / 1.6448536269514722
    rng = random.Random(seed)
    return [int(min(cap, max(floor, round(rng.lognormvariate(mu, sigma))))) for _ in range(n)]


def _single_token_words(tokenizer: Any) -> list[str]:
    vocab = tokenizer.get_vocab()
    words = sorted(k[1:] for k in vocab if re.fullmatch(r"\u0120[a-z]{3,9}", k))
    if len(words) < 500:
        raise ValueError("tokenizer has too few single-token words for the synthetic data")
    return words


def make_examples(tokenizer: Any, n: int, seed: int = 0, **length_kwargs: Any) -> list[dict]:
    """``n`` chat examples whose tokenized length (with the tokenizer's chat template) hits a log-normal target.

    Returns:
        OpenAI-format rows ``{"messages": [...]}``.
    """
    words = _single_token_words(tokenizer)
    rng = random.Random(seed + 1)
    answer_words = rng.sample(words, 200)
    weights = [1 / (i + 1) for i in range(len(answer_words))]  # Zipf: learnable unigram statistics
    empty = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "go"},
             {"role": "assistant", "content": "ok"}]
    overhead = len(_ids(tokenizer, empty)) - 2
    rows = []
    for target in lognormal_lengths(n, seed, **length_kwargs):
        body = max(2, target - overhead)
        n_user = max(1, round(0.35 * body))
        n_answer = max(1, body - n_user)
        user = "go " + " ".join(rng.choice(words) for _ in range(n_user - 1))
        answer = "ok " + " ".join(rng.choices(answer_words, weights, k=n_answer - 1))
        rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user.strip()},
                                  {"role": "assistant", "content": answer.strip()}]})
    return rows


def _ids(tokenizer: Any, messages: list[dict], **kwargs: Any) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    return list(out["input_ids"] if isinstance(out, dict) else out)


def tokenize(tokenizer: Any, rows: list[dict], max_length: int = 2048) -> list[dict]:
    """Token ids and assistant-only labels for each row (what the plain baselines train on).

    The assistant turn (content, end-of-turn token and the template's trailing newline) is labelled; the
    system and user turns and the assistant header are -100. Rows are truncated to ``max_length``.
    """
    out = []
    for row in rows:
        full = _ids(tokenizer, row["messages"])
        prompt = _ids(tokenizer, row["messages"][:-1], add_generation_prompt=True)
        if full[: len(prompt)] != prompt:
            raise ValueError("chat template renders the prompt differently inside the full conversation")
        labels = [-100] * len(prompt) + full[len(prompt):]
        out.append({"input_ids": full[:max_length], "labels": labels[:max_length]})
    return out


def length_stats(lengths: list[int]) -> dict:
    """Mean, percentiles and the token-weighted mean length (the ``seq_len`` that FLOPs are counted at)."""
    s = sorted(lengths)

    def pct(q: float) -> int:
        return s[min(len(s) - 1, int(q / 100 * len(s)))]

    return {
        "n": len(s),
        "tokens": sum(s),
        "mean": sum(s) / len(s),
        "p50": pct(50),
        "p95": pct(95),
        "max": s[-1],
        "token_weighted_mean": sum(x * x for x in s) / sum(s),
    }


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """Write rows as JSONL (the forgekit contender's ``train_path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def model_config(name: str) -> Any:
    """A transformers config for ``llama8b`` or ``tiny`` (random weights)."""
    from transformers import LlamaConfig

    shapes = {"llama8b": LLAMA_8B, "tiny": TINY}
    if name not in shapes:
        raise ValueError(f"unknown synthetic model {name!r}; choose from {sorted(shapes)}")
    return LlamaConfig(**shapes[name], bos_token_id=1, eos_token_id=2, pad_token_id=2)


def save_random_model(name: str, tokenizer_dir: Path, out: Path, seed: int = 0, device: str = "cuda") -> Path:
    """Build ``name`` with random weights (bf16 on GPU, fp32 on CPU), save it with the tokenizer to ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(model_config(name), dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    del model
    return out
