"""S3 and GCS servers on 127.0.0.1 for the object-storage tests: moto's server mode and
gcp-storage-emulator (with the two GCS behaviours it lacks added, see gcs_emulator.py), both from
PyPI, started once per test session.

gptjax is pointed at them with the standard variables only (AWS_ENDPOINT_URL and friends,
STORAGE_EMULATOR_HOST), as a user would point it at a private server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

from helpers import free_port


def _wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see its log beside the test's tmp dir")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def unavailable() -> str | None:
    bin_dir = os.path.dirname(sys.executable)
    missing = [b for b in ("moto_server", "gcp-storage-emulator")
               if shutil.which(b) is None and not os.path.exists(os.path.join(bin_dir, b))]
    return f"missing {', '.join(missing)} (pip install 'moto[server]' gcp-storage-emulator)" if missing else None


class Servers:
    """Both servers; `env` holds the variables that point gptjax (and boto3) at them."""

    BUCKET = "gptjax-test"

    def __init__(self, log_dir):
        bin_dir = os.path.dirname(sys.executable)
        # Logs go to files: a pipe nobody reads fills up and blocks the server mid-request.
        self.logs = [open(os.path.join(log_dir, name), "w") for name in ("moto.log", "gcs.log")]
        self.s3_port, self.gcs_port = free_port(), free_port()
        self.procs = [
            subprocess.Popen([os.path.join(bin_dir, "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)],
                             stdout=self.logs[0], stderr=subprocess.STDOUT),
            subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "gcs_emulator.py"), "start",
                              "-H", "127.0.0.1", "--port",
                              str(self.gcs_port), "--default-bucket", self.BUCKET, "--in-memory", "-q"],
                             stdout=self.logs[1], stderr=subprocess.STDOUT),
        ]
        _wait_for_port(self.s3_port, self.procs[0], "moto_server")
        _wait_for_port(self.gcs_port, self.procs[1], "gcp-storage-emulator")
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}", "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                    "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.gcs_port}"}
        os.environ.update(self.env)
        self.s3().create_bucket(Bucket=self.BUCKET)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    # The test process reads and writes objects through plain clients (boto3, the GCS JSON API),
    # not through gptjax's own layer, so a bug there cannot hide from the checks.

    def _split(self, url: str) -> tuple[str, str, str]:
        scheme, rest = url.split("://", 1)
        bucket, _, key = rest.partition("/")
        return scheme, bucket, key

    def _gcs(self, path: str, data: bytes | None = None, method: str = "GET") -> bytes:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.gcs_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def keys(self, url: str) -> list[str]:
        import json
        import urllib.parse

        scheme, bucket, prefix = self._split(url)
        if scheme == "s3":
            pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
        out, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = json.loads(self._gcs(f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"))
            out += [o["name"] for o in page.get("items", []) if o["name"].startswith(prefix)]
            token = page.get("nextPageToken")
            if not token:
                return sorted(out)

    def read(self, url: str) -> bytes:
        import urllib.parse

        scheme, bucket, key = self._split(url)
        if scheme == "s3":
            return self.s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        return self._gcs(f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}?alt=media")

    def write(self, url: str, data: bytes) -> None:
        import urllib.parse

        scheme, bucket, key = self._split(url)
        if scheme == "s3":
            self.s3().put_object(Bucket=bucket, Key=key, Body=data)
            return
        self._gcs(f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={urllib.parse.quote(key, safe='')}",
                  data=data, method="POST")

    def objects(self, url: str) -> dict[str, str]:
        """Every object under a gs:// or s3:// prefix with its content hash."""
        import hashlib

        scheme, bucket, _ = self._split(url)
        return {k: hashlib.sha256(self.read(f"{scheme}://{bucket}/{k}")).hexdigest() for k in self.keys(url)}

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in self.logs:
            f.close()
