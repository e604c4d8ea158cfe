"""Progress bars on long loops (rich), quiet when not on a terminal or when asked."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars only on an interactive terminal and unless NNCOMPRESS_PROGRESS=0."""
    return os.environ.get("NNCOMPRESS_PROGRESS", "1") != "0" and sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr."""
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
