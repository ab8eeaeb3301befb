"""The embedded target's configuration core: validated changes to one TargetState.

The JSON-RPC server (``target/rpc_*.py``) turns requests into calls here; the data path
subscribes to the :class:`Event` stream so that every change takes effect at once (a new
namespace raises a namespace-attribute notice, an ANA change an ANA notice, a removed host
is disconnected). Every method validates everything before it mutates anything, so a
failed call changes nothing. Errors carry the JSON-RPC code and message SPDK's nvmf_tgt
answers with, plus a ``detail`` that says what was actually wrong (for logs and our CLI).

Identity defaults are deterministic, never random on the fly: a namespace without an
explicit uuid/nguid takes them from its bdev's uuid (as SPDK does), and a bdev created
without a uuid gets one derived from its name and creation parameters, which is then stored
in the configuration, so a restart shows the host the same thing.
"""
from __future__ import annotations

import errno
import os
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from nvmf_phoenix.embedded.nqn import nqn_problem
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import (
    ANA_STATES,
    DISCOVERY_NQN,
    Bdev,
    Host,
    Key,
    Kind,
    ListenAddress,
    Listener,
    Namespace,
    Referral,
    Subsystem,
    TargetState,
    Transport,
)

INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Namespace prefix for identities derived from names: fixed so derivation is repeatable.
_IDENTITY_NS = uuidlib.UUID("6a1c3f52-5e0b-4b7e-9d1e-7068686f656e")


def invalid(detail: str) -> TargetError:
    """SPDK's most common refusal: a bare -32602 'Invalid parameters'."""
    return TargetError(INVALID_PARAMS, "Invalid parameters", detail)


class BlockDevice(Protocol):
    """What the data path needs from a bdev backend (embedded/bdev.py implements it)."""

    block_size: int
    num_blocks: int

    def read(self, offset: int, length: int) -> bytes | memoryview: ...
    def write(self, offset: int, data: bytes | memoryview) -> None: ...
    def flush(self) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def write_zeroes(self, offset: int, length: int) -> None: ...
    def close(self) -> None: ...


class Change(StrEnum):
    """What happened to the object an :class:`Event` names."""

    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True)
class Event:
    """A configuration change the data path must act on: which kind of object (the
    model's :class:`~nvmf_phoenix.model.Kind`, the journal's vocabulary too) and what
    happened to it, e.g. ``Event(Kind.NS, Change.ADDED, nqn=..., nsid=...)``."""

    obj: Kind
    change: Change
    nqn: str | None = None
    nsid: int | None = None
    address: ListenAddress | None = None
    host: str | None = None
    name: str | None = None


def derived_uuid(*parts: object) -> str:
    """A stable UUID for an object created without one (same inputs, same UUID)."""
    return str(uuidlib.uuid5(_IDENTITY_NS, "/".join(str(p) for p in parts)))


def nguid_from_uuid(u: str) -> str:
    """SPDK's default NGUID: the namespace UUID's 16 bytes, as upper-case hex."""
    return uuidlib.UUID(u).hex.upper()


class TargetCore:
    """Owns the configuration (a TargetState) and the open block devices."""

    def __init__(self, bdev_opener: Callable[[Bdev], BlockDevice] | None = None) -> None:
        self.state = TargetState.empty()
        self.block_devices: dict[str, BlockDevice] = {}
        self._bdev_opener = bdev_opener
        self._subscribers: list[Callable[[Event], None]] = []

    def adopt(self, state: TargetState) -> list[str]:
        """Take a saved configuration as it is (a successor resuming a dead process's
        work) and open its bdevs; returns what could not be opened, for the log."""
        self.state = state
        problems = []
        if self._bdev_opener is not None:
            for bdev in state.bdevs.values():
                try:
                    self.block_devices[bdev.name] = self._bdev_opener(bdev)
                except TargetError as err:
                    problems.append(f"bdev {bdev.name}: {err.detail}")
        return problems

    # -- events ------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Event], None]) -> None:
        self._subscribers.append(fn)

    def _emit(self, event: Event) -> None:
        for fn in list(self._subscribers):
            fn(event)

    # -- lookups -----------------------------------------------------------------------
    def subsystem(self, nqn: str) -> Subsystem:
        sub = self.state.subsystems.get(nqn)
        if sub is None:
            raise invalid(f"subsystem {nqn} does not exist")
        return sub

    def nvm_subsystem(self, nqn: str) -> Subsystem:
        sub = self.subsystem(nqn)
        if sub.is_discovery:
            raise invalid(f"{nqn} is the discovery subsystem")
        return sub

    # -- bdevs -------------------------------------------------------------------------
    def add_bdev(self, bdev: Bdev) -> str:
        """Open and register a bdev; its uuid is fixed here if the caller left it open."""
        if bdev.name in self.state.bdevs:
            raise TargetError(-17, "File exists", f"bdev {bdev.name} already exists")
        if not bdev.uuid:
            bdev.uuid = derived_uuid("bdev", bdev.kind, bdev.name, bdev.filename or "")
        if any(b.uuid == bdev.uuid for b in self.state.bdevs.values()):
            raise TargetError(-17, "File exists", f"bdev uuid {bdev.uuid} already in use")
        if self._bdev_opener is not None:
            self.block_devices[bdev.name] = _open(self._bdev_opener, bdev)
        self.state.bdevs[bdev.name] = bdev
        self._emit(Event(Kind.BDEV, Change.ADDED, name=bdev.name))
        return bdev.name

    def delete_bdev(self, name: str) -> None:
        """Remove a bdev; namespaces on it go first, as with SPDK's hot-remove."""
        if name not in self.state.bdevs:
            raise TargetError(-19, "No such device", f"bdev {name} does not exist")
        for sub in self.state.subsystems.values():
            for ns in [n for n in sub.namespaces.values() if n.bdev_name == name]:
                self.remove_namespace(sub.nqn, ns.nsid)
        dev = self.block_devices.pop(name, None)
        del self.state.bdevs[name]
        if dev is not None:
            dev.close()
        self._emit(Event(Kind.BDEV, Change.REMOVED, name=name))

    def resize_bdev(self, name: str, num_blocks: int) -> None:
        """A bigger bdev (the null module's resize); hosts see namespaces on it change."""
        bdev = self.state.bdevs[name]
        bdev.num_blocks = num_blocks
        dev = self.block_devices.get(name)
        if dev is not None:
            dev.num_blocks = num_blocks
        for sub in self.state.subsystems.values():
            for ns in sub.namespaces.values():
                if ns.bdev_name == name:
                    self._emit(Event(Kind.NS, Change.CHANGED, nqn=sub.nqn, nsid=ns.nsid))

    # -- keys and referrals -------------------------------------------------------------
    def add_key(self, key: Key) -> None:
        """A keyring file key: the file must exist and be private, as SPDK demands.
        Refusals carry SPDK's errno codes (keyring.c, keyring_file_check_path)."""
        if ":" in key.name[1:]:
            raise TargetError(-errno.EINVAL, os.strerror(errno.EINVAL),
                              f"key name {key.name}: no keyring before ':' exists")
        if key.name in self.state.keys:
            raise TargetError(-17, "File exists", f"key {key.name} already exists")
        eperm = (-errno.EPERM, os.strerror(errno.EPERM))
        if not os.path.isabs(key.path):
            raise TargetError(*eperm, f"key file {key.path}: not an absolute path")
        try:
            st = os.stat(key.path)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise TargetError(-code, os.strerror(code),
                              f"key file {key.path}: {exc.strerror}") from None
        if st.st_mode & 0o077 or st.st_uid != os.getuid():
            raise TargetError(*eperm, f"key file {key.path} must be owned by this user and "
                              "readable by its owner only (mode 0600)")
        self.state.keys[key.name] = key

    def remove_key(self, name: str) -> None:
        if name not in self.state.keys:
            raise TargetError(-errno.ENOKEY, os.strerror(errno.ENOKEY), f"no key named {name}")
        del self.state.keys[name]

    def add_referral(self, ref: Referral) -> None:
        """As SPDK (nvmf.c): a referral is its address plus subnqn (none meaning the
        discovery NQN); adding one that exists is a no-op; new ones go to the head of the
        list, so listings and the discovery log show the newest first."""
        if any(_same_referral(r, ref.address, ref.subnqn) for r in self.state.referrals):
            return
        self.state.referrals.insert(0, ref)
        self._emit(Event(Kind.REFERRAL, Change.CHANGED))

    def remove_referral(self, address: ListenAddress, subnqn: str | None) -> None:
        keep = [r for r in self.state.referrals
                if not _same_referral(r, address, subnqn)]
        if len(keep) == len(self.state.referrals):
            raise TargetError(INTERNAL_ERROR, "Unable to remove a referral.",
                              f"no referral {address} for {subnqn or DISCOVERY_NQN}")
        self.state.referrals = keep
        self._emit(Event(Kind.REFERRAL, Change.CHANGED))

    # -- transports --------------------------------------------------------------------
    def create_transport(self, trtype: str, options: dict[str, Any]) -> None:
        key = trtype.upper()
        if key != "TCP":
            raise TargetError(INVALID_PARAMS, f"Invalid transport type '{trtype}'",
                              f"transport {trtype} is not supported by the embedded target")
        if key in self.state.transports:
            raise TargetError(INTERNAL_ERROR, f"Transport type '{trtype}' already exists")
        self.state.transports[key] = Transport(trtype=key, options=dict(options))
        self._emit(Event(Kind.TRANSPORT, Change.CHANGED, name=key))

    # -- subsystems --------------------------------------------------------------------
    def create_subsystem(self, sub: Subsystem) -> None:
        why = nqn_problem(sub.nqn) or (f"subsystem {sub.nqn} exists"
                                       if sub.nqn in self.state.subsystems else None)
        if why:
            raise TargetError(INTERNAL_ERROR, f"Unable to create subsystem {sub.nqn}", why)
        if not 1 <= sub.min_cntlid <= sub.max_cntlid <= 0xFFEF:
            raise TargetError(INVALID_PARAMS, f"Invalid cntlid range [{sub.min_cntlid}-"
                              f"{sub.max_cntlid}]", "cntlids must lie in 1..65519")
        self.state.subsystems[sub.nqn] = sub
        self._emit(Event(Kind.SUBSYSTEM, Change.ADDED, nqn=sub.nqn))

    def delete_subsystem(self, nqn: str) -> None:
        """Any subsystem, the discovery one included (SPDK allows that too)."""
        self.subsystem(nqn)
        del self.state.subsystems[nqn]
        self._emit(Event(Kind.SUBSYSTEM, Change.REMOVED, nqn=nqn))

    # -- namespaces --------------------------------------------------------------------
    def add_namespace(self, nqn: str, ns: Namespace) -> int:
        """Add a namespace, filling nsid/uuid/nguid/anagrpid the way SPDK would."""
        sub = self.nvm_subsystem(nqn)
        bdev = self.state.bdevs.get(ns.bdev_name)
        if bdev is None:
            raise invalid(f"bdev {ns.bdev_name} does not exist")
        if any(n.bdev_name == ns.bdev_name for s in self.state.subsystems.values()
               for n in s.namespaces.values()):
            raise invalid(f"bdev {ns.bdev_name} is already claimed by a namespace")
        nsid = ns.nsid or _lowest_free(sub.namespaces, sub.max_namespaces)
        if nsid is None or nsid in sub.namespaces or not 1 <= nsid <= sub.max_namespaces:
            raise invalid(f"nsid {ns.nsid} is in use or outside 1-{sub.max_namespaces}")
        ns.nsid = nsid
        ns.uuid = ns.uuid or bdev.uuid
        ns.nguid = ns.nguid or nguid_from_uuid(bdev.uuid)
        # An ANA group exists only where ANA is reported: elsewhere SPDK shows none (not
        # in its listings, its configuration or Identify Namespace), nor do we.
        ns.anagrpid = (ns.anagrpid or nsid) if sub.ana_reporting else None
        sub.namespaces[nsid] = ns
        self._emit(Event(Kind.NS, Change.ADDED, nqn=nqn, nsid=nsid))
        return nsid

    def set_ns_ana_group(self, nqn: str, nsid: int, anagrpid: int) -> None:
        """Move a namespace to ANA group 1..max_namespaces (SPDK: -32602 otherwise)."""
        sub = self.nvm_subsystem(nqn)
        ns = sub.namespaces.get(nsid)
        if ns is None or not 1 <= anagrpid <= sub.max_namespaces:
            raise invalid(f"no namespace {nsid} in {nqn}, or ANA group {anagrpid} outside "
                          f"1-{sub.max_namespaces}")
        if not sub.ana_reporting:
            return   # accepted, as by SPDK, and as invisible as it is there
        ns.anagrpid = anagrpid
        self._emit(Event(Kind.NS, Change.CHANGED, nqn=nqn, nsid=nsid))
        self._emit(Event(Kind.ANA, Change.CHANGED, nqn=nqn))

    def remove_namespace(self, nqn: str, nsid: int) -> None:
        sub = self.nvm_subsystem(nqn)
        if nsid not in sub.namespaces:
            raise invalid(f"namespace {nsid} does not exist in {nqn}")
        del sub.namespaces[nsid]
        self._emit(Event(Kind.NS, Change.REMOVED, nqn=nqn, nsid=nsid))

    def set_ns_visible(self, nqn: str, nsid: int, hostnqn: str, visible: bool) -> None:
        """nvmf_ns_add_host / nvmf_ns_remove_host, with SPDK's refusals (subsystem.c,
        nvmf_ns_visible): all "Invalid parameters". Adding a listed host or removing an
        unlisted one changes nothing and is no error. A new host goes to the head."""
        sub = self.subsystem(nqn)
        if nqn_problem(hostnqn) is not None:
            raise invalid(f"host {hostnqn!r} is not a valid NQN")
        if not 0 < nsid <= sub.max_namespaces:
            raise invalid(f"nsid {nsid} is outside 1-{sub.max_namespaces}")
        ns = sub.namespaces.get(nsid)
        if ns is None:
            raise invalid(f"namespace {nsid} does not exist in {nqn}")
        if not ns.no_auto_visible:
            raise invalid(f"namespace {nsid} is visible to every host (no_auto_visible "
                          "was not set)")
        if visible == (hostnqn in ns.hosts):
            return
        if visible:
            ns.hosts.insert(0, hostnqn)
        else:
            ns.hosts.remove(hostnqn)
        self._emit(Event(Kind.NS_HOST, Change.ADDED if visible else Change.REMOVED, nqn=nqn,
                         nsid=nsid, host=hostnqn))

    # -- hosts -------------------------------------------------------------------------
    def add_host(self, nqn: str, host: Host) -> None:
        sub = self.subsystem(nqn)
        if host.nqn in sub.hosts:
            raise TargetError(INTERNAL_ERROR, "Internal error",
                              f"host {host.nqn} is already allowed on {nqn}")
        sub.hosts[host.nqn] = host
        self._emit(Event(Kind.HOST, Change.ADDED, nqn=nqn, host=host.nqn))

    def remove_host(self, nqn: str, hostnqn: str) -> None:
        sub = self.subsystem(nqn)
        if hostnqn not in sub.hosts:
            raise TargetError(INTERNAL_ERROR, "Internal error",
                              f"host {hostnqn} is not on {nqn}'s list")
        del sub.hosts[hostnqn]
        self._emit(Event(Kind.HOST, Change.REMOVED, nqn=nqn, host=hostnqn))

    def set_host_keys(self, nqn: str, hostnqn: str, dhchap_key: str | None,
                      dhchap_ctrlr_key: str | None) -> None:
        """Replace a host's DH-HMAC-CHAP keys; its PSK stays. -22 for a host not listed."""
        host = self.subsystem(nqn).hosts.get(hostnqn)
        if host is None:
            raise TargetError(-errno.EINVAL, os.strerror(errno.EINVAL),
                              f"host {hostnqn} is not on {nqn}'s list")
        host.dhchap_key, host.dhchap_ctrlr_key = dhchap_key, dhchap_ctrlr_key
        self._emit(Event(Kind.HOST, Change.CHANGED, nqn=nqn, host=hostnqn))

    def allow_any_host(self, nqn: str, allow: bool) -> None:
        self.subsystem(nqn).allow_any_host = allow
        self._emit(Event(Kind.ALLOW_ANY_HOST, Change.CHANGED, nqn=nqn))

    # -- listeners ---------------------------------------------------------------------
    def add_listener(self, nqn: str, address: ListenAddress, ana_state: str = "optimized",
                     secure_channel: bool = False, sock_impl: str | None = None) -> None:
        sub = self.subsystem(nqn)
        if address in sub.listeners or ana_state not in ANA_STATES:
            raise invalid(f"listener {address} exists on {nqn} or bad ANA state")
        if address.trtype.upper() not in self.state.transports:
            raise invalid(f"no {address.trtype} transport: create it before its listeners")
        groups = range(1, sub.max_namespaces + 1) if sub.ana_reporting or sub.max_namespaces \
            else range(0)
        sub.listeners[address] = Listener(address=address,
                                          ana_states={g: ana_state for g in groups},
                                          secure_channel=secure_channel,
                                          sock_impl=sock_impl)
        try:   # the data path may refuse (address not bindable): then nothing changed
            self._emit(Event(Kind.LISTENER, Change.ADDED, nqn=nqn, address=address))
        except TargetError:
            del sub.listeners[address]
            raise

    def remove_listener(self, nqn: str, address: ListenAddress) -> None:
        sub = self.subsystem(nqn)
        if address not in sub.listeners:
            raise invalid(f"listener {address} does not exist on {nqn}")
        del sub.listeners[address]
        self._emit(Event(Kind.LISTENER, Change.REMOVED, nqn=nqn, address=address))

    def set_ana_state(self, nqn: str, address: ListenAddress, ana_state: str,
                      anagrpid: int | None = None) -> None:
        """Set one group's (or every group's) ANA state on one listener."""
        sub = self.nvm_subsystem(nqn)
        listener = sub.listeners.get(address)
        if not sub.ana_reporting:
            raise TargetError(INTERNAL_ERROR, "error setting ANA state: -22",
                              f"{nqn} was created without ANA reporting")
        if listener is None or ana_state not in ANA_STATES:
            raise invalid(f"no listener {address} on {nqn} or bad state {ana_state}")
        if anagrpid is not None and anagrpid not in listener.ana_states:
            raise TargetError(INTERNAL_ERROR, "error setting ANA state: -22",
                              f"ANA group {anagrpid} is outside 1-{sub.max_namespaces}")
        for g in [anagrpid] if anagrpid is not None else list(listener.ana_states):
            listener.ana_states[g] = ana_state
        self._emit(Event(Kind.ANA, Change.CHANGED, nqn=nqn, address=address, nsid=anagrpid))


def _same_referral(ref: Referral, address: ListenAddress, subnqn: str | None) -> bool:
    return ref.address == address and ref.subnqn == (subnqn or DISCOVERY_NQN)


def _open(opener: Callable[[Bdev], BlockDevice], bdev: Bdev) -> BlockDevice:
    """Open a backend; a system refusal becomes SPDK's errno answer (a malloc bdev of
    2^52 bytes is -12 'Cannot allocate memory', as in SPDK), never a traceback."""
    try:
        return opener(bdev)
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise TargetError(-code, os.strerror(code), f"bdev {bdev.name}: {exc}") from None
    except (OverflowError, MemoryError, ValueError) as exc:
        raise TargetError(-errno.ENOMEM, os.strerror(errno.ENOMEM),
                          f"bdev {bdev.name}: {exc}") from None


def _lowest_free(taken: dict[int, Any], limit: int) -> int | None:
    return next((i for i in range(1, limit + 1) if i not in taken), None)
