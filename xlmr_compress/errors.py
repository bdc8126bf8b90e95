"""The one exception type for bad input: its message names the problem and the fix."""
from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input: the message names the problem and the fix; the CLI prints it as one line."""


def not_utf8(path: str | Path, error: UnicodeDecodeError) -> UserError:
    """The error for a text file in another encoding than UTF-8 (every text file here is read as UTF-8)."""
    return UserError(f"{path} is not UTF-8 text (it holds the byte {error.object[error.start:error.start + 1]!r}): "
                     f"convert it, e.g. `iconv -f latin1 -t utf-8 {path}`")
