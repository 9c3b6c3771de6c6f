"""An event -> the indicator of ours it hit (``Hit``), with the bundle's provenance index.

An event is ours when the policy that produced it (Tetragon's ``policy_name``) or denied it (one of
Hubble's ``egress_denied_by``, on a ``DROPPED`` or ``AUDIT`` egress flow) is an object of the
bundle, and what it hit is one of that object's indicators:

- a behaviour policy: its rule (``kind`` ``rule``; no address);
- a blocklist object: the aggregated prefix of the object's range that holds the destination
  address (``prefix``), else one of its ports (``port``: the port rule matched, whatever the address).

Anything else (other policies' events, forwarded flows, a destination the object does not hold,
other kinds of events) is unattributed.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdr_policy.bundle.provenance import Blocklist, Holder, ProvenanceIndex
from cdr_policy.hits.events import CILIUM, DENIED_VERDICTS, Event
from cdr_policy.netprefix import Prefix, to_string

PREFIX, PORT, RULE = "prefix", "port", "rule"
KINDS = (PREFIX, PORT, RULE)


@dataclass(frozen=True)
class Hit:
    """One attributed event: the object, what of it was hit (``kind``: ``prefix``, ``port`` or
    ``rule``; ``indicator``: the prefix, port or rule), the destination ``address`` (prefix hits
    only), the action or verdict, the class of the indicator in the index, and the workload."""

    engine: str
    object: str
    kind: str
    indicator: str
    address: str | None
    action: str
    klass: int
    namespace: str | None
    workload: str | None
    pod: str | None
    hour: str | None


def attribute(event: Event, index: ProvenanceIndex) -> Hit | None:
    """The hit ``event`` is, or None when it is not one of ours (see the module docstring)."""
    if event.engine == CILIUM and event.action not in DENIED_VERDICTS:
        return None
    for name in event.policies:
        held = index.holds(event.engine, name)
        if held.rule is not None:
            return _hit(event, name, RULE, held.rule.rule, None, held.rule.klass)
        if held.blocklist is not None and held.holder is not None and event.address is not None:
            found = _in_range(held.blocklist, held.holder, event.address)
            if found is not None:
                address = to_string(event.address.version, event.address.network, event.address.length)
                address = address.rpartition("/")[0]  # the address alone: ``45.33.32.156``
                klass = int(held.blocklist.classes[found])
                return _hit(event, name, PREFIX, held.blocklist.prefix(found), address, klass)
        for port in held.ports:
            if port.port == event.port:
                return _hit(event, name, PORT, port.port, None, port.klass)
    return None


def _in_range(blocklist: Blocklist, holder: Holder, address: Prefix) -> int | None:
    found = blocklist.find(address.version, address.network)
    return found if found is not None and holder.first <= found < holder.first + holder.count else None


def _hit(event: Event, name: str, kind: str, indicator: str, address: str | None, klass: int) -> Hit:
    return Hit(
        engine=event.engine,
        object=name,
        kind=kind,
        indicator=indicator,
        address=address,
        action=event.action,
        klass=klass,
        namespace=event.namespace,
        workload=event.workload,
        pod=event.pod,
        hour=event.hour,
    )
