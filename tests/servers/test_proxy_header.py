"""servers.proxy: every valid PROXY header form, split at every byte, every malformed form
refused early with a message that says what is wrong, and who may send a header.

Headers are built here by a small encoder written from the spec, independent of the parser;
one header captured from a real HAProxy 2.6 anchors the encoder and the CRC32C."""

from __future__ import annotations

import ipaddress
import re
import socket
import struct

import pytest

from haproxy import read_proxy_header
from servers.proxy import (DEFAULT_MAX_SIZE_BYTES, V1_MAX_LINE_BYTES, V2_SIGNATURE,
                           ProxyHeaderError, ProxyInfo, ProxyTrust, SSLSubtype, TLVType,
                           is_trusted, parse_proxy_header)

TRAILER = b"GET / HTTP/1.0\r\n\r\n"

# What HAProxy 2.6 sent with `send-proxy-v2 proxy-v2-options crc32c,unique-id` for a client at
# 127.0.0.1:55186 connecting to 127.0.0.1:47111 (captured once; unique-id format unset).
HAPROXY_26_HEADER = (b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x16\x7f\x00\x00\x01\x7f\x00\x00\x01"
                     b"\xd7\x92\xb8\x07\x03\x00\x045\xc5\x1c\xb3\x05\x00\x00")


def crc32c(data: bytes) -> int:
    """Bitwise CRC-32C, deliberately not the parser's table version."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2(command: int = 1, family_transport: int = 0x11, addresses: bytes = b"",
       tlvs: bytes = b"", *, version: int = 2, length: int | None = None,
       with_crc: bool = False) -> bytes:
    """A v2 header; `length` overrides the declared length, `with_crc` puts a CRC32C TLV first
    (where HAProxy puts it)."""
    crc_tlv = tlv(TLVType.CRC32C, bytes(4)) if with_crc else b""
    body = addresses + crc_tlv + tlvs
    declared = len(body) if length is None else length
    header = V2_SIGNATURE + bytes([version << 4 | command, family_transport]) + \
        struct.pack("!H", declared) + body
    if with_crc:
        at = 16 + len(addresses) + 3
        header = header[:at] + struct.pack("!I", crc32c(header)) + header[at + 4:]
    return header


def inet4(source: str, destination: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!HH", sport,
                                                                                    dport)


def inet6(source: str, destination: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6,
            destination) + struct.pack("!HH", sport, dport))


def unix(source: bytes, destination: bytes) -> bytes:
    return source.ljust(108, b"\0") + destination.ljust(108, b"\0")


SSL_VALUE = struct.pack("!BI", 0x01 | 0x02, 0) + tlv(SSLSubtype.VERSION, b"TLSv1.3") + \
    tlv(SSLSubtype.CIPHER, b"TLS_AES_128_GCM_SHA256") + tlv(SSLSubtype.CN, b"client.example") + \
    tlv(SSLSubtype.CLIENT_CERT, b"\x30\x82DER")

# (id, header bytes, expected fields of the ProxyInfo)
VALID = [
    ("v1-tcp4", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
     dict(version=1, command="PROXY", family=socket.AF_INET, transport=socket.SOCK_STREAM,
          source=("192.168.0.1", 56324), destination=("192.168.0.11", 443))),
    ("v1-tcp4-extremes", b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
     dict(source=("255.255.255.255", 65535), destination=("0.0.0.0", 0))),
    ("v1-tcp6", b"PROXY TCP6 2001:DB8::1 ::1 1 2\r\n",
     dict(version=1, family=socket.AF_INET6, source=("2001:db8::1", 1, 0, 0),
          destination=("::1", 2, 0, 0))),
    ("v1-tcp6-mapped", b"PROXY TCP6 ::ffff:10.0.0.1 ::ffff:10.0.0.2 1 2\r\n",
     dict(source=("::ffff:10.0.0.1", 1, 0, 0))),
    ("v1-tcp6-longest", b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 +
     b"ffff 65535 65535\r\n", dict(source=(":".join(["ffff"] * 8), 65535, 0, 0))),
    ("v1-unknown-short", b"PROXY UNKNOWN\r\n",
     dict(version=1, command="LOCAL", family=socket.AF_UNSPEC, transport=None, source=None,
          destination=None)),
    ("v1-unknown-worst-case", b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 +
     b"ffff 65535 65535\r\n", dict(command="LOCAL", source=None)),
    ("v1-unknown-anything", b"PROXY UNKNOWN whatever \x01\xff text\r\n", dict(command="LOCAL")),
    ("v2-tcp4", v2(1, 0x11, inet4("10.1.2.3", "10.0.0.1", 40000, 80)),
     dict(version=2, command="PROXY", family=socket.AF_INET, transport=socket.SOCK_STREAM,
          source=("10.1.2.3", 40000), destination=("10.0.0.1", 80), tlvs={})),
    ("v2-udp4", v2(1, 0x12, inet4("10.1.2.3", "10.0.0.1", 53, 5353)),
     dict(transport=socket.SOCK_DGRAM, source=("10.1.2.3", 53))),
    ("v2-tcp6", v2(1, 0x21, inet6("2001:db8::2", "::1", 1, 65535)),
     dict(family=socket.AF_INET6, source=("2001:db8::2", 1, 0, 0),
          destination=("::1", 65535, 0, 0))),
    ("v2-udp6", v2(1, 0x22, inet6("::ffff:1.2.3.4", "::", 7, 8)),
     dict(transport=socket.SOCK_DGRAM, source=("::ffff:1.2.3.4", 7, 0, 0))),
    ("v2-unix-stream", v2(1, 0x31, unix(b"/run/client.sock", b"/run/lb.sock")),
     dict(family=socket.AF_UNIX, transport=socket.SOCK_STREAM, source="/run/client.sock",
          destination="/run/lb.sock")),
    ("v2-unix-dgram-abstract-and-unnamed", v2(1, 0x32, unix(b"\0abstract", b"")),
     dict(family=socket.AF_UNIX, transport=socket.SOCK_DGRAM, source=b"\0abstract",
          destination="")),
    ("v2-proxy-unspec", v2(1, 0x00),
     dict(command="PROXY", family=socket.AF_UNSPEC, transport=None, source=None)),
    ("v2-local", v2(0, 0x00),
     dict(command="LOCAL", family=socket.AF_UNSPEC, source=None, destination=None, tlvs={})),
    ("v2-local-with-addresses-ignored", v2(0, 0x21, inet6("::2", "::3", 1, 2),
                                           tlv(TLVType.UNIQUE_ID, b"id")),
     dict(command="LOCAL", family=socket.AF_UNSPEC, transport=None, source=None,
          tlvs={TLVType.UNIQUE_ID: b"id"})),
    ("v2-local-block-shorter-than-family", v2(0, 0x11, b"\x01\x02"),
     dict(command="LOCAL", source=None, tlvs={})),
    ("v2-local-with-tlvs", v2(0, 0x00, b"", tlv(TLVType.UNIQUE_ID, b"check-1")),
     dict(command="LOCAL", tlvs={TLVType.UNIQUE_ID: b"check-1"})),
    ("v2-tlvs", v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2),
                   tlv(TLVType.ALPN, b"h2") + tlv(TLVType.AUTHORITY, "bücher.example".encode())
                   + tlv(TLVType.NOOP, b"") + tlv(TLVType.NOOP, b"pad")
                   + tlv(TLVType.UNIQUE_ID, b"u" * 128) + tlv(0xE0, b"custom")
                   + tlv(TLVType.ALPN, b"second-alpn-ignored")),
     dict(tlvs={TLVType.ALPN: b"h2", TLVType.AUTHORITY: "bücher.example".encode(),
                TLVType.UNIQUE_ID: b"u" * 128, 0xE0: b"custom"},
          alpn=b"h2", authority="bücher.example", unique_id=b"u" * 128)),
    ("v2-ssl", v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2), tlv(TLVType.SSL, SSL_VALUE)),
     dict(tlvs={TLVType.SSL: SSL_VALUE})),
    ("v2-crc32c", v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2), tlv(TLVType.ALPN, b"x"),
                     with_crc=True), dict(alpn=b"x")),
    ("v2-haproxy-2.6", HAPROXY_26_HEADER,
     dict(source=("127.0.0.1", 55186), destination=("127.0.0.1", 47111),
          unique_id=b"", tlvs={TLVType.CRC32C: b"5\xc5\x1c\xb3", TLVType.UNIQUE_ID: b""})),
]


@pytest.mark.parametrize("header, expected", [case[1:] for case in VALID],
                         ids=[case[0] for case in VALID])
def test_every_valid_form_parses_to_its_fields_and_exact_length(
        header: bytes, expected: dict[str, object]) -> None:
    result = parse_proxy_header(header + TRAILER)
    assert result is not None
    info, length = result
    assert length == len(header)
    assert info.peer is None
    for name, value in expected.items():
        assert getattr(info, name) == value, name


@pytest.mark.parametrize("header", [case[1] for case in VALID], ids=[case[0] for case in VALID])
def test_split_at_every_byte_is_incomplete_until_the_last_then_exact(header: bytes) -> None:
    for cut in range(len(header)):
        assert parse_proxy_header(header[:cut]) is None, cut
    whole = parse_proxy_header(header)
    assert whole is not None and whole[1] == len(header)
    for extra in range(1, len(TRAILER) + 1):  # bytes after the header are never counted
        assert parse_proxy_header(header + TRAILER[:extra]) == whole


def test_encoder_reproduces_the_header_a_real_haproxy_sent() -> None:
    # The CRC32C of HAProxy's own header is what our encoder computes: both sides agree.
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value
    rebuilt = v2(1, 0x11, inet4("127.0.0.1", "127.0.0.1", 55186, 47111),
                 tlv(TLVType.UNIQUE_ID, b""), with_crc=True)
    assert rebuilt == HAPROXY_26_HEADER
    assert parse_proxy_header(rebuilt) is not None


def test_ssl_tlv_is_parsed_with_its_nested_sub_tlvs() -> None:
    header = v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2), tlv(TLVType.SSL, SSL_VALUE))
    result = parse_proxy_header(header)
    assert result is not None
    ssl = result[0].ssl
    assert ssl is not None
    assert (ssl.ssl, ssl.client_cert_verified, ssl.verify) == (True, True, 0)
    assert (ssl.version, ssl.cipher, ssl.common_name) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256",
                                                         "client.example")
    assert ssl.client_cert == b"\x30\x82DER"
    unverified = struct.pack("!BI", 0x01, 1)  # TLS, no client certificate, verify failed
    result = parse_proxy_header(v2(1, 0x00, b"", tlv(TLVType.SSL, unverified)))
    assert result is not None and result[0].ssl is not None
    assert (result[0].ssl.ssl, result[0].ssl.client_cert_verified) == (True, False)
    assert result[0].ssl.version is None


def test_info_without_header_tlvs_has_no_ssl_and_no_convenience_values() -> None:
    result = parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    assert result is not None
    info = result[0]
    assert (info.ssl, info.alpn, info.authority, info.unique_id, dict(info.tlvs)) == \
        (None, None, None, None, {})


def test_with_peer_sets_the_balancer_and_client_address_prefers_the_source() -> None:
    balancer = ("127.0.0.1", 40000)
    proxied = parse_proxy_header(b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 80\r\n")
    local = parse_proxy_header(v2(0, 0x00))
    unknown = parse_proxy_header(b"PROXY UNKNOWN\r\n")
    assert proxied is not None and local is not None and unknown is not None
    info = proxied[0].with_peer(balancer)
    assert (info.peer, info.client_address) == (balancer, ("203.0.113.9", 5555))
    assert proxied[0].peer is None  # frozen: with_peer made a copy
    assert local[0].with_peer(balancer).client_address == balancer
    assert unknown[0].with_peer(balancer).client_address == balancer
    assert repr(info) == ("<ProxyInfo v1 PROXY AF_INET source=('203.0.113.9', 5555) "
                          "destination=('10.0.0.1', 80) peer=('127.0.0.1', 40000)>")
    tlvs = parse_proxy_header(v2(1, 0x00, b"", tlv(TLVType.ALPN, b"h2") + tlv(0xE1, b"")))
    assert tlvs is not None
    assert repr(tlvs[0]).endswith("peer=None tlvs=ALPN,0xe1>")


def test_info_is_immutable() -> None:
    result = parse_proxy_header(v2(1, 0x00, b"", tlv(TLVType.ALPN, b"h2")))
    assert result is not None
    with pytest.raises(AttributeError):
        result[0].source = ("6.6.6.6", 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        result[0].tlvs[TLVType.ALPN] = b"http/1.1"  # type: ignore[index]


# -- refusals ------------------------------------------------------------------------------

MALFORMED = [
    # (id, data, accept, message pattern)
    ("http", b"GET / HTTP/1.1\r\n", "any", r"not a PROXY protocol header.*b'GET / HTTP/1.1"),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01", "any", r"not a PROXY protocol header"),
    ("lowercase-proxy", b"proxy TCP4", "any", r"not a PROXY protocol header"),
    ("proxy-without-space", b"PROXYTCP4", "any", r"not a PROXY protocol header"),
    ("v1-bad-protocol", b"PROXY TCP5 ", "v1", r"protocol must be TCP4, TCP6 or UNKNOWN"),
    ("v1-empty-protocol", b"PROXY \r\n", "v1", r"protocol must be TCP4, TCP6 or UNKNOWN"),
    ("v1-unknownx", b"PROXY UNKNOWNX\r\n", "v1", r"protocol must be TCP4, TCP6 or UNKNOWN"),
    ("v1-tcp4-no-addresses", b"PROXY TCP4\r\n", "v1", r"TCP4 line has no addresses"),
    ("v1-lf-only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1", r"must end with CRLF"),
    ("v1-cr-only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "v1", r"must end with CRLF"),
    ("v1-cr-cr-lf", b"PROXY UNKNOWN\r\r\n", "v1", r"must end with CRLF"),
    ("v1-unknown-lone-lf", b"PROXY UNKNOWN a\nb\r\n", "v1", r"must end with CRLF"),
    ("v1-double-space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1", r"single spaces"),
    ("v1-leading-space", b"PROXY TCP4  1.2.3.4", "v1", r"single spaces"),
    ("v1-hex-in-tcp4", b"PROXY TCP4 1.2.3.a", "v1", r"TCP4 line is malformed"),
    ("v1-scope-id", b"PROXY TCP6 fe80::1%eth0", "v1", r"TCP6 line is malformed"),
    ("v1-too-many-fields", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "v1", r"single spaces"),
    ("v1-too-few-fields", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1",
     r"must be 'PROXY TCP4 <source> <destination> <source port> <destination port>'"),
    ("v1-trailing-space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "v1", r"single spaces"),
    ("v1-leading-zero-address", b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "v1",
     r"not a canonical IPv4 address: b'1.2.3.04'"),
    ("v1-octet-over-255", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1",
     r"not a canonical IPv4 address"),
    ("v1-three-octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "v1",
     r"not a canonical IPv4 address"),
    ("v1-ipv6-in-tcp4", b"PROXY TCP4 1.2.3.4 5.6.7.8. 1 2\r\n", "v1",
     r"not a canonical IPv4 address"),
    ("v1-ipv4-in-tcp6", b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1",
     r"not a canonical IPv6 address: b'1.2.3.4'"),
    ("v1-bad-ipv6", b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "v1", r"not a canonical IPv6 address"),
    ("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "v1",
     r"port must be 0-65535 without leading zeros, not b'080'"),
    ("v1-port-too-big", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "v1", r"port must be 0-65535"),
    ("v1-port-not-a-number", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 .\r\n", "v1", r"port must be"),
    ("v2-bad-signature", V2_SIGNATURE[:11] + b"X", "v2", r"not a PROXY protocol header"),
    ("v2-version-1", V2_SIGNATURE + b"\x11", "v2", r"has version 1; only 2 exists"),
    ("v2-version-3", V2_SIGNATURE + b"\x31", "v2", r"has version 3; only 2 exists"),
    ("v2-command-2", V2_SIGNATURE + b"\x22", "v2", r"command must be LOCAL \(0\) or PROXY \(1\)"),
    ("v2-family-4", V2_SIGNATURE + b"\x21\x41", "v2", r"byte 0x41 is not one the spec defines"),
    ("v2-transport-3", V2_SIGNATURE + b"\x21\x13", "v2", r"byte 0x13 is not one"),
    ("v2-family-without-transport", V2_SIGNATURE + b"\x21\x10", "v2", r"byte 0x10 is not one"),
    ("v2-transport-without-family", V2_SIGNATURE + b"\x21\x01", "v2", r"byte 0x01 is not one"),
    ("v2-local-bad-family", V2_SIGNATURE + b"\x20\x50", "v2", r"byte 0x50 is not one"),
    ("v2-inet-block-short", v2(1, 0x11, b"\x01" * 11), "v2",
     r"header is 27 bytes, too short for its AF_INET addresses \(12 bytes\)"),
    ("v2-inet6-block-short", v2(1, 0x21, b"\x01" * 35), "v2", r"AF_INET6 addresses \(36"),
    ("v2-unix-block-short", v2(1, 0x31, b"\x01" * 215), "v2", r"AF_UNIX addresses \(216"),
    ("v2-tlv-cut-header", v2(1, 0x00, b"", b"\x01\x00"), "v2",
     r"TLV at offset 0 is cut short: 2 bytes left, a TLV needs 3"),
    ("v2-tlv-cut-value", v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2), b"\x02\x00\x05abc"),
     "v2", r"TLV 0x02 declares 5 bytes but only 3 remain"),
    ("v2-ssl-too-short", v2(1, 0x00, b"", tlv(TLVType.SSL, b"\x01\x00\x00\x00")), "v2",
     r"SSL TLV is 4 bytes; it needs at least 5"),
    ("v2-ssl-sub-tlv-cut", v2(1, 0x00, b"", tlv(TLVType.SSL, b"\x01\x00\x00\x00\x00\x21\x00\x09"
                                                 b"TLS")), "v2",
     r"SSL sub-TLV 0x21 declares 9 bytes but only 3 remain"),
    ("v2-crc-wrong-size", v2(1, 0x00, b"", tlv(TLVType.CRC32C, b"\x00\x00\x00")), "v2",
     r"CRC32C TLV is 3 bytes; it must be 4"),
    ("v2-crc-mismatch", HAPROXY_26_HEADER[:-7] + b"\x00" + HAPROXY_26_HEADER[-6:], "v2",
     r"CRC32C does not match the header"),
    ("v2-crc-corrupted-address", HAPROXY_26_HEADER[:16] + b"\x0a" + HAPROXY_26_HEADER[17:],
     "v2", r"CRC32C does not match"),
    ("v2-unique-id-too-long", v2(1, 0x00, b"", tlv(TLVType.UNIQUE_ID, b"u" * 129)), "v2",
     r"UNIQUE_ID is longer than 128 bytes"),
]


@pytest.mark.parametrize("data, accept, message", [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_malformed_input_is_refused_with_a_message_saying_what_is_wrong(
        data: bytes, accept: str, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message) as caught:
        parse_proxy_header(data + TRAILER, accept)
    assert isinstance(caught.value, ValueError)
    # refused without the bytes that follow, and once refused, refused whatever comes next
    refusals = [_refuses(data[:cut], accept) for cut in range(len(data) + 1)]
    assert refusals[-1] and refusals == sorted(refusals)


def _refuses(data: bytes, accept: str) -> bool:
    try:
        parse_proxy_header(data, accept)
    except ProxyHeaderError:
        return True
    return False


@pytest.mark.parametrize("data, refused_at", [
    (b"GET / HTTP/1.1\r\n", 1),  # "G" can start neither version
    (b"\x16\x03\x01", 1),
    (b"PROXZ", 5),
    (b"PROXY TCP4 1.2.3.4 x", 20),
    (b"PROXY TCP9", 10),
    (b"PROXY TCP4\r", 11),
    (V2_SIGNATURE[:5] + b"\x01", 6),
    (V2_SIGNATURE + b"\x30", 13),  # version 3, known from the 13th byte
    (V2_SIGNATURE + b"\x21\x41", 14),  # family 4, known from the 14th byte
])
def test_refusal_comes_at_the_first_byte_that_rules_a_header_out(data: bytes,
                                                                   refused_at: int) -> None:
    for cut in range(refused_at):
        assert parse_proxy_header(data[:cut]) is None, cut
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data[:refused_at])


def test_v1_line_without_crlf_in_107_bytes_is_refused_at_byte_107() -> None:
    line = b"PROXY UNKNOWN " + b"f" * 200
    assert parse_proxy_header(line[:V1_MAX_LINE_BYTES - 1]) is None
    with pytest.raises(ProxyHeaderError, match="no CRLF in its first 107 bytes"):
        parse_proxy_header(line[:V1_MAX_LINE_BYTES])
    # CR as the 107th byte: its LF would be the 108th, one too many
    with pytest.raises(ProxyHeaderError, match="no CRLF in its first 107 bytes"):
        parse_proxy_header(line[:V1_MAX_LINE_BYTES - 1] + b"\r\n")
    longest = line[:V1_MAX_LINE_BYTES - 2] + b"\r\n"
    assert parse_proxy_header(longest + TRAILER) is not None


def test_v2_over_max_size_is_refused_from_its_16_byte_prefix() -> None:
    prefix = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", DEFAULT_MAX_SIZE_BYTES - 15)
    assert parse_proxy_header(prefix[:15]) is None
    with pytest.raises(ProxyHeaderError,
                       match=r"declares 4097 bytes, more than the 4096 allowed "
                             r"\(proxy_header_max_size\)"):
        parse_proxy_header(prefix)
    largest = v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2),
                 tlv(0xE0, bytes(DEFAULT_MAX_SIZE_BYTES - 16 - 12 - 3)))
    assert len(largest) == DEFAULT_MAX_SIZE_BYTES
    assert parse_proxy_header(largest) == parse_proxy_header(largest + TRAILER)
    small = v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2))
    assert parse_proxy_header(small, max_size=len(small)) is not None
    with pytest.raises(ProxyHeaderError, match="declares 28 bytes, more than the 27 allowed"):
        parse_proxy_header(small[:16], max_size=len(small) - 1)


V1_SAMPLE = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
V2_SAMPLE = v2(1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2))


@pytest.mark.parametrize("accept, data, outcome", [
    ("v1", V1_SAMPLE, "parsed"),
    ("v1", V2_SAMPLE, "starts like a PROXY v2 header, but only v1 is accepted"),
    ("v1", V2_SAMPLE[:1], "starts like a PROXY v2 header, but only v1 is accepted"),
    ("v2", V2_SAMPLE, "parsed"),
    ("v2", V1_SAMPLE, "starts like a PROXY v1 header, but only v2 is accepted"),
    ("v2", b"P", "starts like a PROXY v1 header, but only v2 is accepted"),
    ("any", V1_SAMPLE, "parsed"),
    ("any", V2_SAMPLE, "parsed"),
])
def test_accept_takes_one_version_or_either(accept: str, data: bytes, outcome: str) -> None:
    if outcome == "parsed":
        result = parse_proxy_header(data, accept)
        assert result is not None and result[1] == len(data)
    else:
        with pytest.raises(ProxyHeaderError, match=outcome):
            parse_proxy_header(data, accept)


@pytest.mark.parametrize("accept", ["v1", "v2", "any"])
def test_nothing_received_yet_is_incomplete_for_every_accept(accept: str) -> None:
    assert parse_proxy_header(b"", accept) is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(accept="V2"), r"accept must be one of \('v1', 'v2', 'any'\), not 'V2'"),
    (dict(accept=None), r"accept must be one of"),
    (dict(max_size=15), r"max_size must be at least 16 bytes, not 15"),
])
def test_configuration_errors_are_plain_value_errors(kwargs: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_proxy_header(V1_SAMPLE, **kwargs)  # type: ignore[arg-type]
    assert not isinstance(caught.value, ProxyHeaderError)


# -- trust -----------------------------------------------------------------------------------

@pytest.mark.parametrize("peer, trusted", [
    (("127.0.0.1", 40000), True),
    (("127.255.0.9", 1), True),
    (("::1", 40000, 0, 0), True),
    (("::ffff:127.0.0.1", 40000, 0, 0), True),  # IPv4-mapped matches 127.0.0.0/8
    (("10.0.0.1", 40000), False),
    (("::2", 1, 0, 0), False),
    (("::ffff:10.0.0.1", 1, 0, 0), False),
    (("fe80::1%eth0", 1, 0, 1), False),
    ("/run/haproxy.sock", True),  # Unix peers are local
    (b"\0abstract", True),
    ("", True),  # an unnamed Unix peer
    (("not-an-address", 1), False),
])
def test_default_trust_is_this_machine_only(peer: object, trusted: bool) -> None:
    assert is_trusted(peer) is trusted
    assert ProxyTrust().trusts(peer) is trusted


def test_trusted_networks_from_strings_and_ipaddress_objects() -> None:
    trust = ProxyTrust(["10.0.0.0/8", ipaddress.ip_network("2001:db8::/32"), "192.0.2.7"])
    assert trust.trusts(("10.200.3.4", 1))
    assert trust.trusts(("::ffff:10.1.1.1", 1, 0, 0))
    assert trust.trusts(("2001:db8:1::5", 1, 0, 0))
    assert trust.trusts(("192.0.2.7", 1)) and not trust.trusts(("192.0.2.8", 1))
    assert not trust.trusts(("127.0.0.1", 1))  # the default is replaced, not extended
    assert trust.trusts(("fe80::1%eth0", 1, 0, 2)) is False
    assert ProxyTrust("10.0.0.0/8") == ProxyTrust(["10.0.0.0/8"])  # one string, one network
    assert is_trusted(("10.1.1.1", 1), "10.0.0.0/8")
    assert is_trusted(("10.1.1.1", 1), trust)
    assert not is_trusted(("10.1.1.1", 1), [])  # nothing trusted: no TCP peer may send one
    assert repr(ProxyTrust()) == "ProxyTrust(['127.0.0.0/8', '::1/128'])"
    assert hash(ProxyTrust()) == hash(ProxyTrust(("127.0.0.0/8", "::1/128")))
    assert ProxyTrust() != ("127.0.0.0/8", "::1/128")
    link_local = ProxyTrust("fe80::/10")
    assert link_local.trusts(("fe80::1%eth0", 1, 0, 2))  # the scope id does not matter


@pytest.mark.parametrize("networks, message", [
    (["10.0.0.0/33"], r"proxy_trusted: '10.0.0.0/33' is not a network such as '10.0.0.0/8'"),
    (["10.0.0.1/8"], r"'10.0.0.1/8' is not a network .*has host bits set"),
    (["localhost"], r"'localhost' is not a network"),
    ([8], r"8 is not a network"),
])
def test_bad_trusted_network_says_which_and_why(networks: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProxyTrust(networks)  # type: ignore[arg-type]


# -- on real sockets ------------------------------------------------------------------------

@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"),
                                          (socket.AF_INET6, "::1")])
def test_trust_of_a_real_accepted_peer(family: int, host: str) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2], timeout=10):
            accepted, peer = listener.accept()
            with accepted:
                assert is_trusted(peer) and is_trusted(accepted.getpeername())
                assert not is_trusted(peer, ["192.0.2.0/24"])


def test_unix_peer_is_trusted_whatever_the_networks() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert is_trusted(right.getpeername(), [])


def test_header_fed_one_byte_at_a_time_over_tcp_leaves_the_payload_in_the_socket() -> None:
    header = v2(1, 0x21, inet6("2001:db8::7", "2001:db8::1", 4711, 443),
                tlv(TLVType.ALPN, b"http/1.1"), with_crc=True)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname(), timeout=10) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            accepted, _ = listener.accept()
            with accepted:
                accepted.settimeout(10)
                for byte in header:  # each byte its own segment; the reader consumes as it goes
                    client.sendall(bytes([byte]))
                client.sendall(TRAILER)
                info, length = read_proxy_header(accepted, accept="v2")
                assert length == len(header)
                assert info.source == ("2001:db8::7", 4711, 0, 0)
                assert info.peer == client.getsockname() and info.alpn == b"http/1.1"
                assert info.client_address == ("2001:db8::7", 4711, 0, 0)
                received = b""
                while len(received) < len(TRAILER):
                    received += accepted.recv(len(TRAILER))
                assert received == TRAILER


def test_reader_refuses_a_connection_that_closes_mid_header() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname(), timeout=10) as client:
            accepted, _ = listener.accept()
            client.sendall(V1_SAMPLE[:10])
            client.shutdown(socket.SHUT_WR)
            with accepted:
                accepted.settimeout(10)
                with pytest.raises(ProxyHeaderError,
                                   match=re.escape("connection closed after 10 bytes of a PROXY "
                                                   "header")):
                    read_proxy_header(accepted)

