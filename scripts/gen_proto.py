#!/usr/bin/env python3
"""Regenerate (or, with --check, verify) the Python code for proto/runtime/v1/api.proto.

Usage (from anywhere):

    .venv/bin/python scripts/gen_proto.py          # write crishim/cri/...
    .venv/bin/python scripts/gen_proto.py --check  # exit 1 if the committed code is stale

The proto directory is mapped onto the virtual path ``crishim/cri`` so that the
generated modules import as ``crishim.cri.runtime.v1.api_pb2`` and
``crishim.cri.runtime.v1.api_pb2_grpc``. Everything under ``crishim/cri`` is
owned by this script.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# The generator is pinned: the emitted code embeds the protobuf/grpc versions it
# targets, so a different grpcio-tools would produce a different (and possibly
# incompatible) tree. Bump this together with pyproject.toml.
GRPCIO_TOOLS_VERSION = "1.85.1"

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
# Virtual include prefix the proto tree is mounted at; it becomes the package path.
VIRTUAL_ROOT = "crishim/cri"
PROTO_FILES = ("runtime/v1/api.proto",)
GENERATED_ROOT = REPO_ROOT / VIRTUAL_ROOT

# Package markers written alongside the protoc output.
PACKAGE_DIRS = ("crishim/cri", "crishim/cri/runtime", "crishim/cri/runtime/v1")
INIT_TEXT = '"""Generated package: do not edit; regenerate with scripts/gen_proto.py."""\n'

# Suffixes of files under crishim/cri that count as generated output.
GENERATED_SUFFIXES = (".py", ".pyi")


class GenerationError(RuntimeError):
    """Raised when generation cannot proceed."""


def check_generator_version() -> None:
    try:
        installed = metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError as exc:
        raise GenerationError(
            f"grpcio-tools is not installed; install grpcio-tools=={GRPCIO_TOOLS_VERSION} "
            "(pip install -e '.[dev]')"
        ) from exc
    if installed != GRPCIO_TOOLS_VERSION:
        raise GenerationError(
            f"grpcio-tools {installed} is installed, but this repository pins "
            f"grpcio-tools=={GRPCIO_TOOLS_VERSION}. Install the pinned version, or bump "
            "GRPCIO_TOOLS_VERSION in scripts/gen_proto.py together with pyproject.toml "
            "and regenerate."
        )


def well_known_include_dir() -> Path:
    """grpc_tools ships the google/protobuf/*.proto well-known types."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise GenerationError("grpc_tools is not importable")
    include = Path(spec.origin).resolve().parent / "_proto"
    if not (include / "google" / "protobuf" / "descriptor.proto").is_file():
        raise GenerationError(f"grpc_tools well-known types not found under {include}")
    return include


def generate(out_dir: Path) -> list[Path]:
    """Generate the full crishim/cri tree into out_dir; return relative paths written."""
    for proto in PROTO_FILES:
        if not (PROTO_ROOT / proto).is_file():
            raise GenerationError(f"missing proto source: {PROTO_ROOT / proto}")

    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{VIRTUAL_ROOT}={PROTO_ROOT}",
        f"-I{well_known_include_dir()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"{VIRTUAL_ROOT}/{proto}" for proto in PROTO_FILES),
    ]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GenerationError(
            f"protoc failed (exit {result.returncode}):\n{result.stderr or result.stdout}"
        )

    for package in PACKAGE_DIRS:
        init = out_dir / package / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text(INIT_TEXT, encoding="utf-8", newline="\n")

    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())


def existing_generated(root: Path) -> set[Path]:
    """Generated-looking files currently under root/crishim/cri (relative to root)."""
    base = root / VIRTUAL_ROOT
    if not base.is_dir():
        return set()
    return {
        p.relative_to(root)
        for p in base.rglob("*")
        if p.is_file() and p.suffix in GENERATED_SUFFIXES and "__pycache__" not in p.parts
    }


def check(fresh_root: Path, fresh: list[Path]) -> int:
    stale: list[str] = []
    for rel in fresh:
        committed = REPO_ROOT / rel
        if not committed.is_file():
            stale.append(f"missing: {rel}")
        elif not filecmp.cmp(committed, fresh_root / rel, shallow=False):
            stale.append(f"differs: {rel}")
    for rel in sorted(existing_generated(REPO_ROOT) - set(fresh)):
        stale.append(f"unexpected: {rel}")

    if stale:
        print("generated protobuf code is stale:", file=sys.stderr)
        for line in stale:
            print(f"  {line}", file=sys.stderr)
        print("run: .venv/bin/python scripts/gen_proto.py", file=sys.stderr)
        return 1
    print(f"generated protobuf code is up to date ({len(fresh)} files)")
    return 0


def install(fresh_root: Path, fresh: list[Path]) -> None:
    for rel in sorted(existing_generated(REPO_ROOT) - set(fresh)):
        (REPO_ROOT / rel).unlink()
        print(f"removed stale {rel}")
    for rel in fresh:
        target = REPO_ROOT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh_root / rel, target)
        print(f"wrote {rel}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and fail if the committed code differs",
    )
    args = parser.parse_args(argv)

    try:
        check_generator_version()
        with tempfile.TemporaryDirectory(prefix="crishim-gen-proto-") as tmp:
            fresh_root = Path(tmp)
            fresh = generate(fresh_root)
            if args.check:
                return check(fresh_root, fresh)
            install(fresh_root, fresh)
    except GenerationError as exc:
        print(f"gen_proto: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
