"""The `forgekit` command: validate, preview-data, finetune, merge, export, models, generate and the rest.

The Silogen engine's names work too: `sft` and `dpo` (finetune with the task fixed), `merge-adapter BASE ADAPTER OUT`
(merge), `--logging-level`, and `--mlflow-server-uri`, `--experiment-name`, `--hf-mlflow-log-artifacts`,
`--num-preprocess-workers`.

Every subcommand that takes a config also takes dotted overrides after it (`learning_rate=2e-4
lora_config.r=16`). Config and data problems print one report and exit with code 2, never a traceback
(set FORGEKIT_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from forgekit.config import format_config, load_config
from forgekit.errors import ForgekitError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learning_rate=2e-4 lora_config.r=16")
    p.add_argument("--default", action="store_true", help="default mode: only model_id and train_path are needed")


def _load(args: argparse.Namespace):
    return load_config(args.config, args.overrides, default=args.default)


def _summary(manifest: dict) -> str:
    tl = manifest.get("token_length", {})
    lines = [
        f"data: {manifest['train_examples']} training examples -> {manifest['train_rows']} rows "
        f"({manifest.get('dropped_overlength', 0)} dropped over-length, {manifest.get('truncated', 0)} truncated, "
        f"{manifest.get('dropped_unsupervised', 0)} without trained tokens)",
        f"tokens: p50 {tl.get('p50', 0):.0f}, p95 {tl.get('p95', 0):.0f}, max {tl.get('max', 0)}; "
        f"{manifest['supervised_share']:.1%} trained",
    ]
    if "valid_rows" in manifest:
        lines.append(f"validation: {manifest['valid_rows']} rows")
    if "packed_rows" in manifest:
        lines.append(f"packing: {manifest['examples_per_row']:.1f} examples per row, {manifest['pack_fill']:.0%} full")
    lines.append(f"cache: {'reused' if manifest.get('cache_hit') else 'built'} ({manifest['cache_key']})")
    return "\n".join(lines)


def cmd_validate(args: argparse.Namespace) -> int:
    from forgekit.plan import deepspeed_config, format_plan, known_bf16
    from forgekit.train import prepare_run, run_name_for

    cfg = _load(args)
    if args.config_only:  # a config for a model or data this machine cannot reach (a GPU config on a laptop)
        deepspeed_config(cfg, bf16=known_bf16(cfg, cfg.use_gpu))
        print(f"# {args.config}: valid ({'default' if args.default else 'custom'} mode; the config and its DeepSpeed "
              "file only: the model and the data were not loaded, so derived values are not filled in):")
        print(format_config(cfg), end="")
        return 0
    # the checks a run makes before any worker starts (the data, the model's tokenizer, the DeepSpeed file, ...),
    # every problem at once, then the data and the plan, on this machine's hardware (no cluster is checked)
    plan = prepare_run(cfg)
    r = plan.resolved
    print(f"# {args.config}: valid ({'default' if args.default else 'custom'} mode). Resolved config:")
    print(format_config(r), end="")
    print("# " + _summary(plan.data.manifest).replace("\n", "\n# "))
    print(format_plan(plan), end="")
    from forgekit import storage
    from forgekit.checks import validate_notes

    for note in validate_notes(plan, cluster_checked=False):
        print(f"# {note}")

    name = run_name_for(r, plan.data.manifest["cache_key"])
    run_dir = storage.join(r.output_dir, name) if storage.is_remote(r.output_dir) else Path(r.output_dir).expanduser() / name
    print(f"# run directory: {run_dir}" + ("" if r.run_name else " (run_name derived from the config and data)"))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from forgekit.prepare import prepare_data, preview_data

    prepared = prepare_data(_load(args))
    print(preview_data(prepared, args.n, color=None if not args.plain else False))
    return 0


def _tracking_overrides(args: argparse.Namespace) -> list[str]:
    """The Silogen engine's tracking options as dotted overrides: of the config's `logger` section when it has one,
    else of the `tracking:` section (which becomes `logger: {provider: mlflow, ...}`)."""
    flags = {"mlflow_server_uri": args.mlflow_server_uri, "experiment_name": args.experiment_name,
             "hf_mlflow_log_artifacts": args.hf_mlflow_log_artifacts}
    flags = {k: v for k, v in flags.items() if v is not None}
    if not flags:
        return []
    from forgekit.silogen import config_has_key

    if config_has_key(args.config, "logger"):
        names = {"mlflow_server_uri": "tracking_uri"}
        return ["logger.provider=mlflow"] + [f"logger.provider_config.{names.get(k, k)}={v}" for k, v in flags.items()]
    return [f"tracking.{k}={v}" for k, v in flags.items()]


def cmd_finetune(args: argparse.Namespace) -> int:
    from forgekit.train import finetune

    workers = [f"num_preprocess_workers={args.num_preprocess_workers}"] if args.num_preprocess_workers else []
    overrides = [*_tracking_overrides(args), *workers, *args.overrides]  # options first: a dotted override wins
    result = finetune(args.config, overrides, default=args.default, address=args.address)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from forgekit import models

    if args.action == "fetch":
        path = models.fetch_model(args.name)
        print(path)
    else:
        for m in models.list_models():
            print(json.dumps(m, default=str))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from forgekit.export import merge_checkpoint

    info = merge_checkpoint(args.checkpoint, args.out_dir, dtype=args.dtype, verify=not args.no_verify,
                            overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    print(json.dumps(info, indent=1))
    print(f"wrote {args.out_dir}")
    return 0


def cmd_merge_adapter(args: argparse.Namespace) -> int:
    """The Silogen engine's `merge_adapter BASE ADAPTER OUT`: `merge` into BASE (the adapter's model, or a copy)."""
    from forgekit.export import merge_checkpoint

    info = merge_checkpoint(args.peftmodel, args.outpath, dtype=args.dtype, verify=not args.no_verify,
                            overwrite=args.overwrite, max_shard_size=args.max_shard_size, base=args.basemodel)
    print(json.dumps(info, indent=1))
    print(f"wrote {args.outpath}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from forgekit.export import export_vllm

    info = export_vllm(args.checkpoint, args.out_dir, name=args.name, overwrite=args.overwrite)
    print(json.dumps(info, indent=1))
    print(f"wrote {args.out_dir}")
    for note in info["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if info["vllm_ready"]:
        print(f"serve it with: {info['serve']}")
    else:
        print("warning: vLLM cannot serve this adapter (peft still loads it):\n  - "
              + "\n  - ".join(info["problems"]), file=sys.stderr)
    return 0


def cmd_sft(args: argparse.Namespace, task: str = "instruction_tuning") -> int:
    """The Silogen engine's `sft CONFIG`: finetune, the task instruction_tuning unless the config names one."""
    if not any(o.split("=", 1)[0].strip() == "task" for o in args.overrides):
        from forgekit.silogen import config_names_task

        if not config_names_task(args.config):
            args.overrides = [f"task={task}", *args.overrides]
    return cmd_finetune(args)


def cmd_dpo(args: argparse.Namespace) -> int:
    """The Silogen engine's `dpo CONFIG`: finetune with task preference_tuning unless the config names a task."""
    return cmd_sft(args, task="preference_tuning")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    p.add_argument("--mlflow-server-uri", default=None, help="MLflow tracking server (the Silogen engine's option; "
                   "= tracking.mlflow_server_uri)")
    p.add_argument("--experiment-name", default=None, help="MLflow experiment (= tracking.experiment_name)")
    p.add_argument("--hf-mlflow-log-artifacts", default=None, choices=["true", "false"],
                   help="log checkpoints to MLflow as artifacts (= tracking.hf_mlflow_log_artifacts)")
    p.add_argument("--num-preprocess-workers", type=int, default=None, metavar="N",
                   help="processes that tokenize the data (= num_preprocess_workers; default: 1 below 30,000 "
                   "examples, else one per CPU core, at most 8)")


def _add_merge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="weights dtype (auto: the base model's)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="largest safetensors file, e.g. 5GB or 500MB (larger models are sharded, with an index)")
    p.add_argument("--no-verify", action="store_true", help="skip comparing merged and adapter logits")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgekit", description=__doc__.splitlines()[0])
    parser.add_argument("--logging-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help="forgekit's log level (the Silogen engine's option; default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate a config and its data; print every value the run will use")
    _add_config_args(p)
    p.add_argument("--config-only", action="store_true",
                   help="check the config and its DeepSpeed file without loading the model or the data (for a "
                   "model or data files this machine cannot reach, e.g. a Hub model offline)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("preview-data", help="show tokenized examples with the trained spans marked")
    _add_config_args(p)
    p.add_argument("-n", type=int, default=3, help="number of rows to show")
    p.add_argument("--plain", action="store_true", help="mark trained spans with ⟦ ⟧ instead of colour")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("finetune", help="fine-tune: Ray Train + DeepSpeed, writes a run directory")
    _add_config_args(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sft", help="the Silogen engine's sft: finetune with task instruction_tuning (unless the "
                       "config names a task)")
    _add_config_args(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("dpo", help="the Silogen engine's dpo: finetune with task preference_tuning (unless the "
                       "config names a task)")
    _add_config_args(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_dpo)

    p = sub.add_parser("merge", help="merge a LoRA checkpoint into its base model (or re-save full weights) for serving")
    p.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/<run>/checkpoints/step-000100")
    p.add_argument("out_dir", help="where the merged model directory goes")
    _add_merge_options(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("merge-adapter", help="the Silogen engine's merge_adapter: BASE ADAPTER OUT (= merge)")
    p.add_argument("basemodel", help="the base model (id or dir); must be the adapter's base")
    p.add_argument("peftmodel", help="the LoRA adapter directory")
    p.add_argument("outpath", help="where the merged model directory goes")
    _add_merge_options(p)
    p.set_defaults(func=cmd_merge_adapter)

    p = sub.add_parser("export", help="export a checkpoint for a serving engine")
    targets = p.add_subparsers(dest="target", required=True)
    v = targets.add_parser("vllm", help="a LoRA checkpoint as an adapter directory vLLM's LoRA loader takes")
    v.add_argument("checkpoint", help="a LoRA checkpoint directory, e.g. runs/<run>/checkpoints/step-000100")
    v.add_argument("out_dir", help="where the adapter directory goes")
    v.add_argument("--name", help="the adapter's name in the printed vllm serve command (default: OUT_DIR's name)")
    v.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    v.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="embedded models")
    p.add_argument("action", choices=["fetch", "list"])
    p.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    p.set_defaults(func=cmd_models)

    from forgekit import shipped

    shipped.register(sub)  # `forgekit ls`, `forgekit cp NAME DEST`: the shipped configs and DeepSpeed presets

    try:
        from forgekit.toolcalling.cli import register
    except ImportError:
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=getattr(logging, args.logging_level), format="%(message)s")
    # dotted overrides may also follow options (`preview-data cfg.yaml -n 1 context_length=512`)
    if rest and hasattr(args, "overrides") and all("=" in r and not r.startswith("-") for r in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from forgekit.train import TrainingError

    try:
        return args.func(args) or 0
    except ForgekitError as e:
        if os.environ.get("FORGEKIT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        if os.environ.get("FORGEKIT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        import shlex

        again = shlex.join(["forgekit", *(sys.argv[1:] if argv is None else argv)])
        print(f"interrupted; resume from the last checkpoint with:\n  {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
