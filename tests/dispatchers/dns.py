"""An authoritative DNS server for tests: dnslib over UDP on a loopback port.

It answers from a zone the test holds (name -> records) and may change
between look-ups, so one server serves every case of a test. Unknown
names get NXDOMAIN, names marked failing SERVFAIL, and known names
without the asked type an empty answer.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dnslib import MX, QTYPE, RCODE, RR, TXT, A, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from config.embedded import free_port


def _txt(value: str) -> TXT:
    # One TXT record may hold several strings of at most 255 octets each.
    data = value.encode()
    return TXT([data[i : i + 255] for i in range(0, len(data), 255)])


class Zone(BaseResolver):
    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.failing: set[str] = set()  # names answered with SERVFAIL

    def clear(self) -> None:
        self.records.clear()
        self.failing.clear()

    def txt(self, name: str, value: str) -> None:
        self.records[name.lower()].append(("TXT", _txt(value)))

    def a(self, name: str, address: str) -> None:
        self.records[name.lower()].append(("A", A(address)))

    def mx(self, name: str, host: str, preference: int = 10) -> None:
        self.records[name.lower()].append(("MX", MX(host, preference)))

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = request.q.qname
        name = str(qname).rstrip(".").lower()
        if name in self.failing:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        qtype = QTYPE[request.q.qtype]
        for rtype, rdata in self.records[name]:
            if rtype == qtype:
                reply.add_answer(RR(DNSLabel(qname), getattr(QTYPE, rtype), rdata=rdata, ttl=60))
        return reply


class DnsServer:
    def __init__(self) -> None:
        self.zone = Zone()
        self.port = free_port()
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self._server = DNSServer(self.zone, port=self.port, address="127.0.0.1", logger=quiet)

    def __enter__(self) -> DnsServer:
        self._server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._server.server.server_close()
