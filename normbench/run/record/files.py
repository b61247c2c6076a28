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
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import yaml

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


RECORD_BYTES = 16 << 20  # config.yaml, summary.json and the like: a few KiB as written


class RecordError(ValueError):
    """A record file that is not what normbench writes (its message names why)."""


def load_yaml_record(path: Path, limit: int = RECORD_BYTES) -> Any:
    """A YAML file of a record (config.yaml), read with a bound and parsed safely. YAML
    aliases are refused before anything is built from them: normbench never writes them, and
    an alias bomb would expand beyond any memory."""
    text = read_bounded(path, limit).decode("utf-8")
    if any(
        isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)
    ):
        raise RecordError(f"{Path(path).name} uses YAML aliases, which normbench never writes")
    return yaml.safe_load(text)


JSONL_BYTES = 1 << 30  # a record's JSONL file normbench writes stays far below this


@dataclass
class JsonLines:
    """A JSONL file as read: its rows (JSON objects), the numbers (1-based) of the lines
    that are not one, and whether the last line was cut short (what a kill leaves: a line
    without its newline that is not JSON, which no reader counts as damage)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)
    cut: bool = False

    def describe(self, path: Path) -> str:
        """One line naming the damaged lines of `path` (empty when there are none)."""
        if not self.damaged:
            return ""
        shown = ", ".join(map(str, self.damaged[:5])) + (", ..." if len(self.damaged) > 5 else "")
        what = "line" if len(self.damaged) == 1 else "lines"
        return f"{path}: {what} {shown} not a JSON object; left out, every other row kept"


def read_jsonl(path: Path, limit: int = JSONL_BYTES) -> JsonLines:
    """Every JSON object of a JSONL file, line by line, at most `limit` bytes (OSError
    beyond: a file larger than normbench writes, or not a regular file, is not read). A
    damaged line costs only itself: the rows after it are read on."""
    out = JsonLines()
    path = Path(path)
    if not path.is_file():
        return out
    total = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            total += len(raw)
            if total > limit:
                raise OSError(errno.EFBIG, f"{path} is larger than {limit:,} bytes")
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if isinstance(row, dict):
                out.rows.append(row)
            elif not raw.endswith(b"\n") and raw.strip():
                out.cut = True  # the last line, cut by a kill
            elif raw.strip():
                out.damaged.append(number)
    return out


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
