"""A step of the run's progress display (a rich Progress, or None where nothing is shown)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


def tracked(progress: Any, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """`items`, one progress tick each (a bar with the time left when `total` is known), the task
    removed when they end: a step within a step, as calibration batches or timing iterations."""
    if progress is None:
        yield from items
        return
    task = progress.add_task(description, total=total)
    try:
        for item in items:
            yield item
            progress.advance(task)
    finally:
        progress.remove_task(task)
