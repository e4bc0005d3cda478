"""Installable-looking plugins for tests: a directory with a module and a
``*.dist-info`` folder whose ``entry_points.txt`` names it, so that
``importlib.metadata`` finds it exactly as it finds an installed package.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    root: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]
) -> Path:
    """Write ``modules`` and a dist-info declaring ``entry_points`` (name → module)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[crishim.plugins]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


#: A backend type "slow" whose lookups sleep for the seconds given in its
#: options, then answer nothing; used to have calls in flight.
SLOW_PLUGIN = """
    import time
    from pydantic import Field
    from crishim import hookimpl
    from crishim.types import BackendOptions, BackendType, IndexedBackend

    class SlowOptions(BackendOptions):
        delay: float = Field(default=1.0, ge=0)

    class SlowBackend(IndexedBackend):
        def __init__(self, context, options):
            super().__init__(context)
            self.delay = options.delay

        def get_image(self, ref):
            if ref.repository.endswith("/slow"):
                time.sleep(self.delay)
            return None

    @hookimpl
    def crishim_backend_types():
        return [BackendType(name="slow", factory=SlowBackend, options_model=SlowOptions)]
"""

BROKEN_PLUGIN = """
    raise ImportError("this plugin is broken on purpose")
"""

MISSPELT_PLUGIN = """
    from crishim import hookimpl

    @hookimpl
    def crishim_backend_typez():
        return []
"""

CLAIMS_OCI_DIR_PLUGIN = """
    from crishim import hookimpl
    from crishim.types import BackendType, IndexedBackend

    @hookimpl
    def crishim_backend_types():
        return [BackendType(name="oci-dir", factory=lambda c, o: IndexedBackend(c))]
"""

#: A plugin offering backend type "typo-type" whose filter hook is misspelt:
#: it is left out, and a config naming "typo-type" is told why.
MISSPELT_WITH_TYPES_PLUGIN = """
    from crishim import hookimpl
    from crishim.types import BackendType, IndexedBackend

    @hookimpl
    def crishim_backend_types():
        return [BackendType(name="typo-type", factory=lambda c, o: IndexedBackend(c))]

    @hookimpl
    def crishim_filter_typs():
        return []
"""

RAISING_HOOK_PLUGIN = """
    from crishim import hookimpl

    @hookimpl
    def crishim_backend_types():
        raise RuntimeError("registering failed on purpose")
"""

WRONG_TYPE_PLUGIN = """
    from crishim import hookimpl

    @hookimpl
    def crishim_backend_types():
        return ["not a BackendType"]
"""

#: A hook implementation asking for an argument the hook does not have.
BAD_SIGNATURE_PLUGIN = """
    from crishim import hookimpl

    @hookimpl
    def crishim_backend_types(context):
        return []
"""
