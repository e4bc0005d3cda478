"""Domain errors.

Everything below :mod:`crishim.service` speaks in these exceptions; the
service layer is the one place that turns them into gRPC status codes.
Messages must be safe to show to a client: never credentials, never URL
query strings. A backend raises one to *mean* an answer (the status in
parentheses after each class); any other exception from a backend is a
fault: logged with the backend's name, it costs only that backend's answer
(lookups, lists, usage) or fails the call with INTERNAL (removals, pulls).
Every class takes one argument, the message, except :class:`BackendError`,
which takes the backend's name first.

Example::

    from crishim.errors import BackendError, ReadOnly, Unavailable


    class MyBackend(IndexedBackend):
        def start(self):
            if not self.root.is_dir():  # stops start-up with this message
                raise BackendError(self.name, f"{self.root} does not exist")

        def remove_image(self, record):  # FAILED_PRECONDITION to the client
            raise ReadOnly(f"backend {self.name!r} is read-only")

        def pull_image(self, request):  # UNAVAILABLE: kubelet retries
            raise Unavailable(f"registry {request.ref.domain} is unreachable")
"""

from __future__ import annotations

__all__ = [
    "AmbiguousReference",
    "BackendError",
    "Cancelled",
    "CrishimError",
    "DataLoss",
    "DeadlineExceeded",
    "ImageNotFound",
    "InvalidReference",
    "InvalidRequest",
    "NotSupported",
    "PermissionDenied",
    "PreconditionFailed",
    "ReadOnly",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
]


class CrishimError(Exception):
    """Base class of every error crishim reports to a client; raised itself (UNKNOWN)."""


class InvalidReference(CrishimError):
    """The image reference in a request is malformed (INVALID_ARGUMENT)."""


class AmbiguousReference(CrishimError):
    """An ID prefix matches more than one image (INVALID_ARGUMENT)."""


class InvalidRequest(CrishimError):
    """A request is malformed in some other way (INVALID_ARGUMENT)."""


class ImageNotFound(CrishimError):
    """An operation that needs an existing image found none (NOT_FOUND).

    ImageStatus never raises this: an absent image is a normal answer there.
    """


class NotSupported(CrishimError):
    """No configured backend can do what was asked (FAILED_PRECONDITION)."""


class PreconditionFailed(CrishimError):
    """The request cannot be served as it was made: a pull policy wants it
    otherwise, e.g. by digest (FAILED_PRECONDITION)."""


class ReadOnly(CrishimError):
    """The backend holding the image refuses writes (FAILED_PRECONDITION)."""


class BackendError(CrishimError):
    """A backend failed while answering (INTERNAL).

    ``BackendError(backend, message)``: unlike the other errors it takes the
    configured instance's name first (``self.name`` in an
    :class:`~crishim.types.IndexedBackend`), kept as ``.backend``, and its
    message reads ``backend 'NAME': MESSAGE``. Raised from ``start`` it
    stops start-up with that message.
    """

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(f"backend {backend!r}: {message}")
        self.backend = backend


class Unavailable(CrishimError):
    """A backend's source is unreachable right now (UNAVAILABLE)."""


class TooLarge(CrishimError):
    """An answer would exceed a limit: message size, concurrent pulls (RESOURCE_EXHAUSTED)."""


class PermissionDenied(CrishimError):
    """The source refused the credentials given, or a pull policy denied the
    pull (PERMISSION_DENIED)."""


class Unauthenticated(CrishimError):
    """The source wants credentials and none (or no usable ones) were given (UNAUTHENTICATED)."""


class DeadlineExceeded(CrishimError):
    """The caller's deadline ran out before the work finished (DEADLINE_EXCEEDED)."""


class Cancelled(CrishimError):
    """The caller went away before the work finished (CANCELLED)."""


class DataLoss(CrishimError):
    """Content did not match its digest (DATA_LOSS)."""
