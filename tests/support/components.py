"""What every real component the tests start shares: CI or not, a free port, skipping (failing under CI) when its
prerequisites are missing, and one server for the session in a temporary folder of its own."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar


class Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


def in_ci() -> bool:
    """Whether this run is CI's, where a missing prerequisite must fail rather than skip."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def skip_or_fail(message: str, ci_message: str | None = None) -> NoReturn:
    """Skip the tests that need a missing prerequisite (a newcomer without it), fail under CI=true (the install step
    is broken): with `ci_message` there, else `message`."""
    import pytest

    if in_ci():
        pytest.fail(ci_message or message, pytrace=False)
    pytest.skip(message)


@contextmanager
def session_server(
    component: str, missing: str | None, folder_prefix: str, make: Callable[[Path], S]
) -> Iterator[S]:
    """`make(folder)` started in a new temporary folder, then stopped and the folder removed.

    `missing` (a prerequisite that is not there) skips the tests that use it, except under CI=true, where they fail.
    A server that is installed but will not start always fails. The folder is not under pytest's temp folders: they
    are 0700 root, which a server run as another OS user (PostgreSQL's) cannot enter.
    """
    if missing is not None:
        skip_or_fail(f"no {component}: {missing}", f"CI=true and a real {component} is required: {missing}")
    base_dir = Path(tempfile.mkdtemp(prefix=folder_prefix))
    server = make(base_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)
