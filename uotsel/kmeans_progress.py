"""What :func:`uotsel.kmeans` reports while it runs, and two ways to show it.

:func:`~uotsel.kmeans` calls its ``progress`` callback with a :class:`KMeansStatus` after every
seeding candidate and every Lloyd iteration; :class:`ProgressBars` draws them as progress bars
(lines in a log), :func:`print_progress` writes them as lines on stderr. Both are also reached
as ``uotsel.clustering.ProgressBars`` and ``uotsel.clustering.print_progress``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, NamedTuple

__all__ = ["KMeansStatus", "ProgressBars", "print_progress", "status_line"]


class KMeansStatus(NamedTuple):
    """What :func:`uotsel.kmeans` passes to its ``progress`` callback after every step.

    Attributes:
      stage: ``"seeding"`` (one candidate seeding done) or ``"lloyd"`` (one Lloyd iteration
        on all the data done).
      restart: 1-based restart (``n_init``) this step belongs to; restarts: ``n_init``.
      step: 1-based step within the stage; steps: the most it can take (``init_restarts`` or
        ``max_iter``).
      objective: seeding: the candidate's objective on the evaluation sample; Lloyd: the
        objective of the assignment just made.
      moved: Lloyd only, from the second iteration: fraction of samples whose cluster changed.
    """

    stage: str
    restart: int
    restarts: int
    step: int
    steps: int
    objective: float
    moved: float | None = None


def status_line(status: KMeansStatus) -> str:
    """A :class:`KMeansStatus` as one line of text."""
    head = f"restart {status.restart}/{status.restarts}: " if status.restarts > 1 else ""
    what = "seeding" if status.stage == "seeding" else "iteration"
    line = f"{head}{what} {status.step}/{status.steps}: objective {status.objective:.6g}"
    if status.moved is not None:
        line += f", {100 * status.moved:.2f}% of samples moved"
    return line


class ProgressBars:
    """A ``progress`` callback for :func:`kmeans` that shows each stage of each restart with
    :class:`uotsel.progress.Progress`: a bar with the objective and the moved fraction on a
    terminal; otherwise a line every ``every_s`` seconds (default
    :data:`uotsel.progress.LOG_EVERY_S`) and at the end of a stage that wrote one."""

    def __init__(self, stream: Any = None, every_s: float | None = None, enabled: bool = True):
        self.stream, self.every_s, self.enabled = stream, every_s, enabled
        self._key, self._bar = None, None
        self._mark = time.perf_counter()  # when the work of the next status began

    def __call__(self, status: KMeansStatus) -> None:
        from uotsel.progress import Progress

        key = (status.restart, status.stage)
        if key != self._key:
            self.close()
            head = (
                f"k-means restart {status.restart}/{status.restarts}"
                if status.restarts > 1
                else "k-means"
            )
            what = "seeding" if status.stage == "seeding" else "Lloyd"
            self._key = key
            self._bar = Progress(
                status.steps,
                f"{head} {what}",
                stream=self.stream,
                every_s=self.every_s,
                enabled=self.enabled,
                started=self._mark,
                log_start=False,
            )
        fields = {"objective": f"{status.objective:.6g}"}
        if status.moved is not None:
            fields["moved"] = f"{100 * status.moved:.2f}%"
        self._bar.update(1, **fields)
        self._mark = time.perf_counter()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._key, self._bar = None, None

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def print_progress(status: KMeansStatus) -> None:
    """A ``progress`` callback that writes :func:`status_line` to stderr."""
    print(status_line(status), file=sys.stderr, flush=True)
