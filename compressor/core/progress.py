"""A step of the run's progress display (a rich Progress, or None where nothing is shown)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def task(progress: Any, description: str, total: int | None = None) -> Iterator[Any]:
    """A task of `progress` for the block (a bar with the time left when `total` is known, a pulse
    when not), removed when the block ends; None where there is no progress display."""
    if progress is None:
        yield None
        return
    task_id = progress.add_task(description, total=total)
    try:
        yield task_id
    finally:
        progress.remove_task(task_id)


def tracked(progress: Any, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """`items`, one progress tick each: a step within a step, as calibration batches or timing
    iterations."""
    with task(progress, description, total) as task_id:
        for item in items:
            yield item
            if task_id is not None:
                progress.advance(task_id)
