"""What imports what: the layers of docs/architecture.md, checked.

Two kinds of check. A subprocess imports one module and lists what got
loaded: the pure modules (the reference grammar, the model) must not pull
in pydantic, OpenTelemetry, grpc or pluggy through the package root. And
the source of every module is read (``ast``, nothing imported) for the
imports a layer must not make.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CRISHIM = ROOT / "crishim"
PLUGINS = ROOT / "plugins"
#: Generated code (scripts/gen_proto.py), not written by hand.
GENERATED = (CRISHIM / "cri", PLUGINS / "containerd" / "api")

# -- the thin root --------------------------------------------------------------------------

#: Top-level packages a pure module must not load.
HEAVY = ("pydantic", "opentelemetry", "grpc", "google", "pluggy", "dependency_injector", "yaml")

#: Modules that must import without any of them: the root, the pure grammar and
#: model a plugin builds on, and the standard-library-only layout builder.
PURE = (
    "crishim",
    "crishim.reference",
    "crishim.model",
    "crishim.errors",
    "crishim.index",
    "crishim.oci.spec",
    "crishim.testing.ocibuild",
)


def _loaded_by(statement: str) -> list[str]:
    """The heavy top-level packages loaded by running ``statement`` in a fresh interpreter."""
    code = (
        "import json, sys\n"
        f"{statement}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_loads_nothing_heavy(module: str) -> None:
    assert _loaded_by(f"import {module}") == [], f"import {module} loads them"


def test_the_hook_marker_loads_pluggy_alone() -> None:
    assert _loaded_by("from crishim import hookimpl") == ["pluggy"]
    assert _loaded_by("import crishim; crishim.hookimpl") == ["pluggy"]


def test_the_root_offers_the_marker_and_the_version_only() -> None:
    import pluggy

    import crishim
    from crishim import hookimpl

    assert isinstance(hookimpl, pluggy.HookimplMarker)
    assert hookimpl is crishim.hookimpl
    assert crishim.__all__ == ["__version__", "hookimpl"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        crishim.nothing  # noqa: B018


# -- imports, read from the source ------------------------------------------------------------


def _sources(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if not any(path.is_relative_to(g) for g in GENERATED):
                yield path


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (in functions and ``TYPE_CHECKING``
    blocks too); ``from a import b`` counts as ``a`` and ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _names(imported: set[str], package: str) -> set[str]:
    """The imports of ``package`` or a module below it."""
    return {m for m in imported if m == package or m.startswith(package + ".")}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def importers_of(package: str, *roots: Path) -> set[str]:
    """The modules under ``roots`` that import ``package`` (or a module below it)."""
    return {_module(p) for p in _sources(*roots) if _names(imports_of(p), package)}


def test_the_service_imports_no_oci() -> None:
    """The servicer speaks CRI messages and the domain model; OCI content is the backends'."""
    assert _names(imports_of(CRISHIM / "service.py"), "crishim.oci") == set()


def test_only_the_container_and_the_test_server_import_dependency_injector() -> None:
    assert importers_of("dependency_injector", CRISHIM, PLUGINS) == {
        "crishim.container",
        "crishim.testing.server",
    }


#: The domain, below the servicer: no protobuf, no gRPC, no CRI messages.
BELOW_THE_SERVICE = (
    "catalog",
    "backend_calls",
    "filtering",
    "pinning",
    "policies",
    "timed",
    "live",
    "index",
    "model",
    "reference",
    "errors",
    "types/__init__",
    "types/backend",
    "types/pull",
    "types/filter",
    "types/policy",
)


@pytest.mark.parametrize("name", BELOW_THE_SERVICE)
def test_the_domain_knows_no_protobuf_and_no_grpc(name: str) -> None:
    imported = imports_of(CRISHIM / f"{name}.py")
    for package in ("grpc", "google.protobuf", "crishim.cri", "crishim.service", "crishim.server"):
        assert _names(imported, package) == set(), f"crishim/{name}.py imports {package}"


def test_plugins_import_no_core_layer_above_the_catalog() -> None:
    """A plugin is registered like a third-party one: it never reaches into the servicer,
    the server, the container or the process."""
    for layer in ("crishim.service", "crishim.server", "crishim.container", "crishim.daemon"):
        assert importers_of(layer, PLUGINS) == set(), layer


# -- telemetry (crishim/telemetry/) ------------------------------------------------------------

TELEMETRY = CRISHIM / "telemetry"


def test_telemetry_imports_neither_the_server_nor_the_catalog() -> None:
    """Telemetry observes calls; it is handed what it observes, never reaches for it."""
    for path in _sources(TELEMETRY):
        imported = imports_of(path)
        for layer in ("crishim.server", "crishim.catalog"):
            assert _names(imported, layer) == set(), f"{_module(path)} imports {layer}"


def test_only_the_telemetry_package_imports_the_opentelemetry_sdk() -> None:
    importers = importers_of("opentelemetry.sdk", CRISHIM, PLUGINS)
    assert "crishim.telemetry.setup" in importers  # the rule reads the right tree
    assert {m for m in importers if not m.startswith("crishim.telemetry.")} == set()
