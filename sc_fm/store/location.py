"""Where a store lives: a local folder, or an fsspec URL (``s3://bucket/corpus.zarr``, ``gs://``,
``az://``...) on object storage.

Remote access goes through fsspec and the backend the user installs (``pip install
'sc_fm[s3]'`` for S3). Credentials and endpoints come only from the backend's own environment
and configuration files (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``~/.aws``); sc_fm never reads or records them.

Every remote call goes through ``remote_call``: transient failures (connection refused or
dropped, timeouts) are retried with exponential back-off (on top of the backend's own retries),
then become one ``InputDataError`` paragraph; a missing bucket or missing/refused credentials
fail at once with theirs.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sc_fm.errors import InputDataError

T = TypeVar("T")
RETRIES_ENV = "SCFM_REMOTE_RETRIES"
_BACKENDS = {"s3": "s3fs (pip install 'sc_fm[s3]')", "s3a": "s3fs (pip install 'sc_fm[s3]')",
             "gs": "gcsfs (pip install gcsfs)", "gcs": "gcsfs (pip install gcsfs)",
             "az": "adlfs (pip install adlfs)", "abfs": "adlfs (pip install adlfs)"}
# errors that say the request itself is wrong: retrying cannot help
_FINAL = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_url(path: str | Path) -> bool:
    """Whether ``path`` names remote storage (``scheme://...``, other than ``file://``)."""
    text = str(path)
    return "://" in text and not text.startswith("file://") and not isinstance(path, Path)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


@functools.cache
def _protocol_fs(protocol: str, pid: int, environment: int):
    """One filesystem per protocol, process and backend environment: a forked loader worker makes
    its own (an S3 client bound to the parent's event loop does not work in a child), and changed
    credentials or endpoint variables get a new client."""
    import fsspec

    try:
        # no listings cache: whether a store exists is asked again each time (an upload may finish)
        return fsspec.filesystem(protocol, skip_instance_cache=True, use_listings_cache=False)
    except ImportError as err:
        raise InputDataError(f"reading {protocol}:// stores needs the {_BACKENDS.get(protocol, protocol)} "
                             f"backend, which is not installed ({err})", f"{protocol}://",
                             f"install it: {_BACKENDS.get(protocol, f'the fsspec backend for {protocol}')}"
                             ) from None
    except ValueError as err:  # fsspec: unknown protocol
        raise InputDataError(f"{protocol}:// is not a storage protocol fsspec knows ({err})",
                             f"{protocol}://", "use a local path or an s3://, gs:// or az:// URL") from None


def filesystem(url: str):
    """``(fs, path)``: the fsspec filesystem of ``url`` and the path inside it (no protocol)."""
    protocol, _, rest = url.partition("://")
    environment = hash(tuple(sorted((k, v) for k, v in os.environ.items()
                                    if k.startswith(("AWS_", "GOOGLE_", "AZURE_")))))
    return _protocol_fs(protocol, os.getpid(), environment), rest.rstrip("/")


def number_from_env(name: str, default: float, kind: type, meaning: str, example: str) -> float:
    """``kind(os.environ[name])`` (never below 0), ``default`` when unset; a clear error otherwise."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return max(kind(0), kind(raw))
    except ValueError:
        unit = "a whole number" if kind is int else "a number"
        raise InputDataError(f"{name}={raw!r} is not {unit}", "environment",
                             f"set {name} to {meaning} (e.g. {example})") from None


def retries() -> int:
    return number_from_env(RETRIES_ENV, 4, int, "how many times a failed remote read is retried", "4")


def remote_call(fn: Callable[[], T], where: str, what: str, fix: str | None = None,
                attempts: int | None = None, base_delay: float = 0.5) -> T:
    """``fn()``, retried with back-off on transient failures; every failure becomes an
    ``InputDataError`` naming ``where`` (``what``: the operation, for the message), except a
    missing object (``FileNotFoundError``) and the like, which the caller interprets."""
    attempts = retries() + 1 if attempts is None else attempts
    for attempt in range(attempts):
        try:
            return fn()
        except InputDataError:
            raise
        except Exception as err:  # noqa: BLE001 - backends raise their own types (botocore, aiohttp)
            final = classify(err, where)
            if final is not None:
                raise final from err
            if isinstance(err, _FINAL):  # e.g. a missing object: the caller says what that means
                raise
            if attempt + 1 == attempts:
                raise InputDataError(
                    f"{what} failed after {attempts} attempts ({type(err).__name__}: {err})", where,
                    fix or "check the storage endpoint is reachable (AWS_ENDPOINT_URL for S3-compatible "
                    f"servers) and run again; {RETRIES_ENV} sets how often a failed request is retried"
                ) from err
            time.sleep(base_delay * 2 ** attempt)
    raise AssertionError("unreachable")


def classify(err: BaseException, where: str) -> InputDataError | None:
    """The user's error for a failure that no caller can work around (a missing bucket, missing
    or refused credentials), else None."""
    name = type(err).__name__
    text = str(err)
    if name in ("NoCredentialsError", "PartialCredentialsError") or "Unable to locate credentials" in text:
        return InputDataError(f"no credentials for the storage backend ({text})", where,
                              "set them in the backend's own environment (for S3: AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws); sc_fm never reads them "
                              "from its config")
    if isinstance(err, PermissionError) or any(code in text for code in (
            "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden")):
        return InputDataError(f"the storage backend refused the credentials ({name}: {text})", where,
                              "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) and that "
                              "they may read and write this bucket")
    if isinstance(err, FileNotFoundError) and ("bucket does not exist" in text or "NoSuchBucket" in text):
        return InputDataError(f"the bucket does not exist ({text})", where,
                              "create the bucket first, or fix its name in the URL")
    return None


class RemoteFile:
    """One object at ``url``, with the few ``pathlib.Path`` methods the writer lock uses, so the
    lock works the same beside a remote store (``STORE.lock`` made with a conditional put)."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.key = filesystem(url)
        self.name = url.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url

    def with_name(self, name: str) -> RemoteFile:
        return RemoteFile(self.url.rsplit("/", 1)[0] + "/" + name)

    def create_exclusive(self, content: bytes) -> bool:
        """Write ``content`` unless the object exists (``If-None-Match: *``); whether it did."""
        def put() -> bool:
            try:
                with self.fs.open(self.key, "xb") as handle:
                    handle.write(content)
            except FileExistsError:
                return False
            return True
        return remote_call(put, self.url, "creating the writer lock")

    def read_text(self) -> str:
        return remote_call(lambda: self.fs.cat_file(self.key), self.url, "reading the writer lock").decode()

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            remote_call(lambda: self.fs.rm_file(self.key), self.url, "removing the writer lock")
        except FileNotFoundError:
            if not missing_ok:
                raise

    def stat(self):
        from types import SimpleNamespace

        info = remote_call(lambda: self.fs.info(self.key), self.url, "reading the writer lock")
        modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        return SimpleNamespace(st_mtime=modified.timestamp() if hasattr(modified, "timestamp")
                               else float(modified or 0))


def is_object(fs, key: str) -> bool:
    """Whether ``key`` is an object (fsspec's ``isfile`` answers False on any error, credentials
    and connection failures included; this raises those)."""
    try:
        return fs.info(key)["type"] == "file"
    except FileNotFoundError:
        return False
