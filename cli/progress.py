"""A rich progress bar per pipeline stage, on stderr so that `--json` output stays clean."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

WARNING = "warning: "  # how the pipeline words a warning in its progress messages


class StageBars:
    """Callable as `progress(stage, fraction, message)`; one bar per stage, created on first use.

    A message that is a warning is also printed above the bars when it arrives, since a long
    run's bars would overwrite it (`warned` keeps them, for a summary not to repeat them).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.tasks: dict[str, TaskID] = {}
        self.warned: list[str] = []

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if message.startswith(WARNING):
            self.warn(message.removeprefix(WARNING))
        if not self.tasks:
            # Started with the first bar: a command that fails before any leaves stderr to
            # its one error line (rich writes a blank line when it stops a display).
            self.progress.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=1.0, message="")
        self.progress.update(
            self.tasks[stage], completed=min(max(fraction, 0.0), 1.0), message=message
        )

    def warn(self, warning: str) -> None:
        """On stderr now, above the bars (or alone, with the bars disabled for `--json`)."""
        self.warned.append(warning)
        self.progress.console.print(
            f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True
        )

    def __enter__(self) -> StageBars:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.tasks:
            self.progress.stop()
