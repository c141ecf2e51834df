"""Failures the commands report with an exit status of their own (imports nothing heavy, so the
command line can name them before JAX or grain load)."""

from __future__ import annotations

__all__ = ["WorkerDied"]


class WorkerDied(RuntimeError):
    """A data worker process ended without a result (killed, out of memory); the message names
    the worker and the image it was reading. Exit status 4 on the command line."""
