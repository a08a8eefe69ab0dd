"""The PROXY protocol (HAProxy's v1 text line and v2 binary header): parsing and trust.

A load balancer that speaks it sends one header at the start of each connection, saying who
the real client is. This module only decides what a run of bytes means; it does no I/O and
reads no clock, so the server can drive it from any mode. Written from the public
specification, HAProxy's doc/proxy-protocol.txt ("the spec" below). It runs past our usual
400 lines because it is that one specification read top to bottom: both versions, the TLVs and
the trust rule share their result types, and splitting them would scatter the spec's sections.

How a server reads a header without taking a byte that is not part of it: peek (MSG_PEEK)
what has arrived and call `parse_proxy_header()`. None means every byte seen so far belongs
to the header: consume them (a plain recv of that many) and wait for more; a level-triggered
selector would otherwise report the same bytes forever. A result gives the header's exact
length: consume up to it, and what follows stays in the socket for TLS or the handler.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Union

from handlers.types import Address

__all__ = ["ProxyHeaderError", "ProxyInfo", "ProxySSL", "ProxyTrust", "TLVType", "SSLSubtype",
           "parse_proxy_header", "is_trusted", "ACCEPT_VALUES", "DEFAULT_TRUSTED_NETWORKS",
           "DEFAULT_MAX_SIZE_BYTES", "V1_MAX_LINE_BYTES", "V2_SIGNATURE"]

#: What `parse_proxy_header(accept=...)` takes: one version, or either.
ACCEPT_VALUES: Final = ("v1", "v2", "any")
#: The spec's bound on a v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
V1_MAX_LINE_BYTES: Final = 107
#: Default bound on a whole v2 header (16-byte prefix + addresses + TLVs), as issue 10 asks.
DEFAULT_MAX_SIZE_BYTES: Final = 4096
#: The 12 bytes that open every v2 header (spec section 2.2).
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
V2_PREFIX_BYTES: Final = 16
#: Who may send a header when the server is not told otherwise: this machine only.
DEFAULT_TRUSTED_NETWORKS: Final = ("127.0.0.0/8", "::1/128")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ProxyHeaderError(ValueError):
    """The bytes at the start of a connection are not an acceptable PROXY header; the message
    says what is wrong. The connection must be closed (the spec forbids guessing)."""


class TLVType(enum.IntEnum):
    """Registered v2 TLV types (spec 2.2); `ProxyInfo.tlvs` is keyed by these numbers."""
    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


class SSLSubtype(enum.IntEnum):
    """Sub-TLV types inside a `TLVType.SSL` value (spec 2.2.6)."""
    VERSION = 0x21
    CN = 0x22
    CIPHER = 0x23
    SIG_ALG = 0x24
    KEY_ALG = 0x25
    GROUP = 0x26
    SIG_SCHEME = 0x27
    CLIENT_CERT = 0x28


CLIENT_SSL: Final = 0x01
CLIENT_CERT_CONN: Final = 0x02
CLIENT_CERT_SESS: Final = 0x04
UNIQUE_ID_MAX_BYTES: Final = 128  # spec 2.2.5


def _tlv_name(kind: int) -> str:
    try:
        return TLVType(kind).name
    except ValueError:
        return f"0x{kind:02x}"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


@dataclass(frozen=True)
class ProxySSL:
    """What the load balancer says about the client's TLS connection to it (TLV 0x20).

    `client` is the spec's bit field (0x01 TLS used, 0x02 a client certificate on this
    connection, 0x04 one in this TLS session); `verify` is 0 when the client's certificate
    was verified. Text properties decode the raw sub-TLVs as UTF-8, replacing invalid bytes.
    """

    client: int
    verify: int
    tlvs: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def ssl(self) -> bool:
        """True when the client connected to the balancer over TLS."""
        return bool(self.client & CLIENT_SSL)

    @property
    def client_cert_verified(self) -> bool:
        """True when the client presented a certificate and the balancer verified it."""
        return bool(self.client & (CLIENT_CERT_CONN | CLIENT_CERT_SESS)) and self.verify == 0

    @property
    def version(self) -> str | None:
        """The TLS version, as in "TLSv1.3"."""
        return _text(self.tlvs.get(SSLSubtype.VERSION))

    @property
    def cipher(self) -> str | None:
        return _text(self.tlvs.get(SSLSubtype.CIPHER))

    @property
    def common_name(self) -> str | None:
        """The Common Name of the client certificate's subject."""
        return _text(self.tlvs.get(SSLSubtype.CN))

    @property
    def client_cert(self) -> bytes | None:
        """The client's certificate, DER-encoded, where the balancer sends it."""
        return self.tlvs.get(SSLSubtype.CLIENT_CERT)


@dataclass(frozen=True, repr=False)
class ProxyInfo:
    """One PROXY header: what the load balancer said about the connection.

    Attributes:
        version: 1 or 2.
        command: "PROXY" (relayed for a client) or "LOCAL" (the balancer's own connection,
            such as a health check; v1 "UNKNOWN" counts as LOCAL): keep the socket's address.
        family: socket.AF_INET, AF_INET6 or AF_UNIX; AF_UNSPEC when no address was given.
        transport: socket.SOCK_STREAM or SOCK_DGRAM; None when unspecified.
        source, destination: the real client's address and the address it connected to, in
            the shape `getpeername()` gives for `family`; None when no address was given.
        peer: the immediate peer (the balancer), as the socket reports it; None until the
            server fills it in with `with_peer()`.
        tlvs: v2 type -> value, NOOP padding left out; a repeated type keeps its first value.
            Empty for v1. CRC32C, when present, has been verified.
        ssl: the parsed `TLVType.SSL` value, or None.
    """

    version: int
    command: str
    family: socket.AddressFamily
    transport: socket.SocketKind | None
    source: Address | None
    destination: Address | None
    peer: Address | None = None
    tlvs: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    ssl: ProxySSL | None = None

    def __repr__(self) -> str:
        names = [_tlv_name(kind) for kind in self.tlvs]
        return (f"<ProxyInfo v{self.version} {self.command} {self.family.name} "
                f"source={self.source!r} destination={self.destination!r} peer={self.peer!r}"
                + (f" tlvs={','.join(names)}" if names else "") + ">")

    def with_peer(self, peer: Address) -> ProxyInfo:
        """A copy with `peer` set (the address the socket itself reports)."""
        return dataclasses.replace(self, peer=peer)

    @property
    def client_address(self) -> Address | None:
        """The address a handler should see: `source` when the header gave one, else `peer`."""
        return self.source if self.source is not None else self.peer

    @property
    def alpn(self) -> bytes | None:
        """The application protocol the client negotiated with the balancer (b"h2", ...)."""
        return self.tlvs.get(TLVType.ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (TLS SNI), decoded as UTF-8."""
        return _text(self.tlvs.get(TLVType.AUTHORITY))

    @property
    def unique_id(self) -> bytes | None:
        """The balancer's opaque id for this connection (at most 128 bytes)."""
        return self.tlvs.get(TLVType.UNIQUE_ID)


def parse_proxy_header(data: bytes, accept: str = "any",
                       max_size: int = DEFAULT_MAX_SIZE_BYTES) -> tuple[ProxyInfo, int] | None:
    """Parse the PROXY header at the start of `data` (the bytes received so far).

    Args:
        data: everything received on the connection so far, from its first byte.
        accept: "v1", "v2" or "any" (either version).
        max_size: the largest v2 header accepted, in bytes, its 16-byte prefix included
            (at least 16). A v1 line is bounded by the spec: 107 bytes.

    Returns:
        (info, length) once the whole header is in `data`: `length` is the header's exact
        size, and `data[length:]` is not part of it. `info.peer` is None (see `with_peer`).
        None when more bytes are needed; every byte of `data` then belongs to the header.

    Raises:
        ProxyHeaderError: as soon as `data` cannot begin an acceptable header: not a header
            at all (checked byte by byte, so b"G" is refused at once), a version `accept`
            excludes, malformed fields, a v1 line with no CRLF in 107 bytes, a v2 header
            declaring more than `max_size` bytes (refused once its 16-byte prefix is in),
            a bad CRC32C.
        ValueError: `accept` or `max_size` is out of range (a configuration error).
    """
    if accept not in ACCEPT_VALUES:
        raise ValueError(f"accept must be one of {ACCEPT_VALUES}, not {accept!r}")
    if max_size < V2_PREFIX_BYTES:
        raise ValueError(f"max_size must be at least {V2_PREFIX_BYTES} bytes, not {max_size}")
    data = bytes(data[:max(max_size, V1_MAX_LINE_BYTES)])
    version = _detect_version(data, accept)
    if version is None:
        return None
    return _parse_v1(data) if version == 1 else _parse_v2(data, max_size)


def _detect_version(data: bytes, accept: str) -> int | None:
    """The version `data` starts as (None while empty); refuses any other start at once."""
    possible = [version for version, signature in ((1, V1_PREFIX), (2, V2_SIGNATURE))
                if data[:len(signature)] == signature[:len(data)]]
    if not possible:
        raise ProxyHeaderError(f"not a PROXY protocol header: the connection starts with "
                               f"{data[:16]!r}")
    if len(possible) > 1:
        return None
    (version,) = possible
    if accept not in ("any", f"v{version}"):
        raise ProxyHeaderError(f"the connection starts like a PROXY v{version} header, but "
                               f"only {accept} is accepted")
    return version


# -- version 1: one US-ASCII line ----------------------------------------------------------

_V1_FIELD_CHARS: Final = {b"TCP4": frozenset(b"0123456789. "),
                          b"TCP6": frozenset(b"0123456789abcdefABCDEF:. ")}
_V1_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_IPV4: Final = re.compile(rb"(?:(?:0|[1-9][0-9]{0,2})\.){3}(?:0|[1-9][0-9]{0,2})")
_V1_FAMILIES: Final = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX_LINE_BYTES)
    if end < 0:
        _check_v1_line(data[:V1_MAX_LINE_BYTES], complete=False)
        if len(data) >= V1_MAX_LINE_BYTES:
            raise ProxyHeaderError(f"PROXY v1 line has no CRLF in its first "
                                   f"{V1_MAX_LINE_BYTES} bytes")
        return None
    _check_v1_line(data[:end], complete=True)
    words = data[:end].split(b" ")
    protocol = words[1]
    if protocol == b"UNKNOWN":  # the spec: ignore the rest of the line
        return ProxyInfo(1, "LOCAL", socket.AF_UNSPEC, None, None, None), end + 2
    if protocol not in _V1_FAMILIES:
        raise ProxyHeaderError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not "
                               f"{protocol!r}")
    if len(words) != 6:
        raise ProxyHeaderError(f"PROXY v1 line must be 'PROXY {protocol.decode()} <source> "
                               f"<destination> <source port> <destination port>', not "
                               f"{data[:end]!r}")
    family = _V1_FAMILIES[protocol]
    source = _v1_address(family, words[2], _v1_port(words[4]))
    destination = _v1_address(family, words[3], _v1_port(words[5]))
    return ProxyInfo(1, "PROXY", family, socket.SOCK_STREAM, source, destination), end + 2


def _check_v1_line(line: bytes, complete: bool) -> None:
    """Refuse a v1 line (without its CRLF; `complete` False while it may still grow) as soon
    as it goes wrong."""
    pending_cr = not complete and line.endswith(b"\r")
    body = line[:-1] if pending_cr else line
    if b"\r" in body or b"\n" in body:
        raise ProxyHeaderError(f"PROXY v1 line must end with CRLF and contain no other CR or "
                               f"LF: {line!r}")
    protocol, space, rest = body[len(V1_PREFIX):].partition(b" ")
    growing = not complete and not pending_cr and not space
    if protocol == b"UNKNOWN" or (growing and any(name.startswith(protocol)
                                                  for name in (b"UNKNOWN", b"TCP4", b"TCP6"))):
        return  # UNKNOWN: the spec says ignore the rest of the line
    if protocol not in _V1_FAMILIES:
        raise ProxyHeaderError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN: {line!r}")
    if not space:
        raise ProxyHeaderError(f"PROXY v1 {protocol.decode()} line has no addresses: {line!r}")
    bad = set(rest) - _V1_FIELD_CHARS[protocol]
    if bad or b"  " in rest or rest.startswith(b" ") or rest.count(b" ") > 3:
        raise ProxyHeaderError(f"PROXY v1 {protocol.decode()} line is malformed (fields must "
                               f"be addresses and ports separated by single spaces): {line!r}")


def _v1_port(text: bytes) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port must be 0-65535 without leading zeros, not "
                               f"{text!r}")
    return int(text)


def _v1_address(family: socket.AddressFamily, text: bytes, port: int) -> Address:
    try:
        if family == socket.AF_INET and not (_V1_IPV4.fullmatch(text) and
                                             max(map(int, text.split(b"."))) <= 255):
            raise OSError
        packed = socket.inet_pton(family, text.decode("ascii"))
    except (OSError, UnicodeDecodeError):
        kind = "IPv4" if family == socket.AF_INET else "IPv6"
        raise ProxyHeaderError(f"PROXY v1 address is not a canonical {kind} address: "
                               f"{text!r}") from None
    return _inet_address(family, packed, port)


def _inet_address(family: socket.AddressFamily, packed: bytes, port: int) -> Address:
    """The tuple getpeername() gives for an AF_INET / AF_INET6 socket."""
    host = socket.inet_ntop(family, packed)
    return (host, port) if family == socket.AF_INET else (host, port, 0, 0)


# -- version 2: binary ----------------------------------------------------------------------

_V2_COMMANDS: Final = {0x0: "LOCAL", 0x1: "PROXY"}
# family nibble -> (socket family, bytes of the address block)
_AF_UNIX: Final = getattr(socket, "AF_UNIX", None)  # None on platforms without Unix sockets
_V2_FAMILIES: Final = {0x1: (socket.AF_INET, 12), 0x2: (socket.AF_INET6, 36),
                       **({0x3: (_AF_UNIX, 216)} if _AF_UNIX is not None else {})}
_V2_TRANSPORTS: Final = {0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM}


def _parse_v2(data: bytes, max_size: int) -> tuple[ProxyInfo, int] | None:
    if len(data) > 12 and data[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header has version {data[12] >> 4}; only 2 exists")
    if len(data) > 12 and data[12] & 0xF not in _V2_COMMANDS:
        raise ProxyHeaderError(f"PROXY v2 command must be LOCAL (0) or PROXY (1), not "
                               f"{data[12] & 0xF}")
    if len(data) > 13:
        _v2_family(data[13])
    if len(data) < V2_PREFIX_BYTES:
        return None
    length = V2_PREFIX_BYTES + int.from_bytes(data[14:16], "big")
    if length > max_size:
        raise ProxyHeaderError(f"PROXY v2 header declares {length} bytes, more than the "
                               f"{max_size} allowed (proxy_header_max_size)")
    if len(data) < length:
        return None
    command = _V2_COMMANDS[data[12] & 0xF]
    family, transport, address_size = _v2_family(data[13])
    if V2_PREFIX_BYTES + address_size > length and command == "LOCAL":
        address_size = length - V2_PREFIX_BYTES  # LOCAL: the block is discarded anyway
    elif V2_PREFIX_BYTES + address_size > length:
        raise ProxyHeaderError(f"PROXY v2 header is {length} bytes, too short for its "
                               f"{family.name} addresses ({address_size} bytes)")
    body = data[V2_PREFIX_BYTES:length]
    source = destination = None
    if command == "PROXY" and family != socket.AF_UNSPEC:
        source, destination = _v2_addresses(family, body[:address_size])
    else:
        family, transport = socket.AF_UNSPEC, None  # LOCAL: the spec says ignore them
    tlvs = _read_tlvs(body[address_size:], "PROXY v2 TLV")
    _check_crc32c(data[:length], V2_PREFIX_BYTES + address_size, tlvs)
    if len(tlvs.get(TLVType.UNIQUE_ID, b"")) > UNIQUE_ID_MAX_BYTES:
        raise ProxyHeaderError(f"PROXY v2 UNIQUE_ID is longer than {UNIQUE_ID_MAX_BYTES} bytes")
    ssl = _parse_ssl(tlvs[TLVType.SSL]) if TLVType.SSL in tlvs else None
    return ProxyInfo(2, command, family, transport, source, destination,
                     tlvs=MappingProxyType(tlvs), ssl=ssl), length


def _v2_family(byte: int) -> tuple[socket.AddressFamily, socket.SocketKind | None, int]:
    """(family, transport, address block size) of the 14th byte; refuses undefined values."""
    if byte == 0x00:
        return socket.AF_UNSPEC, None, 0
    if byte >> 4 not in _V2_FAMILIES or byte & 0xF not in _V2_TRANSPORTS:
        raise ProxyHeaderError(f"PROXY v2 address family and transport byte 0x{byte:02x} is "
                               "not one the spec defines (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, "
                               "0x32)")
    family, size = _V2_FAMILIES[byte >> 4]
    return family, _V2_TRANSPORTS[byte & 0xF], size


def _v2_addresses(family: socket.AddressFamily, block: bytes) -> tuple[Address, Address]:
    if family == _AF_UNIX:
        return _unix_address(block[:108]), _unix_address(block[108:])
    size = 4 if family == socket.AF_INET else 16
    source_port, destination_port = struct.unpack("!HH", block[2 * size:])
    return (_inet_address(family, block[:size], source_port),
            _inet_address(family, block[size:2 * size], destination_port))


def _unix_address(raw: bytes) -> Address:
    """A sun_path as getpeername() gives it: a str path, or bytes for an abstract name."""
    if raw[:1] == b"\0" and raw.strip(b"\0"):
        return raw.rstrip(b"\0")
    return os.fsdecode(raw.partition(b"\0")[0])


def _read_tlvs(block: bytes, what: str) -> dict[int, bytes]:
    """Type -> value of a run of (type, 16-bit length, value) records, first value kept."""
    tlvs: dict[int, bytes] = {}
    offset = 0
    while offset < len(block):
        if offset + 3 > len(block):
            raise ProxyHeaderError(f"{what} at offset {offset} is cut short: "
                                   f"{len(block) - offset} bytes left, a TLV needs 3")
        kind, size = block[offset], int.from_bytes(block[offset + 1:offset + 3], "big")
        value = block[offset + 3:offset + 3 + size]
        if len(value) != size:
            raise ProxyHeaderError(f"{what} 0x{kind:02x} declares {size} bytes but only "
                                   f"{len(value)} remain in the header")
        if kind != TLVType.NOOP:
            tlvs.setdefault(kind, value)
        offset += 3 + size
    return tlvs


def _parse_ssl(value: bytes) -> ProxySSL:
    if len(value) < 5:
        raise ProxyHeaderError(f"PROXY v2 SSL TLV is {len(value)} bytes; it needs at least 5")
    client, verify = struct.unpack("!BI", value[:5])
    return ProxySSL(client, verify, MappingProxyType(_read_tlvs(value[5:], "PROXY v2 SSL "
                                                                            "sub-TLV")))


def _check_crc32c(header: bytes, tlv_start: int, tlvs: Mapping[int, bytes]) -> None:
    """Verify TLV CRC32C (spec 2.2.3): the checksum of the header with its own field zeroed."""
    expected = tlvs.get(TLVType.CRC32C)
    if expected is None:
        return
    if len(expected) != 4:
        raise ProxyHeaderError(f"PROXY v2 CRC32C TLV is {len(expected)} bytes; it must be 4")
    offset = tlv_start
    while header[offset] != TLVType.CRC32C:  # the first one, the one _read_tlvs kept
        offset += 3 + int.from_bytes(header[offset + 1:offset + 3], "big")
    zeroed = header[:offset + 3] + bytes(4) + header[offset + 7:]
    if _crc32c(zeroed) != int.from_bytes(expected, "big"):
        raise ProxyHeaderError("PROXY v2 CRC32C does not match the header: corrupted")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C (RFC 4960 appendix B); headers are small, so a table loop is fast enough."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- who may send a header ------------------------------------------------------------------

class ProxyTrust:
    """The networks allowed to send a PROXY header (`proxy_trusted`), parsed once.

    Peers on Unix sockets are always trusted: only a process on this machine can connect,
    and file permissions already decide which. An IPv4-mapped IPv6 peer (::ffff:10.0.0.1)
    matches IPv4 networks.
    """

    __slots__ = ("networks",)

    def __init__(self, networks: str | Network | Iterable[str | Network]
                 = DEFAULT_TRUSTED_NETWORKS) -> None:
        """Args:
            networks: CIDR strings ("10.0.0.0/8", "::1/128", a bare address for one host)
                or `ipaddress` networks; one string alone means that one network.

        Raises:
            ValueError: an entry is not a network; the message names it.
        """
        if isinstance(networks, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
            networks = [networks]
        parsed = []
        for network in networks:
            try:
                if not isinstance(network, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
                    raise ValueError("give a CIDR string or an ipaddress network")
                parsed.append(ipaddress.ip_network(network))
            except ValueError as exc:
                raise ValueError(f"proxy_trusted: {network!r} is not a network such as "
                                 f"'10.0.0.0/8' ({exc})") from None
        self.networks: tuple[Network, ...] = tuple(parsed)

    def __repr__(self) -> str:
        return f"ProxyTrust({[str(network) for network in self.networks]!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProxyTrust) and self.networks == other.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def trusts(self, peer: Address) -> bool:
        """Whether `peer` (as getpeername() or accept() gives it) may send a header."""
        if not isinstance(peer, tuple):
            return True  # AF_UNIX: a str or bytes path, "" for an unnamed peer
        try:
            address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
        except ValueError:
            return False
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(candidate in network for candidate in candidates
                   for network in self.networks if candidate.version == network.version)


def is_trusted(peer: Address, networks: ProxyTrust | str | Network | Iterable[str | Network]
               = DEFAULT_TRUSTED_NETWORKS) -> bool:
    """Whether `peer` may send a PROXY header under `networks` (see `ProxyTrust`)."""
    trust = networks if isinstance(networks, ProxyTrust) else ProxyTrust(networks)
    return trust.trusts(peer)
