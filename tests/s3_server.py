"""An S3-compatible server on 127.0.0.1 (moto's standalone server), started and stopped by the
tests that use it: nothing reaches outside the machine, and CI needs nothing started first."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from contextlib import closing
from pathlib import Path

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sc-fm-test", "AWS_SECRET_ACCESS_KEY": "sc-fm-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_settings(tmp_path_factory) -> dict[str, str]:
    """The backend's standard environment pointing at a running S3 server on 127.0.0.1
    (session-wide; stopped at the end): credentials and endpoint, and no ~/.aws of the machine."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nothing = tmp_path_factory.mktemp("no-aws")
    yield {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_CONFIG_FILE": str(nothing / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(nothing / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true",  # missing credentials fail at once, not after IMDS timeouts
           "SCFM_REMOTE_RETRIES": "1"}
    server.stop()


@pytest.fixture
def s3_env(s3_settings, monkeypatch) -> dict[str, str]:
    """``s3_settings`` set in the environment for one test."""
    for key, value in s3_settings.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def new_bucket() -> str:
    """A fresh bucket on the server the environment points at: ``s3://NAME``."""
    from sc_fm.store.location import filesystem

    name = f"scfm-{uuid.uuid4().hex[:10]}"
    fs, _ = filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def bucket(s3_env) -> str:
    return new_bucket()


def upload_store(local: Path, url: str) -> str:
    """A copy of the local store at ``local`` published at ``url`` (root ``zarr.json`` last), for
    tests that need a store there but do not test ingestion into it."""
    from sc_fm.store.publish import write_remote

    write_remote(url, False, None, lambda staging: shutil.copytree(local, staging), progress=False)
    return url
