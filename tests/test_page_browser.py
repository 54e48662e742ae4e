"""The page in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver
(`make test` installs both when missing: `make chromium`). Never skipped in CI.

A spike sent by the Go collector (go/cmd/collector -synthetic) appears in the live list and is marked on the
series' chart; a backtest upload shows the expected flag counts for two option sets; bad uploads show a message
and the server goes on; the backtest's episodes are counted per option set and shaded. Screenshots go to
$PAGE_SCREENSHOTS (default: the test's temporary directory).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import urllib.request

import pytest

from test_page import csv_file, free_port, generated, naive_backtest, naive_flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 90  # seconds: a generous deadline for what the page waits on (a loaded machine is slow, never timed)


def _need(what: str) -> None:
    message = f"{what} is needed for the browser tests (make chromium installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium (pip install -e .[dev])")
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        _need("Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield d
    d.quit()


@pytest.fixture
def shots(tmp_path):
    where = pathlib.Path(os.environ.get("PAGE_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    if shutil.which("go") is None:
        _need("the go toolchain")
    out = tmp_path_factory.mktemp("go") / "collector"
    subprocess.run(["go", "build", "-o", str(out), "./cmd/collector"], cwd=ROOT / "go", check=True, timeout=600)
    return out


def _errors(d) -> list:
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def _wait(d, script: str, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(d, WAIT, poll_frequency=0.2).until(lambda d: d.execute_script(script), message=what)


def test_a_spike_from_the_go_client_appears_in_the_list_and_on_the_chart(driver, cli_server, collector, shots):
    http_port = free_port()
    srv = cli_server("--http-port", str(http_port))
    series = "synthetic.latency_ms"  # the collector's first spike: batch 30, this series, up (120 + 6 * 15)
    driver.get(f"http://127.0.0.1:{http_port}/?session=web&series={series}")
    _wait(driver, "return document.body.dataset.ready === '1' && "
                  "document.getElementById('chart').dataset.connected === '1'", "the page and its tap connect")
    assert _errors(driver) == []
    run = subprocess.run([str(collector), "-addr", srv.addr, "-synthetic", "-session", "web", "-interval", "20ms",
                          "-spike-every", "30", "-count", "45"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "[injected spike]" in run.stdout  # the server flagged it
    row = _wait(driver, f"return [...document.querySelectorAll('#events tbody tr')].find(r => "
                        f"r.dataset.series === '{series}' && r.dataset.kind === 'outlier')?.textContent",
                "the spike in the live list")
    assert "210" in row
    flagged = _wait(driver, "const l = window.streamer.live; const f = l.flagged.filter(v => v !== null);"
                            "return f.length ? f : null", "the chart marks the spike")
    assert 210 in flagged
    # the chart marks exactly what the server flagged in this series (the live list's outliers)
    listed = driver.execute_script(f"return window.streamer.events.filter(e => e.series === '{series}')"
                                   f".map(e => e.value)")
    assert sorted(flagged) == sorted(listed)
    chart = driver.find_element("id", "chart")
    # values are sampled (one batch in 50 ms of the collector's one in 20 ms), flagged values all there (the tap
    # records every flagged value of its series)
    assert chart.get_attribute("data-flagged") == str(len(flagged)) and int(chart.get_attribute("data-points")) >= 8
    # the band is drawn: the values judged after the warmup have a mean and mean +- k*stddev
    band = driver.execute_script("const l = window.streamer.live; return l.upper.filter(v => v !== null).length")
    assert band >= 5
    driver.find_element("id", "sessions-refresh").click()
    _wait(driver, "return document.querySelector('#sessions tbody')?.textContent.includes('web')",
          "the session in the list")
    driver.save_screenshot(str(shots / "page-live.png"))
    assert _errors(driver) == []


def test_a_backtest_upload_counts_two_option_sets_and_bad_uploads_say_why(driver, cli_server, shots, tmp_path):
    http_port = free_port()
    cli_server("--http-port", str(http_port), "--http-max-upload-mb", "1")
    rows = generated()
    good = tmp_path / "generated.csv"
    good.write_bytes(csv_file(rows))
    driver.get(f"http://127.0.0.1:{http_port}/#backtest")
    _wait(driver, "return document.body.dataset.ready === '1'", "the page loads")
    # what the previous test's page logged as its server went away (its live streams' reconnects) is not this
    # page's: only this server's entries count
    assert [e for e in _errors(driver) if f":{http_port}/" in e["message"]] == []
    # the page's two default option sets: k=3 and k=2, the server's other defaults (warmup 10, cumulative)
    driver.find_element("id", "bt-file").send_keys(str(good))
    driver.find_element("id", "bt-run").click()
    counts = _wait(driver, "const c = [...document.querySelectorAll('.bt-count')];"
                           "return c.length === 2 ? c.map(e => +e.dataset.flagged) : null", "the backtest's counts")
    assert counts == [len(naive_flags(rows, 3, 10)), len(naive_flags(rows, 2, 10))]
    assert counts[0] < counts[1]
    # episodes side by side (the server's resolve_after, 10): as many as the naive twin opens
    episodes = driver.execute_script("return [...document.querySelectorAll('.bt-count')].map(e => +e.dataset.episodes)")
    assert episodes == [sum(kind == "opened" for _, kind, _ in naive_backtest(rows, threshold=k)[2]) for k in (3, 2)]
    assert episodes[1] > 0
    _wait(driver, "return +document.getElementById('bt-chart').dataset.points > 0", "the series chart")
    shaded = driver.execute_script("return JSON.parse(document.getElementById('bt-chart').dataset.episodes)")
    first = driver.execute_script("return window.streamer.backtest.series[0]")
    assert shaded == first["episodes"]  # the chart's series has its episodes of each set to shade
    assert driver.find_element("id", "bt-download-episodes").get_attribute("href").endswith("/episodes.csv")
    driver.save_screenshot(str(shots / "page-backtest.png"))

    bad = tmp_path / "picture.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    driver.find_element("id", "bt-file").send_keys(str(bad))
    driver.find_element("id", "bt-run").click()
    message = _wait(driver, "return document.getElementById('bt-error').textContent", "the bad file's message")
    assert "picture.png:1: not UTF-8 text" in message

    big = tmp_path / "big.csv"
    big.write_bytes(csv_file(generated(n=30_000)))  # about 1.5 MiB, over the limit of 1
    assert big.stat().st_size > 1 << 20
    driver.execute_script("document.getElementById('bt-error').textContent = ''")
    driver.find_element("id", "bt-file").send_keys(str(big))
    driver.find_element("id", "bt-run").click()
    message = _wait(driver, "return document.getElementById('bt-error').textContent", "the large file's message")
    assert "Too large" in message and "over the upload limit of 1 MiB" in message
    driver.save_screenshot(str(shots / "page-too-large.png"))

    # the server goes on serving: the page and a good upload again
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=30) as r:
        assert r.status == 200
    driver.execute_script("document.querySelectorAll('.bt-count').forEach(e => e.remove())")
    driver.find_element("id", "bt-file").send_keys(str(good))
    driver.find_element("id", "bt-run").click()
    again = _wait(driver, "const c = [...document.querySelectorAll('.bt-count')];"
                          "return c.length === 2 ? c.map(e => +e.dataset.flagged) : null", "the backtest again")
    assert again == counts
    assert driver.find_element("id", "bt-error").text == ""
    # chromium logs the answers 400 and 413 it was meant to get as network errors; nothing else is logged
    errors = _errors(driver)
    assert [(e["source"], "status of 400" in e["message"] or "status of 413" in e["message"]) for e in errors] == \
        [("network", True), ("network", True)], errors
