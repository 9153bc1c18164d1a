"""pytest fixtures for a real S3 API on loopback (the s3 plugin's tests, and anyone's).

Import them into a conftest or test module: ``from plugins.s3.testing import
s3_endpoint, s3_env, s3_url``.

By default a session-wide moto server (``python -m moto.server``, in a child
process) listens on 127.0.0.1 at a free port. Set ``QLORA_HUB_S3_TEST_URL`` to an
endpoint (MinIO: ``http://127.0.0.1:9000``; AWS: ``https://s3.us-east-1.amazonaws.com``)
to run the same tests there, with credentials from the standard AWS
variables and the bucket ``QLORA_HUB_S3_TEST_BUCKET`` (default
``qlora-hub-test``, created if missing). Every test writes under its own
random prefix.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest

from plugins.s3.bench import local_moto

TEST_URL_ENV = "QLORA_HUB_S3_TEST_URL"
TEST_BUCKET_ENV = "QLORA_HUB_S3_TEST_BUCKET"


@dataclass
class S3Endpoint:
    """Where the tests' S3 lives and the environment a process needs to reach it."""

    endpoint: str
    bucket: str
    env: dict[str, str]
    moto: bool

    def client(self, **overrides):
        import boto3

        env = {**self.env, **overrides}
        return boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
            region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        ).client("s3", endpoint_url=self.endpoint)


@pytest.fixture(scope="session")
def s3_endpoint():
    """The S3 endpoint of this test session (moto on loopback unless the env names one)."""
    external = os.environ.get(TEST_URL_ENV)
    server = None
    if external:
        env = {
            k: os.environ[k]
            for k in (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_PROFILE",
                "AWS_DEFAULT_REGION",
            )
            if k in os.environ
        }
        endpoint = external
    else:  # its own process: the server's Python does not share a GIL with the tests
        server = local_moto()
        endpoint = server.__enter__()
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["QLORA_HUB_S3_ENDPOINT_URL"] = endpoint
    env["QLORA_HUB_S3_MAX_ATTEMPTS"] = "3"
    ep = S3Endpoint(endpoint, os.environ.get(TEST_BUCKET_ENV, "qlora-hub-test"), env, not external)
    client = ep.client()
    try:
        client.head_bucket(Bucket=ep.bucket)
    except Exception:
        client.create_bucket(Bucket=ep.bucket)
    yield ep
    if server is not None:
        server.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def s3_env(s3_endpoint, monkeypatch):
    """This test's process (and its children) reach the session's S3 (and no real AWS)."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        if key not in s3_endpoint.env:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for key, value in s3_endpoint.env.items():
        monkeypatch.setenv(key, value)
    return s3_endpoint.env


@pytest.fixture
def s3_url(s3_endpoint) -> str:
    """A fresh ``s3://bucket/prefix`` for this test."""
    return f"s3://{s3_endpoint.bucket}/t-{uuid.uuid4().hex[:12]}"
