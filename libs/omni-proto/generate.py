"""Generate the Python code of Omni's contracts from protos/ into libs/omni-proto/omni/.

Run by `make proto` (and by every make target that needs the environment). The output is not kept
in git: it is rebuilt from the .proto files, with typed stubs from mypy-protobuf.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = Path(__file__).resolve().parent
PACKAGE = OUT / "omni"


def main() -> int:
    for child in PACKAGE.iterdir() if PACKAGE.exists() else []:
        if child.is_dir():
            shutil.rmtree(child)
    PACKAGE.mkdir(exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return int(code)
    for directory in PACKAGE.rglob("*"):
        if directory.is_dir() and directory.name != "__pycache__":
            (directory / "__init__.py").touch()
    (PACKAGE / "__init__.py").touch()
    print(f"generated {len(files)} proto files into {PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
