"""Progress bars of forgekit's long steps: one rule for when they show, and `progress_bar` to draw one.

Every bar (training on the driver, reading and tokenizing data, evaluation on world rank 0, generation,
`forgekit eval-tools`) follows the same rule (`progress_enabled`):

- `progress=True` / `False`, where a function takes it, decides for that call;
- else `FORGEKIT_PROGRESS=1` shows bars everywhere (a CI log, a worker's `logs/rank-N.log`), `FORGEKIT_PROGRESS=0`
  nowhere;
- else a bar shows where someone watches: stderr is a terminal, or the code runs in a Jupyter notebook; then only
  for a step that lasts over a second (`DELAY_S`), so quick steps stay quiet. Piped or redirected output (`forgekit
  train ... > log`, CI, Ray workers, whose output goes to files) gets none, as transformers' `disable_tqdm` keeps
  its bars out of logs.

Bars are tqdm's (`tqdm.auto`: a widget in notebooks), on stderr, with the count, total and rate; a process draws
one bar at a time, and in Ray workers only world rank 0 draws any.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["DELAY_S", "ENV", "progress_bar", "progress_enabled"]

ENV = "FORGEKIT_PROGRESS"
DELAY_S = 1.0  # seconds before a bar shows where it is on by default (terminal, notebook): long steps only


def _forced() -> bool | None:
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"  # a Jupyter kernel (not a terminal IPython)


def _interactive() -> bool:
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        pass
    return _in_notebook()


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether a bar shows: `progress` where given, else `FORGEKIT_PROGRESS`, else whether stderr is a terminal or
    this is a Jupyter notebook."""
    if progress is not None:
        return progress
    forced = _forced()
    return _interactive() if forced is None else forced


def progress_bar(total: int | None, desc: str, unit: str, progress: bool | None = None, **kwargs: Any) -> Any:
    """A tqdm bar over `total` `unit`s (disabled, a no-op, where `progress_enabled(progress)` says no).

    Args:
        total: the count the bar goes to (None: unknown, a counter with a rate).
        desc: what the step does (`tokenizing`, `evaluating`).
        unit: what is counted (`example`, `batch`).
        progress: see `progress_enabled`; a bar asked for (True, or `FORGEKIT_PROGRESS=1`) shows at once, one on by
            default after `DELAY_S`.
        kwargs: passed to tqdm.
    """
    from tqdm.auto import tqdm

    on = progress_enabled(progress)
    asked = progress is True or (progress is None and _forced() is True)
    kwargs.setdefault("delay", 0.0 if asked else DELAY_S)
    kwargs.setdefault("file", sys.stderr)  # at call time: a worker's log, pytest's capture
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, disable=not on, **kwargs)
