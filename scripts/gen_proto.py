#!/usr/bin/env python3
"""Regenerate (or, with --check, verify) the Python code for every proto tree under proto/.

Usage (from anywhere):

    .venv/bin/python scripts/gen_proto.py          # write the generated trees
    .venv/bin/python scripts/gen_proto.py --check  # exit 1 if the committed code is stale

Each proto root (see ``ROOTS``) is a source directory mounted at a virtual
include path; the virtual path becomes the Python package path of the
generated modules, and the generated tree is committed in one repository
directory:

* ``proto/`` at ``crishim/cri``, into ``crishim/cri/``: the CRI protos, so
  the modules import as ``crishim.cri.runtime.v1.api_pb2`` (and
  ``runtime_service_pb2``);
* ``proto/containerd/`` at ``crishim_plugins/containerd/api``, into
  ``plugins/containerd/api/`` (pyproject maps ``crishim_plugins`` to
  ``plugins/``): containerd's API, e.g.
  ``crishim_plugins.containerd.api.services.images.v1.images_pb2``.

Everything under a root's output directory is owned by this script,
including the ``__init__.py`` of every package directory in it.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

# The generator is pinned: the emitted code embeds the protobuf/grpc versions it
# targets, so a different grpcio-tools would produce a different (and possibly
# incompatible) tree. Bump this together with pyproject.toml.
GRPCIO_TOOLS_VERSION = "1.85.1"

REPO_ROOT = Path(__file__).resolve().parent.parent

INIT_TEXT = '"""Generated package: do not edit; regenerate with scripts/gen_proto.py."""\n'

# Suffixes of files under an output directory that count as generated output.
GENERATED_SUFFIXES = (".py", ".pyi")


@dataclass(frozen=True)
class ProtoRoot:
    """One proto tree: where its sources are and where its generated code goes."""

    #: Short name, used in messages and for the scratch directory.
    name: str
    #: Directory of the .proto sources, relative to the repository.
    source: str
    #: Include prefix the source directory is mounted at (the package path).
    virtual_root: str
    #: Repository directory that holds the generated tree of ``virtual_root``.
    output: str
    #: The .proto files to compile, relative to ``source``.
    files: tuple[str, ...]


ROOTS: tuple[ProtoRoot, ...] = (
    ProtoRoot(
        name="cri",
        source="proto",
        virtual_root="crishim/cri",
        output="crishim/cri",
        files=("runtime/v1/api.proto", "runtime/v1/runtime_service.proto"),
    ),
    ProtoRoot(
        name="containerd",
        source="proto/containerd",
        virtual_root="crishim_plugins/containerd/api",
        output="plugins/containerd/api",
        files=(
            "types/descriptor.proto",
            "types/mount.proto",
            "services/content/v1/content.proto",
            "services/diff/v1/diff.proto",
            "services/events/v1/events.proto",
            "services/images/v1/images.proto",
            "services/leases/v1/leases.proto",
            "services/snapshots/v1/snapshots.proto",
            "services/version/v1/version.proto",
            "events/content.proto",
            "events/image.proto",
        ),
    ),
)


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


def check_roots(roots: tuple[ProtoRoot, ...]) -> None:
    """Output directories must be distinct and not nested, names unique."""
    names = [r.name for r in roots]
    if len(set(names)) != len(names):
        raise GenerationError(f"duplicate proto root names: {names}")
    outputs = [PurePosixPath(r.output) for r in roots]
    for i, a in enumerate(outputs):
        for b in outputs[i + 1 :]:
            if a == b or a in b.parents or b in a.parents:
                raise GenerationError(f"proto root outputs overlap: {a} and {b}")


def well_known_include_dir() -> Path:
    """grpc_tools ships the google/protobuf/*.proto well-known types."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise GenerationError("grpc_tools is not importable")
    include = Path(spec.origin).resolve().parent / "_proto"
    if not (include / "google" / "protobuf" / "descriptor.proto").is_file():
        raise GenerationError(f"grpc_tools well-known types not found under {include}")
    return include


def generate_root(root: ProtoRoot, scratch: Path) -> dict[Path, Path]:
    """Generate one root into ``scratch``; map repository paths to fresh files."""
    source = REPO_ROOT / root.source
    for proto in root.files:
        if not (source / proto).is_file():
            raise GenerationError(f"missing proto source: {source / proto}")

    out_dir = scratch / root.name
    out_dir.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{root.virtual_root}={source}",
        f"-I{well_known_include_dir()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"{root.virtual_root}/{proto}" for proto in root.files),
    ]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GenerationError(
            f"protoc failed for the {root.name} protos (exit {result.returncode}):\n"
            f"{result.stderr or result.stdout}"
        )

    base = out_dir / root.virtual_root
    generated = [p for p in base.rglob("*") if p.is_file()]
    stray = [p for p in out_dir.rglob("*") if p.is_file() and base not in p.parents]
    if stray:
        raise GenerationError(f"protoc wrote outside {root.virtual_root}: {stray}")

    # A package marker in every directory from the root down to each module.
    packages = {base}
    for path in generated:
        packages.update(d for d in path.parents if d == base or base in d.parents)
    for package in packages:
        (package / "__init__.py").write_text(INIT_TEXT, encoding="utf-8", newline="\n")

    return {
        Path(root.output) / p.relative_to(base): p for p in sorted(base.rglob("*")) if p.is_file()
    }


def generate(scratch: Path, roots: tuple[ProtoRoot, ...] = ROOTS) -> dict[Path, Path]:
    """Generate every root; map repository-relative paths to the fresh files."""
    check_roots(roots)
    fresh: dict[Path, Path] = {}
    for root in roots:
        fresh.update(generate_root(root, scratch))
    return dict(sorted(fresh.items()))


def existing_generated(roots: tuple[ProtoRoot, ...] = ROOTS) -> set[Path]:
    """Generated-looking files now under the roots' output directories (repo-relative)."""
    found: set[Path] = set()
    for root in roots:
        base = REPO_ROOT / root.output
        if not base.is_dir():
            continue
        found.update(
            p.relative_to(REPO_ROOT)
            for p in base.rglob("*")
            if p.is_file() and p.suffix in GENERATED_SUFFIXES and "__pycache__" not in p.parts
        )
    return found


def check(fresh: dict[Path, Path]) -> int:
    stale: list[str] = []
    for rel, path in fresh.items():
        committed = REPO_ROOT / rel
        if not committed.is_file():
            stale.append(f"missing: {rel}")
        elif not filecmp.cmp(committed, path, shallow=False):
            stale.append(f"differs: {rel}")
    for rel in sorted(existing_generated() - set(fresh)):
        stale.append(f"unexpected: {rel}")

    if stale:
        print("generated protobuf code is stale:", file=sys.stderr)
        for line in stale:
            print(f"  {line}", file=sys.stderr)
        print("run: .venv/bin/python scripts/gen_proto.py", file=sys.stderr)
        return 1
    print(f"generated protobuf code is up to date ({len(fresh)} files, {len(ROOTS)} roots)")
    return 0


def install(fresh: dict[Path, Path]) -> None:
    for rel in sorted(existing_generated() - set(fresh)):
        (REPO_ROOT / rel).unlink()
        print(f"removed stale {rel}")
    for rel, path in fresh.items():
        target = REPO_ROOT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
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
            fresh = generate(Path(tmp))
            if args.check:
                return check(fresh)
            install(fresh)
    except GenerationError as exc:
        print(f"gen_proto: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
