"""Parallel calls in the function-calling example's data: what training holds, what the test asks, how they overlap.

No training: reads the train and test JSONL the generator writes (forgekit.examples.toolcalling_data) and prints
the figures behind issue 26's "parallel calls 0.000": parallel conversations and call turns with 2-3 calls in
training, the joiners between requests in each split, the training joiners' words that the test's joiners use,
and, with --tokens, the training tokens as the example renders them for SmolLM2 (a stand-in for training time).

    python benchmarks/fc_parallel_overlap.py DATA_DIR [--tokens]
    # DATA_DIR from: forgekit tool-data synth DATA_DIR --train 900 --valid 40 --test 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from forgekit.examples import toolcalling_data as datagen
from forgekit.toolcalling.evaluate import conversation_category

ALL_JOINERS = tuple(dict.fromkeys(datagen.JOINERS + getattr(datagen, "TRAIN_JOINERS", ())))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _calls(row: dict) -> list[list[dict]]:
    return [m["tool_calls"] for m in row["messages"] if m.get("role") == "assistant" and m.get("tool_calls")]


def _joiners(row: dict) -> list[str]:
    """The joiners of a parallel request, longest match first; " and " and " " are counted as what is left."""
    text = next(m["content"] for m in row["messages"] if m["role"] == "user")
    wanted = sum(len(c) for c in _calls(row)) - 1
    found = []
    for j in sorted((j for j in ALL_JOINERS if j.strip() and j.strip() != "and"), key=len, reverse=True):
        n = text.count(j)
        text = text.replace(j, " | ")
        found += [j.strip()] * n
    found += ["(other: ' and ' or ' ')"] * max(0, wanted - len(found))
    return found


def _words(joiners) -> set[str]:
    return {w for j in joiners for w in re.findall(r"[a-z']+", j.lower())}


def summary(data_dir: Path, tokens: bool = False) -> dict:
    train, test = _rows(data_dir / "train.jsonl"), _rows(data_dir / "test.jsonl")
    out: dict = {"test_sha256": hashlib.sha256((data_dir / "test.jsonl").read_bytes()).hexdigest()}
    for name, rows in (("train", train), ("test", test)):
        par = [r for r in rows if conversation_category(r["messages"]) == "parallel"]
        turns = Counter(len(c) for r in rows for c in _calls(r))
        out[name] = {
            "conversations": len(rows),
            "parallel_conversations": len(par),
            "call_turns_by_calls": dict(sorted(turns.items())),
            "share_of_call_turns_with_a_second_call": round(1 - turns[1] / sum(turns.values()), 3),
            "parallel_same_tool": sum(len({c["function"]["name"] for c in _calls(r)[0]}) == 1 for r in par),
            "parallel_held_out_tool": sum(bool((r.get("metadata") or {}).get("held_out")) for r in par),
            "joiners": dict(Counter(j for r in par for j in _joiners(r)).most_common()),
        }
    train_j = set(out["train"]["joiners"]) - {"(other: ' and ' or ' ')"}
    test_j = set(out["test"]["joiners"])
    out["test_joiners_seen_in_training"] = sorted(test_j & train_j)
    out["test_joiner_words_seen_in_training_joiners"] = {
        j: sorted(_words([j]) & _words(train_j)) for j in sorted(test_j)}
    seen = [t for t in datagen._CATALOG if not t.held_out]
    shared = {p if isinstance(p, str) else p[0] for t in seen for p in t.phrasings} & {
        p if isinstance(p, str) else p[0] for t in seen for p in t.test_phrasings}
    out["request_templates_shared_by_train_and_test"] = len(shared)
    if tokens:
        out["train_tokens"] = _train_tokens(train)
    return out


def _train_tokens(rows: list[dict]) -> int:
    """Tokens of the training conversations as the example renders them for SmolLM2 (embedded copy)."""
    from transformers import AutoTokenizer

    from forgekit.formats import render
    from forgekit.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    return sum(len(tok(render(r["messages"], tok, None, tools=r["tools"]).text, add_special_tokens=False)["input_ids"])
               for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--tokens", action="store_true", help="also count the training tokens (loads the tokenizer)")
    args = ap.parse_args()
    print(json.dumps(summary(args.data_dir, args.tokens), indent=1))


if __name__ == "__main__":
    main()
