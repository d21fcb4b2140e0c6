"""Which addresses an untrusted advert may point peers at (the gate's address rules).

Relay adverts and shard-holder adverts may be signed by anyone, and whoever hears one
connects where it says. Unchecked, a throw-away key could aim every worker at an internal
host (a cloud metadata address, a database on the operator's LAN) with a path of its choice.
So, for adverts the operator has not endorsed:

- a relay URL is `http(s)://HOST[:PORT]` and nothing more (no path, query, fragment or
  user info: the client appends the shardcast routes itself);
- HOST, and the host of every multiaddr a peer advertises, must be an IP address that is
  globally routable (`ipaddress`' `is_global`, and not multicast): private, loopback,
  link-local, shared (CGNAT), documentation and reserved ranges are refused, and so are DNS
  names, whose resolution is out of the gate's sight (a name can resolve to 127.0.0.1 at
  the moment a client connects);
- `allow_private=True` (P2PConfig.allow_private_addresses: local swarms, tests, a cluster
  on a private network) lifts the host rule; the URL shape rule stays.

A relay the operator endorses (shardcast.p2p.announcements.RelayEndorsement) is exempt from
the host rule: the operator signed that exact URL.

Pure functions; `AddressRefused` (a ValueError) says why.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class AddressRefused(ValueError):
    """An address an advert may not carry."""


def relay_url_shape(url: str) -> str:
    """`url` as `scheme://host[:port]` (a trailing "/" dropped); AddressRefused otherwise."""
    try:
        u = urlsplit(url)
        port = u.port  # raises ValueError on a malformed or out-of-range port
    except ValueError as exc:
        raise AddressRefused(f"malformed relay URL: {exc}") from exc
    if u.scheme not in ("http", "https") or not u.hostname:
        raise AddressRefused("a relay URL must be http:// or https:// with a host")
    if u.path not in ("", "/") or u.query or u.fragment or u.username is not None or u.password is not None:
        raise AddressRefused("a relay URL is scheme://host[:port] only (no path, query or user info)")
    if port == 0:
        raise AddressRefused("a relay URL cannot name port 0")
    return url.rstrip("/")


def _public_ip(host: str) -> None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError as exc:
        raise AddressRefused(f"host {host[:80]!r} is not an IP address (an unendorsed advert may not "
                             f"name a host: its resolution is out of sight)") from exc
    if not ip.is_global or ip.is_multicast:
        raise AddressRefused(f"{ip} is not a public address (private, loopback, link-local or reserved)")
    inner = _embedded_ipv4(ip)
    if inner is not None and (not inner.is_global or inner.is_multicast):
        raise AddressRefused(f"{ip} carries the IPv4 address {inner}, which is not a public one")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")      # RFC 6052: a NAT64 gateway dials the low 32 bits
_V4_COMPATIBLE = ipaddress.ip_network("::/96")     # deprecated IPv4-compatible addresses (::a.b.c.d)


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches through a translator or tunnel (NAT64, 6to4,
    Teredo, IPv4-compatible or -mapped), None otherwise. `is_global` of the IPv6 address says
    nothing of it: 64:ff9b::a00:1 is "global", and a NAT64 gateway connects it to 10.0.0.1."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _V4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def dial_host(proto: str, host: str) -> str:
    """The host a multiaddr's `/proto/host` reaches, spelt one way (for budgets keyed by host):
    an IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4, ...) is that IPv4 address,
    IP addresses are in their compressed form, names are lower case."""
    if proto in ("ip4", "ip6"):
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return f"{proto}/{host}"
        inner = _embedded_ipv4(ip)
        return f"ip4/{inner}" if inner is not None else f"ip{ip.version}/{ip.compressed}"
    return f"{proto}/{host.lower().rstrip('.')}"


def check_relay_url(url: str, *, allow_private: bool) -> str:
    """The normalised URL of an unendorsed relay advert; AddressRefused if it may not be used."""
    url = relay_url_shape(url)
    if not allow_private:
        _public_ip(urlsplit(url).hostname or "")
    return url


def _parses(addr: str) -> None:
    """AddressRefused unless the part a dialler uses (before any /p2p/) is a multiaddr that
    py-libp2p parses: an advert that only fails when dialled would fail in every peer."""
    try:
        import multiaddr
    except ImportError:  # no libp2p here: nothing will dial it
        return
    try:
        multiaddr.Multiaddr(addr.split("/p2p/")[0])
    except Exception as exc:  # any parse failure of an untrusted string is a refusal
        raise AddressRefused(f"not a multiaddr py-libp2p can dial: {type(exc).__name__}") from exc


def check_multiaddr(addr: str, *, allow_private: bool) -> None:
    """AddressRefused unless a peer's advertised multiaddr (/ip4|ip6|dns.../HOST/...) may be dialled."""
    parts = addr.split("/")
    if len(parts) < 3 or parts[0] != "":
        raise AddressRefused("not a multiaddr")
    _parses(addr)
    if allow_private:
        return
    if parts[1] not in ("ip4", "ip6"):
        raise AddressRefused(f"/{parts[1][:16]}/ addresses are refused (a name's resolution is out of sight)")
    _public_ip(parts[2])
