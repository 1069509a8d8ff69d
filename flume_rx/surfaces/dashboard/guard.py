"""What the dashboard lets in: requests addressed to it, and actions sent by its own page.

Three checks, as a browser-facing admin page needs them:

- **Host, on every request.** A page on another site can make a browser send requests to 127.0.0.1 under a
  name of its own (DNS rebinding: ``evil.example`` first resolves to the attacker, then to 127.0.0.1); the
  browser then lets that page read the answers, since to the browser it is the same origin. Such requests carry
  the other name in ``Host``, so only the names of the bound address (and those allowed by ``--allow-host``)
  are served.
- **Origin, on every mutating request.** A cross-site page can still send a POST (a form, or a fetch it cannot
  read); the browser says where it came from in ``Origin``, which must be this dashboard's own.
- **A page token, on every action.** Each page served carries a token signed with a key made when the
  dashboard starts; an action must send one back in ``X-Flume-Token``, which another site cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_HEADER = "X-Flume-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")


def split_host(value: str) -> tuple[str, int | None]:
    """``Host`` (or an origin's netloc) as a lower-case name and its port (None when not given).

    ``[::1]:8642`` gives ``("::1", 8642)``; a value that is not a host gives ``("", None)``.
    """
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        port_text = rest[1:]
    else:
        if value.count(":") > 1:  # a bare IPv6 address is not a valid Host
            return "", None
        name, _, port_text = value.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return "", None
        return name.rstrip("."), int(port_text)
    return name.rstrip("."), None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` values the dashboard answers.

    Args:
        port: the bound port; names of the bound address must come with it.
        names: names of the bound address.
        any_ip: bound to every interface: any IP address (a literal cannot be rebound to another site).
        allowed: names allowed by the operator (``--allow-host``), on any port (behind a proxy the port a
            browser uses is not ours).
    """

    port: int
    names: frozenset[str]
    any_ip: bool
    allowed: frozenset[str]

    @classmethod
    def for_bind(cls, host: str, port: int, allowed_hosts: Iterable[str] = ()) -> HostPolicy:
        bound = host.strip().strip("[]").lower()
        names = {bound}
        any_ip = bound in _WILDCARDS
        if any_ip or bound in _LOOPBACK_NAMES or (_is_ip(bound) and ipaddress.ip_address(bound).is_loopback):
            names.update(_LOOPBACK_NAMES)
        if any_ip:
            names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
        allowed = frozenset(split_host(a)[0] or a.strip().lower() for a in allowed_hosts)
        return cls(port, frozenset(names - set(_WILDCARDS)), any_ip, allowed)

    def allows(self, host_header: str) -> bool:
        name, port = split_host(host_header)
        if not name:
            return False
        if name in self.allowed:
            return True
        on_our_port = port == self.port or (port is None and self.port == 80)
        return on_our_port and (name in self.names or (self.any_ip and _is_ip(name)))


def same_origin(origin: str | None, host_header: str) -> bool:
    """Whether ``Origin`` names the site the request was sent to (``Host``, already checked)."""
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return False
    return split_host(parts.netloc) == split_host(host_header)


class PageTokens:
    """Tokens for pages: ``nonce.signature``, signed with a key that lives as long as the process, so any page
    this process served can act and nothing else can (no state kept per page)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def new(self) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        nonce, dot, signature = (token or "").partition(".")
        return bool(nonce and dot) and hmac.compare_digest(signature, self._sign(nonce))

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: refuses a request whose ``Host`` is not ours (400), and a mutating one whose ``Origin``
    is not ours (403), before any endpoint runs."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal: JSONResponse | None = None
        if not self.hosts.allows(host):
            refusal = _refuse(
                400,
                f"this dashboard does not answer for Host {host!r}; open it by its own address, or start it "
                "with --allow-host NAME for a name of yours (e.g. behind a proxy)",
            )
        elif scope["method"] not in SAFE_METHODS and not same_origin(headers.get("origin"), host):
            refusal = _refuse(
                403,
                f"actions are taken only from this dashboard's own page (Origin {headers.get('origin')!r} is "
                "not it)",
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refuse(status: int, error: str) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    return JSONResponse(body, status_code=status)
