"""Progress for a person waiting on ``run --once``: bars on a terminal, nothing otherwise
(off a terminal, the structured log lines tell the same story)."""

from __future__ import annotations

import sys
from typing import Any


class RunProgress:
    """Rich progress bars on stderr for PDF downloads and event delivery."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
        )
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    @classmethod
    def for_terminal(cls) -> RunProgress | None:
        return cls() if sys.stderr.isatty() else None

    def begin(self, key: str, description: str, total: int) -> None:
        if total and key not in self._tasks:
            self._tasks[key] = self._progress.add_task(description, total=total)

    def advance(self, key: str, amount: int = 1) -> None:
        task = self._tasks.get(key)
        if task is not None:
            self._progress.advance(task, amount)

    def close(self) -> None:
        self._progress.stop()
