"""An immutable in-memory image index that backends can build and swap.

Lookups cost a dict access (names, digests, IDs) or a binary search (ID
prefixes), whatever the number of images. A backend builds a new
:class:`ImageIndex` when its source changes and replaces the old one with a
single attribute assignment, so a concurrent reader sees the old index or the
new one, never a mix.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from crishim.model import ImageRecord
from crishim.reference import Reference, RefKind

__all__ = ["ImageIndex", "merge_records"]


class ImageIndex:
    """Images by ID, by ``name:tag``, by ``name@digest`` and by ID prefix.

    Built from records in one go (two records with one ID become one, with
    the names of both) and never changed: a backend builds a new one and
    hands it to ``IndexedBackend.publish``. Iterating gives each image once.

    Example::

        >>> from crishim.model import ImageRecord
        >>> from crishim.reference import parse
        >>> image_id = "sha256:" + "ab" * 32
        >>> index = ImageIndex(
        ...     [
        ...         ImageRecord(id=image_id, repo_tags=("docker.io/library/busybox:1.36",)),
        ...         ImageRecord(id=image_id, repo_tags=("docker.io/library/busybox:latest",)),
        ...     ]
        ... )
        >>> len(index), index.get(parse("busybox")).repo_tags
        (1, ('docker.io/library/busybox:1.36', 'docker.io/library/busybox:latest'))
        >>> index.match_id_prefix("abab") == [image_id]
        True
    """

    __slots__ = ("_by_digest", "_by_id", "_by_tag", "_sorted_ids")

    def __init__(self, records: Iterable[ImageRecord] = ()) -> None:
        by_id: dict[str, ImageRecord] = {}
        # names of images known more than once, gathered first and merged once:
        # one image under 100,000 names costs linear time, not quadratic
        extra: dict[str, tuple[dict[str, None], dict[str, None]]] = {}
        for record in records:
            previous = by_id.get(record.id)
            if previous is None:
                by_id[record.id] = record
                continue
            names = extra.get(record.id)
            if names is None:
                names = extra[record.id] = (
                    dict.fromkeys(previous.repo_tags),
                    dict.fromkeys(previous.repo_digests),
                )
            names[0].update(dict.fromkeys(record.repo_tags))
            names[1].update(dict.fromkeys(record.repo_digests))
        for image_id, (tags, digests) in extra.items():
            first = by_id[image_id]
            if len(tags) != len(first.repo_tags) or len(digests) != len(first.repo_digests):
                by_id[image_id] = replace(first, repo_tags=tuple(tags), repo_digests=tuple(digests))
        by_tag: dict[str, ImageRecord] = {}
        by_digest: dict[str, ImageRecord] = {}
        for record in by_id.values():
            for tag in record.repo_tags:
                by_tag[tag] = record
            for digest in record.repo_digests:
                by_digest[digest] = record
        self._by_id = by_id
        self._by_tag = by_tag
        self._by_digest = by_digest
        self._sorted_ids = sorted(by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self._by_id.values())

    def get(self, ref: Reference) -> ImageRecord | None:
        """The image a NAME or ID reference names, or None. ID prefixes are not resolved here."""
        kind = ref.kind
        if kind is RefKind.NAME:
            if ref.digest:
                return self._by_digest.get(f"{ref.repository}@{ref.digest}")
            return self._by_tag.get(f"{ref.repository}:{ref.tag}")
        if kind is RefKind.ID:
            return self._by_id.get(ref.digest)
        return None

    def by_id(self, image_id: str) -> ImageRecord | None:
        """The image of this full ID (``sha256:<hex>``), or None."""
        return self._by_id.get(image_id)

    def match_id_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` full IDs whose hex starts with ``prefix``."""
        found: list[str] = []
        ids = self._sorted_ids
        key = "sha256:" + prefix
        i = bisect.bisect_left(ids, key)
        while i < len(ids) and ids[i].startswith(key) and len(found) < limit:
            found.append(ids[i])
            i += 1
        return found


def merge_records(first: ImageRecord, other: ImageRecord) -> ImageRecord:
    """One image known twice: keep ``first``'s facts, take the names of both.

    Example::

        >>> from crishim.model import ImageRecord
        >>> a = ImageRecord(id="sha256:" + "ab" * 32, repo_tags=("example.com/a:1",), size=10)
        >>> b = ImageRecord(id=a.id, repo_tags=("example.com/a:2",), size=99)
        >>> merged = merge_records(a, b)
        >>> merged.repo_tags, merged.size
        (('example.com/a:1', 'example.com/a:2'), 10)
    """
    tags = _union(first.repo_tags, other.repo_tags)
    digests = _union(first.repo_digests, other.repo_digests)
    if tags == first.repo_tags and digests == first.repo_digests:
        return first
    return replace(first, repo_tags=tags, repo_digests=digests)


def _union(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    seen = dict.fromkeys(a)
    for item in b:
        seen.setdefault(item)
    return tuple(seen)
