"""Regenerate the committed bindings from protos/outliers.proto and protos/admin.proto (run by `make proto` and
the staleness test).

Python: messages, services and .pyi stubs into streamer/pb/, with the import made package-relative, and a copy
of the .proto itself, which the wheel carries as package data (a pip-only user's contract, for grpcurl -proto or
another language's generator).
Go: messages and services into go/pb/, by the pinned protoc-gen-go and protoc-gen-go-grpc in bin/
(`make go-tools` installs them), run by the same protoc (grpcio-tools) as the Python output.
With no --*-out option both languages are written to their committed places; with any, only those.
"""
import argparse
import pathlib
import re
import shutil
import sys

import grpc_tools
from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PROTOS = ("outliers.proto", "admin.proto")  # the data plane, and the admin API (streamer.admin.v1)
GO_PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc")


def generate_python(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{HERE}", f"-I{include}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTOS,
    ])
    if rc != 0:
        sys.exit(f"protoc failed with exit code {rc}")
    # protoc writes `import outliers_pb2`, which only works with streamer/pb on sys.path; make it relative.
    for proto in PROTOS:
        stem = proto[:-len(".proto")]
        grpc_file = out / f"{stem}_pb2_grpc.py"
        text = grpc_file.read_text()
        grpc_file.write_text(re.sub(rf"^import {stem}_pb2 as", f"from . import {stem}_pb2 as", text, flags=re.M))
        shutil.copyfile(HERE / proto, out / proto)


def generate_go(out: pathlib.Path, plugins: pathlib.Path = ROOT / "bin") -> None:
    missing = [name for name in GO_PLUGINS if not (plugins / name).is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found in {plugins}; run `make go-tools` (installs the pinned versions)")
    out.mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    # paths=source_relative writes out/outliers.pb.go whatever go_package says, so any directory can be the
    # target (the staleness test writes into a temporary one); the package name still comes from go_package.
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{HERE}", f"-I{include}",
        f"--plugin=protoc-gen-go={plugins / 'protoc-gen-go'}",
        f"--plugin=protoc-gen-go-grpc={plugins / 'protoc-gen-go-grpc'}",
        f"--go_out={out}", "--go_opt=paths=source_relative",
        f"--go-grpc_out={out}", "--go-grpc_opt=paths=source_relative", *PROTOS,
    ])
    if rc != 0:
        sys.exit(f"protoc (Go) failed with exit code {rc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-out", type=pathlib.Path, help="directory for the Python bindings "
                        "(default without any --*-out: streamer/pb)")
    parser.add_argument("--go-out", type=pathlib.Path, help="directory for the Go bindings "
                        "(default without any --*-out: go/pb)")
    parser.add_argument("--go-plugins", type=pathlib.Path, default=ROOT / "bin",
                        help="directory holding protoc-gen-go and protoc-gen-go-grpc")
    args = parser.parse_args()
    if args.python_out is None and args.go_out is None:
        args.python_out, args.go_out = ROOT / "streamer" / "pb", ROOT / "go" / "pb"
    if args.python_out is not None:
        generate_python(args.python_out)
    if args.go_out is not None:
        generate_go(args.go_out, args.go_plugins)


if __name__ == "__main__":
    main()
