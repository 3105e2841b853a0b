"""Progress of long work: a live bar on a terminal, plain lines elsewhere, nothing when quiet.

Library functions take a :class:`Progress` (``None``: silent) and open one
:class:`Task` per loop (images, tiles of one image, layers, repeats). The same
calls give

* on a terminal: a rich progress bar with counts, elapsed time and ETA;
* when stderr is not a terminal (CI logs, pipes): one plain line per step, at most
  one every ``interval`` seconds (the first and last step always), with the ETA;
* quiet: nothing.

Every open task is also recorded here, so that whoever catches Ctrl-C can say how
far the work got (:func:`interrupted_summary`), whatever the display mode.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, List, Optional

_OPEN: List["Task"] = []
_LAST_FINISHED: List[str] = []
_ABORTED: List[str] = []  # summaries of tasks left by an exception, outermost first


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Task:
    """One loop of known (or unknown) length; use as a context manager."""

    def __init__(self, owner: "Progress", description: str, total: Optional[int], unit: str):
        self.owner = owner
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0
        self.note = ""
        self.started = time.perf_counter()
        self._last_print = 0.0
        self._rich_id: Any = None

    # ------------------------------------------------------------------ state
    def eta(self) -> Optional[float]:
        """Seconds left, from the mean time per finished step (None before the first step)."""
        if not self.total or not self.done:
            return None
        elapsed = time.perf_counter() - self.started
        return elapsed / self.done * (self.total - self.done)

    def summary(self) -> str:
        """``"super-resolving: 3 of 10 images done"``."""
        of = f" of {self.total}" if self.total is not None else ""
        return f"{self.description}: {self.done}{of} {self.unit} done"

    def status_line(self) -> str:
        elapsed = time.perf_counter() - self.started
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        eta = self.eta()
        tail = f", ETA {_seconds(eta)}" if eta is not None and self.done < (self.total or 0) else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.description}: {count} {self.unit}, {_seconds(elapsed)}{tail}{note}"

    # ------------------------------------------------------------------ updates
    def advance(self, n: int = 1, note: str = "") -> None:
        """``n`` more steps done; ``note`` says which (an image name, a layer)."""
        self.done += n
        self.note = note
        self.owner._update(self)

    def __enter__(self) -> "Task":
        _OPEN.append(self)
        self.owner._start(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self in _OPEN:
            _OPEN.remove(self)
        if exc_type is None:
            _LAST_FINISHED[:] = [self.summary()]
        else:
            _ABORTED.insert(0, self.summary())  # inner tasks leave first
        self.owner._finish(self, ok=exc_type is None)


class Progress:
    """Where progress goes: ``mode`` "auto" (a bar on a terminal, plain lines otherwise),
    "bar", "plain" or "quiet"."""

    def __init__(self, mode: str = "auto", stream: Optional[IO[str]] = None, interval: float = 2.0):
        if mode not in ("auto", "bar", "plain", "quiet"):
            raise ValueError(f"progress mode must be auto, bar, plain or quiet, got {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self.interval = interval
        self._rich: Any = None

    @classmethod
    def quiet(cls) -> "Progress":
        return cls("quiet")

    @classmethod
    def of(cls, value: Any) -> "Progress":
        """A Progress from what library functions accept: a Progress, True (auto), False/None (quiet)."""
        if isinstance(value, Progress):
            return value
        return cls("auto") if value else cls("quiet")

    def task(self, description: str, total: Optional[int] = None, unit: str = "steps") -> Task:
        """A new task (enter it with ``with``)."""
        return Task(self, description, total, unit)

    def say(self, text: str) -> None:
        """A plain message line on the progress stream (not in quiet mode)."""
        if self.mode == "quiet":
            return
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def result(self, text: str) -> None:
        """A result line on stdout (printed above a live bar when both share a terminal)."""
        if self._rich is not None and sys.stdout.isatty():
            self._rich.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    # ------------------------------------------------------------------ display
    def _start(self, task: Task) -> None:
        if self.mode == "bar":
            if self._rich is None:
                from rich.console import Console
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                           TimeElapsedColumn, TimeRemainingColumn)

                self._rich = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                    console=Console(file=self.stream), transient=True,
                )
                self._rich.start()
            task._rich_id = self._rich.add_task(task.description, total=task.total, note="")
        elif self.mode == "plain":
            total = f" ({task.total} {task.unit})" if task.total is not None else ""
            print(f"{task.description}{total} ...", file=self.stream, flush=True)
            task._last_print = time.perf_counter()

    def _update(self, task: Task) -> None:
        if self.mode == "bar" and self._rich is not None:
            self._rich.update(task._rich_id, completed=task.done, note=task.note)
        elif self.mode == "plain":
            now = time.perf_counter()
            last = task.total is not None and task.done >= task.total
            if last or task.done == 1 or now - task._last_print >= self.interval:
                print(task.status_line(), file=self.stream, flush=True)
                task._last_print = now

    def _finish(self, task: Task, ok: bool) -> None:
        if self.mode == "bar" and self._rich is not None:
            self._rich.remove_task(task._rich_id)
            if not self._rich.tasks:
                self._rich.stop()
                self._rich = None


def interrupted_summary() -> Optional[str]:
    """How far the work got, for a Ctrl-C message: every open task, outermost first
    (e.g. "super-resolving: 3 of 10 images done; tiles of big.png: 5 of 16 tiles done"),
    or the tasks an exception just left, else the last finished one; None when nothing was
    tracked."""
    if _OPEN:
        return "; ".join(t.summary() for t in _OPEN)
    if _ABORTED:
        return "; ".join(_ABORTED)
    return _LAST_FINISHED[0] if _LAST_FINISHED else None


def reset() -> None:
    """Forget tracked tasks (a new command starts)."""
    _OPEN.clear()
    _LAST_FINISHED.clear()
    _ABORTED.clear()
