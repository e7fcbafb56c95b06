"""A small authoritative DNS server for tests, on a free loopback UDP port.

It answers A and AAAA questions for the names it was given, from records that a test changes
while it runs (`set_records`), as a Kubernetes headless Service's name follows its ready pods:

    with DnsServer() as server:
        server.set_records("compactors.test", ["127.0.0.2"])
        address = f"dns://{server.address}/compactors.test:50051"
        ...
        server.set_records("compactors.test", [])        # the name, without a record
        server.delete("compactors.test")                  # NXDOMAIN
        server.servfail = True                            # SERVFAIL to every question

A name it does not know is NXDOMAIN; a known name without a record of the type asked is an empty
answer (NOERROR). Messages are parsed and built with dnspython; one thread serves, until `stop`
(or the end of the `with` block), after which the port answers nothing (ICMP port unreachable).
`queries` counts the questions answered.
"""

import ipaddress
import socket
import threading
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.ports import LOOPBACK

TTL_S = 1  # clients must not keep an answer long: the records change under them


class DnsServer:
    """Serves the records of `set_records` on `LOOPBACK`:`port` (UDP) from a thread."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, 0))
        self._socket.settimeout(0.1)  # how soon `stop` is seen
        self.port: int = self._socket.getsockname()[1]
        self._records: dict[dns.name.Name, list[str]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.servfail = False
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, name="test dns server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """`ip:port`, as the authority of a `dns://ip:port/name:port` address."""
        return f"{LOOPBACK}:{self.port}"

    def set_records(self, name: str, ips: list[str]) -> None:
        """From now on `name` has these addresses (IPv4: A records, IPv6: AAAA)."""
        for ip in ips:
            ipaddress.ip_address(ip)  # a ValueError now rather than a broken answer later
        with self._lock:
            self._records[dns.name.from_text(name)] = list(ips)

    def delete(self, name: str) -> None:
        """From now on `name` does not exist (NXDOMAIN)."""
        with self._lock:
            self._records.pop(dns.name.from_text(name), None)

    def stop(self) -> None:
        """Stop answering and close the port (idempotent)."""
        self._stopped.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> "DnsServer":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                data, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue  # not a DNS message: no answer, as a real server
            self._socket.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        with self._lock:
            self.queries += 1
            if self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            for question in query.question:
                ips = self._records.get(question.name)
                if ips is None:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    continue
                version = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
                matching = [ip for ip in ips if ipaddress.ip_address(ip).version == version]
                if matching:
                    response.answer.append(
                        dns.rrset.from_text_list(
                            question.name, TTL_S, dns.rdataclass.IN, question.rdtype, matching
                        )
                    )
        return response
