"""Atomic outputs: a file or a whole output folder appears complete, or not at all.

Every writer stages into a temporary sibling (same folder, so the final rename never crosses a
file system), fsyncs, then renames over the target with `os.replace`. Any exception, including
KeyboardInterrupt, removes the staging file or folder and leaves the previous target as it was.

A process killed outright (SIGKILL, power loss, OOM killer) cannot clean up, so its temporaries stay:
`.NAME.<pid>-*.tmp` files, `.NAME.staging-<pid>-*` folders, and `.NAME.old-<pid>-*`, the previous
output a `--force` run had set aside. The next writer of the same target removes the ones whose writer
is gone (see `leftovers`: a lock held for the writer's lifetime, not the pid, decides) and, when a run
died between its two renames, puts the set-aside output back, so a killed run never costs the
previous output and leftovers never pile up.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from structprune.errors import UsageError
from structprune.io.leftovers import (
    claim,
    open_entry,
    sweep_files,
    sweep_output_siblings,
)
from structprune.io.probe import first_line

_NEW_FILE_MODE = 0o644
_NEW_DIR_MODE = 0o755
_TMP_SUFFIX = ".tmp"
_STAGING_TAG = "staging-"
_ASIDE_TAG = "old-"
_CLAIM_TRIES = 3


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "plan.json"
    >>> atomic_write_bytes(target, b"{}").read_bytes()
    b'{}'
    """
    return write_atomically(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (UTF-8 by default) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save(obj, path)`, but a crash or Ctrl-C never leaves a truncated file behind."""
    return write_atomically(path, lambda stream: torch.save(obj, stream))


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(stream)` on a temporary sibling of `path`, fsync it, then rename it over `path`."""
    target = Path(path)
    _require_folder(target.parent)
    sweep_files(target.parent, f".{target.name}.", _TMP_SUFFIX)
    fd, staging = _claimed_temp_file(target)
    with os.fdopen(fd, "wb") as stream:  # stays open, so claimed, until it has been renamed
        try:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
            os.chmod(staging, _mode_for(target))
            os.replace(staging, target)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
    _fsync_folder(target.parent)
    return target


def _claimed_temp_file(target: Path) -> tuple[int, Path]:
    for _ in range(_CLAIM_TRIES):
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}-", suffix=_TMP_SUFFIX)
        if claim(Path(name), fd):
            return fd, Path(name)
        os.close(fd)
    raise OSError(f"could not create a temporary file next to {target}: it was removed {_CLAIM_TRIES} times")


@contextlib.contextmanager
def staged_output_dir(out_dir: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it atomically becomes `out_dir`.

    Refuses a non-empty `out_dir` unless `force`. On any exception (or KeyboardInterrupt) the
    staging folder is deleted and a previous `out_dir` is left untouched.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with staged_output_dir(out) as staging:
    ...     _ = (staging / "report.json").write_text("{}")
    >>> sorted(p.name for p in out.iterdir())
    ['report.json']
    """
    target = Path(out_dir)
    created: list[Path] = []
    try:
        if target.parent.is_dir():
            sweep_output_siblings(target, _STAGING_TAG, _ASIDE_TAG)
        check_output_dir(target, force)
        created = _missing_ancestors(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging, fd = _claimed_staging_dir(target)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a path below a file, no permission
        _remove_empty(created)
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"cannot create the output folder {target!s:.200} ({type(exc).__name__}: "
                         f"{first_line(exc)}); choose another --out") from exc
    try:
        yield staging
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    finally:
        os.close(fd)


def _claimed_staging_dir(target: Path) -> tuple[Path, int]:
    for _ in range(_CLAIM_TRIES):
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{_STAGING_TAG}{os.getpid()}-"))
        fd = open_entry(staging)
        if claim(staging, fd):
            return staging, fd
        os.close(fd)
    raise OSError(f"could not create a staging folder next to {target}: it was removed {_CLAIM_TRIES} times")


def _missing_ancestors(folder: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` would create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders made for this run (deepest first), where they are still empty."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Raise UsageError unless `out_dir` is absent, an empty folder, or `force` is set."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output path {out_dir} is a file, not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(
            f"output folder {out_dir} already exists and is not empty; "
            "pass --force to replace it or choose another --out"
        )


def _replace_folder(staging: Path, target: Path) -> None:
    os.chmod(staging, _NEW_DIR_MODE)
    if not target.exists():
        os.rename(staging, target)
        _fsync_folder(target.parent)
        return
    aside = target.with_name(f".{target.name}.{_ASIDE_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fd = open_entry(target)
    try:
        claim(target, fd)  # held across the renames: a sweep never restores an aside still in use
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)
            raise
        _fsync_folder(target.parent)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        os.close(fd)


def _require_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"cannot write into {folder}: the folder does not exist; create it first")


def _mode_for(target: Path) -> int:
    """Keep an existing file's permission bits; new files get rw-r--r--."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return _NEW_FILE_MODE


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
