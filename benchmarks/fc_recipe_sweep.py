"""Sweep fine-tuning recipes of the function-calling example on a GPU, to pick the CPU default.

The CPU run of `end_to_end_examples/fine_tune_function_calling` costs ~20 minutes; one recipe here costs about
one. Each recipe is a list of dotted overrides of the example's YAML (plus the data size and mix); every
recipe trains through `forgekit.train.finetune` (Ray worker, same data preparation and masks as the CPU run,
one GPU worker with the CPU run's total batch) and is scored with `evaluate_tool_calling` on the same test
split. One JSON line per recipe goes to OUT/sweep.jsonl: the training summary (steps, real tokens, which
set the CPU time at ~270 tokens/s) and the headline figures.

    python benchmarks/fc_recipe_sweep.py MODEL_DIR OUT_DIR RECIPES.json [--base]

RECIPES.json: `[{"name": ..., "n_train": 400, "mix": {...} or null, "overrides": ["num_epochs=2", ...],
"datagen": {"SCHEMA_SHARE": 0.0, ...}}, ...]`; `datagen` (optional) sets constants of
`forgekit.examples.toolcalling_data` for that recipe's data (the training-only variety; the test split never changes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

EXAMPLE = Path(__file__).resolve().parents[1] / "end_to_end_examples/fine_tune_function_calling"
GPU = ["num_devices=1", "use_gpu=true", "train_batch_size_per_device=8", "packing=false",
       "eval_batch_size_per_device=32"]


def figures(report: dict) -> dict:
    cats = report["by_category"]
    return {"exact_match": report["exact_match"], "no_call": report["no_call_accuracy"],
            "call_turns": report["call_turns"]["exact_match"], "text_turns": report["text_turns"]["exact_match"],
            "n_call": report["call_turns"]["turns"], "n_text": report["text_turns"]["turns"],
            **{k: v["exact_match"] for k, v in cats.items() if k != "no_call"},
            "held_out": report.get("held_out_tools", {}).get("exact_match"),
            "failures": report["failures"], "conversation": report.get("conversation_exact_match")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("recipes")
    ap.add_argument("--base", action="store_true", help="also evaluate the base model on each distinct test set")
    ap.add_argument("--n-test", type=int, default=200)
    a = ap.parse_args()

    from forgekit.examples import toolcalling_data as datagen
    from forgekit.examples.toolcalling_data import write_tool_calling_dataset
    from forgekit.toolcalling.evaluate import evaluate_tool_calling
    from forgekit.train import finetune

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    done_base = set()
    for i, rec in enumerate(json.loads(Path(a.recipes).read_text())):
        mix = rec.get("mix")
        data_dir = out / f"data{i}"
        constants = {k: tuple(v) if isinstance(v, list) else v for k, v in rec.get("datagen", {}).items()}
        unknown = [k for k in constants if not hasattr(datagen, k)]
        if unknown:
            raise SystemExit(f"{a.recipes}: recipe {rec['name']!r}: datagen has no constant {unknown[0]!r}")
        with mock.patch.dict(vars(datagen), constants):  # set for this recipe's data, restored after
            paths = write_tool_calling_dataset(data_dir, rec.get("n_train", 400), 40, a.n_test,
                                               seed=rec.get("seed", 0), mix=mix)
        line = {"name": rec["name"], "n_train": rec.get("n_train", 400), "mix": mix, "overrides": rec["overrides"],
                "datagen": rec.get("datagen", {})}
        key = json.dumps(mix, sort_keys=True)
        if a.base and key not in done_base:
            done_base.add(key)
            base = evaluate_tool_calling(a.model, paths["test"], batch_size=64)
            print("BASE", key, json.dumps(figures(base)), flush=True)
            with open(out / "sweep.jsonl", "a") as f:
                f.write(json.dumps({"name": "base", "mix": mix, **figures(base)}) + "\n")
        t0 = time.time()
        overrides = [f"model_id={a.model}", f"train_path={paths['train']}", f"valid_path={paths['valid']}",
                     f"output_dir={out / 'runs'}", f"run_name=r{i}", *GPU, *rec["overrides"]]
        result = finetune(EXAMPLE / "fine_tune_function_calling.yaml", overrides, progress=False)
        line.update({k: result.get(k) for k in ("steps", "train_tokens", "first_eval_loss", "best_eval_loss",
                                                "train_seconds")})
        report = evaluate_tool_calling(result["best_checkpoint"], paths["test"], batch_size=64,
                                       predictions_path=out / f"turns{i}.jsonl")
        line.update(figures(report))
        line["seconds"] = round(time.time() - t0, 1)
        print("RESULT", json.dumps(line), flush=True)
        with open(out / "sweep.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
