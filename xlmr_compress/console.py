"""What long work shows a person: progress bars on a terminal only (logs and pipes stay clean), and warnings as
one line naming the problem and the fix, without a Python source line under them."""
from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm


def interactive(stream: TextIO | None = None) -> bool:
    """Whether a person is watching: the stream (standard error by default) is a terminal."""
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def line_buffered() -> None:
    """Send each line of standard output on at once, so a log file or pipe shows training progress as it happens
    rather than in blocks (Python buffers a non-terminal stdout)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar with its rate, shown on a terminal only."""
    return tqdm(iterable, disable=not interactive(), dynamic_ncols=True, **kwargs)


def _one_line(message: Any, category: type, filename: str, lineno: int, file: TextIO | None = None,
              line: str | None = None) -> None:
    print(f"warning: {str(message).splitlines()[0]}", file=file or sys.stderr)


def one_line_warnings() -> None:
    """Print every warning as `warning: MESSAGE` on one line (the CLI's form)."""
    warnings.showwarning = _one_line
