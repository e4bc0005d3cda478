"""The contract kit fails this backend when it is broken on purpose (a mutation check).

Each mutant is the real docker-archive backend with one mistake a backend
author makes: a size that is not the documented one, a ``User`` read from
the wrong place, a usage timestamp of zero or in seconds. It is run through
pytest exactly as an author runs the kit (``pytester``), and exactly the
check that owns the mistake must fail: the kit both notices and says where.
"""

from __future__ import annotations

import pytest

from crishim.testing.conformance import CriContract

pytest_plugins = ["pytester"]

#: Every check the kit runs; the control run passes them all.
CHECKS = {name for name in dir(CriContract) if name.startswith("test_")}

MUTANT_MODULE = """
from dataclasses import replace
import time

import test_docker_archive_contract as base
from crishim_docker_archive import DockerArchiveBackend, DockerArchiveOptions

from crishim import hookimpl
from crishim.types import BackendType


class Mutant(DockerArchiveBackend):
    def publish(self, records):
        super().publish([{record} for r in records])

    def filesystem_usage(self):
        return [{usage} for u in super().filesystem_usage()]


class MutantPlugin:
    @hookimpl
    def crishim_backend_types(self):
        return [BackendType("docker-archive-mutant", Mutant, DockerArchiveOptions)]


class TestMutant(base.TestDockerArchive):
    def cri_setup(self, root):
        setup = super().cri_setup(root)
        backend = {{**setup.backends[0], "type": "docker-archive-mutant"}}
        return replace(setup, backends=[backend], extra_plugins=[("mutant", MutantPlugin())])
"""


def _failed_checks(pytester: pytest.Pytester, record: str, usage: str) -> set[str]:
    pytester.makepyfile(test_mutant=MUTANT_MODULE.format(record=record, usage=usage))
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-q")
    passed, skipped, failed = recorder.listoutcomes()
    ran = {r.nodeid.rpartition("::")[2] for r in (*passed, *skipped, *failed)}
    assert ran == CHECKS, f"the kit ran {sorted(ran)}"
    return {r.nodeid.rpartition("::")[2] for r in failed}


def test_the_unchanged_backend_passes(pytester: pytest.Pytester) -> None:
    """The control: the mutant harness itself breaks nothing."""
    assert _failed_checks(pytester, "r", "u") == set()


@pytest.mark.parametrize(
    ("record", "usage", "check"),
    [
        pytest.param(
            "replace(r, size=r.size + 1)",
            "u",
            "test_size_is_the_one_the_backend_documents",
            id="size-off-by-one",
        ),
        pytest.param(
            "replace(r, size=len(r.config))",
            "u",
            "test_size_is_the_one_the_backend_documents",
            id="size-config-only",
        ),
        pytest.param(
            # the User of the config's top level, where it never is
            'replace(r, user="")',
            "u",
            "test_uid_and_username_follow_the_cri_rules",
            id="user-from-the-wrong-place",
        ),
        pytest.param(
            "r",
            "replace(u, timestamp_ns=0)",
            "test_image_fs_info_answers",
            id="timestamp-zero",
        ),
        pytest.param(
            "r",
            "replace(u, timestamp_ns=int(time.time()))",
            "test_image_fs_info_answers",
            id="timestamp-in-seconds",
        ),
    ],
)
def test_the_kit_fails_a_mutant_in_the_check_that_owns_the_mistake(
    pytester: pytest.Pytester, record: str, usage: str, check: str
) -> None:
    assert _failed_checks(pytester, record, usage) == {check}
