"""`serve` flags from STREAMER_<FLAG> variables (flags win), and structured logs (--log-format json): parsed in
process, and on real servers in their own process."""
from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys

import pytest

from streamer import cli
from streamer.client import Client, ClientError
from streamer.ops import logs


# Flags whose default is None (the matching flag's value) and that take no path: a valid value for each.
UNSET_DEFAULTS = {"--otlp-threshold": "3", "--otlp-warmup": "5", "--otlp-mode": "exponential", "--otlp-alpha": "0.1"}


def serve_flags() -> dict[str, str]:
    """Every `serve` flag, with a valid value for it (its default)."""
    def valid(a):
        if a.default is None:  # a flag that is unset by default: a value of its kind
            kind = getattr(a.type, "kind", str)
            return UNSET_DEFAULTS.get(a.option_strings[0], "x" if kind is str else "1")
        return "" if a.default == [] else str(a.default)

    return {a.option_strings[0]: valid(a) for a in cli._parser().serve._actions
            if a.option_strings and a.option_strings[0].startswith("--") and a.dest != "help"}


def test_every_serve_flag_has_its_variable_and_the_command_line_wins():
    parser = cli._parser()
    env = {"STREAMER_PORT": "1234", "STREAMER_STORE": "memory://", "STREAMER_THRESHOLD": "3.5",
           "STREAMER_LOG_FORMAT": "json", "STREAMER_METRICS_PORT": "0", "STREAMER_TLS_CERT": "/x/server.pem"}
    assert cli._environment(parser.serve, env) == []
    args = parser.parse_args(["serve", "--threshold", "4"])
    assert (args.port, args.store, args.threshold, args.log_format, args.metrics_port, args.tls_cert) == \
        (1234, "memory://", 4.0, "json", 0, "/x/server.pem")
    # every flag of serve is read from the environment: none of their variables is called unknown
    names = {"STREAMER_" + f[2:].upper().replace("-", "_"): v for f, v in serve_flags().items()}
    assert len(names) >= 21 and cli._environment(cli._parser().serve, names) == []


def test_unknown_variables_are_listed_and_switches_are_not():
    env = {"STREAMER_PORTT": "1", "STREAMER_WIRE_CHECKED": "1", "STREAMER_BIN": "/x", "OTHER": "1",
           "STREAMER_ADDR": "x"}  # --addr is detect's, and detect reads no environment
    assert cli._environment(cli._parser().serve, env) == ["STREAMER_ADDR", "STREAMER_PORTT"]


def run_serve(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer", "serve", *args], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", **env})


@pytest.mark.parametrize("name, value, words", [
    ("STREAMER_PORT", "http", "environment variable STREAMER_PORT (for --port): must be an integer from 0 to 65535, "
                              "got 'http'"),
    ("STREAMER_LOG_FORMAT", "xml", "environment variable STREAMER_LOG_FORMAT (for --log-format): invalid choice: "
                                   "'xml' (choose from text, json)"),
    ("STREAMER_DRAIN_SECONDS", "-1", "environment variable STREAMER_DRAIN_SECONDS (for --drain-seconds): must be a "
                                     "finite number >= 0, got -1"),
])
def test_a_bad_value_in_the_environment_is_a_usage_error_naming_the_variable(name, value, words):
    out = run_serve({name: value})
    assert out.returncode == 2 and out.stderr == f"streamer serve: error: {words} (see streamer serve --help)\n"


def test_help_says_so():
    out = subprocess.run([sys.executable, "-m", "streamer", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    text = " ".join(out.stdout.split())
    assert "STREAMER_<FLAG>" in text and "--config" in text
    assert "A flag on the command line wins over the environment, which wins over the file" in text


def test_a_real_server_takes_its_settings_from_the_environment_and_warns_once(cli_server):
    with socket.socket() as busy:  # the flag (--port 0, given by the harness) wins over STREAMER_PORT
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        server = cli_server(env={"STREAMER_PORT": str(taken), "STREAMER_THRESHOLD": "1.5",
                                 "STREAMER_LOG_FORMAT": "json", "STREAMER_FROBNICATE": "1", "STREAMER_BIN": "/x"})
    assert server.port != taken
    with Client(server.addr, timeout=10) as client:  # threshold 1.5: 3.0 is 1.5 stddevs out, not 2
        assert client.detect(values=[1.0, 1.0, 1.0, 3.0], name="x").indices == [3]
    assert server.terminate() == 0
    lines = [json.loads(line) for line in server.log]
    warnings = [line["message"] for line in lines if line["level"] == "WARNING"]
    assert len(warnings) == 1 and "STREAMER_FROBNICATE" in warnings[0] and "STREAMER_BIN" not in warnings[0]
    assert any("threshold 1.5" in line["message"] for line in lines)


def test_json_logs_carry_the_fields_and_every_rejected_call_once(cli_server):
    server = cli_server("--log-format", "json")
    with Client(server.addr, timeout=10) as client:
        with pytest.raises(ClientError):
            client.detect(values=[1.0], threshold=-1)
        good = [[("a", float(i))] for i in range(40)]  # 40 answered batches log nothing at INFO
        with pytest.raises(ClientError):
            list(client.stream([*good, [("x" * 1025, 1.0)]], session="s-json", timeout=30))
    assert server.terminate() == 0
    lines = [json.loads(line) for line in server.log if not re.match(r"[IWE]\d{4} ", line)]  # grpc's C core's own
    assert len(lines) == len(server.log)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])
    ready = next(i for i, line in enumerate(lines) if "ready on" in line["message"])
    stopping = next(i for i, line in enumerate(lines) if line["message"].startswith("stopping"))
    between = [line for line in lines[ready + 1:stopping] if line["level"] == "INFO"]
    assert [line["method"] for line in between] == ["Detect", "DetectStream"], between
    detect, stream = between
    assert detect["code"] == "INVALID_ARGUMENT" and "options.threshold" in detect["reason"]
    assert detect["peer"].startswith("ipv4:127.0.0.1:") and detect["duration_ms"] >= 0
    assert stream["code"] == "INVALID_ARGUMENT" and stream["batch"] == 40 and stream["session"] == "s-json"
    assert "name is 1025 bytes" in stream["reason"] and stream["duration_ms"] > 0


def test_the_json_formatter_keeps_a_traceback_in_one_line():
    record = logging.LogRecord("streamer", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    record.session = "s"
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "failed here" and doc["session"] == "s" and "ValueError: boom" in doc["exc"]
