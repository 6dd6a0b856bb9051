"""Writing a store on object storage, visible only when complete.

Object stores have no rename, so a store there cannot be staged under another name and moved
into place. Instead a reader's test of "is this a store" is the root ``zarr.json`` (it holds
``complete`` and the shard list), and that object is written last:

1. Take the writer lock ``STORE.lock`` beside the store (a conditional put: one writer at a time).
2. Write the store (or, for ``--append``, the new shards, statistics and manifest on top of a
   local copy of the store's small metadata objects) in a local staging folder with the local
   writer (``SCFM_STAGING_DIR``, default the system temporary folder), named after the writing process
   so that the next writer removes the folder of one that was killed.
3. Upload every object but the root ``zarr.json`` (concurrently, retried with back-off), then the
   root ``zarr.json`` in one PUT, which is atomic on S3 and its peers: until it lands, a new store
   is "not a store", and an appended store still reads as before (its old objects are untouched).
4. Delete what the new root no longer lists (an append's previous statistics and manifest).

A run that dies before step 3 ends leaves objects under the prefix but no root ``zarr.json`` (or
the old one): nothing a reader uses. The next writer (holding the lock) removes such leftovers of
a new store, and unlisted shards of an appended one, before or after it publishes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sc_fm.errors import InputDataError
from sc_fm.store.location import filesystem, is_object, remote_call
from sc_fm.store.lock import StoreLock

T = TypeVar("T")
STAGING_ENV = "SCFM_STAGING_DIR"
ROOT = "zarr.json"


def write_remote(url: str, append: bool, lock_timeout: float | None, write: Callable[[Path], T],
                 progress: bool = True) -> T:
    """``write(local_store)`` in a local staging folder, then publish it at ``url``; returns what
    ``write`` returned. On any failure nothing new is visible at ``url``."""
    url = url.rstrip("/")
    fs, root = filesystem(url)
    bucket = root.split("/", 1)[0]
    if not remote_call(lambda: fs.exists(bucket), url, "looking up the bucket"):
        raise InputDataError(f"the bucket {bucket!r} does not exist", url,
                             "create the bucket first, or fix its name in the URL")
    lock = StoreLock(url, lock_timeout)
    lock.acquire()
    staging = _staging_folder()
    try:
        local = staging / "store.zarr"
        exists = remote_call(lambda: is_object(fs, f"{root}/{ROOT}"), url, "looking up the store")
        if append:
            if not exists:
                raise InputDataError(f"{url} is not a corpus store (no zarr.json) to append to", url,
                                     "write it first without --append")
            copied = _copy_metadata(fs, root, local)
        else:
            if exists:
                raise InputDataError(f"{url} already exists", url,
                                     "choose a new output URL, delete it, or pass --append")
            _remove_leftovers(fs, root, url)
            copied = {}
        result = write(local)
        _publish(fs, root, url, local, copied, progress)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()


def _staging_folder() -> Path:
    """A new staging folder named after this process; those of killed writers are removed."""
    from sc_fm.outputs import remove_stale_siblings, work_dir

    name = Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir()) / "scfm-stage"
    remove_stale_siblings(name)
    return work_dir(name, "stage")


def _keys(fs, root: str) -> list[str]:
    """Every object under ``root/``, relative to it."""
    found = remote_call(lambda: fs.find(root), f"{fs.protocol}://{root}", "listing the store")
    return [key[len(root) + 1:] for key in found if key.startswith(root + "/")]


def _copy_metadata(fs, root: str, local: Path) -> dict[str, bytes]:
    """Fetch every object outside ``shards/`` (root attributes, vocabulary, manifest, statistics:
    small) into ``local``, so the local writer appends to it as to a local store."""
    wanted = [rel for rel in _keys(fs, root) if not rel.startswith("shards/")]
    fetched = remote_call(lambda: fs.cat([f"{root}/{rel}" for rel in wanted]), root, "reading the store")
    copied = {}
    for rel in wanted:
        copied[rel] = fetched[f"{root}/{rel}"]
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(copied[rel])
    (local / "shards").mkdir(exist_ok=True)
    return copied


def _remove_leftovers(fs, root: str, url: str) -> None:
    """Objects under a prefix with no root ``zarr.json``: an interrupted upload (we hold the lock)."""
    leftovers = _keys(fs, root)
    if leftovers:
        remote_call(lambda: fs.rm([f"{root}/{rel}" for rel in leftovers]), url, "removing leftovers")
        print(f"scfm: removed {len(leftovers)} objects under {url}, left by an interrupted upload",
              file=sys.stderr)


def _publish(fs, root: str, url: str, local: Path, copied: dict[str, bytes], progress: bool) -> None:
    from fsspec.callbacks import TqdmCallback

    import zarr

    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    upload = [rel for rel in files if rel != ROOT and copied.get(rel) != (local / rel).read_bytes()]
    if upload:
        callback = TqdmCallback(tqdm_kwargs={"desc": f"upload {url}", "unit": "objects",
                                             "disable": not progress})
        remote_call(lambda: fs.put([str(local / rel) for rel in upload], [f"{root}/{rel}" for rel in upload],
                                   callback=callback), url, f"uploading {len(upload)} objects")
    remote_call(lambda: fs.pipe_file(f"{root}/{ROOT}", (local / ROOT).read_bytes()), url,
                "publishing the root zarr.json")
    listed = {s["name"] for s in zarr.open_group(local, mode="r").attrs["shards"]}
    stale = [rel for rel in _keys(fs, root) if rel not in files and not rel.startswith("shards/")
             or rel.count("/") >= 2 and rel.startswith("shards/") and rel.split("/")[1] not in listed]
    if stale:
        remote_call(lambda: fs.rm([f"{root}/{rel}" for rel in stale]), url, "removing what the store "
                    "no longer lists")
