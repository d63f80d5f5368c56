"""Where and as whom a node connects: broker URLs and the credentials of a provisioning bundle."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlparse

DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "ws": 9001, "wss": 8884}


class BrokerUrlError(ValueError):
    """A --broker value that is not mqtt[s]://[user[:password]@]host[:port]."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    websockets: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in DEFAULT_PORTS:
            raise BrokerUrlError(f"broker URL {url!r}: scheme must be one of {sorted(DEFAULT_PORTS)}")
        if not parsed.hostname:
            raise BrokerUrlError(f"broker URL {url!r} has no host")
        try:
            port = parsed.port or DEFAULT_PORTS[parsed.scheme]
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL {url!r}: {exc}") from None
        return cls(
            host=parsed.hostname,
            port=port,
            tls=parsed.scheme in ("mqtts", "ssl", "wss"),
            websockets=parsed.scheme in ("ws", "wss"),
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )


@dataclass(frozen=True)
class ClientAuth:
    """Credentials and TLS material from a provisioning bundle (all optional)."""

    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def redact_url(url: str) -> str:
    """`url` with any password in it replaced by `***`: what may be printed or logged."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.password is None:
        return url
    host = parsed.netloc.rsplit("@", 1)[1]
    user = parsed.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return parsed._replace(netloc=f"{user}:***@{host}").geturl()
