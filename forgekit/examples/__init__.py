"""Generators of the example data the notebooks and tests train on (seeded, written locally, never downloaded).

- `sample_data`: Northwind Outfitters support tickets (instruction tuning, classification, continued
  pre-training) and `score_ticket`, the exact-match scorer the README notebook reports;
- `toolcalling_data`: the synthetic multi-domain tool-calling dataset (train/valid/test) of the function-calling
  example.
"""
