"""Redis URLs as users write them: the schemes flume_rx takes, the error for a bad one, and the one redaction.

Pure string work, so the config can check a URL without loading Redis; the store's connection module
re-exports these names.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from flume_rx.model.errors import ConfigError

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
"""The URL schemes flume_rx takes: plain, TLS, a Unix socket, and a Redis Cluster (plain or TLS)."""


def invalid_url(url: str, problem: str) -> ConfigError:
    """The error for a Redis URL that is not one flume_rx can use, naming every scheme it takes."""
    return ConfigError(
        f"redis_url {redact_url(url)!r} is not a valid Redis URL ({problem}); write it as one of "
        f"{', '.join(s + '...' for s in REDIS_URL_SCHEMES)}, e.g. redis://127.0.0.1:6379/0"
    )


def redact_url(url: str) -> str:
    """``url`` without its user name and password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
