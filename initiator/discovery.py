"""Discovery as ``nvme discover`` does it: read one discovery service's log, follow its
referrals to other discovery services, and collect every NVM subsystem entry.

A referral (entry subtype 1) names another discovery service; each service is visited
once (by address), and at most ``max_services`` in all, so referrals that point at each
other end. A referral that cannot be reached is noted and skipped: the entries found
elsewhere still count, as nvme-cli carries on past a dead referral.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nvmf_phoenix.initiator.connection import DEFAULT_HOSTNQN, NvmeError
from nvmf_phoenix.initiator.host import DEFAULT_HOSTID, Host
from nvmf_phoenix.wire import nvme

from nvmf_phoenix.model import DISCOVERY_NQN


@dataclass(frozen=True)
class Entry:
    """One NVM subsystem port a discovery log names."""

    traddr: str
    trsvcid: str
    subnqn: str
    portid: int = 0


@dataclass
class DiscoveryResult:
    entries: list[Entry] = field(default_factory=list)
    visited: list[str] = field(default_factory=list)          # "traddr:trsvcid"
    unreachable: dict[str, str] = field(default_factory=dict)  # address -> why

    def subsystems(self) -> dict[str, list[Entry]]:
        """Entries grouped by subsystem NQN, in the order found."""
        out: dict[str, list[Entry]] = {}
        for e in self.entries:
            out.setdefault(e.subnqn, []).append(e)
        return out


def read_log(traddr: str, trsvcid: str | int, hostnqn: str = DEFAULT_HOSTNQN,
             hostid: str = DEFAULT_HOSTID, timeout: float = 5.0) -> list[dict[str, object]]:
    """The discovery log of one discovery service."""
    with Host(traddr, trsvcid, DISCOVERY_NQN, hostnqn=hostnqn, hostid=hostid,
              timeout=timeout) as disc:
        return disc.discover()[1]


def discover_all(traddr: str, trsvcid: str | int, hostnqn: str = DEFAULT_HOSTNQN,
                 hostid: str = DEFAULT_HOSTID, max_services: int = 16,
                 timeout: float = 5.0) -> DiscoveryResult:
    """Every NVM subsystem entry reachable from one discovery service through referrals.

    The first service must answer (its failure raises :class:`NvmeError`); referrals
    that do not are listed in ``unreachable``."""
    result = DiscoveryResult()
    todo = [(traddr, str(trsvcid))]
    seen = {f"{traddr}:{trsvcid}"}
    while todo and len(result.visited) < max_services:
        addr, port = todo.pop(0)
        try:
            log = read_log(addr, port, hostnqn, hostid, timeout)
        except (NvmeError, OSError) as exc:
            if not result.visited:
                raise NvmeError(f"discovery at {addr}:{port}: {exc}") from exc
            result.unreachable[f"{addr}:{port}"] = str(exc)
            continue
        result.visited.append(f"{addr}:{port}")
        for rec in log:
            where = (str(rec["traddr"]), str(rec["trsvcid"]))
            if rec["subtype"] == nvme.SUBTYPE_REFERRAL:
                if f"{where[0]}:{where[1]}" not in seen:
                    seen.add(f"{where[0]}:{where[1]}")
                    todo.append(where)
            elif rec["subtype"] == nvme.SUBTYPE_NVME and rec["subnqn"] != DISCOVERY_NQN:
                entry = Entry(where[0], where[1], str(rec["subnqn"]), int(str(rec["portid"])))
                if all((e.traddr, e.trsvcid, e.subnqn) != (entry.traddr, entry.trsvcid,
                                                          entry.subnqn)
                       for e in result.entries):
                    result.entries.append(entry)
    return result
