"""A minimal authoritative DNS server on loopback for the deployment tests: A records only, from a
table the test changes while nginx runs (what Docker's embedded DNS does when a container is
recreated with a new address). Anything else is answered NXDOMAIN."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

NO_ERROR, NAME_ERROR = 0, 3
TYPE_A, CLASS_IN = 1, 1


def parse_question(packet: bytes) -> tuple[int, str, int, int]:
    """(id, lower-case name, qtype, end offset of the question) of a query with one question."""
    query_id = struct.unpack_from("!H", packet)[0]
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1:offset + 1 + length].decode("ascii").lower())
        offset += 1 + length
    qtype, _qclass = struct.unpack_from("!HH", packet, offset + 1)
    return query_id, ".".join(labels), qtype, offset + 5


def answer(packet: bytes, records: dict[str, str], ttl: int = 1) -> bytes:
    query_id, name, qtype, end = parse_question(packet)
    address = records.get(name)
    found = address is not None and qtype == TYPE_A
    rcode = NO_ERROR if address is not None else NAME_ERROR
    # QR, AA, RD copied, RA; one question, one answer or none
    flags = 0x8000 | 0x0400 | (struct.unpack_from("!H", packet, 2)[0] & 0x0100) | 0x0080 | rcode
    reply = struct.pack("!HHHHHH", query_id, flags, 1, 1 if found else 0, 0, 0) + packet[12:end]
    if found:
        assert address is not None
        reply += struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4) + socket.inet_aton(address)
    return reply


class DnsResponder:
    """Answers A queries for `records` (name → IPv4 address) on 127.0.0.1:port, in a thread."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = dict(records)
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-responder", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            with contextlib.suppress(IndexError, struct.error, UnicodeDecodeError):
                self.queries.append(parse_question(packet)[1])
                self._sock.sendto(answer(packet, self.records), peer)

    @contextlib.contextmanager
    def running(self) -> Iterator[DnsResponder]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)
            self._sock.close()
