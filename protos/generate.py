"""Regenerate the committed bindings from protos/outliers.proto (run by `make proto` and the staleness test).

Python: messages, services and .pyi stubs into streamer/pb/, with the import made package-relative.
"""
import argparse
import pathlib
import re
import sys

import grpc_tools
from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PROTO = "outliers.proto"


def generate_python(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{HERE}", f"-I{include}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", PROTO,
    ])
    if rc != 0:
        sys.exit(f"protoc failed with exit code {rc}")
    # protoc writes `import outliers_pb2`, which only works with streamer/pb on sys.path; make it relative.
    grpc_file = out / "outliers_pb2_grpc.py"
    text = grpc_file.read_text()
    grpc_file.write_text(re.sub(r"^import outliers_pb2 as", "from . import outliers_pb2 as", text, flags=re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python-out", type=pathlib.Path, default=ROOT / "streamer" / "pb")
    args = parser.parse_args()
    generate_python(args.python_out)


if __name__ == "__main__":
    main()
