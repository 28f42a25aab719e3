"""Generate the Python code of Omni's contracts from protos/ into libs/omni-proto/, or build an image of them.

    generate.py                                 code: omni/ (and buf/validate/) with typed stubs
    generate.py --image OUT [--protos DIR]      a FileDescriptorSet of DIR (protos/ by default) with its
                                                imports and comments, for `buf lint` and `buf breaking`

Run by `make proto` (and by every make target that needs the environment); `make lint` and `make breaking`
build images. protos/omni/scopes.yaml (the scope each RPC needs) is copied beside the code. Nothing here is kept in git: it is rebuilt from the .proto files, with typed stubs from
mypy-protobuf.

Request constraints are declared in the protos with protovalidate (`import "buf/validate/validate.proto"`).
That file is not in this repository and there is no registry to fetch it from at build time: its descriptor
comes from the protovalidate package in the environment (the library that enforces the constraints ships it,
compiled into its own code), is written to a descriptor set and handed to protoc with --descriptor_set_in.
protoc then compiles our files against it and generates buf/validate/validate_pb2.py, which the generated
code imports so that google.protobuf knows the option fields.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
import protovalidate
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = Path(__file__).resolve().parent
GENERATED = (OUT / "omni", OUT / "buf")
VALIDATE_PROTO = "buf/validate/validate.proto"
SCOPES = "omni/scopes.yaml"


def validate_descriptor_set() -> bytes:
    """A FileDescriptorSet holding buf/validate/validate.proto, as the installed protovalidate knows it.

    Its imports (google/protobuf/descriptor.proto …) are not included: protoc finds them among the
    well-known types it is given with -I.
    """
    file = protovalidate.ViolationPb.desc().file
    if file.name != VALIDATE_PROTO:  # pragma: no cover - a protovalidate that moved its messages
        raise RuntimeError(f"protovalidate's messages are in {file.name}, not {VALIDATE_PROTO}")
    result = descriptor_pb2.FileDescriptorSet()
    result.file.add().MergeFromString(file.proto.to_binary())
    return result.SerializeToString()


def _protoc(protos: Path, descriptor_set: Path, *args: str) -> int:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(protos)) for p in protos.rglob("*.proto"))
    return int(
        protoc.main(
            [
                "protoc",
                f"-I{protos}",
                f"-I{well_known}",
                f"--descriptor_set_in={descriptor_set}",
                *args,
                *files,
            ]
        )
    )


def generate(work: Path) -> int:
    """Write the Python code of protos/ and of validate.proto into libs/omni-proto/."""
    for package in GENERATED:
        for child in package.iterdir() if package.exists() else []:
            if child.is_dir():
                shutil.rmtree(child)
        package.mkdir(exist_ok=True)
    descriptor_set = work / "validate.binpb"
    descriptor_set.write_bytes(validate_descriptor_set())
    bin_dir = Path(sys.executable).parent
    code = _protoc(
        PROTOS,
        descriptor_set,
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
    )
    if code == 0:
        # validate.proto itself, from the descriptor set (no .proto file: protoc takes it from the set).
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        code = int(
            protoc.main(
                [
                    "protoc",
                    f"-I{well_known}",
                    f"--descriptor_set_in={descriptor_set}",
                    f"--python_out={OUT}",
                    VALIDATE_PROTO,
                ]
            )
        )
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return code
    for package in GENERATED:
        for directory in package.rglob("*"):
            if directory.is_dir() and directory.name != "__pycache__":
                (directory / "__init__.py").touch()
        (package / "__init__.py").touch()
    # The scope table of the RPCs (read by omni_kit.security at run time) ships with the generated code.
    shutil.copyfile(PROTOS / SCOPES, OUT / SCOPES)
    count = sum(1 for _ in PROTOS.rglob("*.proto"))
    print(f"generated {count} proto files (and {VALIDATE_PROTO}) into {OUT.relative_to(ROOT)}")
    return 0


def image(work: Path, protos: Path, out: Path) -> int:
    """Write a FileDescriptorSet of every .proto under protos, with imports and source info, to out."""
    descriptor_set = work / "validate.binpb"
    descriptor_set.write_bytes(validate_descriptor_set())
    out.parent.mkdir(parents=True, exist_ok=True)
    code = _protoc(
        protos, descriptor_set, "--include_imports", "--include_source_info", f"--descriptor_set_out={out}"
    )
    if code != 0:
        print(f"protoc failed on {protos}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="write an image (FileDescriptorSet) here instead of code")
    parser.add_argument("--protos", type=Path, default=PROTOS, help="the proto root of the image")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        if args.image is not None:
            return image(Path(work), args.protos.resolve(), args.image.resolve())
        return generate(Path(work))


if __name__ == "__main__":
    raise SystemExit(main())
