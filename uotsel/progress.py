"""Progress of long operations: a bar with an ETA on a terminal, a line now and then in a log.

:class:`Progress` counts units of work (iterations, images, steps). On an interactive terminal
it draws a tqdm bar when tqdm is installed (a single self-rewriting line otherwise); when the
stream is not a terminal (a log file, a batch job) it writes one plain line every ``every_s``
seconds, so logs stay readable; ``enabled=False`` writes nothing. ``uotsel`` needs nothing
beyond numpy for it: tqdm is used when present.

    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(3, "k-means", stream=out, every_s=0) as bar:
    ...     for i in range(3):
    ...         bar.update(1, objective=f"{10 - i}")
    >>> out.getvalue().splitlines()[-1].startswith("k-means 3/3 (100%) objective 8 ")
    True
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["LOG_EVERY_S", "Progress", "format_seconds"]

# Seconds between plain progress lines when the stream is not a terminal.
LOG_EVERY_S = 30.0


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Count ``total`` units of work under ``label``.

    Args:
      total: units expected (None: unknown, no ETA).
      label: what is being done, first on the line.
      unit: name of a unit, for the rate (``it``, ``img``, ``step``).
      stream: where to write (default: ``sys.stderr`` at creation).
      every_s: seconds between plain lines when ``stream`` is not a terminal (default
        :data:`LOG_EVERY_S`).
      log_start: when not a terminal, write a line at the first update; otherwise the first
        line comes ``every_s`` after the start, and a short job writes none (not even at its
        end), so that an error it raises stays the only line on the stream.
      enabled: False writes nothing.
      initial: units already done (a resumed run).
      started: ``time.perf_counter()`` when the work began, if before this object was made
        (the rate counts from there).
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        unit: str = "it",
        stream: TextIO | None = None,
        every_s: float | None = None,
        enabled: bool = True,
        initial: int = 0,
        started: float | None = None,
        log_start: bool = True,
    ):
        self.total, self.label, self.unit = total, label, unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        start = time.perf_counter() if started is None else started
        self.done, self._start = initial, start
        self._last = -float("inf") if log_start else start
        self._log_start, self._lines = log_start, 0
        self._first = self._written = initial
        self._fields: dict[str, Any] = {}
        self._bar = None
        self._tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        if self._tty:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=label,
                    unit=unit,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=False,
                )

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = time.perf_counter() - self._start
        return (self.done - self._first) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the current rate (None without a total or a rate)."""
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def line(self) -> str:
        """The progress as one line of text."""
        count = str(self.done)
        if self.total:
            count += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
        parts = [self.label, count] + [f"{k} {v}" for k, v in self._fields.items()]
        parts.append(f"{self.rate():.3g} {self.unit}/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        return " ".join(parts)

    def update(self, count: int = 1, **fields: Any) -> None:
        """``count`` more units done; ``fields`` are shown beside the count."""
        self.done += count
        self._fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix({k: str(v) for k, v in self._fields.items()}, refresh=False)
            self._bar.update(count)
            return
        now = time.perf_counter()
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
        elif now - self._last >= self.every_s or (
            self.total and self.done >= self.total and (self._log_start or self._lines)
        ):
            self._write_line(now)

    def _write_line(self, now: float) -> None:
        self._last, self._written = now, self.done
        self._lines += 1
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take the bar off the screen (before printing a line of results)."""
        if self._bar is not None:
            self._bar.clear()
        elif self._tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def close(self) -> None:
        """Take the bar off the screen; in a log, write the last state unless it was written."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._tty:
            self.clear()
        elif self.enabled and self.done != self._written and (self._log_start or self._lines):
            self._write_line(time.perf_counter())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
