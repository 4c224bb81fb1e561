"""A rich progress bar for long steps (packing, generating the synthetic data set),
callable as the ``progress(done, total[, bad])`` callback the library functions take."""

from __future__ import annotations


class progress_bar:  # noqa: N801 - used like a function
    """A rich progress bar usable as ``progress(done, total[, bad])``."""

    def __init__(self, console, label: str, quiet: bool = False):
        self.console, self.label, self.quiet = console, label, quiet
        self.bar = None

    def __enter__(self):
        if not self.quiet and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)
            self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[extra]}"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=None, extra="")
        return self

    def __call__(self, done, total, bad=None):
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total,
                            extra=f"{bad} bad" if bad else "")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
