"""What the two command lines (``uotsel`` and ``uotsel-train``) share: the parser whose usage
errors are one line naming the flag, the flag types, the cluster flags, and the one error
format, ``PROG COMMAND: error: --FLAG: what is wrong`` (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "BAD_INPUT",
    "OneLineParser",
    "UsageError",
    "add_cluster_flags",
    "check_cluster_flags",
    "flag_first",
    "integer",
    "number",
    "numbers",
    "report",
]

BAD_INPUT = 2  # the exit status of every usage error


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, ``prog: error: --flag: ...``, status 2."""

    def error(self, message: str) -> None:
        self.exit(BAD_INPUT, f"{self.prog}: error: {flag_first(message)}\n")


def flag_first(message: str) -> str:
    """argparse's usage messages in the form ``--flag: what is wrong``."""
    text = " ".join(message.split())
    argument = re.fullmatch(r"argument (\S+?)(?:/\S+)?: (.*)", text)
    if argument:
        return f"{argument[1]}: {argument[2]}"
    required = re.fullmatch(r"the following arguments are required: (.*)", text)
    if required:
        first, *rest = required[1].split(", ")
        also = f" (also missing: {', '.join(rest)})" if rest else ""
        return f"{first}: required{also}"
    unknown = re.fullmatch(r"unrecognized arguments: (.*)", text)
    if unknown:
        return f"{unknown[1].split()[0]}: unrecognized argument"
    ambiguous = re.fullmatch(r"ambiguous option: (\S+?)(?:=\S*)? could match (.*)", text)
    if ambiguous:
        return f"{ambiguous[1]}: ambiguous, could be {ambiguous[2]}"
    return text


def report(prog: str, err: BaseException, status: int = BAD_INPUT, word: str = "error") -> int:
    """Print ``err`` as the one line ``prog: word: message`` on standard error; return
    ``status``."""
    text = " ".join(str(err).split()) or type(err).__name__
    print(f"{prog}: {word}: {text}", file=sys.stderr)
    return status


def _integer_value(text: str, minimum: int, maximum: int) -> int:
    if not re.fullmatch(r"\s*[+-]?\d{1,4000}\s*", text):
        raise ValueError(f"expected an integer, got {text!r}")
    value = int(text)
    if value < minimum:
        raise ValueError(f"must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"must be at most {maximum}, got {value}")
    return value


def _number_value(text: str, allow_zero: bool, allow_inf: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"must be {'>=' if allow_zero else '>'} 0, got {text.strip()}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"must be finite, got {text.strip()}")
    return value


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def as_type(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return as_type


def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]`` (no floats, no huge strings)."""
    return _argparse_type(lambda text: _integer_value(text, minimum, maximum))


def number(*, allow_zero: bool = False, allow_inf: bool = False) -> Callable[[str], float]:
    """An argparse type: a number > 0 (``>= 0`` with ``allow_zero``), finite unless
    ``allow_inf``."""
    return _argparse_type(lambda text: _number_value(text, allow_zero, allow_inf))


def numbers(
    text: str | None,
    flag: str,
    kind: type = float,
    *,
    minimum: int = 0,
    maximum: int = 2**63 - 1,
    allow_zero: bool = True,
) -> list:
    """Comma-separated numbers of ``flag`` (``kind`` int: in ``[minimum, maximum]``; float:
    finite, ``> 0`` or ``>= 0`` with ``allow_zero``); ``[]`` for None.

    Raises:
      UsageError: ``--flag: ...`` naming the bad item.
    """
    if text is None:
        return []
    out = []
    for item in (t for t in text.split(",") if t.strip()):
        try:
            if kind is int:
                out.append(_integer_value(item, minimum, maximum))
            else:
                out.append(_number_value(item, allow_zero, False))
        except ValueError as err:
            raise UsageError(f"{flag}: {err} (comma-separated numbers)") from None
    if not out:
        raise UsageError(f"{flag}: expected comma-separated numbers, got {text!r}")
    return out


def add_cluster_flags(parser: argparse.ArgumentParser, why: str) -> None:
    """``--distributed`` and the explicit cluster flags (``jax.distributed``); ``why``: what
    joining does for this command."""
    parser.add_argument(
        "--distributed",
        action="store_true",
        help=f"join a multi-process run (jax.distributed){why}. The cluster is read from the "
        "environment (SLURM, Open MPI, Cloud TPU) unless --coordinator is given",
    )
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (with --distributed)")
    parser.add_argument("--num-processes", type=integer(1, 2**16), help="with --coordinator")
    parser.add_argument("--process-id", type=integer(0, 2**16), help="with --coordinator")


def check_cluster_flags(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` when an explicit cluster flag comes without --distributed."""
    explicit = [
        flag
        for flag, value in (
            ("--coordinator", args.coordinator),
            ("--num-processes", args.num_processes),
            ("--process-id", args.process_id),
        )
        if value is not None
    ]
    if explicit and not args.distributed:
        raise UsageError(f"{explicit[0]}: given without --distributed")
