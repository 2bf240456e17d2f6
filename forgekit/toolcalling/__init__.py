"""Tool calling: the tagged prompt format, a seeded dataset generator, converters and exact-match evaluation.

* `forgekit.toolcalling.render`: flatten tool conversations for templates without tool support; parse calls.
* `forgekit.examples.toolcalling_data`: the synthetic multi-domain tool-calling dataset (train/valid/test).
* `forgekit.toolcalling.convert`: Glaive function-calling v2 and OpenAI chat logs → forgekit's JSONL.
* `forgekit.toolcalling.evaluate`: turn-by-turn replay with exact match of names and arguments.
* `forgekit.toolcalling.bfcl`: the function-calling benchmark layout (questions + acceptable answers), AST rule.
* `forgekit.toolcalling.cli`: the `forgekit generate` and `forgekit eval-tools` commands.
"""
