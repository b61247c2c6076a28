"""Writing files so that a reader never sees a part: the one atomic writer and the one sha256.

Every file the tool writes whole (config.yaml, summary.json, vocab.json, checkpoints, the
hardware cache, reports) goes through `write_atomic`: a temporary file beside the target
(`.<name>.tmp-<pid>`), flushed and fsynced, renamed over the target, and the folder fsynced,
so that a crash or a power cut leaves the old file or the new one. A failed write leaves no
temporary file behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
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
