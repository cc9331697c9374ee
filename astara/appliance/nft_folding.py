"""Folding firewall rules into nftables sets without changing what the first match decides.

A run of consecutive rules with the same action can be evaluated in any order (whichever
matches first, the verdict is the same), so inside a run rules of the same match shape
(direction, family, protocol, which fields carry values) are folded into one set lookup; no
rule ever moves across a rule with another action. nft refuses overlapping elements in one
set, so overlapping values go to further sets (layers), each placed in order. Pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from astara.wire.document import FirewallRule, PortRange

# The fields a firewall rule can match values on, addresses first: the overlap test in Layer
# relies on the first dimension being an address block whenever the rule has one.
DIMENSIONS = ("source_cidr", "destination_cidr", "source_ports", "destination_ports")


@dataclass(frozen=True)
class Shape:
    """What a rule matches on, without the values: rules of one shape share one set."""

    direction: str
    ip_version: int
    protocol: str
    dims: tuple[str, ...]


@dataclass(frozen=True)
class Element:
    """One rule's values in a set: nft text plus inclusive integer bounds for overlap tests."""

    text: str
    bounds: tuple[tuple[int, int], ...]
    comment: str


Span = tuple[int, int]


@dataclass
class Layer:
    """Elements of one set; nft refuses overlapping elements, so overlaps go to another layer.

    Elements are indexed by the span of their first dimension, so that finding the ones that
    might overlap a new element does not scan the whole layer.
    """

    elements: list[Element] = field(default_factory=list)
    by_first: dict[Span, list[tuple[Span, ...]]] = field(default_factory=dict)
    sizes: set[int] = field(default_factory=set)
    ranges: set[Span] = field(default_factory=set)

    def overlaps(self, element: Element, aligned: bool) -> bool:
        first, rest = element.bounds[0], element.bounds[1:]
        spans = self._aligned_spans(first) if aligned else self._port_spans(first)
        return any(
            intersects(rest, other) for span in spans for other in self.by_first.get(span, ())
        )

    def _aligned_spans(self, first: Span) -> list[Span]:
        # Address blocks are aligned powers of two, and wider blocks are placed first, so an
        # overlapping earlier block is one of the blocks enclosing our first value.
        lo = first[0]
        return [(lo - lo % size, lo - lo % size + size - 1) for size in self.sizes]

    def _port_spans(self, first: Span) -> list[Span]:
        lo, hi = first
        if lo == hi:
            return [first, *(span for span in self.ranges if span[0] <= lo <= span[1])]
        return [span for span in self.by_first if span[0] <= hi and lo <= span[1]]

    def add(self, element: Element) -> None:
        first = element.bounds[0]
        self.elements.append(element)
        self.by_first.setdefault(first, []).append(element.bounds[1:])
        self.sizes.add(first[1] - first[0] + 1)
        if first[0] != first[1]:
            self.ranges.add(first)


def intersects(a: tuple[Span, ...], b: tuple[Span, ...]) -> bool:
    return all(x[0] <= y[1] and y[0] <= x[1] for x, y in zip(a, b, strict=True))


def rule_comment(rule: FirewallRule, index: int) -> str:
    """The stable name of a firewall rule in counters: its id, or its position.

    Ids cannot contain spaces and every other comment in the forward chain does ("rule #3",
    "set fw_0", "default action"), so the two never collide."""
    return rule.id if rule.id is not None else f"rule #{index}"


def shape_of(rule: FirewallRule) -> Shape:
    dims = tuple(name for name in DIMENSIONS if getattr(rule, name) is not None)
    return Shape(rule.direction, rule.ip_version, rule.protocol, dims)


def to_element(rule: FirewallRule, shape: Shape, comment: str) -> Element:
    texts: list[str] = []
    bounds: list[tuple[int, int]] = []
    for name in shape.dims:
        value = getattr(rule, name)
        if isinstance(value, PortRange):
            first, last = value.first, value.last
            texts.append(str(first) if first == last else f"{first}-{last}")
            bounds.append((first, last))
        else:
            address, prefixlen = value.network_address, value.prefixlen
            host_bits = (32 if isinstance(value, ipaddress.IPv4Network) else 128) - prefixlen
            texts.append(f"{address}/{prefixlen}" if host_bits else str(address))
            low = int(address)
            bounds.append((low, low + (1 << host_bits) - 1))
    return Element(" . ".join(texts), tuple(bounds), comment)


def to_layers(elements: list[Element], aligned: bool) -> list[Layer]:
    layers: list[Layer] = []
    # Widest first so that an overlap is always with an enclosing (already placed) block.
    for element in sorted(elements, key=lambda e: e.bounds[0][0] - e.bounds[0][1]):
        layer = next((lay for lay in layers if not lay.overlaps(element, aligned)), None)
        if layer is None:
            layer = Layer()
            layers.append(layer)
        layer.add(element)
    return layers


def match_prefix(shape: Shape, external: str | None) -> str | None:
    """The part of a rule before its values; None when the rule can never match."""
    parts: list[str] = []
    if shape.direction != "any":
        if external is None:
            return None
        side = "iifname" if shape.direction == "ingress" else "oifname"
        parts.append(f'{side} "{external}"')
    has_address = any(d.endswith("_cidr") for d in shape.dims)
    has_port = any(d.endswith("_ports") for d in shape.dims)
    if not has_address:
        parts.append("meta nfproto ipv4" if shape.ip_version == 4 else "meta nfproto ipv6")
    if shape.protocol == "icmp":
        parts.append("meta l4proto icmp" if shape.ip_version == 4 else "meta l4proto ipv6-icmp")
    elif shape.protocol != "any" and not has_port:
        parts.append(f"meta l4proto {shape.protocol}")
    return " ".join(parts)


def selector_of(shape: Shape) -> str:
    family = "ip" if shape.ip_version == 4 else "ip6"
    names = {
        "source_cidr": f"{family} saddr",
        "destination_cidr": f"{family} daddr",
        "source_ports": f"{shape.protocol} sport",
        "destination_ports": f"{shape.protocol} dport",
    }
    return " . ".join(names[d] for d in shape.dims)


def set_type_of(shape: Shape) -> str:
    address = "ipv4_addr" if shape.ip_version == 4 else "ipv6_addr"
    return " . ".join(address if d.endswith("_cidr") else "inet_service" for d in shape.dims)
