"""The HTTP transport: one ``httpx.AsyncClient`` whose calls each hold a keep-alive connection of their own.

Why not httpx's default pool with ``max_connections=concurrency``: httpcore 1.0's connection pool rescans
every connection for every queued request on each request and response (O(connections x requests)), and
hands one idle HTTP/1.1 connection to several queued requests at once, so all but one fail internally,
requeue and rescan (encode/httpcore#1035; fixed in the pydantic/httpx2 fork, #974 and #1075). With 64-256
calls in flight against one endpoint that costs 3-8x the throughput (benchmarks/bench_client.py). Here each
call takes an idle single-connection ``httpx.AsyncHTTPTransport`` from a free list (or makes one) and puts
it back when its response is closed, so a pool never has more than one connection to scan; the number of
transports is bounded by the calls in flight (the engine's workers). Proxies from the environment are
passed to each transport (:func:`env_proxy`).
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..errors import UserError
from .messages import public_endpoint


def env_proxy(url: str) -> str | None:
    """The proxy URL the environment sets for ``url`` (``HTTP(S)_PROXY`` / ``ALL_PROXY``, unless ``NO_PROXY``
    exempts the host), or None. Raises :class:`UserError` (one line) for a proxy httpx cannot use here: only
    http(s) proxies are supported (SOCKS needs the optional ``socksio``)."""
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or proxy_bypass(parts.hostname or ""):
        return None
    p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if p.scheme not in ("http", "https"):
        raise UserError(f"proxy {public_endpoint(urlunsplit(p))} is {p.scheme}; only http(s) proxies are "
                        f"supported (set NO_PROXY={parts.hostname} to go direct)")
    return urlunsplit(p)


class _Returned(httpx.AsyncByteStream):
    """A response body that gives its transport back to the free list once closed (read to the end or not)."""

    def __init__(self, stream: httpx.AsyncByteStream, owner: ConnectionPerCall, transport: httpx.AsyncHTTPTransport):
        self.stream, self.owner, self.transport = stream, owner, transport

    async def __aiter__(self):
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        t, self.transport = self.transport, None
        if t is None:
            return
        try:
            await self.stream.aclose()
        except BaseException:
            await self.owner.discard(t)
            raise
        self.owner.free.append(t)


class ConnectionPerCall(httpx.AsyncBaseTransport):
    """An ``httpx`` transport that sends each request on a single-connection ``httpx.AsyncHTTPTransport`` of
    its own: one idle from an earlier request (its keep-alive connection is reused) or a new one.
    ``ssl_context``: the one SSL context every connection shares (loading CA certificates costs ~0.2 s of CPU
    each time); ``proxy``: an http(s) proxy URL every request goes through, or None."""

    def __init__(self, ssl_context: ssl.SSLContext, proxy: str | None = None, keepalive_s: float = 5.0):
        self.ssl_context, self.proxy = ssl_context, proxy
        self.limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=keepalive_s)
        self.free: list[httpx.AsyncHTTPTransport] = []  # idle, most recently used last
        self.made: set[httpx.AsyncHTTPTransport] = set()  # every open one, closed by aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.free:
            t = self.free.pop()
        else:
            t = httpx.AsyncHTTPTransport(verify=self.ssl_context, limits=self.limits, proxy=self.proxy)
            self.made.add(t)
        try:
            response = await t.handle_async_request(request)
        except BaseException:  # connect error, timeout, cancel: the connection may be half-used, drop it
            await self.discard(t)
            raise
        response.stream = _Returned(response.stream, self, t)
        return response

    async def discard(self, t: httpx.AsyncHTTPTransport) -> None:
        self.made.discard(t)
        await t.aclose()

    async def aclose(self) -> None:
        made, self.made, self.free = list(self.made), set(), []
        for t in made:
            await t.aclose()


def http_client(url: str, key: str | None) -> httpx.AsyncClient:
    """One ``httpx.AsyncClient`` for the run: a keep-alive connection per call in flight (at most
    ``--concurrency``, the engine's workers; see :class:`ConnectionPerCall`), gzip/deflate decoded by httpx, TLS
    from certifi or ``SSL_CERT_FILE``/``SSL_CERT_DIR``, the proxy from the environment (:func:`env_proxy`;
    httpx does not read it itself once given a transport). No timeout of its own: each try runs under
    ``asyncio.timeout(timeout_s)`` (the whole call, not per read).
    Raises :class:`UserError` for a proxy in the environment that httpx cannot use."""
    proxy = env_proxy(url)
    headers = {"content-type": "application/json", "user-agent": "mathdistill"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    transport = ConnectionPerCall(httpx.create_ssl_context(trust_env=True), proxy)
    return httpx.AsyncClient(headers=headers, timeout=None, trust_env=True, transport=transport)
