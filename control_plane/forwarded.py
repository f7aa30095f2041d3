"""Who is on the other end of a request when reverse proxies stand in between. Pure: standard
library only.

``TRUSTED_PROXIES`` lists our reverse proxies (addresses or CIDR networks; none by default). Only a
request whose TCP peer is one of them has its ``X-Forwarded-For`` / ``X-Forwarded-Proto`` believed:

- the client is the right-most ``X-Forwarded-For`` address that is not itself a trusted proxy: each
  proxy appends the address it saw, so everything left of that one was written by the client;
- the request is HTTPS when it came over TLS, or when the trusted peer says
  ``X-Forwarded-Proto: https`` (its last value: the one the nearest proxy wrote).

From any other peer both headers are ignored: the client is the peer itself, and only TLS on our own
socket makes the request HTTPS.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Networks = tuple[Network, ...]

UNKNOWN = "unknown"  # a peer without an IP address (a Unix socket)


class Request(Protocol):
    """What is read of a request (aiohttp's ``web.Request`` is one)."""

    @property
    def remote(self) -> str | None: ...

    @property
    def secure(self) -> bool: ...

    @property
    def headers(self) -> Any: ...  # a multidict: ``getall(name, default)``


def parse_networks(raw: str) -> Networks:
    """``"10.0.0.1, 10.1.0.0/16, ::1"`` -> networks; ValueError names the entry that is not one."""
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An IP address (``[v6]:port`` and ``v4:port`` forms accepted; IPv4-mapped IPv6 as IPv4)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address | None, trusted: Networks) -> bool:
    return address is not None and any(address in network for network in trusted)


def _header_values(request: Request, name: str) -> list[str]:
    """Every comma-separated value of every ``name`` header, in order."""
    return [part.strip() for line in request.headers.getall(name, ()) for part in line.split(",")]


def client_address(request: Request, trusted: Networks) -> str:
    """The client's IP address as text (see the module docstring); ``"unknown"`` without one."""
    peer = parse_address(request.remote or "")
    if peer is None:
        return UNKNOWN
    if not is_trusted(peer, trusted):
        return str(peer)
    client = peer
    for hop in reversed(_header_values(request, "X-Forwarded-For")):
        address = parse_address(hop)
        if address is None:
            break  # garbage a trusted proxy passed on: the last good hop is the client
        client = address
        if not is_trusted(address, trusted):
            break
    return str(client)


def is_https(request: Request, trusted: Networks) -> bool:
    """True over TLS, or when a trusted proxy says the client spoke HTTPS to it."""
    if request.secure:
        return True
    if not is_trusted(parse_address(request.remote or ""), trusted):
        return False
    protos = _header_values(request, "X-Forwarded-Proto")
    return bool(protos) and protos[-1].lower() == "https"
