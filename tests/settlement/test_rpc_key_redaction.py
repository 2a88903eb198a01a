"""A hosted node's API key (in the URL path or user info) never appears in what the chain commands print.

A real HTTP server on loopback stands in for a hosted JSON-RPC provider: it answers `eth_chainId` and
refuses everything else with HTTP 401, as a provider does when a key runs out of quota, so the key-bearing
URL reaches the library's own exception text. Every output of the command is searched for the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import repo_root, royalty_command

KEY = uuid.uuid4().hex  # 32 hex characters, as Infura issues them
CHAIN_ID_HEX = "0x7a69"


class _Provider(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request.get("method") == "eth_chainId":
            body = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": CHAIN_ID_HEX}).encode()
            self.send_response(200)
        else:
            body = b'{"error": "invalid project id"}'
            self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def provider_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    server.daemon_threads, server.block_on_close = True, False  # web3 keeps connections alive: do not wait
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _deploy(rpc_url: str, via_flag: bool) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ROYALTY_")}
    environment.update(PYTHONPATH=str(repo_root), ROYALTY_SETTLER_KEY="0x" + "11" * 32)
    arguments = ["deploy"]
    if via_flag:
        arguments += ["--rpc-url", rpc_url]
    else:
        environment["ROYALTY_RPC_URL"] = rpc_url
    return subprocess.run(royalty_command(*arguments), capture_output=True, text=True, env=environment, timeout=120)


@pytest.mark.parametrize("shape", ["path", "userinfo"])
def test_a_refusing_provider_and_an_unreachable_one_never_show_the_key(provider_port: int, shape: str) -> None:
    """`royalty deploy` against a provider that refuses the key (HTTP 401, URL from ROYALTY_RPC_URL; the key in the
    path or the user info), and against a closed port (URL from --rpc-url, then with a warning): exit non-zero,
    the key masked (`***`) everywhere."""
    url = {
        "path": f"http://127.0.0.1:{provider_port}/v3/{KEY}",
        "userinfo": f"http://rpc:{KEY}@127.0.0.1:{provider_port}/",
    }[shape]
    refused = _deploy(url, via_flag=False)
    assert refused.returncode != 0
    assert KEY not in refused.stdout + refused.stderr, refused.stderr[-2000:]
    if shape == "userinfo":
        return  # the unreachable case below does not depend on where the key sits: once is enough
    unreachable = _deploy(url.replace(str(provider_port), "1"), via_flag=True)
    assert unreachable.returncode != 0 and "is unavailable" in unreachable.stderr
    assert "--rpc-url carries a credential" in unreachable.stderr
    assert "***" in unreachable.stderr and KEY not in unreachable.stdout + unreachable.stderr
