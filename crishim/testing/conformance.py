"""The CRI contract, as a test class a backend author subclasses.

Every check runs through a real crishim server on a temporary unix socket,
with the generated CRI client, exactly as kubelet would call it::

    from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage

    class TestMyBackend(CriContract):
        removable = False  # True when the backend removes images

        def cri_setup(self, root):
            ...  # write the backend's data under root
            return ContractSetup(
                backends=[{"name": "mine", "type": "my-type",
                           "options": {"path": str(root)}}],
                images=[ExpectedImage(id="sha256:...",
                                      repo_tags=["example.com/app:1.0"],
                                      user="1000")],
            )

``cri_setup`` is called once for the class's shared server and once more
(with a fresh directory) for each test that changes state (removal). It
must describe *every* image the backend serves: the list checks are exact.
``cri_teardown(setup)`` is called after each of those servers has stopped,
on the same object: stop there what ``cri_setup`` started.

The checks:

* not found is nil: ImageStatus of absent names, digests and IDs answers OK
  with ``image`` unset; so do the ``hidden`` references (images the backend
  holds that filters must keep from the CRI, e.g. embedded images);
* one image, whatever it is asked by: its ID, its ID without ``sha256:``,
  a 12-character ID prefix, every tag and every digest answer the same
  ``Image``, with exactly the expected ``repo_tags`` and ``repo_digests``;
* ``size`` is the one the backend documents (every :class:`ExpectedImage`
  says it: crishim's rule is the compressed size of the platform manifest,
  its config and its layers, which
  :attr:`crishim.testing.ocibuild.BuiltImage.size` computes);
* ``uid``/``username`` follow the CRI rules from the config's ``User``
  (numeric: uid, no username; a name: username, no uid; the group after
  ``:`` is never reported);
* ListImages lists each image once, each equal to its ImageStatus; a
  name filter lists that image alone; StreamImages streams the same images;
* RemoveImage: an absent image is OK; when ``removable``, removing by a tag
  makes every name and the ID absent while the other images stay as they
  were, and a second removal is OK; when not, removal fails with
  FAILED_PRECONDITION and the image stays;
* malformed references are INVALID_ARGUMENT for ImageStatus, RemoveImage
  and the ListImages filter; so is a runtime handler no backend serves, for
  ImageStatus, PullImage, RemoveImage and the ListImages filter;
* verbose ImageStatus answers the same image and ``info`` as JSON;
* ImageFsInfo answers OK, each filesystem with its mountpoint, used bytes
  and inodes, and a timestamp in nanoseconds of the last hour; the
  backend's own ``filesystem_usage()`` entries too (crishim would stamp a
  zero timestamp with the time of the call, hiding the mistake).

``cri_setup`` and ``cri_teardown`` come in pairs: for every setup the
kit makes, the teardown runs once the server over it has stopped, even
when that server failed to start or a check failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.contract import (
    ABSENT_ID,
    ABSENT_NAMES,
    BAD_REFERENCES,
    RECENT_NS,
    ContractRun,
    ContractSetup,
    ExpectedImage,
    expected_user,
    recent,
    status_code,
    wire_bytes,
)
from crishim.testing.server import running_server

__all__ = [
    "BAD_REFERENCES",
    "RECENT_NS",
    "ContractRun",
    "ContractSetup",
    "CriContract",
    "ExpectedImage",
]


class CriContract:
    """Subclass as ``Test<Something>`` and implement :meth:`cri_setup`.

    pytest collects the subclass's inherited ``test_*`` checks (listed in
    this module's docstring). ``cri_contract`` is the class's shared server
    (checks that change nothing); ``cri_fresh_contract`` a server of the
    test's own over a fresh ``cri_setup`` (removals). Add checks of your
    own as methods taking either fixture.

    Example::

        from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage


        class TestJsonCatalog(CriContract):
            removable = False  # RemoveImage must be FAILED_PRECONDITION

            def cri_setup(self, root):
                images = write_store_and_catalogue(root)  # your data, under root
                return ContractSetup(
                    backends=[{"name": "c", "type": "json-catalog", "options": {"store": "store"}}],
                    images=[ExpectedImage(id=i.id, repo_tags=i.tags, size=i.size) for i in images],
                    base_dir=root,
                )

            def cri_teardown(self, setup):
                stop_what_cri_setup_started(setup)  # if anything
    """

    #: The backend removes images (RemoveImage semantics are checked);
    #: False: removal must be refused with FAILED_PRECONDITION.
    removable: bool = False

    def cri_setup(self, root: Path) -> ContractSetup:
        """Write the backend's data under ``root``; say how to serve it and what it holds.

        Called once for the class's shared server and once more, with a
        fresh ``root``, for each test that removes images.
        """
        raise NotImplementedError("a CriContract subclass implements cri_setup(root)")

    def cri_teardown(self, setup: ContractSetup) -> None:
        """Undo what ``cri_setup`` started (a service, a daemon), after the server stopped.

        Called once for every ``cri_setup`` call, on the same object, even
        when the server failed to start. The default does nothing.
        """

    # -- fixtures --------------------------------------------------------

    def _serve(self, root: Path) -> Iterator[ContractRun]:
        setup = self.cri_setup(root)
        try:
            config = {**dict(setup.config), "backends": [dict(b) for b in setup.backends]}
            with running_server(
                config, base_dir=setup.base_dir, extra_plugins=setup.extra_plugins
            ) as shim:
                yield ContractRun(setup, shim)
        finally:
            self.cri_teardown(setup)

    @pytest.fixture(scope="class")
    @classmethod
    def cri_contract(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractRun]:
        """The class's shared server; tests using it change nothing."""
        yield from cls()._serve(tmp_path_factory.mktemp("cri-contract"))

    @pytest.fixture
    def cri_fresh_contract(self, tmp_path: Path) -> Iterator[ContractRun]:
        """A server of this test's own, over fresh data (for removals)."""
        yield from self._serve(tmp_path / "cri-contract")

    # -- not found -------------------------------------------------------

    def test_absent_image_is_nil(self, cri_contract: ContractRun) -> None:
        known = {i.id for i in cri_contract.setup.images}
        assert ABSENT_ID not in known, "pick images whose IDs are not the kit's absent ID"
        for ref in ABSENT_NAMES:
            response = cri_contract.shim.status(ref)
            assert not response.HasField("image"), f"{ref!r} must answer image unset"

    def test_hidden_images_are_absent(self, cri_contract: ContractRun) -> None:
        shim, hidden = cri_contract.shim, cri_contract.setup.hidden
        if not hidden:
            pytest.skip("the setup declares no hidden images")
        listed = {name for image in shim.list() for name in (*image.repo_tags, image.id)}
        for ref in hidden:
            assert not shim.status(ref).HasField("image"), f"hidden {ref!r} was answered"
            assert not shim.list(ref), f"hidden {ref!r} was listed by a filter"
            assert ref not in listed, f"hidden {ref!r} was listed"

    # -- one image by every name -----------------------------------------

    def test_every_name_answers_the_same_image(self, cri_contract: ContractRun) -> None:
        shim, images = cri_contract.shim, cri_contract.setup.images
        ids = [i.id for i in images]
        assert len(set(ids)) == len(ids), "each expected image is listed once"
        for expected in images:
            hexid = expected.id.partition(":")[2]
            refs = [expected.id, hexid, *expected.names]
            if sum(1 for i in ids if i.partition(":")[2].startswith(hexid[:12])) == 1:
                refs.append(hexid[:12])
            answers = {ref: shim.status(ref) for ref in refs}
            first = answers[expected.id]
            assert first.HasField("image"), f"{expected.id} is not answered"
            image = first.image
            assert image.id == expected.id
            assert image.spec.image == expected.id
            assert sorted(image.repo_tags) == sorted(expected.repo_tags), expected.id
            assert sorted(image.repo_digests) == sorted(expected.repo_digests), expected.id
            assert len(set(image.repo_tags)) == len(image.repo_tags), "repo_tags repeat"
            assert len(set(image.repo_digests)) == len(image.repo_digests), "digests repeat"
            for ref, response in answers.items():
                assert response.HasField("image"), f"{ref!r} is not answered"
                assert wire_bytes(response.image) == wire_bytes(image), f"{ref!r} answers otherwise"

    def test_size_is_the_one_the_backend_documents(self, cri_contract: ContractRun) -> None:
        for expected in cri_contract.setup.images:
            assert expected.size is not None, (
                f"ExpectedImage({expected.id}) gives no size: give the size the backend "
                "documents (crishim's rule: platform manifest + config + layers, as "
                "crishim.testing.ocibuild.BuiltImage.size computes it)"
            )
            image = cri_contract.shim.status(expected.id).image
            assert image.size == expected.size, (
                f"{expected.id}: size {image.size}, the backend documents {expected.size}"
            )

    def test_uid_and_username_follow_the_cri_rules(self, cri_contract: ContractRun) -> None:
        for expected in cri_contract.setup.images:
            image = cri_contract.shim.status(expected.id).image
            uid, username = expected_user(expected.user)
            assert image.username == username, f"{expected.id}: User {expected.user!r}"
            if uid is None:
                assert not image.HasField("uid"), f"{expected.id}: User {expected.user!r}"
            else:
                assert image.HasField("uid"), f"{expected.id}: User {expected.user!r}"
                assert image.uid.value == uid, f"{expected.id}: User {expected.user!r}"

    def test_verbose_status_is_the_same_image_with_json_info(
        self, cri_contract: ContractRun
    ) -> None:
        for expected in cri_contract.setup.images:
            plain = cri_contract.shim.status(expected.id)
            verbose = cri_contract.shim.status(expected.id, verbose=True)
            assert wire_bytes(verbose.image) == wire_bytes(plain.image)
            for key, value in verbose.info.items():
                try:
                    json.loads(value)
                except ValueError:
                    pytest.fail(f"{expected.id}: verbose info[{key!r}] is not JSON: {value[:80]!r}")

    # -- lists -----------------------------------------------------------

    def test_list_is_consistent_with_status(self, cri_contract: ContractRun) -> None:
        shim = cri_contract.shim
        listed = shim.list()
        ids = [image.id for image in listed]
        assert len(set(ids)) == len(ids), "ListImages repeats an image"
        assert sorted(ids) == sorted(i.id for i in cri_contract.setup.images)
        for image in listed:
            assert wire_bytes(image) == wire_bytes(shim.status(image.id).image), image.id

    def test_list_filter_names_one_image(self, cri_contract: ContractRun) -> None:
        shim = cri_contract.shim
        for expected in cri_contract.setup.images:
            for ref in (expected.id, *expected.names):
                assert [i.id for i in shim.list(ref)] == [expected.id], ref
        assert shim.list(ABSENT_NAMES[0]) == []

    def test_stream_matches_list(self, cri_contract: ContractRun) -> None:
        shim = cri_contract.shim
        streamed = [
            image
            for response in shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=30)
            for image in response.images
        ]
        assert sorted(wire_bytes(i) for i in streamed) == sorted(wire_bytes(i) for i in shim.list())

    # -- removal ---------------------------------------------------------

    def test_removing_an_absent_image_is_ok(self, cri_contract: ContractRun) -> None:
        for ref in ABSENT_NAMES:
            cri_contract.shim.remove(ref)

    def test_remove(self, cri_fresh_contract: ContractRun) -> None:
        shim, images = cri_fresh_contract.shim, cri_fresh_contract.setup.images
        named = [i for i in images if i.repo_tags]
        if not named:
            pytest.skip("the setup has no tagged image")
        target = named[0]
        others = {i.id: wire_bytes(shim.status(i.id).image) for i in images if i.id != target.id}
        if not self.removable:
            code = status_code(shim.remove, target.repo_tags[0])
            assert code == grpc.StatusCode.FAILED_PRECONDITION, code
            assert shim.status(target.id).HasField("image"), "a refused removal removed"
            return
        shim.remove(target.repo_tags[0])
        for ref in (target.id, *target.names):
            assert not shim.status(ref).HasField("image"), f"{ref!r} survived the removal"
        assert target.id not in {i.id for i in shim.list()}
        shim.remove(target.repo_tags[0])
        shim.remove(target.id)
        for image_id, wire in others.items():
            assert wire_bytes(shim.status(image_id).image) == wire, f"{image_id} changed"

    def test_remove_by_id(self, cri_fresh_contract: ContractRun) -> None:
        if not self.removable:
            pytest.skip("the backend does not remove images")
        shim, images = cri_fresh_contract.shim, cri_fresh_contract.setup.images
        if not images:
            pytest.skip("the setup has no image")
        target = images[-1]
        shim.remove(target.id)
        for ref in (target.id, *target.names):
            assert not shim.status(ref).HasField("image"), f"{ref!r} survived the removal"

    # -- bad input -------------------------------------------------------

    def test_bad_references_are_invalid_argument(self, cri_contract: ContractRun) -> None:
        shim = cri_contract.shim
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        assert status_code(shim.status, "") == invalid
        assert status_code(shim.remove, "") == invalid
        for ref in BAD_REFERENCES:
            assert status_code(shim.status, ref) == invalid, f"ImageStatus {ref[:40]!r}"
            assert status_code(shim.remove, ref) == invalid, f"RemoveImage {ref[:40]!r}"
            assert status_code(shim.list, ref) == invalid, f"ListImages filter {ref[:40]!r}"

    def test_an_unknown_runtime_handler_is_invalid_argument(
        self, cri_contract: ContractRun
    ) -> None:
        shim, setup = cri_contract.shim, cri_contract.setup
        handler = "crishim-contract-unknown"
        served = {h for b in setup.backends for h in b.get("runtime_handlers", [""])}
        assert handler not in served, "pick runtime handler names other than the kit's"
        ref = setup.images[0].id if setup.images else ABSENT_ID
        spec = api_pb2.ImageSpec(image=ref, runtime_handler=handler)
        calls = {
            "ImageStatus": (shim.images.ImageStatus, api_pb2.ImageStatusRequest(image=spec)),
            "PullImage": (shim.images.PullImage, api_pb2.PullImageRequest(image=spec)),
            "RemoveImage": (shim.images.RemoveImage, api_pb2.RemoveImageRequest(image=spec)),
            "ListImages": (
                shim.images.ListImages,
                api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=spec)),
            ),
        }
        for name, (call, request) in calls.items():
            code = status_code(lambda c=call, r=request: c(r, timeout=30))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {code}"
        if setup.images:
            assert shim.status(ref).HasField("image"), "a refused RemoveImage removed"

    def test_image_fs_info_answers(self, cri_contract: ContractRun) -> None:
        shim = cri_contract.shim
        response = shim.fsinfo()
        now = time.time_ns()
        for usage in response.image_filesystems:
            where = usage.fs_id.mountpoint
            assert where, "a filesystem usage names its mountpoint"
            assert usage.HasField("used_bytes"), f"{where}: used_bytes is unset"
            assert usage.HasField("inodes_used"), f"{where}: inodes_used is unset"
            assert recent(usage.timestamp, now), (
                f"{where}: timestamp {usage.timestamp} is not time.time_ns() of the last hour"
            )
        for handle in shim.catalog.backends:
            for own in handle.backend.filesystem_usage():
                assert own.mountpoint, f"backend {handle.name}: a usage without mountpoint"
                assert recent(own.timestamp_ns, now), (
                    f"backend {handle.name}: FilesystemUsage.timestamp_ns {own.timestamp_ns} "
                    f"for {own.mountpoint} is not time.time_ns() of the last hour"
                )
