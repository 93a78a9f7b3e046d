"""Keep other web pages out of a local server (ASGI middleware, before any route).

DNS rebinding: a page from evil.example can make its own name resolve to 127.0.0.1 and then read
this server's answers as same-origin. Its requests still carry `Host: evil.example`, so only the
names this server is reached by are served: the bind host, localhost, 127.0.0.1, ::1 and each
--allow-host (a '*' turns the check off). A cross-site request (a form or script on another
origin posting here) carries an `Origin` naming that other origin, so an `Origin`, when sent, must
be this server itself. Refusals are the service's JSON.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from .limits import Problem
from .responses import problem_response

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def allowed_hosts(bind_host: str, extra=()) -> frozenset[str] | None:
    """The Host names served (lower case, no port), or None when any is ('*')."""
    if "*" in extra:
        return None
    names = set(LOOPBACK_NAMES) | {_bare(h) for h in extra}
    if bind_host not in WILDCARD_BINDS:
        names.add(_bare(bind_host))
    return frozenset(names)


def _bare(host: str) -> str:
    """'[::1]:8000' -> '::1', 'LocalHost.:80' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class HostGuard:
    def __init__(self, app, allowed: frozenset[str] | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None:
            problem = self._check(dict(scope["headers"]))
            if problem is not None:
                return await problem_response(problem)(scope, receive, send)
        return await self.app(scope, receive, send)

    def _check(self, headers: dict) -> Problem | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if _bare(host) not in self.allowed:
            return Problem(400, "bad_host", f"this server does not answer to the Host '{host}' (to serve that "
                                            "name, start it with --allow-host NAME)")
        origin = headers.get(b"origin", b"").decode("latin-1")  # "null" (a sandboxed or file:// page) never matches
        if origin and urlsplit(origin).netloc.lower() != host.lower():
            return Problem(403, "cross_origin", f"requests from the page at {origin} are not served here")
        return None
