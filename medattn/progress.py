"""Progress bars: one call for every loop that shows one (tqdm on stderr), silent when disabled.

Example::

    bar = progress_bar(len(cases), desc="predict", unit="case", enabled=not quiet)
    for case in cases:
        ...
        bar.update(1)
    bar.close()
"""

from __future__ import annotations

from typing import Any


def progress_bar(
    total: int | None = None, *, desc: str, unit: str = "it", enabled: bool = True, leave: bool = True
) -> Any:
    """A ``tqdm`` bar of ``total`` steps; disabled, it prints nothing and its ``update``, ``set_postfix_str`` and
    ``close`` do nothing (``tqdm(disable=True)``), so callers never branch on ``enabled``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=not enabled)
