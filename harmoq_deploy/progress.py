"""Progress display for long loops: a rich bar on a terminal's stderr, silent elsewhere (CI logs, tests)."""

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

_console = Console(stderr=True)


def progress_bar(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=True, disable=not _console.is_terminal) as progress:
        yield from progress.track(items, total=total, description=description)
