"""An S3-compatible server on 127.0.0.1 (moto's standalone server), started and stopped by the
tests that use it: nothing reaches outside the machine, and CI needs nothing started first."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from contextlib import closing

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sc-fm-test", "AWS_SECRET_ACCESS_KEY": "sc-fm-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """``http://127.0.0.1:PORT`` of a running S3 server (session-wide; stopped at the end)."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch, tmp_path):
    """The backend's standard environment pointing at the server (credentials, endpoint); no
    ~/.aws of the machine is read."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("SCFM_REMOTE_RETRIES", "1")
    return dict(os.environ)


@pytest.fixture
def bucket(s3_env) -> str:
    """A fresh bucket: ``s3://NAME``."""
    from sc_fm.store.location import filesystem

    name = f"scfm-{uuid.uuid4().hex[:10]}"
    fs, _ = filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"
