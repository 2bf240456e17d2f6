"""Write the datasets forgekit ships (seeded, no third-party data) under data/generated/.

    python scripts/make_sample_data.py [--out data/generated]

support_tickets/ (instruction tuning, the quickstart), ticket_routing/ (classification),
kb_articles/ (continued pre-training). The same command always writes byte-identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from forgekit.examples.sample_data import (
    write_classification_dataset,
    write_pretraining_dataset,
    write_quickstart_dataset,
)

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "data" / "generated"))
    out = Path(parser.parse_args().out)
    written = {
        "support_tickets": write_quickstart_dataset(out / "support_tickets"),
        "ticket_routing": write_classification_dataset(out / "ticket_routing"),
        "kb_articles": write_pretraining_dataset(out / "kb_articles"),
    }
    for name, splits in written.items():
        for split, path in splits.items():
            n = len(Path(path).read_text(encoding="utf-8").splitlines())
            print(f"{name}/{split}: {n} examples -> {path}")


if __name__ == "__main__":
    main()
