"""`streamer serve --config FILE` (TOML): every flag has a key, flag > environment > file > default, bad files
refused with the line and key; `streamer config check FILE`; and a real server configured by a file."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from streamer import cli, config_file
from streamer.client import Client


def write(tmp_path, text: str) -> str:
    path = tmp_path / "streamer.toml"
    path.write_text(text)
    return str(path)


def serve_args(path: str | None, environ: dict[str, str], argv: list[str]):
    parser = cli._parser()
    sources: dict[str, str] = {}
    cli._layers(parser.serve, path, environ, sources)
    return parser.parse_args(["serve", *argv]), sources


def test_flag_wins_over_environment_which_wins_over_the_file(tmp_path):
    path = write(tmp_path, 'threshold = 3.0\nwarmup = 7\nstore = "sqlite:///x.db"\nlog_format = "json"\n'
                           'tls_cert = "a.pem"\n')
    args, sources = serve_args(path, {"STREAMER_WARMUP": "8", "STREAMER_STORE": "memory://"}, ["--store", "redis://h"])
    assert (args.threshold, args.warmup, args.store, args.log_format, args.tls_cert, args.port) == \
        (3.0, 8, "redis://h", "json", "a.pem", 9999)
    assert sources["threshold"] == f"file {path}" and sources["warmup"] == "environment STREAMER_WARMUP"
    assert "port" not in sources  # the default


def test_every_serve_flag_has_a_key(tmp_path):
    serve = cli._parser().serve
    keys = config_file.flags(serve)
    assert len(keys) >= 22 and "config" not in keys and "metrics_port" in keys
    lines = []
    for key, action in keys.items():  # each flag's default, or a valid value where it has none
        value = action.default
        if value is None:  # a flag unset by default: a value of its kind
            value = sorted(action.choices)[0] if action.choices else \
                "x.pem" if getattr(action.type, "kind", str) is str else 1
        lines.append(f"{key} = {config_file._toml(value)}")
    values = config_file.load(write(tmp_path, "\n".join(lines)), serve)
    assert set(values) == {a.dest for a in keys.values()}


@pytest.mark.parametrize("text, words", [
    ("port = 9999\nportt = 1\n", "line 2, key portt: no `streamer serve` flag has this key; did you mean port?"),
    ("metrics-port = 1\n", "line 1, key metrics-port: no `streamer serve` flag has this key; did you mean "
                           "metrics_port?"),
    ("\n\nport = \"9999\"\n", "line 3, key port: must be an integer from 0 to 65535, got \"9999\""),
    ("port = 70000\n", "line 1, key port: must be an integer from 0 to 65535, got 70000"),
    ("threshold = -1.5\n", "line 1, key threshold: must be a finite number > 0, got -1.5"),
    ("threshold = inf\n", "line 1, key threshold: must be a finite number > 0, got inf"),
    ("grace_seconds = true\n", "line 1, key grace_seconds: must be a finite number >= 0, got true"),
    ("log_format = \"xml\"\n", "line 1, key log_format: must be one of \"text\", \"json\", got \"xml\""),
    ("port = 1\nport = 2\n", "not TOML: Cannot overwrite a value (at line 2, column 9)"),
])
def test_a_bad_file_is_refused_with_its_line_key_and_the_expected_form(tmp_path, capsys, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", path], environ={})
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == f"streamer config check: error: config file {path}{':' if 'TOML' in words else ','} {words} (see streamer config check --help)\n"  # noqa: E501


def test_config_check_prints_the_configuration_that_reads_back(tmp_path, capsys):
    path = write(tmp_path, "threshold = 3.5\nmetrics_port = 0\n")
    assert cli.main(["config", "check", path], environ={"STREAMER_WARMUP": "12"}) == 0
    out = capsys.readouterr().out
    assert f"threshold = 3.5  # file {path}\n" in out and "warmup = 12  # environment STREAMER_WARMUP\n" in out
    assert 'store = "sqlite:///state/streamer.db"  # default\n' in out and "# tls_cert is not set" in out
    # what it prints is itself a valid file with the same effective values
    again = write(tmp_path, out)
    assert config_file.load(again, cli._parser().serve)["threshold"] == 3.5


def test_serve_with_a_bad_file_exits_2_in_one_line(tmp_path):
    path = write(tmp_path, "workers = -1\n")
    out = subprocess.run([sys.executable, "-m", "streamer", "serve", "--config", path], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr == (
        f"streamer serve: error: config file {path}, line 1, key workers: must be an integer from 0 to 1024, got -1 "
        f"(see streamer serve --help)\n")


def test_a_real_server_runs_with_its_file_and_flags_win(tmp_path, cli_server):
    with socket.socket() as busy:  # the harness's --port 0 wins over the file's port
        busy.bind(("127.0.0.1", 0))
        path = write(tmp_path, f"port = {busy.getsockname()[1]}\nthreshold = 1.5\nlog_format = \"json\"\n")
        server = cli_server("--config", path)
    with Client(server.addr, timeout=10) as client:  # threshold 1.5: 3.0 is 1.5 stddevs out, not 2
        assert client.detect(values=[1.0, 1.0, 1.0, 3.0], name="x").indices == [3]
    assert server.terminate() == 0
    assert server.log[0].startswith("{")  # log_format from the file


def test_the_readme_example_file_checks_and_its_rules_read_back(tmp_path, capsys):
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"```toml\n(# /etc/streamer/streamer.toml\n.*?)```", readme, flags=re.S).group(1)
    assert "[[rules]]" in example
    assert cli.main(["config", "check", write(tmp_path, example)], environ={}) == 0
    out = capsys.readouterr().out
    assert "# 2 rule(s), first match wins" in out and 'name = "latency"\nmatch = "*_latency_*"\n' in out
    rules = config_file.load(write(tmp_path, example), cli._parser().serve)["rules"]
    assert config_file.load(write(tmp_path, out), cli._parser().serve)["rules"] == rules
    assert [r.name for r in rules.rules] == ["latency", "http-counters"]
    assert rules.rules[1].values == (("min_deviation", 50.0), ("direction", 2), ("threshold", 4.0))
