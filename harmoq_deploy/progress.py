"""Progress display for long loops: a rich bar on a terminal's stderr, silent elsewhere (CI logs, tests).

Inside ``stages(...)`` (a multi-stage command such as ``harmoq-build engine``) there is one live
display: a line for the stage being run and, under it, the bars of that stage's loops. Rich
allows one live display at a time, so loops join the open display instead of starting their own.
Without a terminal (a log file, a pipe) a long command would otherwise say nothing for minutes,
so each stage's start is printed as a plain line on stdout instead; stderr stays for errors.
"""

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

_console = Console(stderr=True)
_log = Console(soft_wrap=True)
_open: list[Progress] = []


def _progress() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=_console, transient=True, disable=not _console.is_terminal)


def progress_bar(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if _open:
        progress = _open[-1]
        task = progress.add_task(description, total=total if total is not None else getattr(items, "__len__", lambda: None)())
        try:
            for item in items:
                yield item
                progress.advance(task)
        finally:
            progress.remove_task(task)
        return
    with _progress() as progress:
        yield from progress.track(items, total=total, description=description)


class StageTracker:
    """Advances the stage line of an open ``stages`` display."""

    def __init__(self, progress: Progress, task, count: int):
        self._progress, self._task, self._count, self._started = progress, task, count, 0

    def start(self, name: str) -> None:
        self._started += 1
        self._progress.update(self._task, description=f"[bold]{name}")
        if not _console.is_terminal:
            _log.print(f"stage {self._started}/{self._count}: {name} ({time.strftime('%H:%M:%S')})", highlight=False)

    def done(self) -> None:
        self._progress.advance(self._task)


@contextmanager
def stages(count: int) -> Iterator[StageTracker]:
    """One display for a command of ``count`` stages; loops inside show under the stage line."""
    with _progress() as progress:
        _open.append(progress)
        try:
            yield StageTracker(progress, progress.add_task("starting", total=count), count)
        finally:
            _open.pop()
