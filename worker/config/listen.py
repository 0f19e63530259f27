"""The `http_listen` setting: where the embedded HTTP server listens.

``host:port`` (``127.0.0.1:9187``), ``[v6]:port`` (``[::1]:9187``) or ``unix:/path``.
Parsed once here, for the settings parser (a bad value is a configuration error naming
the key) and for the server (`cronloop.web`). It never opens a socket.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Listen", "parse_listen"]


@dataclass(frozen=True)
class Listen:
    """A parsed `http_listen`: a TCP host and port, or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""  # set for a unix socket

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    @property
    def loopback(self) -> bool:
        """Only this host can connect: a unix socket, localhost or a loopback address."""
        if self.is_unix or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def parse(cls, text: str) -> Listen:
        """Raises ValueError saying what form is expected."""
        text = text.strip()
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path.startswith("/"):
                raise ValueError(
                    "a unix socket needs an absolute path: unix:/run/cronloop/http.sock"
                )
            return cls(path=path)
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port, [v6-address]:port or unix:/path")
        if host.startswith("["):
            if not host.endswith("]"):
                raise ValueError("an IPv6 address is written in brackets: [::1]:9187")
            host = host[1:-1]
            _check_address(host)
        elif ":" in host:
            raise ValueError("write an IPv6 address in brackets: [::1]:9187")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        return cls(host=host, port=int(port_text))

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _check_address(host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv6 address") from None


def parse_listen(text: str) -> str:
    """The settings parser: "" (off) or a valid address, kept as text."""
    if not text.strip():
        return ""
    return str(Listen.parse(text))
