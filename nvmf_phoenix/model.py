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

import copy
import ipaddress
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
ANA_STATES = ("optimized", "non_optimized", "inaccessible", "persistent_loss", "change")
LAYOUT_VERSION = 1
# SPDK's TCP transport options and their defaults (nvmf_create_transport): what the
# embedded target applies, and what it reports for an option a call left out.
TRANSPORT_DEFAULTS: dict[str, Any] = {
    "max_queue_depth": 128, "max_io_qpairs_per_ctrlr": 127, "in_capsule_data_size": 4096,
    "max_io_size": 131072, "io_unit_size": 131072, "max_aq_depth": 128,
    "num_shared_buffers": 511, "buf_cache_size": 4294967295,
    "iobuf_small_cache_size": 4294967295, "iobuf_large_cache_size": 4294967295,
    "dif_insert_or_strip": False, "zcopy": False, "c2h_success": True, "sock_priority": 0,
    "abort_timeout_sec": 1, "ack_timeout": 0, "data_wr_pool_size": 0,
    "disable_command_passthru": False, "kas": 100, "min_kato": 10000}


class Kind(StrEnum):
    """The kinds of configuration object, as one vocabulary: the journal's change
    operations (``{"op": "ns", ...}``) and the embedded target's change events name the
    object they touch with these. The values are on disk in journals: never rename one."""

    BDEV = "bdev"
    KEY = "key"
    TRANSPORT = "transport"
    SUBSYSTEM = "subsystem"
    HOST = "host"
    NS = "ns"
    LISTENER = "listener"
    REFERRAL = "referral"
    ALLOW_ANY_HOST = "allow_any_host"
    ANA = "ana"
    NS_HOST = "ns_host"      # a host on a namespace's visibility list


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
    sock_impl: str | None = None   # the socket implementation; None: the default one

    def to_dict(self) -> dict[str, Any]:
        return _clean({"address": self.address.to_dict(),
                       "ana_states": {str(g): s for g, s in sorted(self.ana_states.items())},
                       "secure_channel": self.secure_channel, "sock_impl": self.sock_impl})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Listener:
        return cls(address=ListenAddress.from_dict(d["address"]),
                   ana_states={int(g): s for g, s in d.get("ana_states", {}).items()},
                   secure_channel=bool(d.get("secure_channel", False)),
                   sock_impl=d.get("sock_impl"))

    def to_create_params(self, nqn: str) -> dict[str, Any]:
        """nvmf_subsystem_add_listener's params (ANA states are set by their own call)."""
        p: dict[str, Any] = {"nqn": nqn, "listen_address": self.address.to_dict()}
        if self.secure_channel:
            p["secure_channel"] = True
        if self.sock_impl:
            p["sock_impl"] = self.sock_impl
        return p

    @classmethod
    def from_create_params(cls, p: dict[str, Any]) -> Listener:
        return cls(address=ListenAddress.from_dict(p["listen_address"]),
                   secure_channel=bool(p.get("secure_channel", False)),
                   sock_impl=p.get("sock_impl"))


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

    def to_create_params(self, nqn: str) -> dict[str, Any]:
        """nvmf_subsystem_add_host's params: ``nqn`` is the subsystem's, ``host`` ours."""
        return {"nqn": nqn, "host": self.nqn,
                **{k: v for k, v in self.to_dict().items() if k != "nqn"}}

    @classmethod
    def from_create_params(cls, p: dict[str, Any]) -> Host:
        return cls(nqn=p["host"], psk=p.get("psk"), dhchap_key=p.get("dhchap_key"),
                   dhchap_ctrlr_key=p.get("dhchap_ctrlr_key"))


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
    # Who sees a no_auto_visible namespace, newest first (SPDK keeps and reports its list so).
    hosts: list[str] = field(default_factory=list)

    # What a host sees of a namespace besides its nsid: equal in two states or a conflict.
    IDENTITY: ClassVar[tuple[str, ...]] = ("bdev_name", "uuid", "nguid", "eui64", "anagrpid")
    # nvmf_subsystem_add_ns's namespace params, in the order SPDK's save_config has them.
    CREATE_PARAMS: ClassVar[tuple[str, ...]] = (
        "nsid", "bdev_name", "nguid", "eui64", "uuid", "anagrpid", "ptpl_file",
        "no_auto_visible")

    def identity(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.IDENTITY)

    def visible_to(self, hostnqn: str) -> bool:
        """Whether a controller of ``hostnqn`` has this namespace active (SPDK's rule)."""
        return not self.no_auto_visible or hostnqn in self.hosts

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

    def to_create_params(self) -> dict[str, Any]:
        """The ``namespace`` object of nvmf_subsystem_add_ns (the visibility list is set
        by calls of its own)."""
        d = self.to_dict()
        return {k: d[k] for k in self.CREATE_PARAMS if k in d}

    @classmethod
    def from_create_params(cls, p: dict[str, Any]) -> Namespace:
        """From add_ns's ``namespace`` object; a missing nsid is 0: the target picks one."""
        return cls.from_dict({"nsid": 0, **p})


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
    # Limits and features a host reads in Identify Controller and CAP: Dataset Management
    # Range Size Limit, Write Zeroes Size Limit, NVM Subsystem Reset; passthrough of
    # Identify to the namespace's NVMe controller.
    dmrsl: int = 2097152
    wzsl: int = 12
    passthrough: bool = False
    enable_nssr: bool = False
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: dict[int, Namespace] = field(default_factory=dict)
    listeners: dict[ListenAddress, Listener] = field(default_factory=dict)

    # nvmf_create_subsystem's params we model, in the order SPDK's save_config has them;
    # a missing one takes the field's default above, which is SPDK's.
    CREATE_PARAMS: ClassVar[tuple[str, ...]] = (
        "nqn", "allow_any_host", "serial_number", "model_number", "max_namespaces",
        "min_cntlid", "max_cntlid", "ana_reporting", "dmrsl", "wzsl", "passthrough",
        "enable_nssr")

    @classmethod
    def discovery(cls) -> Subsystem:
        """The discovery subsystem every target has from its start (never created by RPC)."""
        return cls(nqn=DISCOVERY_NQN, subtype="Discovery", allow_any_host=True,
                   max_namespaces=0)

    @property
    def is_discovery(self) -> bool:
        return self.subtype == "Discovery"

    def to_create_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.CREATE_PARAMS}

    @classmethod
    def from_create_params(cls, p: dict[str, Any]) -> Subsystem:
        """From nvmf_create_subsystem's params (or an answer with the same names)."""
        return cls(**{k: p[k] for k in cls.CREATE_PARAMS if k in p})

    def to_dict(self) -> dict[str, Any]:
        return {"nqn": self.nqn, "subtype": self.subtype,
                "serial_number": self.serial_number, "model_number": self.model_number,
                "max_namespaces": self.max_namespaces, "min_cntlid": self.min_cntlid,
                "max_cntlid": self.max_cntlid, "ana_reporting": self.ana_reporting,
                "allow_any_host": self.allow_any_host, "dmrsl": self.dmrsl,
                "wzsl": self.wzsl, "passthrough": self.passthrough,
                "enable_nssr": self.enable_nssr,
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
    """A block device with its creation parameters; ``kind`` is ``malloc``, ``null`` or ``aio``.

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

    # The creation parameters that are fields of their own; a malloc bdev keeps every
    # other one in ``params``, an aio bdev only these (the rest SPDK does not report).
    CORE: ClassVar[tuple[str, ...]] = ("name", "num_blocks", "block_size", "uuid")
    AIO_PARAMS: ClassVar[tuple[str, ...]] = ("readonly", "fallocate")

    def to_create_params(self) -> dict[str, Any]:
        """bdev_malloc_create's or bdev_aio_create's params, uuid included."""
        if kind_is_sized(self.kind):
            return {"name": self.name, "num_blocks": self.num_blocks,
                    "block_size": self.block_size, "uuid": self.uuid, **self.params}
        return {"name": self.name, "filename": self.filename, "block_size": self.block_size,
                "uuid": self.uuid,
                **{k: v for k, v in self.params.items() if k in self.AIO_PARAMS}}

    @classmethod
    def from_create_params(cls, kind: str, p: dict[str, Any]) -> Bdev:
        """From a create call's params (uuid "" when the target is left to choose)."""
        if kind_is_sized(kind):
            p = cls._data_block_size(kind, p)
            return cls(name=p["name"], kind=kind, uuid=p.get("uuid", ""),
                       block_size=p["block_size"], num_blocks=p["num_blocks"],
                       params={k: v for k, v in p.items() if k not in cls.CORE})
        return cls(name=p["name"], kind=kind, uuid=p.get("uuid", ""),
                   block_size=p.get("block_size", 512), num_blocks=0,
                   filename=p["filename"], params={k: p[k] for k in cls.AIO_PARAMS if k in p})

    @staticmethod
    def _data_block_size(kind: str, p: dict[str, Any]) -> dict[str, Any]:
        """Creation params in the form creation takes. SPDK reports a bdev whose metadata
        is interleaved with a block size that includes it (520 for 512 + 8) and does not
        report md_interleave (a null bdev's always is), but creation wants the data size,
        a multiple of 512, and md_interleave: so SPDK's own save_config of such a bdev
        cannot be loaded. Metadata is smaller than 512 bytes, so a block size that is not
        a multiple of 512 is data plus metadata. md_interleave false is the default."""
        md, size = p.get("md_size") or 0, p["block_size"]
        out = {k: v for k, v in p.items() if not (k == "md_interleave" and v is False)}
        if md and size % 512:
            out["block_size"] = size - md
            if kind == "malloc":
                out["md_interleave"] = True
        return out


def kind_is_sized(kind: str) -> bool:
    """malloc and null bdevs are made to a size (num_blocks, block_size, every other
    creation parameter kept); an aio bdev takes its size from its file."""
    return kind in ("malloc", "null")


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

    def to_create_params(self) -> dict[str, Any]:
        return {"trtype": self.trtype, **self.options}

    @classmethod
    def from_create_params(cls, p: dict[str, Any]) -> Transport:
        """Every param but the type (and the target's name) is an option."""
        return cls(trtype=p["trtype"].upper(),
                   options={k: v for k, v in p.items() if k not in ("trtype", "tgt_name")})


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

    # keyring_file_add_key's params are exactly the dict form
    to_create_params = to_dict
    from_create_params = from_dict


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

    # nvmf_discovery_add_referral's params are exactly the dict form
    to_create_params = to_dict
    from_create_params = from_dict


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
    # What the target's configuration holds that no declaration models, verbatim and in
    # its order: {"subsystem": s, "method": m, "params": p}. None: not recorded (a state
    # built by hand, or a checkpoint older than this field), so nothing to compare.
    opaque: list[dict[str, Any]] | None = None

    @classmethod
    def empty(cls) -> TargetState:
        """A freshly started target: nothing but its discovery subsystem."""
        st = cls()
        st.subsystems[DISCOVERY_NQN] = Subsystem.discovery()
        return st

    def config_dict(self) -> dict[str, Any]:
        """The configuration part only: what restore must reproduce, what diff compares."""
        return {"layout_version": LAYOUT_VERSION, "startup": self.startup.to_dict(),
                "keys": [k.to_dict() for k in self.keys.values()],
                "bdevs": [b.to_dict() for b in self.bdevs.values()],
                "transports": [t.to_dict() for t in self.transports.values()],
                "subsystems": [s.to_dict() for s in self.subsystems.values()],
                "referrals": [r.to_dict() for r in self.referrals],
                **({} if self.opaque is None else {"opaque": _entries(self.opaque)})}

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
                   runtime=Runtime.from_dict(d.get("runtime", {})),
                   opaque=_entries(d["opaque"]) if d.get("opaque") is not None else None)


def _entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Opaque configuration entries, copied (their params are SPDK's, as given)."""
    return [{"subsystem": e.get("subsystem", ""), "method": e["method"],
             "params": copy.deepcopy(e.get("params"))} for e in entries]
