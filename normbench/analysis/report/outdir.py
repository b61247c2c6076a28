"""Where a report goes: never over anything `normbench compare` did not write.

Every report folder holds `.normbench-report.json` (records.MARKER), the list of the files and
folders compare wrote into it. The report folder may be a new folder (its parents are
created) or compare's own earlier report, which is replaced: the new report is built in a
hidden folder beside it (.DIR.tmp-*, records.TEMP_NAME) and swapped in at once (Linux
renameat2 RENAME_EXCHANGE: a reader sees the old report or the new, never none; elsewhere the
old one is renamed aside first), then the old one is deleted file by file, only what its
marker lists. Refused before anything is touched (`check_out`): a folder that is a file or a
symbolic link, an existing folder without the marker, a report holding anything its marker
does not list, a folder that is one of the inputs or holds one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench.analysis.records import MARKER, CompareError, is_report
from normbench.run.record.files import RECORD_BYTES, read_bounded

REPORT_FORMAT = 1


def default_out(paths: list[str]) -> Path:
    """`<sweep or run dir>/compare` for one directory (the same inputs, the same report);
    else a folder here named by the time, to the microsecond, and this process, so that two
    compares started at once never share it."""
    if len(paths) == 1 and not glob.has_magic(paths[0]) and Path(paths[0]).is_dir():
        return Path(paths[0]) / "compare"
    now = time.time()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now))
    return Path(f"compare-{stamp}.{int(now % 1 * 1e6):06d}-{os.getpid()}")


def clean_stale(out: Path) -> list[Path]:
    """Remove the hidden folders that a compare killed while it built or swapped a report
    beside `out` left behind (`beside`'s names, whose process is gone); return them."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")
    removed = []
    if not out.parent.is_dir():
        return removed
    for folder in out.parent.iterdir():
        m = pattern.match(folder.name)
        if m is None or folder.is_symlink() or not folder.is_dir() or _alive(int(m.group(2))):
            continue
        discard(folder)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _tree(root: Path) -> tuple[list[str], list[str]]:
    """The files (symbolic links included, never followed) and the folders below `root`,
    as sorted POSIX paths relative to it."""
    files, folders = [], []
    for top, dirs, names in os.walk(root):
        rel = Path(top).relative_to(root)
        for d in list(dirs):
            if (Path(top) / d).is_symlink():
                dirs.remove(d)
                names.append(d)
            else:
                folders.append((rel / d).as_posix())
        files += [(rel / n).as_posix() for n in names]
    return sorted(files), sorted(folders)


def _parents(files: list[str]) -> set[str]:
    return {p.as_posix() for f in files for p in Path(f).parents if p != Path(".")}


def _plain(rel: Any) -> bool:
    """A relative POSIX path that stays inside its folder."""
    if not isinstance(rel, str) or not rel:
        return False
    path = Path(rel)
    return not path.is_absolute() and ".." not in path.parts and rel == path.as_posix()


@dataclass
class Written:
    """What compare wrote into a report folder (its marker): the files and the folders."""

    files: list[str]
    folders: list[str]

    def all_folders(self) -> set[str]:
        return set(self.folders) | _parents(self.files)


def read_marker(folder: Path) -> Written | None:
    """What compare wrote into report `folder`, or None when the folder is not a report (no
    marker, or one that compare would not have written)."""
    try:
        marker = json.loads(read_bounded(folder / MARKER, RECORD_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != REPORT_FORMAT:
        return None
    files, folders = marker.get("files"), marker.get("folders")
    if not isinstance(files, list) or not isinstance(folders, list):
        return None
    if not all(map(_plain, files + folders)):
        return None
    return Written(files, folders)


def write_marker(folder: Path) -> None:
    """Record every file and folder now in `folder` as written by compare."""
    files, folders = _tree(folder)
    marker = {
        "written_by": "normbench compare",
        "format": REPORT_FORMAT,
        "files": [f for f in files if f != MARKER],
        "folders": folders,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def unlisted(folder: Path, written: Written) -> list[str]:
    """What report `folder` holds that its marker does not list (added by someone else)."""
    files, folders = _tree(folder)
    listed, allowed = set(written.files) | {MARKER}, written.all_folders()
    return [f for f in files if f not in listed] + [d for d in folders if d not in allowed]


def check_out(out: Path, inputs: list[Path], paths: list[str], given: bool) -> Path:
    """The absolute report folder for `out`, or CompareError when writing there could
    touch anything but compare's own earlier report."""
    name = f"--out {out}" if given else f"the default report folder {out}"
    other = "give --out a new folder"
    if given:
        default = default_out(paths)
        where = os.path.join(paths[0], "compare") if default.name == "compare" else None
        where = where or "a new dated folder here"
        other = f"choose another --out (the default is {where})"
    absolute = Path(os.path.abspath(out))
    if absolute.parent == absolute:
        raise CompareError(f"{name} is the root of the file system; {other}")
    target = absolute.parent.resolve() / absolute.name
    for path in inputs:
        if path == target:
            raise CompareError(f"{name} is one of the inputs; {other}")
        if target in path.parents:
            raise CompareError(f"{name} contains the input {path}; {other}")
    if target.is_symlink():
        raise CompareError(f"{name} is a symbolic link; give a folder path, or {other}")
    if target.exists() and not target.is_dir():
        raise CompareError(f"{name} is a file, not a folder; {other}")
    if target.is_dir():
        written = read_marker(target)
        if written is None:
            raise CompareError(
                f"{name} exists and is not a normbench compare report (no {MARKER}); choose a "
                "new folder — compare never deletes what it did not write"
            )
        extra = unlisted(target, written)
        if extra:
            raise CompareError(
                f"{name} holds {extra[0]}, which compare did not write; move it out of the "
                "report or choose another --out — compare never deletes what it did not write"
            )
    return target


RENAME_NOREPLACE, RENAME_EXCHANGE, AT_FDCWD = 1, 2, -100


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """Linux renameat2(2): True when done, False where the system or the file system lacks
    it (then the caller falls back to rename); OSError on any other failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc older than glibc 2.28
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    if call(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def beside(out: Path, kind: str) -> Path:
    """A fresh hidden name beside `out` for a report being built (tmp) or removed (old);
    records.TEMP_NAME matches it, so that such a folder is never read as records."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def install(built: Path, out: Path) -> Path | None:
    """Move the report `built` to `out`. An earlier report at `out` is swapped out in one
    step (renameat2 RENAME_EXCHANGE: readers see the old report or the new, never none) or,
    where that is not available, renamed aside first. Returns where the old report now is."""
    if not os.path.lexists(out):
        if not _renameat2(built, out, RENAME_NOREPLACE):
            os.rename(built, out)
        return None
    if _renameat2(built, out, RENAME_EXCHANGE):
        return built
    aside = beside(out, "old")
    os.rename(out, aside)
    try:
        os.rename(built, out)
    except BaseException:
        os.rename(aside, out)
        raise
    return aside


def remove_report(folder: Path) -> bool:
    """Delete a report folder file by file: only what its marker lists, then the folders
    that are left empty. Anything else (added since) stays, and so does the folder; returns
    whether the folder is gone."""
    written = read_marker(folder)
    if written is None:
        return False
    for rel in written.files:
        path = folder / rel
        inside = all(not (folder / p).is_symlink() for p in Path(rel).parents if p != Path("."))
        if inside and os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            path.unlink()
    (folder / MARKER).unlink(missing_ok=True)
    for rel in sorted(written.all_folders(), key=lambda p: -len(Path(p).parts)):
        with contextlib.suppress(OSError):  # not empty: it holds something else now
            (folder / rel).rmdir()
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def discard(built: Path) -> None:
    """Remove a report folder being built (compare's own, from mkdir on) after a failure."""
    if not os.path.lexists(built):
        return
    if is_report(built):  # complete, or the old report after a swap: by its marker
        remove_report(built)
    else:
        shutil.rmtree(built, ignore_errors=True)
