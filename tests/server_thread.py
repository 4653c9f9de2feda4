"""A test helper: an ASGI app served by uvicorn in a background thread, on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class ServerThread:
    """Run an app with uvicorn in a background thread on ``host:port`` (port 0: a free one), as a context manager.

    ``with ServerThread(app) as s: OpenAI(base_url=s.url + "/v1")``. The socket is bound before the thread
    starts, so ``s.port`` is known and nothing else can take it.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        # proto IPPROTO_TCP (not 0) so that asyncio sets TCP_NODELAY on accepted connections (else ~40 ms per reply)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="mathdistill-uvicorn")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 60:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def wait_until(cond, timeout: float = 10.0) -> bool:
    """Poll ``cond()`` every 20 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.02)
    return True
