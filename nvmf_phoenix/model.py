"""The one model of an NVMe-oF target's state.

Capture produces a :class:`TargetState`, the journal and the shared-memory region store its
dict form, restore plans from it, ``diff`` compares two of them, and the embedded target
keeps its own configuration in it. Field names follow SPDK's JSON-RPC parameters so that the
dict form reads like ``framework_get_config`` output and maps one-to-one onto RPC calls.

Each class dumps itself with ``to_dict()`` and sets itself up with ``from_dict()``; dict
forms contain only JSON types, so ``from_dict(to_dict(x)) == x`` for every object.
Host-visible identity (serial, model, nsid, uuid, nguid, eui64, anagrpid, cntlid range) is
always explicit here: a restore never leaves it for the target to invent.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
ANA_STATES = ("optimized", "non_optimized", "inaccessible", "persistent_loss", "change")
LAYOUT_VERSION = 1


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """Drop None values: SPDK omits unset optional parameters, and so do we."""
    return {k: v for k, v in d.items() if v is not None}


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keys ``cls`` declares, so newer dumps load into older code."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True, order=True)
class ListenAddress:
    """A transport address as SPDK spells it in results (``TCP``, ``IPv4``)."""

    traddr: str
    trsvcid: str
    trtype: str = "TCP"
    adrfam: str = "IPv4"

    @classmethod
    def make(cls, traddr: str, trsvcid: str | int, trtype: str = "TCP",
             adrfam: str | None = None) -> ListenAddress:
        """Normalise case and infer the address family the way SPDK reports it."""
        if adrfam is None:
            try:
                adrfam = "IPv6" if ipaddress.ip_address(traddr).version == 6 else "IPv4"
            except ValueError:
                adrfam = "IPv4"
        fam = {"ipv4": "IPv4", "ipv6": "IPv6", "ib": "IB", "fc": "FC"}.get(adrfam.lower(), adrfam)
        return cls(traddr=traddr, trsvcid=str(trsvcid), trtype=trtype.upper(), adrfam=fam)

    def to_dict(self) -> dict[str, Any]:
        return {"trtype": self.trtype, "adrfam": self.adrfam,
                "traddr": self.traddr, "trsvcid": self.trsvcid}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ListenAddress:
        return cls.make(d["traddr"], d["trsvcid"], d.get("trtype", "TCP"), d.get("adrfam"))


@dataclass
class Listener:
    """A subsystem listener and its ANA state per ANA group (only get_listeners shows it)."""

    address: ListenAddress
    ana_states: dict[int, str] = field(default_factory=dict)
    secure_channel: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address.to_dict(),
                "ana_states": {str(g): s for g, s in sorted(self.ana_states.items())},
                "secure_channel": self.secure_channel}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Listener:
        return cls(address=ListenAddress.from_dict(d["address"]),
                   ana_states={int(g): s for g, s in d.get("ana_states", {}).items()},
                   secure_channel=bool(d.get("secure_channel", False)))


@dataclass
class Host:
    """A host NQN allowed on a subsystem, with the names of its keys (never key material)."""

    nqn: str
    psk: str | None = None
    dhchap_key: str | None = None
    dhchap_ctrlr_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _clean({"nqn": self.nqn, "psk": self.psk, "dhchap_key": self.dhchap_key,
                       "dhchap_ctrlr_key": self.dhchap_ctrlr_key})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Host:
        return cls(**_known(cls, d))


@dataclass
class Namespace:
    """A namespace with every host-visible identifier explicit."""

    nsid: int
    bdev_name: str
    uuid: str | None = None
    nguid: str | None = None
    eui64: str | None = None
    anagrpid: int | None = None
    ptpl_file: str | None = None
    no_auto_visible: bool = False
    hosts: list[str] = field(default_factory=list)   # visibility list when no_auto_visible

    def to_dict(self) -> dict[str, Any]:
        d = _clean({"nsid": self.nsid, "bdev_name": self.bdev_name, "uuid": self.uuid,
                    "nguid": self.nguid, "eui64": self.eui64, "anagrpid": self.anagrpid,
                    "ptpl_file": self.ptpl_file})
        d["no_auto_visible"] = self.no_auto_visible
        if self.hosts:
            d["hosts"] = list(self.hosts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Namespace:
        kw = _known(cls, d)
        kw["hosts"] = list(kw.get("hosts", []))
        return cls(**kw)


@dataclass
class Subsystem:
    """An NVM subsystem (or the discovery subsystem, ``subtype == "Discovery"``)."""

    nqn: str
    subtype: str = "NVMe"
    serial_number: str = "00000000000000000000"
    model_number: str = "SPDK bdev Controller"
    max_namespaces: int = 32
    min_cntlid: int = 1
    max_cntlid: int = 0xFFEF
    ana_reporting: bool = False
    allow_any_host: bool = False
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: dict[int, Namespace] = field(default_factory=dict)
    listeners: dict[ListenAddress, Listener] = field(default_factory=dict)

    @property
    def is_discovery(self) -> bool:
        return self.subtype == "Discovery"

    def to_dict(self) -> dict[str, Any]:
        return {"nqn": self.nqn, "subtype": self.subtype,
                "serial_number": self.serial_number, "model_number": self.model_number,
                "max_namespaces": self.max_namespaces, "min_cntlid": self.min_cntlid,
                "max_cntlid": self.max_cntlid, "ana_reporting": self.ana_reporting,
                "allow_any_host": self.allow_any_host,
                "hosts": [h.to_dict() for h in self.hosts.values()],
                "namespaces": [self.namespaces[n].to_dict() for n in sorted(self.namespaces)],
                "listeners": [ls.to_dict() for ls in self.listeners.values()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subsystem:
        kw = _known(cls, d)
        hosts = [Host.from_dict(h) for h in d.get("hosts", [])]
        nss = [Namespace.from_dict(n) for n in d.get("namespaces", [])]
        lss = [Listener.from_dict(x) for x in d.get("listeners", [])]
        kw.update(hosts={h.nqn: h for h in hosts}, namespaces={n.nsid: n for n in nss},
                  listeners={x.address: x for x in lss})
        return cls(**kw)


@dataclass
class Bdev:
    """A block device with its creation parameters; ``kind`` is ``malloc`` or ``aio``.

    ``params`` keeps every creation parameter the target reported (as framework_get_config
    gives them), so a restore recreates the bdev exactly, uuid included.
    """

    name: str
    kind: str
    uuid: str
    block_size: int
    num_blocks: int
    filename: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _clean({"name": self.name, "kind": self.kind, "uuid": self.uuid,
                       "block_size": self.block_size, "num_blocks": self.num_blocks,
                       "filename": self.filename, "params": dict(self.params)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Bdev:
        kw = _known(cls, d)
        kw["params"] = dict(kw.get("params", {}))
        return cls(**kw)


@dataclass
class Transport:
    """A transport with all of its options, including those save_config drops."""

    trtype: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"trtype": self.trtype, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transport:
        return cls(trtype=d["trtype"].upper(), options=dict(d.get("options", {})))


@dataclass
class Key:
    """A keyring entry: the name the config uses and the file that holds the material."""

    name: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Key:
        return cls(name=d["name"], path=d["path"])


@dataclass
class Referral:
    """A discovery referral to another discovery service or subsystem.

    ``subnqn`` is always explicit: SPDK fills in the discovery NQN when a referral is
    added without one and reports it so, so an unset and a discovery subnqn are one value.
    """

    address: ListenAddress
    subnqn: str = DISCOVERY_NQN
    secure_channel: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address.to_dict(), "secure_channel": self.secure_channel,
                "subnqn": self.subnqn}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Referral:
        return cls(address=ListenAddress.from_dict(d["address"]),
                   subnqn=d.get("subnqn") or DISCOVERY_NQN,
                   secure_channel=bool(d.get("secure_channel", False)))


@dataclass
class StartupOptions:
    """STARTUP-phase settings (applied before framework_start_init)."""

    nvmf_config: dict[str, Any] = field(default_factory=dict)   # nvmf_set_config params
    max_subsystems: int | None = None
    crdt: dict[str, int] = field(default_factory=dict)          # nvmf_set_crdt params

    def to_dict(self) -> dict[str, Any]:
        return _clean({"nvmf_config": dict(self.nvmf_config),
                       "max_subsystems": self.max_subsystems, "crdt": dict(self.crdt)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StartupOptions:
        return cls(nvmf_config=dict(d.get("nvmf_config", {})),
                   max_subsystems=d.get("max_subsystems"), crdt=dict(d.get("crdt", {})))


@dataclass
class Controller:
    """A live controller: exists only while a host is connected."""

    nqn: str
    cntlid: int
    hostnqn: str
    hostid: str
    num_io_qpairs: int = 0   # as SPDK counts it: connected queues, the admin queue included

    def to_dict(self) -> dict[str, Any]:
        return {"nqn": self.nqn, "cntlid": self.cntlid, "hostnqn": self.hostnqn,
                "hostid": self.hostid, "num_io_qpairs": self.num_io_qpairs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Controller:
        return cls(**_known(cls, d))


@dataclass
class QPair:
    """A live queue pair: qid 0 is the admin queue."""

    nqn: str
    cntlid: int
    qid: int
    hostnqn: str
    listen_address: ListenAddress
    peer_address: ListenAddress | None = None
    state: str = "enabled"

    def to_dict(self) -> dict[str, Any]:
        return _clean({"nqn": self.nqn, "cntlid": self.cntlid, "qid": self.qid,
                       "hostnqn": self.hostnqn, "state": self.state,
                       "listen_address": self.listen_address.to_dict(),
                       "peer_address": self.peer_address.to_dict() if self.peer_address
                       else None})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QPair:
        peer = d.get("peer_address")
        return cls(nqn=d["nqn"], cntlid=d["cntlid"], qid=d["qid"], hostnqn=d["hostnqn"],
                   listen_address=ListenAddress.from_dict(d["listen_address"]),
                   peer_address=ListenAddress.from_dict(peer) if peer else None,
                   state=d.get("state", "enabled"))


@dataclass
class Runtime:
    """Facts only hosts can recreate: who was connected, with how many queues."""

    controllers: list[Controller] = field(default_factory=list)
    qpairs: list[QPair] = field(default_factory=list)
    captured_at: float = 0.0   # wall-clock seconds, stamped by whoever captured

    def to_dict(self) -> dict[str, Any]:
        return {"controllers": [c.to_dict() for c in self.controllers],
                "qpairs": [q.to_dict() for q in self.qpairs], "captured_at": self.captured_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Runtime:
        return cls(controllers=[Controller.from_dict(c) for c in d.get("controllers", [])],
                   qpairs=[QPair.from_dict(q) for q in d.get("qpairs", [])],
                   captured_at=float(d.get("captured_at", 0.0)))


@dataclass
class TargetState:
    """Everything a host could observe about a target, plus who was connected."""

    startup: StartupOptions = field(default_factory=StartupOptions)
    keys: dict[str, Key] = field(default_factory=dict)
    bdevs: dict[str, Bdev] = field(default_factory=dict)
    transports: dict[str, Transport] = field(default_factory=dict)
    subsystems: dict[str, Subsystem] = field(default_factory=dict)
    referrals: list[Referral] = field(default_factory=list)
    runtime: Runtime = field(default_factory=Runtime)

    @classmethod
    def empty(cls) -> TargetState:
        """A freshly started target: nothing but its discovery subsystem."""
        st = cls()
        st.subsystems[DISCOVERY_NQN] = Subsystem(nqn=DISCOVERY_NQN, subtype="Discovery",
                                                 allow_any_host=True, max_namespaces=0)
        return st

    def config_dict(self) -> dict[str, Any]:
        """The configuration part only: what restore must reproduce, what diff compares."""
        return {"layout_version": LAYOUT_VERSION, "startup": self.startup.to_dict(),
                "keys": [k.to_dict() for k in self.keys.values()],
                "bdevs": [b.to_dict() for b in self.bdevs.values()],
                "transports": [t.to_dict() for t in self.transports.values()],
                "subsystems": [s.to_dict() for s in self.subsystems.values()],
                "referrals": [r.to_dict() for r in self.referrals]}

    def to_dict(self) -> dict[str, Any]:
        d = self.config_dict()
        d["runtime"] = self.runtime.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetState:
        version = d.get("layout_version", LAYOUT_VERSION)
        if not isinstance(version, int) or version > LAYOUT_VERSION:
            raise ValueError(f"state layout version {version!r} is newer than this "
                             f"nvmf-phoenix understands ({LAYOUT_VERSION})")
        keys = [Key.from_dict(k) for k in d.get("keys", [])]
        bdevs = [Bdev.from_dict(b) for b in d.get("bdevs", [])]
        trs = [Transport.from_dict(t) for t in d.get("transports", [])]
        subs = [Subsystem.from_dict(s) for s in d.get("subsystems", [])]
        return cls(startup=StartupOptions.from_dict(d.get("startup", {})),
                   keys={k.name: k for k in keys}, bdevs={b.name: b for b in bdevs},
                   transports={t.trtype: t for t in trs},
                   subsystems={s.nqn: s for s in subs},
                   referrals=[Referral.from_dict(r) for r in d.get("referrals", [])],
                   runtime=Runtime.from_dict(d.get("runtime", {})))
