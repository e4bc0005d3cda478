"""The options of the ``cri`` backend: where the upstream CRI image service is, and timeouts."""

from __future__ import annotations

from pydantic import Field, field_validator

from crishim.types import BackendOptions

MiB = 1024 * 1024
#: What kubelet and crishim's server accept by default.
DEFAULT_MESSAGE_SIZE = 16 * MiB
#: The longest path a unix socket address may have (``sun_path`` less its NUL).
MAX_SOCKET_PATH = 107

SCHEME = "unix://"


class CriOptions(BackendOptions):
    """Options of one ``cri`` backend instance."""

    #: ``unix:///abs/path`` (``unix:///var/run/crio/crio.sock``), or
    #: ``unix://relative/path``, relative to the config file's directory.
    endpoint: str
    #: Seconds an ImageStatus, ListImages, ImageFsInfo or RemoveImage
    #: forwarded upstream may take; past it the call is DEADLINE_EXCEEDED.
    call_timeout: float = Field(default=10.0, gt=0, le=3600)
    #: Seconds ``start()`` waits for the upstream to accept a connection
    #: (also how long one connection attempt may take, at least 1 s). Past it crishim
    #: starts anyway, logs a warning, and calls are UNAVAILABLE until the
    #: upstream is up.
    connect_timeout: float = Field(default=5.0, ge=0, le=600)
    #: Seconds a forwarded PullImage may take when the caller gave no
    #: deadline (kubelet gives none); the caller's deadline wins otherwise.
    pull_timeout: float = Field(default=3600.0, gt=0)
    #: Largest message sent or received upstream, in bytes (a ListImages
    #: answer of many images is the large one).
    max_message_size: int = Field(default=DEFAULT_MESSAGE_SIZE, ge=64 * 1024)

    @field_validator("endpoint")
    @classmethod
    def _unix_socket(cls, value: str) -> str:
        if not value.startswith(SCHEME):
            raise ValueError(
                "must be a unix socket address such as unix:///var/run/crio/crio.sock "
                "(unix://relative/path is relative to the config file)"
            )
        path = value[len(SCHEME) :]
        if not path or path == "/":
            raise ValueError("the socket path is missing (e.g. unix:///var/run/crio/crio.sock)")
        if "\x00" in path or any(c.isspace() for c in path):
            raise ValueError("the socket path may not contain NUL or whitespace")
        if path.endswith("/"):
            raise ValueError("the socket path names a directory, not a socket")
        if path.startswith("/") and len(path.encode()) > MAX_SOCKET_PATH:
            raise ValueError(
                f"the socket path is {len(path.encode())} bytes long; "
                f"unix sockets allow at most {MAX_SOCKET_PATH}"
            )
        return value
