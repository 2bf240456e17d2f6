"""DPO real-token throughput: forgekit's preference run against TRL's DPOTrainer alone, on identical pairs.

Example (one H100, 8B shape; about 8 minutes, estimated: ``--budget-s`` caps it)::

    python benchmarks/dpo_throughput.py --out benchmarks/results

CPU smoke test (the 2-layer tiny Llama, one run each; a minute or two on 2 cores)::

    python benchmarks/dpo_throughput.py --tiny --out /tmp/dpo-bench

The work, the same for both contenders: the Llama-3.1-8B architecture with random bf16 weights
(``workload.save_random_model``, saved once, loaded with ``from_pretrained``; ``--tiny``: workload's 2-layer
model, fp32), LoRA r=16 (alpha 32, dropout 0, all linear layers), DPO's sigmoid loss with beta 0.1, lr constant,
and the same synthetic pairs in TRL's conversational format (``make_pairs``: a system + user prompt, two answers
whose words come from two different Zipf vocabularies, so the preference is learnable; token lengths log-normal,
prompt and answers at most 512 tokens each), the same micro-batch of pairs (each is two sequences, prompt +
chosen and prompt + rejected, padded to the longest in the micro-batch) and accumulation.

Contenders, each run in its own process (``benchmarks/contenders.py``'s harness, ``run.run_child``), interleaved
``repeat 1: trl forgekit, repeat 2: ...``:

- ``trl``: TRL's DPOTrainer in a plain script (``run_trl_dpo``): the model loaded in bf16 with SDPA, LoRA through
  its ``peft_config``, fused AdamW, TRL's own tokenization of the conversational pairs. TRL at its best: a sweep
  first (one process, ``--sweep-steps`` steps per setting) over Liger (TRL's ``use_liger_kernel``: Liger's layer
  kernels; TRL 1.16 refuses Liger's fused cross-entropy, its DPOTrainer fuses the output layer itself), with
  gradient checkpointing off, and on only for a setting that ran out of memory without it; the fastest setting
  that fitted runs the repeats. ``padding_free`` is not swept: TRL 1.16's DPOTrainer warns and pads (it has been
  unavailable since TRL's DPO refactor).
- ``forgekit``: ``forgekit.train.finetune`` with ``task: preference_tuning`` (``forgekit_contender.run_forgekit``:
  data preparation on the driver, one Ray Train worker, DeepSpeed ZeRO-2, forgekit's preference trainer
  ``forgekit.worker.preference``), forgekit's defaults for the rest (Liger off for preference runs); options with
  ``--forgekit``: ``zero=3`` and the others of ``benchmarks/forgekit_contender.py``, ``liger=1`` for Liger's layer
  kernels as TRL's ``use_liger_kernel`` applies them. Caches start empty in every run, as TRL's do.

Reference log-probs (``--ref``), the same for both: ``every-step`` (the default; TRL's default) computes them in
every step, a no-grad forward with the adapter disabled, so all of DPO's work is in the timed steps;
``precompute`` (forgekit's default, TRL given the same flag) computes them in one pass over the pairs before the
first step, outside the timed steps and inside "first step s", which then also holds TRL's cache key for them: a
SHA-256 of every weight converted to fp32 on the CPU (``trl.trainer.utils.hash_module``; 32 GB for the 8B shape,
~45 s at the ~0.7 GB/s measured on this project's CPU machine) in each run's trainer build.

Figures per contender (medians over repeats, with min and max): real tokens/s over steps 2..N, the non-padding
tokens of the chosen and the rejected sequences (each holding its prompt), counted as transformers counts
``include_num_input_tokens_seen="non_padding"`` for both; MFU (``forgekit.flops``: 4N + attention at the
sequences' token-weighted mean length for the policy, plus the reference's forward, 2N + attention / 3, in
``every-step`` mode; against the GPU's dense bf16 peak); peak memory (allocator, and NVML for the device); time
from spawn to the end of step 1; the loss of step 1 (policy == reference: ln 2 = 0.693 for both) and the mean of
the last three. Writes ``--out/dpo-<gpu>.json`` (every run) and ``.md`` after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as harness
import sweep
from sweep import is_oom
from workload import (
    SYSTEM,
    _ids,
    _single_token_words,
    length_stats,
    lognormal_lengths,
    model_config,
    write_jsonl,
)

from forgekit.flops import model_flops_per_token, peak_tflops

T0 = float(os.environ.get("FKB_T0", time.time()))
# seconds a run takes before one was measured (8B on one H100, 6 steps; forgekit: Ray start, data preparation,
# DeepSpeed initialisation included); the sweep's child: process start, then each setting
EXPECTED_S = {"trl": 45.0, "forgekit": 100.0}
SWEEP_START_S, SWEEP_SETTING_S = 15.0, 25.0
TINY = {"model": "tiny", "device": "cpu", "steps": 3, "repeats": 1, "micro_batch": 2, "accumulation": 2,
        "prompt_median": 40, "prompt_p95": 80, "prompt_cap": 96, "answer_median": 24, "answer_p95": 56,
        "answer_cap": 64}


def make_pairs(tokenizer: Any, n: int, seed: int, prompt: tuple[int, int, int], answer: tuple[int, int, int]) -> list[dict]:
    """``n`` DPO pairs in TRL's conversational format whose token lengths (with the tokenizer's chat template, as TRL
    and forgekit split them: the prompt with the generation prompt, each answer the rest) hit log-normal targets.

    Args:
        tokenizer: a tokenizer with a chat template and enough single-token words (``workload``'s rule).
        n: pairs.
        seed: the lengths and words are a function of it.
        prompt, answer: (median, p95, cap) in tokens; the floors are 24 and 8.

    Returns:
        ``{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}`` rows; the chosen answers draw
        from one Zipf-weighted set of 100 words, the rejected from another, so the preference is learnable.
    """
    words = _single_token_words(tokenizer)
    rng = random.Random(seed + 1)
    vocab = rng.sample(words, 200)
    chosen_words, rejected_words, weights = vocab[:100], vocab[100:], [1 / (i + 1) for i in range(100)]
    base = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "go"}]
    prompt_fixed = len(_ids(tokenizer, base, add_generation_prompt=True)) - 1  # all but the user's "go"
    whole = _ids(tokenizer, [*base, {"role": "assistant", "content": "ok"}])
    answer_fixed = len(whole) - prompt_fixed - 2  # the answer's tokens other than "ok" (end of turn, newline)
    p_len = lognormal_lengths(n, seed, *prompt[:2], cap=prompt[2], floor=24)
    c_len = lognormal_lengths(n, seed + 101, *answer[:2], cap=answer[2], floor=8)
    r_len = lognormal_lengths(n, seed + 202, *answer[:2], cap=answer[2], floor=8)

    def text(first: str, pool: list[str], k: int, zipf: bool) -> str:
        body = rng.choices(pool, weights, k=k) if zipf else [rng.choice(pool) for _ in range(k)]
        return " ".join([first, *body])

    rows = []
    for p, c, r in zip(p_len, c_len, r_len):
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": text("go", words, max(0, p - prompt_fixed - 1), zipf=False)}],
            "chosen": [{"role": "assistant", "content": text("ok", chosen_words, max(0, c - answer_fixed - 1), True)}],
            "rejected": [{"role": "assistant",
                          "content": text("ok", rejected_words, max(0, r - answer_fixed - 1), True)}],
        })
    return rows


def pair_stats(tokenizer: Any, rows: list[dict]) -> dict:
    """Token counts of the pairs as both contenders tokenize them (``forgekit.preference.tokenize_pair``, TRL's
    rule): prompt and answer lengths, real tokens per pair (prompt twice + both answers), the sequences' lengths."""
    from forgekit.preference import Pair, tokenize_pair

    toks = [tokenize_pair(Pair(r["prompt"], r["chosen"], r["rejected"], None, "", i), tokenizer)
            for i, r in enumerate(rows)]
    prompt = [len(t["prompt_ids"]) for t in toks]
    answers = [len(t[k]) for t in toks for k in ("chosen_ids", "rejected_ids")]
    seqs = [len(t["prompt_ids"]) + len(t[k]) for t in toks for k in ("chosen_ids", "rejected_ids")]
    per_pair = [a + b for a, b in zip(seqs[::2], seqs[1::2])]
    return {**length_stats(per_pair), "prompt": length_stats(prompt), "answer": length_stats(answers),
            "sequence": length_stats(seqs), "longest_pair": max(len(t["prompt_ids"]) + max(len(t["chosen_ids"]),
                                                                   len(t["rejected_ids"])) for t in toks)}


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """The pairs, the spec every child reads (``work/spec.json``), and the saved random model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    pairs_per_step = args.micro_batch * args.accumulation
    rows = make_pairs(tok, args.steps * pairs_per_step, args.seed, (args.prompt_median, args.prompt_p95, args.prompt_cap),
                      (args.answer_median, args.answer_p95, args.answer_cap))
    data = write_jsonl(rows, work / f"pairs-{len(rows)}-seed{args.seed}-p{args.prompt_median}-{args.prompt_cap}"
                                    f"-a{args.answer_median}-{args.answer_cap}.jsonl")
    stats = pair_stats(tok, rows)
    if stats["longest_pair"] > args.prompt_cap + args.answer_cap:  # the length targets assume single-token words
        raise SystemExit(f"a pair is {stats['longest_pair']} tokens, more than the caps allow: the tokenizer splits "
                         "the words differently than workload._single_token_words assumes")
    config = model_config(args.model)
    seq = stats["sequence"]["token_weighted_mean"]
    policy = {"lora": model_flops_per_token(config, seq, lora=True), "full": model_flops_per_token(config, seq, lora=False)}
    reference = model_flops_per_token(config, seq, lora=False) / 3 if args.ref == "every-step" else 0.0  # forward only
    spec = {
        "model_name": args.model, "model_dir": str(work / f"{args.model}-random-seed{args.seed}"),
        "tokenizer_dir": str(args.tokenizer), "data": str(data), "device": args.device, "steps": args.steps,
        "micro_batch": args.micro_batch, "accumulation": args.accumulation, "pairs_per_step": pairs_per_step,
        "max_length": args.prompt_cap + args.answer_cap, "lr": args.lr, "seed": args.seed, "beta": args.beta,
        "ref": args.ref, "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "data_stats": stats,
        # forgekit_contender.forgekit_config's inputs (its accumulation is overridden by the pairs' own)
        "tokens_per_step": round(pairs_per_step * stats["mean"]),
        "flops_per_token": policy["lora"] + reference, "flops_per_token_full": policy["full"] + reference,
    }
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    r = harness.run_child("save-model", work, "save-model", args.timeout)  # contenders.py's: not a contender
    if not r.get("ok"):
        raise SystemExit(f"could not build the model: {r.get('error')}")
    return spec


def run_trl_dpo(spec: dict, opts: dict, t0: float = T0) -> dict:
    """TRL's DPOTrainer alone on the spec's pairs; options ``liger`` (0), ``ckpt`` (0), ``attn`` (sdpa), ``batch``
    (pairs per micro-batch; the spec's, the accumulation keeping the pairs per step), ``steps`` (the sweep's)."""
    from contenders import _callback, _finish, _load_model, _lora_config, _train_args
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    from forgekit import perf

    cuda = spec["device"] == "cuda"
    batch = int(opts.get("batch", spec["micro_batch"]))
    accum = max(1, spec["pairs_per_step"] // batch)
    ckpt, liger, attn = opts.get("ckpt", "0") == "1", opts.get("liger", "0") == "1", opts.get("attn", "sdpa")
    record: dict[str, Any] = {"times": [], "tokens": [], "config": {"batch": batch, "accum": accum, "ckpt": ckpt,
                                                                    "liger": liger, "attn": attn, "ref": spec["ref"]}}

    args = DPOConfig(**_train_args(
        spec, spec["tmp"], max_steps=int(opts.get("steps", spec["steps"])), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum, gradient_checkpointing=ckpt, use_liger_kernel=liger,
        optim=perf.fused_optimizer_name(cuda), include_num_input_tokens_seen="non_padding", beta=spec["beta"],
        loss_type=["sigmoid"], max_length=spec["max_length"], precompute_ref_log_probs=spec["ref"] == "precompute"))
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    pairs = Dataset.from_list([json.loads(line) for line in Path(spec["data"]).read_text().splitlines()])
    model = _load_model(spec, attn)
    set_seed(spec["seed"])  # LoRA's A matrices are drawn when the trainer wraps the model
    started = time.time()
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs,
                         peft_config=_lora_config(spec), callbacks=[_callback(None, record, t0)])
    record["trainer_build_s"] = time.time() - started  # TRL's tokenization and the reference pass (precompute)
    trainer.train()
    _finish(trainer, record, None)
    record["margins"] = [h.get("rewards/margins") for h in trainer.state.log_history if "loss" in h]
    return record


def run_forgekit_dpo(spec: dict, opts: dict) -> dict:
    """``forgekit finetune`` with ``task: preference_tuning`` on the spec's pairs (``forgekit_contender``)."""
    from forgekit_contender import run_forgekit

    os.environ["FORGEKIT_CACHE"] = str(Path(spec["tmp"]) / "forgekit-cache")  # empty: data and reference passes run
    pref = {"beta": spec["beta"], "loss_type": "sigmoid", "precompute_ref_log_probs": spec["ref"] == "precompute"}
    fixed = {"packing": "0", "rows": str(spec["micro_batch"]), "set.task": "preference_tuning",
             "set.gradient_accumulation_steps": str(spec["accumulation"]),
             "set.preference_tuning_config": json.dumps(pref)}  # (JSON is YAML)
    # forgekit's default: decided on the worker (off for preference runs); liger=1: Liger's layer kernels, without its
    # fused cross-entropy (TRL's DPOTrainer fuses the output layer itself, as for TRL's own use_liger_kernel)
    fixed["set.liger_kernel"] = json.dumps({"enabled": True, "kwargs": {"fused_linear_cross_entropy": False}}
                                           if opts.get("liger") == "1" else {})
    record = run_forgekit(spec, {**fixed, **opts})
    if spec["device"] == "cuda":
        from contenders import gpu_identity

        record["gpu"] = gpu_identity()
    return record


def child(argv: list[str]) -> int:
    """One contender (or the TRL sweep) in this process: ``contenders.main`` with the DPO runners."""
    import contenders

    return contenders.main(argv, runners={"trl": run_trl_dpo, "forgekit": run_forgekit_dpo})


CHILD = [str(Path(__file__).resolve()), "--child"]


def trl_sweep(args: argparse.Namespace, work: Path, deadline: float, spec: dict, save: Any) -> dict:
    """TRL's settings in one child process: Liger off then on, checkpointing off; where none fitted, the ones that ran
    out of memory again with checkpointing (a fitting setting without it is faster). The table
    (``run._sweep_table``) with the winner; `save(table)` after each child process."""
    pending = sweep.settings(("0",), (str(spec["micro_batch"]),), ("0", "1"))
    for s in pending:
        s["steps"] = str(args.sweep_steps)
    records: list[dict] = []
    started = time.time()
    for attempt in range(4):
        if not pending:
            break
        if deadline - time.time() < SWEEP_START_S + SWEEP_SETTING_S * len(pending):
            records += [{"setting": s, "ok": False, "skipped": "not run: the time budget ran out"} for s in pending]
            break
        result = harness.run_child("trl-sweep", work, f"sweep-{attempt}", min(args.timeout * len(pending),
                                                                             deadline - time.time()),
                                   extra=["--settings", json.dumps(pending)], script=CHILD)
        done = list(result.get("settings") or [])
        rest = pending[len(done):]
        if rest:  # the child died inside the next setting: that is the setting's row
            done.append({"setting": rest[0], "ok": False,
                         "error": result.get("error") or f"the sweep child exited with {result.get('rc')}"})
            rest = rest[1:]
        records += done
        retry = [] if any(r.get("ok") for r in records) else [
            r["setting"] | {"ckpt": "1"} for r in done
            if not r.get("ok") and is_oom(r.get("error")) and r["setting"]["ckpt"] == "0"]
        pending = sorted(rest + retry, key=lambda s: s["liger"])  # Liger off first: its patches outlive a setting
        save(harness._sweep_table(records, args.sweep_steps, started))
    return harness._sweep_table(records, args.sweep_steps, started)


def best_contender(sw: dict | None) -> str | None:
    """``trl:<options>`` of the sweep's winner, without the sweep's step count."""
    best = (sw or {}).get("best")
    if not best:
        return None
    return "trl:" + sweep.option_string({k: v for k, v in best["setting"].items() if k != "steps"})


def expected_seconds(name: str, runs: dict[str, list[dict]]) -> float:
    """How long a run of `name` will take: the longest of its earlier runs, else ``EXPECTED_S``."""
    walls = [r["wall_s"] for r in runs.get(name, []) if r.get("wall_s")]
    return max(walls) if walls else EXPECTED_S.get(name.split(":")[0], 60.0)


def setting_cell(name: str, meta: dict) -> str:
    kind, _, text = name.partition(":")
    if kind == "trl":
        opts = dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)
        how = "**at its best** (sweep winner)" if name == meta.get("trl_best") and meta.get("sweep_won") else (
            "not swept" if name == meta.get("trl_best") else "")
        return ", ".join(filter(None, [how, sweep.describe(opts).replace("batch ", "micro-batch ")]))
    return ("ZeRO-" + dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv).get("zero", "2") + ", " if
            meta["device_name"] != "cpu" else "") + "Ray worker, forgekit's defaults" + (f" ({text})" if text else "")


def markdown(rows: list[dict], meta: dict) -> str:
    """The results table (median, min and max of the runs), the TRL sweep, the work and the command."""
    ds, fmt = meta["data_stats"], harness._fmt
    peer = next((r.get("tokens_per_s") for r in rows if r["contender"] == meta.get("trl_best") and r.get("ok")), None)
    ref = ("precomputed by both in one pass before step 1 (outside the timed steps, inside first step s)"
           if meta["ref"] == "precompute" else "computed by both in every step (a no-grad forward, adapter disabled)")
    lines = [
        f"# DPO throughput: forgekit vs TRL's DPOTrainer alone, {meta['model']} LoRA on {meta['device_name']}", "",
        f"Command: `{meta['command']}`", "",
        (f"Work: {ds['n']} synthetic pairs (TRL conversational: system + user prompt, chosen and rejected answers), "
         f"prompt tokens median {ds['prompt']['p50']} (max {ds['prompt']['max']}), answers median "
         f"{ds['answer']['p50']} (max {ds['answer']['max']}), {ds['mean']:.0f} real tokens per pair (prompt + chosen, "
         f"prompt + rejected); {meta['micro_batch']} pairs per micro-batch ({2 * meta['micro_batch']} sequences "
         f"padded to the longest) x {meta['accumulation']} accumulation = {meta['pairs_per_step']} pairs, "
         f"~{meta['pairs_per_step'] * ds['mean']:,.0f} real tokens per optimizer step; {meta['steps']} steps; LoRA "
         f"r=16 on all linear layers; DPO sigmoid loss, beta {meta['beta']}, lr {meta['lr']} constant. Reference "
         f"log-probs: {ref}."), "",
        (f"Real tokens/s: non-padding tokens of both sequences of each pair over steps 2..N of each run; median, min "
         f"and max of up to {meta['repeats']} runs, each in its own process, interleaved, on one device "
         f"({meta.get('gpu') or meta['device_name']}). "
         + (f"MFU counts {meta['flops_per_token'] / 1e9:.2f} GFLOP/token (policy 4N + attention at the sequences' "
            f"token-weighted mean length {ds['sequence']['token_weighted_mean']:.0f}"
            + (", plus the reference's forward" if meta["ref"] != "precompute" else "")
            + f") against {meta['peak_tflops']} TFLOP/s. " if meta.get("peak_tflops") else "")
         + f"Step 1's loss is DPO's at policy == reference, ln 2 = 0.693. {meta['versions']}"), "",
        "| contender | setting | real tokens/s (median) | min – max | runs ok | vs TRL | MFU | peak alloc GB "
        "| peak GPU GB (NVML) | first step s | loss step 1 → last 3 | GPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, setting = r["contender"].split(":")[0], setting_cell(r["contender"], meta)
        if not r.get("ok"):
            what = "out of memory" if r.get("out_of_memory") else "failed"
            lines.append(f"| {name} | {setting} | {what}: {str(r.get('error', ''))[:120]} |  | 0/{r.get('repeats', 0)} "
                         f"|  |  | {fmt(r.get('peak_alloc_gb'), '.1f')} |  |  |  |  |")
            continue
        tps, used = r.get("tokens_per_s"), r.get("gpus_used") or []
        lines.append(
            f"| {name} | {setting} | {fmt(tps, ',.0f')} | {fmt(r.get('min_tokens_per_s'), ',.0f')} – "
            f"{fmt(r.get('max_tokens_per_s'), ',.0f')} | {r['ok']}/{r['repeats']} "
            f"| {fmt(tps / peer if tps and peer else None, '.2f')}× | {fmt(r.get('mfu'), '.3f')} "
            f"| {fmt(r.get('peak_alloc_gb'), '.1f')} | {fmt(r.get('nvml_peak_gb'), '.1f')} "
            f"| {fmt(r.get('time_to_first_step_s'), '.1f')} | {fmt(r.get('first_loss'), '.3f')} → "
            f"{fmt(r.get('final_loss'), '.3f')} | {'; '.join(used) or '–'} |")
    if meta.get("not_run"):
        lines += ["", "Not run (time budget): " + "; ".join(meta["not_run"]) + "."]
    if meta["device_name"] == "cpu":
        lines += ["", "On a CPU this checks that the benchmark runs, it compares nothing: Ray's worker runs torch with "
                  "one thread (OMP_NUM_THREADS=1), the plain TRL script with torch's default, on cores other work "
                  "shares."]
    if meta.get("sweep"):
        lines += harness.sweep_markdown(meta["sweep"], meta)
    lines += ["", "TRL's `padding_free` is not a setting: TRL 1.16's DPOTrainer warns and pads (unavailable since its "
              "DPO refactor)."]
    return "\n".join(lines) + "\n"


def write(out: Path, tag: str, meta: dict, rows: list[dict], runs: dict) -> None:
    """The JSON (meta, rows, every run) and the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1))
    (out / f"{tag}.md").write_text(markdown(rows, meta))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true",
                   help=f"CPU smoke test with the 2-layer tiny model, short pairs, one run each ({TINY})")
    p.add_argument("--model", default="llama8b", choices=["llama8b", "tiny"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is the warm-up)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=2, help="pairs per micro-batch (twice as many sequences)")
    p.add_argument("--accumulation", type=int, default=4)
    p.add_argument("--prompt-median", type=int, default=200)
    p.add_argument("--prompt-p95", type=int, default=450)
    p.add_argument("--prompt-cap", type=int, default=512)
    p.add_argument("--answer-median", type=int, default=150)
    p.add_argument("--answer-p95", type=int, default=400)
    p.add_argument("--answer-cap", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--ref", default="every-step", choices=["every-step", "precompute"],
                   help="reference log-probs, for both: in every step (TRL's default) or in one pass before step 1 "
                        "(forgekit's default; TRL then hashes every weight for its cache: ~45 s at 8B)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl", default=None, metavar="OPTIONS",
                   help="TRL's setting without a sweep, e.g. 'liger=1,ckpt=0' (default: the sweep's winner)")
    p.add_argument("--forgekit", default="", metavar="OPTIONS",
                   help="forgekit contender options (benchmarks/forgekit_contender.py), e.g. 'zero=3'")
    p.add_argument("--sweep-steps", type=int, default=3, help="optimizer steps per TRL sweep setting")
    p.add_argument("--tokenizer", type=Path, default=HERE.parent / ".bench" / "tokenizer",
                   help="chat tokenizer of the random model (SmolLM2's)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fkbench-dpo")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for dpo-<gpu>.json and .md")
    p.add_argument("--tag", default=None, help="file name stem (default dpo-<gpu>, dpo-tiny-cpu with --tiny)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per child process")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds this command may take: a run that would not end in time is not started")
    args = p.parse_args(argv)
    if args.tiny:
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in TINY.items():
            if key not in given:  # an explicit option wins over the tiny preset
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    """Prepare the shared work, sweep TRL, run the contenders interleaved, write the results."""
    args = parse(argv)
    deadline = time.time() + (args.budget_s or 1e9)
    args.work.mkdir(parents=True, exist_ok=True)
    device_name, gpu = "cpu", None
    if args.device == "cuda":
        import torch
        from contenders import gpu_identity

        device_name, gpu = torch.cuda.get_device_name(0), gpu_identity()
    short = "cpu" if args.device == "cpu" else next((g for g in ("H200", "H100", "A100", "L40S") if g in device_name),
                                                    device_name.split()[-1]).lower()
    tag = args.tag or ("dpo-tiny-cpu" if args.tiny else f"dpo-{short}")
    spec = prepare(args, args.work)
    meta = {
        "command": "python benchmarks/dpo_throughput.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "model": args.model, "device_name": device_name, "gpu": gpu,
        "peak_tflops": peak_tflops(device_name) if args.device == "cuda" else None,
        **{k: spec[k] for k in ("steps", "micro_batch", "accumulation", "pairs_per_step", "lr", "beta", "ref",
                                "data_stats", "flops_per_token", "flops_per_token_full")},
        "repeats": args.repeats, "versions": harness.versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "not_run": [],
    }
    runs: dict[str, list[dict]] = {}
    if args.trl is None and args.device == "cuda":  # (a CPU has no Liger: one setting, nothing to sweep)
        meta["sweep"] = trl_sweep(args, args.work, deadline, spec, lambda sw: write(args.out, tag, meta | {"sweep": sw},
                                                                                   [], runs))
        meta["trl_best"], meta["sweep_won"] = best_contender(meta["sweep"]), True
    if not meta.get("trl_best"):  # no sweep, or none of its settings fitted
        from contenders import parse_options

        opts = {"ckpt": "0", "batch": str(args.micro_batch), "liger": "0", **parse_options(args.trl or "")}
        meta["trl_best"], meta["sweep_won"] = "trl:" + sweep.option_string(opts), False
    contenders = [meta["trl_best"], "forgekit" + (f":{args.forgekit}" if args.forgekit else "")]
    rows: list[dict] = []
    for rep in range(args.repeats):
        for name in contenders:
            left, need = deadline - time.time(), expected_seconds(name, runs)
            if left < need:
                meta["not_run"].append(f"{name} (repeat {rep + 1}: {left:.0f} s left, a run takes ~{need:.0f} s)")
                continue
            tag_run = f"r{rep}-{sum(map(len, runs.values()))}-{name.split(':')[0]}"
            runs.setdefault(name, []).append(harness.run_child(name, args.work, tag_run, min(args.timeout, left),
                                                               script=CHILD))
            rows = [harness.aggregate(c, rs, spec, meta["peak_tflops"]) for c, rs in runs.items()]
            write(args.out, tag, meta, rows, runs)  # after every run: a run cut short keeps what it measured
    write(args.out, tag, meta, rows, runs)
    print(markdown(rows, meta))
    firsts = [r["losses"][0] for rs in runs.values() for r in rs if r.get("ok") and r.get("losses")]
    if firsts:
        print(f"step-1 losses (ln 2 = 0.6931 when policy == reference): {statistics.mean(firsts):.4f} mean, "
              f"{min(firsts):.4f} - {max(firsts):.4f}")
    return 0 if rows and all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
