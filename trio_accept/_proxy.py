"""PROXY protocol v1/v2 (HAProxy's ``proxy-protocol.txt``): what a load balancer in front
of us says about the original connection.

Sans-IO like the engine: the listener feeds bytes in and gets a :class:`ProxyHeader` (or
an error) back; the bytes after the header belong to the TLS engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, final


@final
@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A PROXY protocol header, as the load balancer sent it.

    Attributes:
        version: 1 (the text form) or 2 (the binary form).
        command: ``"PROXY"`` for a relayed connection, ``"LOCAL"`` for one the proxy
            made itself (a health check): then the addresses are ``None``.
        source: The original client's address, as a socket address tuple
            (``(host, port)`` for IPv4, ``(host, port, 0, 0)`` for IPv6, a path string for
            UNIX sockets), or ``None`` when the proxy did not say (``LOCAL``, ``UNKNOWN``).
        destination: The address the client connected to, in the same form, or ``None``.
        tlvs: Version 2's type-length-value fields, by type number, in order of arrival.
    """

    version: int
    command: str
    source: Any
    destination: Any
    tlvs: tuple[tuple[int, bytes], ...] = field(default=())
