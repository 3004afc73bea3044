"""Leftovers of killed writers: staging folders, set-aside old outputs and temporary files.

Ownership is a lock, not a name: a writer holds a shared `flock` on every temporary entry it creates
(`claim`) until it renames or removes it, and the kernel drops that lock when the process dies, even by
SIGKILL. A later writer to the same target sweeps the entries nobody holds (`abandoned`), taking an
exclusive lock while it removes them so that a writer cannot claim an entry being removed. Unlike a pid
check this survives pid reuse and runs in containers where every run is pid 1. Where locks are not
available (no `fcntl`, or a file system that refuses them) nothing counts as abandoned, so nothing that
might be in use is ever removed.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so no sweeping
    fcntl = None


def claim(path: Path, fd: int) -> bool:
    """Hold a shared lock on `fd`, the just-created `path`; False if a sweep removed `path` first
    (the caller then creates another). Always True where locks are unavailable."""
    if not _lock(fd, shared=True):
        return True
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def open_entry(path: Path) -> int:
    """A read-only descriptor of a file or folder, to `claim` it or keep it claimed."""
    return os.open(path, os.O_RDONLY)


@contextlib.contextmanager
def abandoned(path: Path) -> Iterator[bool]:
    """True (with an exclusive lock held for the block) when no live process claims `path`."""
    try:
        fd = open_entry(path)
    except OSError:
        yield False
        return
    try:
        yield _lock(fd, shared=False)
    finally:
        os.close(fd)


def sweep_files(folder: Path, prefix: str, suffix: str) -> list[Path]:
    """Delete the abandoned files `folder/PREFIX*SUFFIX`; returns the ones removed."""
    removed = []
    for path in sorted(folder.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}")):
        with abandoned(path) as stale:
            if stale and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def sweep_output_siblings(target: Path, staging_tag: str, aside_tag: str) -> list[Path]:
    """Clean up after killed writers of the folder `target`.

    Abandoned `.NAME.<staging_tag>*` folders are deleted. An abandoned `.NAME.<aside_tag>*` folder is
    the previous output a `--force` replace had set aside: it is put back when `target` is missing
    (the run died between its two renames), and deleted otherwise. Returns the entries removed.
    """
    def siblings(tag: str) -> list[Path]:
        return sorted(target.parent.glob(f"{glob.escape(f'.{target.name}.{tag}')}*"))

    removed = _remove_abandoned(siblings(staging_tag))
    asides = sorted(siblings(aside_tag), key=_changed_at, reverse=True)
    if asides and not target.exists():
        with abandoned(asides[0]) as stale, contextlib.suppress(OSError):  # lost a race: it is obsolete
            if stale and not target.exists():
                os.rename(asides[0], target)
                asides = asides[1:]
    return removed + _remove_abandoned(asides)


def _remove_abandoned(folders: list[Path]) -> list[Path]:
    removed = []
    for folder in folders:
        with abandoned(folder) as stale:
            if stale and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _changed_at(path: Path) -> float:
    try:
        return path.stat().st_ctime  # a rename updates ctime: the newest aside was set aside last
    except OSError:
        return 0.0


def _lock(fd: int, *, shared: bool) -> bool:
    """Lock `fd` (shared: wait for it; exclusive: do not wait); False if it is held or unsupported."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
