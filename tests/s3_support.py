"""A real S3 server on 127.0.0.1 for the tests (moto in server mode, in its own process; not a test module).

The server checks credentials (moto's IAM authentication is on after the first few requests, which create
a user, its policy and its access key), so wrong keys are refused as a real S3 refuses them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class S3Server:
    endpoint: str
    key: str
    secret: str
    options_file: Path

    @property
    def options(self) -> dict:
        return {"s3": {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret}}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key=self.key, secret=self.secret)

    def bucket(self, name: str) -> str:
        """A new empty bucket (``name`` made unique); its name."""
        bucket = f"{name}-{time.monotonic_ns() % 10**9}"
        self.fs().mkdir(bucket)
        return bucket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, S3Server]:
    """Start moto's S3 server on 127.0.0.1 with authentication, create a user with full access."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    import boto3

    port = _free_port()
    # The first 3 requests are not authenticated (they make the user, its policy and its key); then every
    # request must be signed with a known key, as on a real S3.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.05)
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="a",
        aws_secret_access_key="b",
        region_name="us-east-1",
    )
    iam.create_user(UserName="volseg")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="volseg", PolicyName="all", PolicyDocument=json.dumps(policy))
    access = iam.create_access_key(UserName="volseg")["AccessKey"]
    options_file = folder / "storage.toml"
    options_file.write_text(
        f'[s3]\nendpoint_url = "{endpoint}"\nkey = "{access["AccessKeyId"]}"\n'
        f'secret = "{access["SecretAccessKey"]}"\n'
    )
    with urllib.request.urlopen(endpoint + "/moto-api/", timeout=5):
        pass
    return proc, S3Server(endpoint, access["AccessKeyId"], access["SecretAccessKey"], options_file)
