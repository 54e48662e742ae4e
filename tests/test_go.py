"""Staleness of the committed bindings (Python streamer/pb, Go go/pb) and the pins of the Go generators."""
from __future__ import annotations

import difflib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATE = ROOT / "protos" / "generate.py"
COMMITTED = {"python": ROOT / "streamer" / "pb", "go": ROOT / "go" / "pb"}
# What generate.py writes per language; anything else in the directory (__init__.py, caches) is not generated.
GENERATED = {"python": ["outliers.proto", "outliers_pb2.py", "outliers_pb2.pyi", "outliers_pb2_grpc.py",
                        "admin.proto", "admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py"],
             "go": ["outliers.pb.go", "outliers_grpc.pb.go", "admin.pb.go", "admin_grpc.pb.go"]}


def _need_go() -> None:
    """The Go checks need the go toolchain: fail in CI (where it must be), skip on a machine without it."""
    if shutil.which("go") is None or shutil.which("make") is None:
        message = "the go toolchain and make are needed to regenerate the Go bindings"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert match, f"Makefile does not set {name}"
    return match.group(1)


@pytest.mark.parametrize("language", ["python", "go"])
def test_generated_code_is_fresh(language, tmp_path):
    """Regenerating from protos/outliers.proto into a temporary directory gives the committed files, byte for byte."""
    if language == "go":
        _need_go()
        # Installs the pinned plugins into bin/ unless that version pair is already there.
        subprocess.run(["make", "-s", "go-tools"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, str(GENERATE), f"--{language}-out", str(tmp_path)], cwd=ROOT, check=True)
    produced = sorted(p.name for p in tmp_path.iterdir())
    assert produced == sorted(GENERATED[language]), f"generate.py now writes {produced}; update GENERATED"
    stale = []
    for name in GENERATED[language]:
        committed = COMMITTED[language] / name
        fresh = (tmp_path / name).read_text()
        old = committed.read_text() if committed.exists() else ""
        if fresh != old:
            diff = difflib.unified_diff(old.splitlines(), fresh.splitlines(), str(committed), "regenerated",
                                        lineterm="", n=1)
            stale.append("\n".join(list(diff)[:40]))
    assert not stale, "committed bindings are stale; run `make proto` and commit:\n" + "\n\n".join(stale)


def test_go_generator_pins_agree():
    """protoc-gen-go's pin equals the protobuf runtime in go/go.mod, and the committed Go code says both pins."""
    gen_go = _makefile_var("PROTOC_GEN_GO_VERSION")
    gen_grpc = _makefile_var("PROTOC_GEN_GO_GRPC_VERSION")
    runtime = re.search(r"^\s*google\.golang\.org/protobuf (v\S+)", (ROOT / "go" / "go.mod").read_text(), flags=re.M)
    assert runtime, "go/go.mod does not require google.golang.org/protobuf"
    assert runtime.group(1) == gen_go, (
        f"go/go.mod has google.golang.org/protobuf {runtime.group(1)} but the Makefile pins protoc-gen-go "
        f"{gen_go}; move both together")
    assert f"protoc-gen-go {gen_go}\n" in (COMMITTED["go"] / "outliers.pb.go").read_text()
    assert f"protoc-gen-go-grpc {gen_grpc}\n" in (COMMITTED["go"] / "outliers_grpc.pb.go").read_text()


GO_MODULE = "github.com/streamer-dev/streamer/go"
# A program of another module (a go.mod is written next to it by the test): the client against the server.
OTHER_MODULE_MAIN = ROOT / "tests" / "data" / "other_module" / "main.go"


def test_module_path_is_fetchable_and_used_everywhere():
    """A path `go get` could fetch (a dot in the first element), in go.mod, go_package and every import."""
    assert re.search(rf"^module {re.escape(GO_MODULE)}$", (ROOT / "go" / "go.mod").read_text(), flags=re.M)
    assert f'option go_package = "{GO_MODULE}/pb";' in (ROOT / "protos" / "outliers.proto").read_text()
    stale = [str(p.relative_to(ROOT)) for p in (ROOT / "go").rglob("*.go") if '"streamer/go/' in p.read_text()]
    assert not stale, f"imports of the old module path: {stale}"


def test_another_module_uses_it_through_replace(cli_server, tmp_path):
    """go/README.md's go.mod for another module, with the replace pointing at this checkout, builds and runs."""
    _need_go()
    readme = (ROOT / "go" / "README.md").read_text()
    match = re.search(r"```\n(module example\.com/\S+\n.*?replace \S+ => \.\./streamer/go\n)```", readme, flags=re.S)
    assert match, "go/README.md no longer shows the go.mod of another module with a replace directive"
    (tmp_path / "go.mod").write_text(match.group(1).replace("=> ../streamer/go", f"=> {ROOT / 'go'}"))
    shutil.copyfile(OTHER_MODULE_MAIN, tmp_path / "main.go")
    env = {**os.environ, "GOFLAGS": "-buildvcs=false", "GOWORK": "off"}
    subprocess.run(["go", "mod", "tidy"], cwd=tmp_path, env=env, check=True, timeout=600)
    server = cli_server()
    out = subprocess.run(["go", "run", ".", server.addr], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[20]\n"
