"""Atomic file writes: a file appears under its name complete, or not at all.

Every file the command line writes goes through here. The data is written to a hidden
temporary file in the target's folder (`.NAME.<random>.tmp`: same file system, so the final
`os.replace` is atomic; hidden, so a later `tsgb explain FOLDER` skips a leftover), flushed
to disk, then renamed over the target. When anything fails before the rename (a full disk,
a size limit, Ctrl-C) the temporary file is removed and the target is left as it was: the
previous file, or none. An `OSError` is raised again with the target's name in it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open `path` for writing through a temporary file renamed over it on success.

    `mode` is "wb" or "w" (text; `kwargs` go to `open`, e.g. encoding="utf-8"). The file is
    created with the usual permissions (0o666 less the umask), like `open(path, "w")`.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes new files only (mode 'wb' or 'w'), got {mode!r}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:  # from the creation on: an interruption anywhere removes the temporary file
        with open(tmp, "x" + mode[1:], **kwargs) as f:  # "x": a new file, 0o666 less umask
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise _named(exc, target) from None
    except BaseException:  # Ctrl-C, or an error of the code writing the data
        _remove(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see the module docstring)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def _named(exc: OSError, target: Path) -> OSError:
    """The same error, naming the file the user asked for (not the temporary one)."""
    if exc.errno is None:
        return OSError(f"cannot write '{target}': {exc}")
    return OSError(exc.errno, f"cannot write '{target}': {exc.strerror}")
