"""Where a command writes: checked before any compute, never over what exists unless asked,
never into an input, and published atomically.

Every command that writes a file or a directory (``embed``, ``explain``, ``finetune``,
``adapt``, ``benchmark``, ``pretrain``, ``prepare``) goes through this module:

- ``check_output`` runs before anything is computed: the location must be writable and of the
  right kind, an existing output is replaced only with ``--overwrite``, and the output may
  never be an input checkpoint, lie inside a checkpoint directory or a corpus store, or hold
  an input. Paths are compared resolved (``os.path.samefile`` and resolved parents), so a
  symlink or a second name for an input counts as that input.
- ``atomic_file`` and ``atomic_dir`` build the output as a hidden sibling named after the
  writing process (``.NAME.KIND-PID-XXXX``), fsync it, and rename it into place: a crash, a
  kill or a full disk leaves the previous output intact and no partial one.
- Siblings left by a killed process (its PID no longer alive) are removed by the next
  ``check_output`` of the same output.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from sc_fm.errors import OutputError
from sc_fm.model.io import MODEL_CONFIG_FILE, WEIGHTS_FILE
from sc_fm.rundir import CHECKPOINTS_DIR, FINAL_DIR, RUN_CONFIG_FILE
from sc_fm.store.layout import FORMAT as STORE_FORMAT

CHECKPOINT_MARKERS = (MODEL_CONFIG_FILE, WEIGHTS_FILE)  # files that make a directory a checkpoint
STORE_METADATA = "zarr.json"
_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>[a-z]+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def is_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a pretrained model (a checkpoint, final/, an adapted one)."""
    return any((directory / marker).is_file() for marker in CHECKPOINT_MARKERS)


def is_corpus_store(directory: str | Path) -> bool:
    """Whether ``directory`` is a corpus store (rather than an atlas to ingest, or a free path)."""
    meta = Path(directory) / STORE_METADATA
    try:
        return meta.is_file() and STORE_FORMAT in meta.read_text(errors="replace")[:4096]
    except OSError:
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or lies under it (after resolving both)."""
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def _existing_ancestor(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path("/")


def check_output(path: str | Path, *, kind: Literal["file", "dir"], overwrite: bool = False,
                 inputs: Sequence[str | Path] = (), replaceable_input: str | Path | None = None,
                 needed_bytes: int | None = None, flag: str = "-o") -> Path:
    """The checked output location (see the module docstring); raises ``OutputError``.

    ``inputs``: files and directories the command reads. ``replaceable_input``: the one input
    the output may replace, with ``overwrite`` (``embed -o INPUT.h5ad --overwrite``).
    ``needed_bytes``: a size estimate held against the free space."""
    out = Path(path)
    if not out.name or out.name in (".", ".."):
        raise OutputError(f"{flag} {path!r} names no file or directory", str(path), f"pass {flag} with a name")
    for given in inputs:
        source = Path(given)
        if not source.exists():
            continue
        replaceable = replaceable_input is not None and _same(source, Path(replaceable_input))
        if out.exists() and _same(out, source) and not (replaceable and overwrite):
            raise OutputError(f"{flag} {out} is the input {source}", str(out),
                              "write the output to a new path" + (" (or pass --overwrite to replace the input)"
                                                                   if replaceable else ""))
        if source.is_dir() and out.resolve() != source.resolve() and _inside(out, source):
            raise OutputError(f"{flag} {out} lies inside the input {source}", str(out),
                              "write the output outside the input directory")
        if _inside(source, out) and not _same(out, source):
            raise OutputError(f"{flag} {out} holds the input {source}; replacing it would destroy the input",
                              str(out), "write the output to a new path")
    for parent in out.resolve().parents:
        if is_checkpoint(parent) or is_corpus_store(parent):
            what = "checkpoint" if is_checkpoint(parent) else "corpus store"
            raise OutputError(f"{flag} {out} lies inside the {what} {parent}", str(out),
                              f"write the output outside the {what}")
    if out.is_dir() and is_corpus_store(out):
        raise OutputError(f"{flag} {out} is a corpus store", str(out), "write the output to a new path")
    if out.exists():
        if kind == "file" and out.is_dir():
            raise OutputError(f"{flag} {out} is a directory, and a file is written there", str(out),
                              "pass a file name (e.g. out.h5ad)")
        if kind == "dir" and not out.is_dir():
            raise OutputError(f"{flag} {out} is a file, and a directory is written there", str(out),
                              "pass a directory name that is not taken")
        if not overwrite:
            raise OutputError(f"{flag} {out} already exists", str(out),
                              "pass --overwrite to replace it, or choose a new path")
    where = _existing_ancestor(out.parent)
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"{where} is not a writable directory", str(out),
                          "choose an output in a directory you can write to")
    if needed_bytes is not None:
        free = shutil.disk_usage(where).free
        if free < needed_bytes:
            raise OutputError(f"{free / 2**20:,.0f} MiB free where {out} goes, about "
                              f"{needed_bytes / 2**20:,.0f} MiB needed", str(out),
                              "free some space or write the output elsewhere")
    remove_stale_siblings(out)
    return out


def check_run_dir(run_dir: str | Path, resume: bool) -> Path:
    """A pretraining run directory: never inside a checkpoint or a corpus store (its stores
    are found by that rule), writable, and one that already holds a run (``final/``,
    ``config.yaml`` or ``checkpoints/``) is continued only with ``--resume``. It is written
    in place (checkpoints and ``final/`` are each published atomically), never replaced."""
    run = check_output(run_dir, kind="dir", overwrite=True)
    held = [name for name in (FINAL_DIR, RUN_CONFIG_FILE, CHECKPOINTS_DIR) if (run / name).exists()]
    if not resume and held:
        raise OutputError(f"{run} already holds a run ({', '.join(held)})", str(run),
                          "pass --resume to continue that run, or choose a new -o RUN_DIR")
    return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sibling(path: Path, kind: str) -> Path:
    """A new hidden name beside ``path`` owned by this process: ``.NAME.KIND-PID-XXXX``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent)
    os.close(handle)
    os.unlink(name)
    return Path(name)


def work_dir(path: Path, kind: str) -> Path:
    """A hidden work directory beside ``path`` (removed by the next run if this one is killed)."""
    work = sibling(path, kind)
    work.mkdir()
    return work


def remove_stale_siblings(path: Path) -> list[Path]:
    """Remove the hidden siblings of ``path`` whose writing process is dead; an ``old`` copy of
    an output whose swap was cut short is put back when ``path`` itself is missing."""
    removed: list[Path] = []
    parent = path.parent
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        match = _SIBLING.match(entry.name)
        if not match or match["name"] != path.name or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not path.exists():
            os.replace(entry, path)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        print(f"scfm: removed {entry}, left by a process that no longer runs", file=sys.stderr)
    return removed


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (a rename is durable once its folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(directory) / name)
        fsync_path(Path(directory))


def is_write_failure(err: BaseException) -> bool:
    """An ``OSError``, or torch's serialiser reporting a failed write (a full disk shows in
    ``torch.save`` as a RuntimeError: "file write failed", "unexpected pos")."""
    return isinstance(err, OSError) or (isinstance(err, RuntimeError) and any(
        text in str(err) for text in ("write failed", "unexpected pos")))


def write_failed(err: BaseException, path: Path, kept: str = "what was there before is unchanged") -> OutputError:
    """The one-paragraph error for a write that failed (a full disk, a read-only folder)."""
    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "write failed" in str(err) \
        or "unexpected pos" in str(err)
    why = "the disk is full" if full else (getattr(err, "strerror", None) or str(err))
    return OutputError(f"writing {path} failed ({why}); nothing partial was left and {kept}", str(path),
                       "free some space or choose another output location" if full else
                       "choose an output location you can write to")


@contextmanager
def full_disk_as_error(path: str | Path, kept: str) -> Iterator[None]:
    """Around a writer that cleans up after itself (the store writer, adaptation): a full disk
    becomes the one-paragraph error naming ``path``; every other error passes unchanged."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise write_failed(err, Path(path), kept) from err
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a hidden sibling to write; on success it is fsynced and renamed onto ``path``.
    On any failure it is removed and ``path`` is left as it was; a failed write (a full disk,
    ``is_write_failure``) becomes an ``OutputError`` naming the path."""
    path = Path(path)
    tmp = sibling(path, "tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_write_failure(err):
            raise write_failed(err, path) from err
        raise


def swap_in(built: Path, path: Path) -> None:
    """Make the finished directory ``built`` (on ``path``'s filesystem) the output ``path``:
    fsynced, then renamed; an existing ``path`` is renamed aside first and removed after."""
    _fsync_tree(built)
    if path.exists():
        old = sibling(path, "old")
        os.replace(path, old)
        os.replace(built, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, path)
    fsync_path(path.parent)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a hidden directory beside ``path`` to build the output in; on success it is
    fsynced and swapped in by renames (an existing ``path`` is moved aside, then removed)."""
    path = Path(path)
    work = work_dir(path, "partial")
    try:
        yield work
        swap_in(work, path)
    except BaseException as err:
        shutil.rmtree(work, ignore_errors=True)
        if is_write_failure(err):
            raise write_failed(err, path) from err
        raise
