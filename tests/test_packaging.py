"""Packaging and the Makefile, as a new user meets them: the wheel (built by pip from a copy of the tree) holds
the contract and the license and installs a working `streamer proto`; `make help` lists the verbs; `make serve`
installs the runtime dependencies only; the benchmark durations agree wherever they are written."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
VERBS = ["help", "serve", "test", "fuzz", "proto", "lint", "bench", "bench-quick", "soak", "clean", "go-tools",
         "redis-server", "valgrind", "alertmanager", "chromium",
         "grpcurl", "go-test"]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is needed")
        pytest.skip(f"{tool} is needed")


def _copy_tree(dest: pathlib.Path) -> pathlib.Path:
    """The files git would ship (tracked, or new and not ignored), so no build output lands in the checkout."""
    _need("git")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    src = _copy_tree(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: build with this environment's setuptools instead of fetching one
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(out), str(src)], check=True, timeout=300)
    (built,) = out.glob("streamer-*.whl")
    return built


def test_wheel_holds_the_contract_the_license_and_the_classifiers(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert z.read("streamer/pb/outliers.proto") == (ROOT / "protos" / "outliers.proto").read_bytes()
        assert z.read("streamer/pb/admin.proto") == (ROOT / "protos" / "admin.proto").read_bytes()
        (license_name,) = [n for n in names if n.endswith("/LICENSE")]
        assert z.read(license_name) == (ROOT / "LICENSE").read_bytes()
        assert b"MIT License" in z.read(license_name)
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = z.read(metadata).decode()
    assert "License: MIT" in meta or "License-Expression: MIT" in meta
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}\n" in meta
    assert "Requires-Python: >=3.10" in meta
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "protos/"))]


def test_installed_wheel_prints_its_contract(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import streamer; print(streamer.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(target)), where  # the installed copy, not the checkout
    out = subprocess.run([sys.executable, "-m", "streamer", "proto"], cwd=tmp_path, env=env, capture_output=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (ROOT / "protos" / "outliers.proto").read_bytes()


def test_make_help_lists_the_verbs():
    _need("make")
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = [line.split()[1] for line in out.stdout.splitlines() if line.strip().startswith("make ")]
    assert listed == VERBS
    # `make` alone says the same rather than building something
    assert subprocess.run(["make", "-s"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout == out.stdout


def _planned_pip_installs(tmp_path: pathlib.Path, verb: str) -> list[str]:
    """The pip installs `make VERB` would run from nothing (a dry run in a copy without .venv)."""
    _need("make")
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    out = subprocess.run(["make", "-n", verb], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("install", 1)[1].split() for line in out.stdout.splitlines()
            if "pip install" in line and "--upgrade pip" not in line]


def test_make_serve_installs_the_runtime_dependencies_only(tmp_path):
    assert _planned_pip_installs(tmp_path, "serve") == [["--quiet", "-e", "."]]


def test_make_test_and_bench_install_their_extras(tmp_path):
    assert _planned_pip_installs(tmp_path, "test") == [["--quiet", "-e", "."], ["--quiet", "-e", "'.[dev]'"],
                                                       ["--quiet", "-e", "'.[bench]'"]]
    assert _planned_pip_installs(tmp_path, "bench") == [["--quiet", "-e", "."], ["--quiet", "-e", "'.[bench]'"]]


def test_benchmark_durations_agree():
    """The durations of `make bench` and `make bench-quick` in the Makefile, README and benchmarks/README."""
    said = {}
    for path in ("Makefile", "README.md", "benchmarks/README.md"):
        text = " ".join((ROOT / path).read_text().split())
        full = re.findall(r"bench\b[^-].{0,60}?\(about ([^)]+)\)", text)
        quick = re.findall(r"bench-quick.{0,60}?\(about ([^)]+)\)", text)
        said[path] = (full[:1], quick[:1])
    assert len(set(map(str, said.values()))) == 1 and said["Makefile"] == (["40 minutes"], ["90 s"]), said
