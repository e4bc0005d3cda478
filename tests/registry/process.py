"""The Debian ``docker-registry`` binary, run on 127.0.0.1 with a temporary config."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Where Debian's docker-registry package installs the binary.
REGISTRY_BIN = os.environ.get("CRISHIM_REGISTRY_BIN", "/usr/bin/docker-registry")
INSTALL_HINT = (
    "install it with: apt-get update && DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y --no-install-recommends docker-registry (.ci/run does this)"
)
START_TIMEOUT = 15.0


def registry_binary() -> str:
    """The registry binary; fails the test under CI, skips it elsewhere, when missing."""
    found = shutil.which(REGISTRY_BIN)
    if found is None:
        message = f"the registry binary {REGISTRY_BIN} is missing; {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """True once something accepts connections on 127.0.0.1:port (bounded).

    False when ``timeout`` passes or ``process`` exits first.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.02)
    return False


@dataclass
class TlsFiles:
    certificate: Path
    key: Path
    #: When set, clients must present a certificate signed by one of these CAs.
    client_cas: list[Path] = field(default_factory=list)


@dataclass
class TokenAuth:
    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass
class RegistryProcess:
    """One registry server; several may share one storage directory."""

    storage: Path
    workdir: Path
    tls: TlsFiles | None = None
    htpasswd: Path | None = None
    token: TokenAuth | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The registry name in image references: ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        http: dict[str, Any] = {
            "addr": f"127.0.0.1:{self.port}",
            # shared by every registry of a test session: uploads stay valid
            "secret": "crishim-test-registry-secret",
        }
        if self.tls is not None:
            http["tls"] = {"certificate": str(self.tls.certificate), "key": str(self.tls.key)}
            if self.tls.client_cas:
                http["tls"]["clientcas"] = [str(p) for p in self.tls.client_cas]
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "error", "accesslog": {"disabled": True}},
            # no blob descriptor cache: registries sharing the storage see each
            # other's pushes at once
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
            },
            "http": http,
        }
        if self.htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "crishim-test", "path": str(self.htpasswd)}}
        elif self.token is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.rootcertbundle),
                }
            }
        return config

    def start(self) -> RegistryProcess:
        binary = registry_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        last_log = ""
        for _attempt in range(3):
            self.port = free_port()
            config_path = self.workdir / f"config-{self.port}.yml"
            # JSON is YAML: the registry reads it as its config file
            config_path.write_text(json.dumps(self.config(), indent=2))
            log_path = self.workdir / f"registry-{self.port}.log"
            with open(log_path, "wb") as log_file:
                self.process = subprocess.Popen(
                    [binary, "serve", str(config_path)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if wait_listening(self.port, START_TIMEOUT, self.process):
                return self
            self.stop()
            last_log = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the registry did not start; its log ends with:\n{last_log}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
