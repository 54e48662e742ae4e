"""Rules per series and reload without a restart, on real `streamer serve` processes: a config file's [[rules]]
judge the series they match and name themselves in outliers and episodes; SIGHUP with a changed rule changes the
next judgement of an open stream and keeps the series' state; a broken file or a changed port is refused by
name and the old rules still apply; with --workers 2 on SQLite every worker reloads."""
from __future__ import annotations

import queue
import re
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from streamer import cli, series_rules
from streamer.client import Client
from streamer.config_file import ConfigError
from streamer.pb import outliers_pb2 as pb
from streamer.reload import ConfigSource

WARM = [10.0, 12.0] * 5  # mean 11, stddev 1
SERIES, PLAIN = "api_latency_ms", "plain_count"

LOOSE = """threshold = 3.0
warmup = 5
episodes = "on"
resolve_after = 2

[[rules]]
name = "counters"
prefix = "http_"
min_deviation = 100.0

[[rules]]
name = "latency-loose"
match = "*_latency_*"
threshold = 3.0
"""
TIGHT = LOOSE.replace('name = "latency-loose"\nmatch = "*_latency_*"\nthreshold = 3.0',
                      'name = "latency-tight"\nmatch = "*_latency_*"\nthreshold = 1.5')
BROKEN = TIGHT.replace("threshold = 1.5", 'threshold = "x"')


def z_of(history: list[float], x: float) -> tuple[float, float, float]:
    """What the stream judges x against: the population mean and stddev of the series' values before it."""
    h = np.asarray(history)
    return float(h.mean()), float(h.std()), float((x - h.mean()) / h.std())


def wait_for(log: list[str], text: str, after: int = 0, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log[after:]:
            if text in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line with {text!r}:\n" + "".join(log[-30:]))


class OpenStream:
    """One DetectStream kept open across reloads: send(batch) returns its Result."""

    def __init__(self, client: Client, session: str):
        self.q: queue.Queue = queue.Queue()
        self.results = client.stream(iter(self.q.get, None), session=session)

    def send(self, batch):
        self.q.put(batch)
        return next(self.results)

    def close(self):
        self.q.put(None)
        for _ in self.results:
            pass


def test_sighup_changes_the_next_judgement_keeps_state_and_refuses_bad_files(tmp_path, cli_server):
    path = tmp_path / "streamer.toml"
    path.write_text("port = 0\n" + LOOSE)  # the file's port: the harness's --port would win over it
    server = cli_server("--config", str(path), omit=("--port",))
    events: list = []
    with Client(server.addr) as c:
        watch = c.watch(kinds=pb.WATCH_ALL)
        threading.Thread(target=lambda: [events.append(e) for e in watch], daemon=True).start()
        stream = OpenStream(c, "s1")
        for x in WARM:
            assert stream.send([(SERIES, x), (PLAIN, x)]).indices == []
        history = list(WARM)
        mean, std, z = z_of(history, 13.5)
        assert 1.5 < z < 3.0
        assert stream.send([(SERIES, 13.5), (PLAIN, 13.5)]).indices == []  # threshold 3: normal
        history.append(13.5)

        path.write_text("port = 0\n" + TIGHT)
        mark = len(server.log)
        server.proc.send_signal(signal.SIGHUP)
        line = wait_for(server.log, "reloaded", mark)
        assert "rules changed" in line and "latency-tight" in line
        mean, std, z = z_of(history, 13.5)
        assert 1.5 < z < 3.0
        got = stream.send([(SERIES, 13.5), (PLAIN, 13.5)])  # the same stream, its next batch: the new rule
        assert got.indices == [0]  # the plain series has no rule: the server's threshold 3 still
        o = got.outliers[0]
        assert (o.name, o.rule) == (SERIES, "latency-tight")
        assert o.mean == pytest.approx(mean, rel=1e-12) and o.stddev == pytest.approx(std, rel=1e-12)  # state kept
        history.append(13.5)

        path.write_text("port = 0\n" + BROKEN)
        mark = len(server.log)
        server.proc.send_signal(signal.SIGHUP)
        line = wait_for(server.log, "reload refused", mark)
        assert "rules[1] key threshold" in line and "line 15" in line and "running configuration stays" in line
        path.write_text("port = 1\n" + TIGHT)
        mark = len(server.log)
        server.proc.send_signal(signal.SIGHUP)
        line = wait_for(server.log, "reload refused", mark)
        assert "port cannot change while serving" in line
        mean, std, z = z_of(history, 14.0)
        assert 1.5 < z < 3.0
        got = stream.send([(SERIES, 14.0), (PLAIN, 11.0)])  # the tight rule still applies
        assert [(o.name, o.rule) for o in got.outliers] == [(SERIES, "latency-tight")]
        stream.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len([e for e in events if e.HasField("episode")]) < 1:
            time.sleep(0.02)
        watch.cancel()
    outliers = [e.outlier for e in events if e.HasField("outlier")]
    episodes = [e.episode for e in events if e.HasField("episode")]
    assert [(o.series, o.rule, o.session) for o in outliers] == [(SERIES, "latency-tight", "s1")] * 2
    assert episodes[0].kind == pb.EpisodeEvent.OPENED and episodes[0].rule == "latency-tight"
    assert server.terminate() == 0


def test_reload_method_keeps_flags_winning_and_names_what_it_refuses(tmp_path, make_server):
    path = tmp_path / "streamer.toml"
    path.write_text("threshold = 4.0\nwarmup = 3\n")
    argv = ["serve", "--config", str(path), "--threshold", "2.5", "--store", "memory://"]
    args, config = cli.reread(argv, {})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        page = sock.getsockname()[1]
    server = make_server(defaults=config.defaults, rules=config.rules, source=ConfigSource(argv, {}, args, config),
                         http_port=page)
    assert server.server.live.current.defaults.threshold == 2.5
    path.write_text("threshold = 5.0\nwarmup = 4\n[[rules]]\nname = \"cpu\"\nprefix = \"cpu.\"\ncooldown = 2\n")
    summary = server.call(server.server.reload())
    assert summary == f"reloaded {path}: warmup, rules changed; 1 rule(s): cpu"
    live = server.server.live.current
    assert (live.defaults.threshold, live.defaults.warmup) == (2.5, 4)  # the flag still wins over the file
    assert live.rules.rules[0] == series_rules.Rule("cpu", prefix="cpu.", values=(("cooldown", 2),),
                                                    keys=(("cooldown", 2),))
    assert server.call(server.server.reload()) == f"reloaded {path}: nothing changed; 1 rule(s): cpu"
    # the page's option form and its backtests take the reloaded defaults, new sessions the series TTL
    assert server.server.page.defaults.warmup == 4 and server.server.page.backtests.defaults.warmup == 4
    path.write_text(path.read_text().replace("warmup = 4\n", "warmup = 4\nseries_ttl = 30\n"))
    assert server.call(server.server.reload()) == f"reloaded {path}: series_ttl changed; 1 rule(s): cpu"
    assert server.server.sessions.series_ttl == 30.0
    live = server.server.live.current
    for text, words in [("workers = 2\nmax_series = 7\nstore = \"sqlite:///x.db\"\n",  # --store wins: no change
                         "max_series, workers (the processes are forked at start) cannot change while serving"),
                        ("[[rules]]\nname = \"m\"\nmatch = \"*\"\nmode = \"exponential\"\n",
                         "line 4, rules[0] key mode: a rule cannot set mode"),
                        ("[[rules]]\nmatch = \"*\"\n", "rules[0] key name: every rule needs a name")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(words)):
            server.call(server.server.reload())
        assert server.server.live.current is live  # nothing applied


@pytest.mark.parametrize("trigger", ["sighup", "admin"])
def test_every_worker_reloads_on_sighup_or_an_admin_call(tmp_path, cli_server, trigger):
    """SIGHUP to the parent, or `streamer admin reload` reaching one worker (which asks the parent to pass SIGHUP
    to every worker): either way both workers judge by the new rule."""
    import subprocess
    import sys

    path = tmp_path / "streamer.toml"
    path.write_text(LOOSE)
    server = cli_server("--config", str(path), "--workers", "2", "--store", f"sqlite:///{tmp_path}/state.db",
                        "--lease-seconds", "2")

    def judge(session: str):
        with Client(server.addr) as c:  # a connection per session: the kernel spreads them over the workers
            results = list(c.stream([[(SERIES, x)] for x in WARM] + [[(SERIES, 13.5)]], session=session))
        return [(o.name, o.rule) for o in results[-1].outliers]

    assert all(judge(f"before-{i}") == [] for i in range(3))
    path.write_text(TIGHT)
    mark = len(server.log)
    if trigger == "sighup":
        server.proc.send_signal(signal.SIGHUP)
    else:
        out = subprocess.run([sys.executable, "-m", "streamer", "admin", "reload", "--addr", server.addr],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "latency-tight" in out.stdout, out.stderr
    for i in range(2):
        assert "latency-tight" in wait_for(server.log, f"worker {i}: reloaded", mark)
    assert [judge(f"after-{i}") for i in range(6)] == [[(SERIES, "latency-tight")]] * 6
    assert server.terminate() == 0


def test_sighup_serves_rotated_certificate_files_to_new_connections(tmp_path, cli_server):
    import trustme

    from streamer.client import ClientError, tls_credentials
    old, new = trustme.CA(), trustme.CA()
    for name, ca in (("old", old), ("new", new)):
        ca.cert_pem.write_to_path(str(tmp_path / f"{name}-ca.pem"))
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"

    def issue(ca) -> None:
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))

    def works(ca_name: str) -> bool:
        try:
            credentials = tls_credentials(ca=str(tmp_path / f"{ca_name}-ca.pem"))
            with Client(server.addr, timeout=10, credentials=credentials) as c:
                return c.detect(values=[1.0] * 9 + [9.0], name="cpu").indices == [9]
        except ClientError:
            return False

    def page_works(ca_name: str) -> bool:  # the page's HTTPS takes the same files
        context = ssl.create_default_context(cafile=str(tmp_path / f"{ca_name}-ca.pem"))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{page}/api/sessions", context=context, timeout=10) as r:
                return r.status == 200
        except urllib.error.URLError:
            return False

    issue(old)
    path = tmp_path / "streamer.toml"
    path.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        page = sock.getsockname()[1]
    server = cli_server("--config", str(path), "--http-port", str(page))
    assert (works("old"), works("new")) == (True, False)
    assert (page_works("old"), page_works("new")) == (True, False)
    issue(new)  # the same paths, new contents: a certificate rotation
    mark = len(server.log)
    server.proc.send_signal(signal.SIGHUP)
    assert "tls certificate files (contents) changed" in wait_for(server.log, "reloaded", mark)
    assert (works("old"), works("new")) == (False, True)
    assert (page_works("old"), page_works("new")) == (False, True)
    path.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\ntls_client_ca = "{tmp_path / "new-ca.pem"}"\n')
    mark = len(server.log)
    server.proc.send_signal(signal.SIGHUP)
    assert "tls_client_ca cannot be turned on or off while serving" in wait_for(server.log, "reload refused", mark)
    assert works("new")
    assert server.terminate() == 0


def test_a_server_without_a_config_file_refuses_reload_and_keeps_serving(make_server):
    argv = ["serve", "--store", "memory://"]
    args, config = cli.reread(argv, {})
    server = make_server(source=ConfigSource(argv, {}, args, config))
    with pytest.raises(ConfigError, match="started without --config: there is no file to read again"):
        server.call(server.server.reload())
    bare = make_server()  # made in code: nothing to read
    with pytest.raises(ConfigError, match="not started by `streamer serve`"):
        bare.call(bare.server.reload())
    with Client(server.addr) as c:
        assert c.detect(values=[1.0] * 9 + [9.0], name="cpu").indices == [9]


def test_a_reload_called_in_a_worker_asks_for_every_other_worker_only_when_it_applied(tmp_path, make_server):
    path = tmp_path / "streamer.toml"
    path.write_text("threshold = 3.0\n")
    argv = ["serve", "--config", str(path), "--store", "memory://"]
    args, config = cli.reread(argv, {})
    server = make_server(source=ConfigSource(argv, {}, args, config))
    asked: list[int] = []
    server.server.peers_reload = lambda: asked.append(1)  # workers.py: os.kill(parent, SIGHUP)
    path.write_text("threshold = 2.0\n")
    assert server.call(server.server.reload()) == f"reloaded {path}: threshold changed"
    path.write_text("threshold = 0\n")
    with pytest.raises(ConfigError, match="line 1, key threshold"):
        server.call(server.server.reload())
    assert asked == [1] and server.server.live.current.defaults.threshold == 2.0


def test_streamer_admin_reload_applies_the_file_or_says_why_not(tmp_path, cli_server):
    import subprocess
    import sys

    def admin_reload():
        return subprocess.run([sys.executable, "-m", "streamer", "admin", "reload", "--addr", server.addr],
                              capture_output=True, text=True, timeout=60)

    path = tmp_path / "streamer.toml"
    path.write_text(LOOSE)
    server = cli_server("--config", str(path))
    path.write_text(TIGHT)
    out = admin_reload()
    assert out.returncode == 0 and "rules changed" in out.stdout and "latency-tight" in out.stdout, out.stderr
    with Client(server.addr) as c:
        got = list(c.stream([[(SERIES, x)] for x in WARM] + [[(SERIES, 13.5)]], session="admin"))[-1]
    assert [(o.name, o.rule) for o in got.outliers] == [(SERIES, "latency-tight")]
    path.write_text(BROKEN)
    out = admin_reload()
    assert out.returncode == 1 and "FAILED_PRECONDITION" in out.stderr and "rules[1] key threshold" in out.stderr
    assert server.terminate() == 0
