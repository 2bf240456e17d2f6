"""The main job: fine-tune the quickstart config, then show the model before and after on a held-out message.

    python scripts/quickstart.py [CONFIG] [key=value ...]      (`make quickstart` runs it)

Prints the run summary (eval loss first -> best, tokens/s, wall time, where the run directory is) and the
base model's and the fine-tuned model's answer to the first message of the held-out test split, next to the
reference ticket. Exit code 0 only when training finished and the best eval loss is at least `--min-drop`
(default 30%) below the first evaluation's (the quickstart's promise; `--min-drop 0` turns the check off).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "training_configs" / "quickstart" / "smollm2-135m-lora-cpu.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. max_steps=12")
    parser.add_argument("--test-path", default=None, help="held-out chat JSONL (default: next to valid_path)")
    parser.add_argument("--min-drop", type=float, default=0.30,
                        help="fail (exit 3) when the eval loss falls by less than this share (default 0.30)")
    args = parser.parse_args(argv)
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    from forgekit.config import ConfigError, load_config
    from forgekit.convert import read_jsonl
    from forgekit.data import DataError
    from forgekit.examples.sample_data import score_ticket, split_prompt
    from forgekit.generate import generate, load_base_for_config, load_for_generation
    from forgekit.train import TrainingError, finetune

    started = time.time()
    try:
        cfg = load_config(args.config, args.overrides)
        test_path = Path(args.test_path or Path(cfg.valid_path or cfg.train_path).with_name("test.jsonl"))
        prompt, reference = split_prompt(read_jsonl(test_path)[0])
        # before: the model the run starts from, prompted exactly as training will format it
        before = generate(load_base_for_config(cfg), [prompt], max_new_tokens=120)[0]
        result = finetune(cfg)
    except (ConfigError, DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, TrainingError) else 1
    after = generate(load_for_generation(result["best_checkpoint"]), [prompt], max_new_tokens=120)[0]

    first, best = result["first_eval_loss"], result["best_eval_loss"]
    drop = (first - best) / first if first and best is not None else None
    print("\n=== fine-tuning summary ===")
    print(f"run directory     {result['run_dir']}")
    print(f"best checkpoint   {result['best_checkpoint']}")
    if drop is not None:
        print(f"eval loss         {first:.3f} -> {best:.3f}  ({drop:.0%} lower)")
    print(f"steps             {result['steps']}, {result['train_tokens']:,} training tokens")
    if result.get("tokens_per_second"):
        print(f"throughput        {result['tokens_per_second']:,.0f} real tokens/s")
    print(f"wall time         {time.time() - started:.0f} s (training job {result['wall_seconds']:.0f} s)")
    print("\n=== held-out message ===")
    print(prompt[-1]["content"])
    for name, text in (("before (base model)", before), ("after (fine-tuned)", after), ("reference", reference)):
        scored = score_ticket(text, reference) if name != "reference" else None
        tag = f"  [{scored['fields_correct']}/{scored['fields_total']} fields right]" if scored else ""
        print(f"\n--- {name}{tag}\n{text}")
    summary = {"eval_loss_drop": drop, "before": before, "after": after, **result}
    (Path(result["run_dir"]) / "quickstart.json").write_text(json.dumps(summary, indent=2, default=str))
    if args.min_drop > 0 and (drop is None or drop < args.min_drop):
        seen = "no evaluation (set valid_path)" if drop is None else f"{drop:.0%}"
        print(f"\nerror: the eval loss fell by {seen}, less than the {args.min_drop:.0%} this job promises",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
