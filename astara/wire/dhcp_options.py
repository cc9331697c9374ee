"""The DHCP options a port may ask for (Neutron's extra_dhcp_opts), by name or number.

The appliance hands them to dnsmasq, so the names are those dnsmasq 2.90 knows
(``dnsmasq --help dhcp`` and ``--help dhcp6``); anything else must be a number. A value is
one line of printable ASCII: dnsmasq's options file is line-oriented, and a line break in a
tenant's value would become an option for another port.
"""

from __future__ import annotations

import re

DHCPV4_NAMES = frozenset(
    [
        "netmask",
        "time-offset",
        "router",
        "dns-server",
        "log-server",
        "lpr-server",
        "boot-file-size",
        "domain-name",
        "swap-server",
        "root-path",
        "extension-path",
        "ip-forward-enable",
        "non-local-source-routing",
        "policy-filter",
        "max-datagram-reassembly",
        "default-ttl",
        "mtu",
        "all-subnets-local",
        "router-discovery",
        "router-solicitation",
        "static-route",
        "trailer-encapsulation",
        "arp-timeout",
        "ethernet-encap",
        "tcp-ttl",
        "tcp-keepalive",
        "nis-domain",
        "nis-server",
        "ntp-server",
        "netbios-ns",
        "netbios-dd",
        "netbios-nodetype",
        "netbios-scope",
        "x-windows-fs",
        "x-windows-dm",
        "T1",
        "T2",
        "vendor-class",
        "nis+-domain",
        "nis+-server",
        "tftp-server",
        "bootfile-name",
        "mobile-ip-home",
        "smtp-server",
        "pop3-server",
        "nntp-server",
        "irc-server",
        "user-class",
        "rapid-commit",
        "client-arch",
        "client-interface-id",
        "client-machine-id",
        "posix-timezone",
        "tzdb-timezone",
        "ipv6-only",
        "domain-search",
        "sip-server",
        "classless-static-route",
        "vendor-id-encap",
        "tftp-server-address",
        "server-ip-address",
    ]
)
DHCPV6_NAMES = frozenset(
    [
        "sip-server-domain",
        "sip-server",
        "dns-server",
        "domain-search",
        "nis-server",
        "nis+-server",
        "nis-domain",
        "nis+-domain",
        "sntp-server",
        "information-refresh-time",
        "posix-timezone",
        "tzdb-timezone",
        "ntp-server",
        "bootfile-url",
        "bootfile-param",
    ]
)
MAX_OPTION_NUMBER = {4: 254, 6: 65535}
VALUE_RE = re.compile(r"[\x20-\x7e]{0,255}")


def option_problem(name: str, ip_version: int) -> str | None:
    """Why ``name`` is not a DHCP option of that IP version; None when it is."""
    if name.isdigit():
        if 1 <= int(name) <= MAX_OPTION_NUMBER[ip_version]:
            return None
        return f"option numbers are 1 to {MAX_OPTION_NUMBER[ip_version]} for IPv{ip_version}"
    if name in (DHCPV4_NAMES if ip_version == 4 else DHCPV6_NAMES):
        return None
    return f"not a DHCPv{4 if ip_version == 4 else 6} option name dnsmasq knows; use its number"
