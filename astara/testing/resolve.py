"""Ask one DNS server one question, as a VM's stub resolver would (tests run it in a namespace).

    python -m astara.testing.resolve SERVER NAME [--type A|AAAA|PTR]

Prints the answers one per line (PTR and names without their final dot), or the response code
(NXDOMAIN, REFUSED, SERVFAIL...) when there are none, or TIMEOUT. Always exits 0: the caller
judges the answer.
"""

from __future__ import annotations

import argparse

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename


def zone_server(listen: str, zone: str, address: str) -> list[str]:
    """The command of a resolver that answers every name under ``zone`` with ``address``
    and nothing else (a test's stand-in for the resolvers outside a cloud)."""
    return [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--bind-interfaces",
        f"--listen-address={listen}",
        f"--address=/{zone}/{address}",
    ]


def ask(server: str, name: str, kind: str = "A", timeout: float = 2.0) -> list[str]:
    """The answers to one query over UDP, or ``[<rcode>]`` / ``["TIMEOUT"]``."""
    qname = dns.reversename.from_address(name) if kind == "PTR" else name
    query = dns.message.make_query(qname, dns.rdatatype.from_text(kind))
    try:
        reply = dns.query.udp(query, server, timeout=timeout)
    except dns.exception.Timeout:
        return ["TIMEOUT"]
    answers = [rdata.to_text().rstrip(".") for rrset in reply.answer for rdata in rrset]
    return answers or [dns.rcode.to_text(reply.rcode())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("server", help="the DNS server's address")
    parser.add_argument("name", help="a name, or an address for --type PTR")
    parser.add_argument("--type", default="A", choices=["A", "AAAA", "PTR"])
    args = parser.parse_args()
    print("\n".join(ask(args.server, args.name, args.type)))


if __name__ == "__main__":
    main()
