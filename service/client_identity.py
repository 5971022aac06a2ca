"""Who sent a request, for fairness and rate limits: the API key where there is one, else the client's address.

Behind a proxy every request comes from the proxy's address. The original client is in `X-Forwarded-For`
(`client, proxy1, proxy2`) or RFC 7239's `Forwarded` (`for=client;proto=https, for=proxy1`), but anyone can
send those headers, so they are believed only when the peer is a configured trusted proxy (the setting
`trusted_proxies`, like uvicorn's `--forwarded-allow-ips`), and then only back to the first hop that is not
itself trusted: the right-most untrusted address is the client.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FOR = re.compile(r'(?:^|;)\s*for=("?)([^";,]+)\1', re.IGNORECASE)


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR blocks ("10.0.0.0/8", "127.0.0.1", "::1"); "*" trusts every peer."""
    out = []
    for item in items:
        item = item.strip()
        if item == "*":
            out += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        elif item:
            out.append(ipaddress.ip_network(item, strict=False))
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # an IPv4 address with a port
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: object, trusted: tuple[Network, ...]) -> bool:
    return address is not None and any(address in net for net in trusted)


def forwarded_chain(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The addresses the proxies recorded, client first: from `Forwarded` if present, else `X-Forwarded-For`."""
    forwarded = [v.decode("latin-1") for k, v in headers if k.lower() == b"forwarded"]
    if forwarded:
        hops = ",".join(forwarded).split(",")
        return [m.group(2) for hop in hops if (m := _FOR.search(hop))]
    xff = [v.decode("latin-1") for k, v in headers if k.lower() == b"x-forwarded-for"]
    return [hop.strip() for hop in ",".join(xff).split(",") if hop.strip()]


def client_address(peer: str | None, headers: list[tuple[bytes, bytes]], trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the right-most address in the
    forwarding chain that is not a trusted proxy."""
    if peer is None:
        return "unknown"
    if not trusted or not _trusted(_address(peer), trusted):
        return peer
    for hop in reversed(forwarded_chain(headers)):
        address = _address(hop)
        if address is None:
            return peer  # an unparsable hop (e.g. "unknown" or an obfuscated name): stop believing the chain
        if not _trusted(address, trusted):
            return str(address)
    return peer
