"""Domain errors.

Everything below :mod:`crishim.service` speaks in these exceptions; the
service layer is the one place that turns them into gRPC status codes.
Messages must be safe to show to a client: never credentials, never URL
query strings.
"""

from __future__ import annotations


class CrishimError(Exception):
    """Base class of every error crishim reports to a client."""


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

    ``backend`` names the configured instance so operators can find it.
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
