"""The `forgekit generate`, `forgekit eval-tools` and `forgekit tool-data` commands (registered by forgekit.cli).

    forgekit generate CHECKPOINT conversations.jsonl -o completions.jsonl
    forgekit eval-tools CHECKPOINT test.jsonl -o report.json [--predictions turns.jsonl]
    forgekit eval-tools CHECKPOINT questions.json --answers possible_answers.json   # benchmark layout
    forgekit tool-data synth OUT_DIR --train 1000 --valid 100 --test 200
    forgekit tool-data glaive glaiveai/glaive-function-calling-v2 OUT_DIR --valid 200 --test 300
    forgekit tool-data openai-logs logs.jsonl OUT_DIR --valid 50 --test 100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["format_report", "read_conversations", "register"]


def read_conversations(path: str) -> list[dict]:
    """Records of a conversations JSONL (`messages`, optional `tools`), validated with file:line problems.

    Raises:
        forgekit.data.DataError: a line is not a valid conversation.
    """
    from forgekit.data import read_examples

    # causal_lm: a conversation to continue need not hold an assistant turn yet
    return [{"messages": ex.messages, "tools": ex.tools} for ex in read_examples(path, task="causal_lm")]


def _write_jsonl(rows: list[dict], path: str | None) -> None:
    from forgekit.convert import write_jsonl

    if path in (None, "-"):
        sys.stdout.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        write_jsonl(rows, path)


def cmd_generate(args: argparse.Namespace) -> int:
    if Path(args.checkpoint).suffix in (".yaml", ".yml") and Path(args.checkpoint).is_file():
        # the Silogen engine's form: `generate CONFIG OUTPUT` (forgekit.generate.generate_from_config)
        from forgekit.generate import generate_from_config

        records = generate_from_config(args.checkpoint, args.input)
        print(f"wrote {len(records)} answers to {args.input}", file=sys.stderr)
        return 0
    from forgekit.generate import generate, load_for_generation
    from forgekit.toolcalling.render import parse_tool_calls, to_openai_tool_calls

    records = read_conversations(args.input)
    prompts, references = [], []
    for rec in records:
        msgs = list(rec["messages"])
        # a conversation that already ends with an answer is continued from before it; the answer is kept
        references.append(msgs.pop() if msgs[-1]["role"] == "assistant" and len(msgs) > 1 else None)
        prompts.append(msgs)
    model = load_for_generation(args.checkpoint)
    texts = generate(
        model, prompts, [r["tools"] for r in records], max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, num_threads=args.threads,
    )
    rows = []
    for rec, msgs, ref, text in zip(records, prompts, references, texts):
        calls, error = parse_tool_calls(text)
        response = {"role": "assistant", "content": text}
        if calls:
            response["tool_calls"] = to_openai_tool_calls(calls)
        row = {"messages": msgs, "tools": rec["tools"], "response": response}
        if error:
            row["parse_error"] = error
        if ref is not None:
            row["reference"] = ref
        rows.append(row)
    _write_jsonl(rows, args.output)
    return 0


def format_report(report: dict, title: str = "") -> str:
    """A few lines summarising an evaluation report: the headline turn-level exact match with the call-turn
    exact match and the score of a model that never calls beside it, no-call accuracy, each separate measure
    (seen tools, held-out tools, parallel, single, multi-turn, no-call), failures."""
    def pct(block: dict) -> str:
        if block.get("exact_match") is None:
            return "n/a"
        calls = block.get("call_turn_exact_match")
        beside = f"; call turns {calls:.1%} of {block['call_turns']}" if calls is not None else ""
        return (f"{block['exact_match']:.1%} of {block['turns']} turns{beside} "
                f"(conversations {block['conversation_exact_match']:.1%} of {block['conversations']})")

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    calls = report["call_turns"]
    lines = [f"{title}exact match (turns) {pct({k: v for k, v in report.items() if k != 'call_turn_exact_match'})}",
             f"  call turns: {share(calls['exact_match'])} of {calls['turns']}; a model that never calls scores "
             f"{share(report.get('never_call_score'))}; no-call accuracy {share(report.get('no_call_accuracy'))}"]
    measures = report.get("measures") or report["by_category"]
    lines += [f"  {m.replace('_', ' ')}: {pct(b)}" for m, b in measures.items()]
    lines.append("  failures (turns): " + ", ".join(f"{k} {v}" for k, v in report["failures"].items()))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from forgekit.toolcalling.bfcl import AST_RULE, evaluate_bfcl, is_bfcl
    from forgekit.toolcalling.evaluate import evaluate_tool_calling

    common = {"limit": args.limit, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              "num_threads": args.threads, "predictions_path": args.predictions}
    if is_bfcl(args.test):
        if args.answers is None:
            print("eval-tools: no --answers: every item is scored as needing no call (irrelevance data)",
                  file=sys.stderr)
        report = evaluate_bfcl(args.checkpoint, args.test, args.answers, **common)
        print(f"benchmark layout, {AST_RULE}", file=sys.stderr)
    elif args.answers is not None:
        print(f"eval-tools: --answers is for question files in the benchmark layout ('question' and 'function' per "
              f"item); {args.test} is not one", file=sys.stderr)
        return 2
    else:
        report = evaluate_tool_calling(args.checkpoint, args.test, **common)
    report["checkpoint"] = str(args.checkpoint)
    report["test"] = str(args.test)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(format_report(report))
    return 0


def cmd_tool_data(args: argparse.Namespace) -> int:
    from forgekit.toolcalling.convert import write_splits

    source = "synthetic" if args.source == "synth" else args.source
    paths, problems = write_splits(
        source, args.out_dir, args.train, args.valid, args.test, seed=args.seed, input_path=getattr(args, "input", None)
    )
    for split, path in paths.items():
        n = sum(1 for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
        print(f"{split}: {n} conversations -> {path}")
    if problems:
        print(f"skipped {len(problems)} row(s) that could not be converted:", file=sys.stderr)
        for p in problems[:20]:
            print(f"  {p}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tool-calling subcommands to the `forgekit` parser."""
    p = subparsers.add_parser(
        "generate", help="generate the next assistant turn for each conversation of a JSONL file"
    )
    p.add_argument("checkpoint", help="model id, base model dir, LoRA adapter dir or full checkpoint dir; or a "
                   "generation config YAML (the Silogen engine's `generate CONFIG OUTPUT`: then INPUT is the output "
                   "file, .yaml or .jsonl)")
    p.add_argument("input", help="JSONL of {'messages': [...], 'tools': [...]}; a final assistant turn is "
                   "set aside as 'reference' and generated again")
    p.add_argument("-o", "--output", default="-", help="output JSONL (default: stdout)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="CPU threads while generating (1 is fastest on a busy machine)")
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser(
        "eval-tools", help="exact-match tool-calling evaluation: replay each test conversation turn by turn"
    )
    p.add_argument("checkpoint", help="model id, base model dir, LoRA adapter dir or full checkpoint dir")
    p.add_argument("test", help="JSONL of tool-calling conversations (OpenAI format, with tools), or a question "
                   "file in the function-calling benchmark layout ('question' turns and 'function' schemas per item)")
    p.add_argument("--answers", help="the benchmark layout's answer file (per item and argument, the acceptable "
                   "values); scored by the AST rule (forgekit.toolcalling.bfcl); without it every item expects no call")
    p.add_argument("-o", "--output", help="write the report (JSON) here")
    p.add_argument("--predictions", help="write every scored turn (JSONL) here")
    p.add_argument("--limit", type=int, help="evaluate only the first N conversations")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, help="CPU threads while generating (1 is fastest on a busy machine)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser(
        "tool-data", help="write tool-calling train/valid/test JSONL: synthetic, or converted from Glaive v2 or "
        "OpenAI chat logs"
    )
    sources = p.add_subparsers(dest="source", required=True)
    synth = sources.add_parser("synth", help="forgekit's seeded synthetic dataset (held-out tools in test)")
    synth.add_argument("out_dir", help="directory for train.jsonl, valid.jsonl, test.jsonl")
    synth.add_argument("--train", type=int, default=1000)
    for name, what in (("glaive", "Glaive function-calling v2 rows ({'system', 'chat'})"),
                       ("openai-logs", "OpenAI chat logs (messages, or request/response pairs)")):
        conv = sources.add_parser(name, help=f"convert {what}, shuffle and split")
        conv.add_argument("input", help="a JSON or JSONL file, or a Hugging Face dataset name (org/name[:split])")
        conv.add_argument("out_dir", help="directory for train.jsonl, valid.jsonl, test.jsonl")
        conv.add_argument("--train", type=int, default=None, help="keep at most this many training conversations")
    for sp in sources.choices.values():
        sp.add_argument("--valid", type=int, default=100)
        sp.add_argument("--test", type=int, default=200)
        sp.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tool_data)
