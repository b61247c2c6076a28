"""Writing files so that a reader never sees a part, and never through a link: the one
atomic writer, the one way to open a file the tool appends to, and the one sha256.

Every file the tool writes whole (config.yaml, summary.json, vocab.json, checkpoints, the
hardware cache, reports) goes through `write_atomic`: a temporary file beside the target
(`.<name>.tmp-<pid>`, created new), flushed and fsynced, renamed over the target, and the
folder fsynced, so that a crash or a power cut leaves the old file or the new one. A failed
write leaves no temporary file behind. Files the tool appends to or locks (metrics.jsonl,
events.jsonl, the log, `.lock`, the summary's reserve) are opened with `open_own`.

A symbolic link where the tool writes is refused (`LinkError`, one line naming it): the tool
never writes through a link it did not make, nor replaces one.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from normbench.errors import NormbenchError


class LinkError(NormbenchError):
    """A symbolic link where the tool would write a file of its own."""


def refuse_link(path: Path) -> None:
    """Raise LinkError when `path` is a symbolic link (a dangling one too)."""
    if Path(path).is_symlink():
        raise LinkError(
            f"{path} is a symbolic link; normbench never writes through a link it did not "
            "make: remove the link, or choose another output folder"
        )


# open_own's modes: what a file the tool appends to, rewrites or locks is opened with.
_FLAGS = {
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "r+": os.O_RDWR | os.O_CREAT,
}


def open_own(path: Path, mode: str, encoding: str | None = None) -> IO[Any]:
    """Open a file of the tool's own for appending ("a"), rewriting ("wb") or locking ("r+",
    created when missing), refusing a symbolic link in its place (O_NOFOLLOW)."""
    flags = _FLAGS[mode] | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or Path(path).is_symlink():
            refuse_link(path)
        raise
    return os.fdopen(fd, mode, encoding=encoding)


def temporary_name(path: Path) -> Path:
    """The temporary file `write_atomic` writes before renaming it to `path`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write `content` (text as UTF-8, bytes, or a function that writes to the open binary
    file) to `path`: readers see the old file or the new one, never a part."""
    path = Path(path)
    refuse_link(path)
    tmp = temporary_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:
        refuse_link(tmp)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_bounded(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a file; OSError when it holds more (a record file linked to
    /dev/zero, or grown beyond what normbench writes, is never read without bound)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit:,} bytes")
    return data


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str, length: int = 64) -> str:
    """The first `length` hex digits of the sha256 of `text` (cache keys, fingerprints)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]
