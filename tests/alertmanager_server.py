"""A real Prometheus Alertmanager for the tests (Debian's prometheus-alertmanager, which `make test` installs when
missing), on a free loopback port, routing every alert to a webhook receiver the test runs (Receiver); and that
receiver. Without the binary the tests are skipped, except under CI (`$CI` set), where they fail.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

BINARY = "prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """An HTTP server on a free loopback port that keeps every JSON body POSTed to it (`bodies`), answering 500
    to the first `fail_first` of them."""

    def __init__(self, fail_first: int = 0):
        self.bodies: list = []
        self.failed = 0
        self.fail_first = fail_first
        self.headers: list[dict] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.cond:
                    if outer.failed < outer.fail_first:
                        outer.failed += 1
                        code = 500
                    else:
                        outer.bodies.append(body)
                        outer.headers.append(dict(self.headers))
                        code = 200
                    outer.cond.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, ok, timeout: float = 60):
        """Wait until ok(bodies) is true; return the bodies."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not ok(self.bodies):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the receiver did not get what was awaited; it got {self.bodies}")
                self.cond.wait(left)
            return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


CONFIG = """\
route:
  receiver: test
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


class Alertmanager:
    """prometheus-alertmanager on 127.0.0.1:`port` (a free one unless given), routing to `receiver_url`."""

    def __init__(self, receiver_url: str, port: int | None = None):
        binary = shutil.which(BINARY)
        if binary is None:
            message = f"{BINARY} is not installed (make test installs it: apt-get install prometheus-alertmanager)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.dir = tempfile.TemporaryDirectory(prefix="streamer-alertmanager-")
        config = os.path.join(self.dir.name, "alertmanager.yml")
        with open(config, "w") as f:
            f.write(CONFIG.format(url=receiver_url))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={self.dir.name}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"alertmanager did not get ready on port {self.port}")

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()
