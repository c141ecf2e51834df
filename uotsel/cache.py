"""JAX's persistent compilation cache, for the CLI and for Python callers, and a counter of
the programs a process compiles.

A new process pays for compiling every program it runs; with the cache on, a program compiled
once (same shapes, dtypes and settings that are static) is read back from disk instead.
:func:`enable_compilation_cache` turns it on for the whole process (it sets JAX's global
options, so a library never calls it on import; the ``uotsel`` CLI does).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["Compilations", "default_folder", "enable_compilation_cache"]

ENV = "UOTSEL_CACHE_DIR"


def default_folder() -> str:
    """``$UOTSEL_CACHE_DIR`` if set (an empty value means no cache), else
    ``$XDG_CACHE_HOME/uotsel/jax`` or ``~/.cache/uotsel/jax``."""
    folder = os.environ.get(ENV)
    if folder is not None:
        return folder
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "uotsel", "jax")


def enable_compilation_cache(folder: str | None = None) -> str | None:
    """Keep every program this process compiles in ``folder`` and read it back in later
    processes (JAX's persistent cache, with no minimum compile time or size).

    Args:
      folder: where to keep them; default :func:`default_folder`. An empty string turns the
        cache off (nothing is changed).

    Returns:
      The folder in use, or None when the cache stays off (empty folder, or one that cannot be
      created: a cache that cannot be written only costs time, so this never raises for it).
    """
    folder = default_folder() if folder is None else os.fspath(folder)
    if not folder:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


class Compilations:
    """Counts the programs JAX compiles in this process; loads from the persistent cache are
    not compiles. Call :meth:`register` once before the work to count."""

    def __init__(self) -> None:
        self.compiles = 0
        self.cache_hits = 0
        self._registered = False

    def register(self) -> None:
        if self._registered:
            return
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)
        self._registered = True

    def _on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1

    def _on_event(self, event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    def count(self) -> int:
        """Programs compiled so far (backend compiles less persistent-cache hits)."""
        return self.compiles - self.cache_hits
