"""The bookkeeping of NVMe multipath, with no sockets: which paths exist, what each one
reports, and which one the next command goes to.

This is what the Linux host's nvme-multipath keeps per namespace head, reduced to what a
test host needs: a path is one controller of the subsystem, reached over one address; it
is *live* while its connection works, and per namespace it is in the ANA state its
controller last reported. The choice follows the kernel's ``numa`` policy on one node:
stay on the current path while it is live and optimized; otherwise take the first live
optimized path, else the first live non-optimized one; never a path that is down, or
inaccessible, in persistent loss or in transition, or whose state is being re-read after
it answered with an ANA error (the kernel's NVME_NS_ANA_PENDING).

Paths join only if they are the same thing: the same subsystem NQN, the same identities
(NGUID, UUID, EUI-64) for a namespace ID both report, and a controller ID no other live
path of the subsystem uses (Linux refuses a second controller with a cntlid already in
the subsystem, and refuses a shared namespace whose IDs do not match).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from nvmf_phoenix.wire import nvme

ANA_NAMES = {code: name for name, code in nvme.ANA_STATE_CODES.items()}
USABLE = ("optimized", "non_optimized")     # in order of preference
# Status codes that speak about the path, not the command: send it elsewhere.
ANA_ERRORS = {nvme.SC_ANA_INACCESSIBLE: "inaccessible", nvme.SC_ANA_TRANSITION: "change",
              nvme.SC_ANA_PERSISTENT_LOSS: "persistent_loss"}


class PathIdentityError(Exception):
    """A path that must not join the others (Linux refuses such a controller)."""


@dataclass(frozen=True)
class NsIdentity:
    """What the kernel compares to put two paths' namespaces under one head."""

    nguid: str = ""
    uuid: str = ""
    eui64: str = ""

    def is_set(self) -> bool:
        return any(v.strip("0-") for v in (self.nguid, self.uuid, self.eui64))


@dataclass
class Path:
    """One path: an address, the controller reached there, its state and counters."""

    name: str                           # "traddr:trsvcid"
    traddr: str
    trsvcid: str
    live: bool = False
    cntlid: int | None = None
    ana: dict[int, str] = field(default_factory=dict)       # nsid -> ANA state
    pending: set[int] = field(default_factory=set)          # nsids whose state is re-read
    sent: int = 0                       # commands sent on this path
    failures: int = 0                   # times it went down
    reconnects: int = 0                 # times it came back after being connected
    attempts: int = 0                   # connects tried, the first one included
    error: str = ""                     # why it is down (last failure or refusal)

    def state(self, nsid: int) -> str:
        return self.ana.get(nsid, "inaccessible")

    def usable(self, nsid: int) -> bool:
        return self.live and nsid not in self.pending and self.state(nsid) in USABLE

    def report(self) -> dict[str, object]:
        return {"address": self.name, "cntlid": self.cntlid, "live": self.live,
                "ana": dict(self.ana), "sent": self.sent, "failures": self.failures,
                "reconnects": self.reconnects, "attempts": self.attempts,
                "error": self.error}


def ana_states(groups: dict[int, tuple[int, list[int]]],
               group_of: dict[int, int]) -> dict[int, str]:
    """nsid -> state name, from a parsed ANA log (``nvme.parse_ana_log``) and each
    namespace's ANA group (Identify Namespace ANAGRPID); a namespace the log does not
    cover is inaccessible, as the kernel treats a group it cannot find."""
    by_nsid: dict[int, str] = {}
    for grp, (code, nsids) in groups.items():
        name = ANA_NAMES.get(code, "inaccessible")
        for nsid in nsids:
            by_nsid[nsid] = name
        for nsid, g in group_of.items():      # a log read with RGO lists no nsids
            if g == grp and nsid not in by_nsid:
                by_nsid[nsid] = name
    return {nsid: by_nsid.get(nsid, "inaccessible") for nsid in group_of}


@dataclass
class PathTable:
    """All paths to one subsystem, the identities they must share, and the choice."""

    subnqn: str
    paths: dict[str, Path] = field(default_factory=dict)
    identities: dict[int, NsIdentity] = field(default_factory=dict)
    current: dict[int, str] = field(default_factory=dict)   # nsid -> path in use
    failovers: int = 0              # I/O moved off a path that failed or became unusable
    path_changes: int = 0           # every move of the path in use, failovers included

    def add(self, traddr: str, trsvcid: str | int) -> Path:
        path = Path(f"{traddr}:{trsvcid}", traddr, str(trsvcid))
        self.paths.setdefault(path.name, path)
        return self.paths[path.name]

    # -- joining ---------------------------------------------------------------------
    def check(self, name: str, subnqn: str, cntlid: int,
              namespaces: dict[int, NsIdentity]) -> None:
        """Raise :class:`PathIdentityError` if this controller may not be a path here."""
        if subnqn != self.subnqn:
            raise PathIdentityError(f"{name}: subsystem {subnqn!r} is not {self.subnqn!r}")
        for other in self.paths.values():
            if other.name != name and other.live and other.cntlid == cntlid:
                raise PathIdentityError(f"{name}: duplicate cntlid {cntlid} with "
                                        f"{other.name} in {subnqn}; rejecting")
        for nsid, ident in namespaces.items():
            known = self.identities.get(nsid)
            if known is not None and known != ident:
                raise PathIdentityError(f"{name}: namespace {nsid} IDs do not match the "
                                        f"shared namespace ({ident} vs {known})")
            if not ident.is_set():
                raise PathIdentityError(f"{name}: namespace {nsid} has no unique identifier")

    def up(self, name: str, cntlid: int, namespaces: dict[int, NsIdentity],
           ana: dict[int, str]) -> None:
        """A controller passed :meth:`check` and is connected: the path is live."""
        for nsid, ident in namespaces.items():
            self.identities.setdefault(nsid, ident)
        path = self.paths[name]
        if path.cntlid is not None:
            path.reconnects += 1
        path.live, path.cntlid, path.ana, path.error = True, cntlid, dict(ana), ""
        path.pending.clear()

    def down(self, name: str, why: str) -> bool:
        """The path failed; False if it was down already (one failure, one count)."""
        path = self.paths[name]
        if not path.live:
            return False
        path.live, path.error = False, why
        path.failures += 1
        return True

    def refused(self, name: str, why: str) -> None:
        self.paths[name].error = why

    # -- ANA ---------------------------------------------------------------------------
    def set_ana(self, name: str, ana: dict[int, str]) -> None:
        path = self.paths[name]
        path.ana = dict(ana)
        path.pending.clear()

    def ana_error(self, name: str, nsid: int) -> None:
        """The path answered a command with an ANA status: do not use it for this
        namespace until its ANA log has been read again."""
        self.paths[name].pending.add(nsid)

    # -- choosing ----------------------------------------------------------------------
    def choose(self, nsid: int, exclude: Iterable[str] = ()) -> Path | None:
        """The path the next command on ``nsid`` goes to, or None if no path is usable."""
        skip = set(exclude)
        cur = self.paths.get(self.current.get(nsid, ""))
        if cur is not None and cur.name not in skip and cur.usable(nsid) \
                and cur.state(nsid) == "optimized":
            return cur
        best: Path | None = None
        for state in USABLE:
            best = next((p for p in self.paths.values() if p.name not in skip
                         and p.usable(nsid) and p.state(nsid) == state), None)
            if best is not None:
                break
        if best is not None and cur is not best:
            if cur is not None:
                self.path_changes += 1
                if not cur.usable(nsid):
                    self.failovers += 1
            self.current[nsid] = best.name
        return best

    def any_usable(self, nsid: int) -> bool:
        return any(p.usable(nsid) for p in self.paths.values())

    def report(self) -> list[dict[str, object]]:
        return [p.report() for p in self.paths.values()]
