"""One path's controller for the multipath host: what the kernel does when it connects a
controller of a multipath subsystem.

Connect the admin queue and enable the controller (:class:`Host`), enable the
asynchronous events a multipath host needs (namespace attribute and ANA change), read
each active namespace's identities and ANA group, read the ANA log, keep one Asynchronous
Event Request outstanding, and connect one I/O queue.

Two threads share a :class:`PathConn` and never the same queue: the admin queue belongs
to the multipath host's monitor thread (events, ANA log reads, keep-alive), the I/O
queue to the thread doing I/O. Either may find the path broken; :meth:`shutdown` wakes
the other side's socket without closing it, so each thread closes only its own queue.
"""
from __future__ import annotations

import contextlib
import socket
import uuid as uuidlib

from nvmf_phoenix.initiator.connection import NvmeError, QueueConn
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.initiator.paths import NsIdentity, ana_states
from nvmf_phoenix.wire import nvme

CMIC_ANA = 0x08          # Identify Controller CMIC bit 3: ANA reporting
ANA_LOG_SIZE = 4096      # header + groups + nsids: plenty for a test subsystem


class PathConn:
    """A connected controller on one path (see the module docstring for who owns what)."""

    def __init__(self, traddr: str, trsvcid: str, subnqn: str, hostnqn: str, hostid: str,
                 kato_ms: int, timeout: float, queue_size: int = 128) -> None:
        self.host = Host(traddr, trsvcid, subnqn, hostnqn=hostnqn, hostid=hostid,
                         kato_ms=kato_ms, timeout=timeout)
        self.dead = False           # set once, under the multipath host's lock
        self.claimed = False        # the I/O thread uses (and will close) the I/O queue
        self.aer_cid: int | None = None
        self.group_of: dict[int, int] = {}
        try:
            oaes = int(str(self.host.identity["oaes"]))
            wanted = oaes & (nvme.AEC_NS_ATTR | nvme.AEC_ANA_CHANGE)
            if wanted:
                self.host.set_features(nvme.FEAT_ASYNC_EVENT, wanted)
            self.host.create_io_queues(1, queue_size - 1)
        except BaseException:
            self.host.close()
            raise

    @property
    def cntlid(self) -> int:
        return self.host.cntlid

    @property
    def subnqn(self) -> str:
        return str(self.host.identity["subnqn"])

    @property
    def ana_reporting(self) -> bool:
        return bool(int(str(self.host.identity["cmic"])) & CMIC_ANA)

    @property
    def io(self) -> QueueConn:
        return self.host.io[0]

    # -- admin queue (monitor thread) ----------------------------------------------------
    def read_namespaces(self) -> dict[int, NsIdentity]:
        """Each active namespace's identities; remembers its ANA group for the log."""
        idents: dict[int, NsIdentity] = {}
        groups: dict[int, int] = {}
        for nsid in self.host.active_namespaces():
            info = nvme.parse_identify_namespace(self.host.identify(nvme.CNS_NAMESPACE, nsid))
            descs = nvme.parse_ns_descriptors(self.host.identify(nvme.CNS_NS_DESC_LIST, nsid))
            uuid = descs.get(nvme.NIDT_UUID)
            idents[nsid] = NsIdentity(nguid=str(info["nguid"]), eui64=str(info["eui64"]),
                                      uuid=str(uuidlib.UUID(bytes=uuid)) if uuid else "")
            groups[nsid] = int(str(info["anagrpid"])) or nsid
        self.group_of = groups
        return idents

    def read_ana(self) -> dict[int, str]:
        """nsid -> ANA state, from the ANA log (read without RAE, which re-arms the ANA
        change event); a controller without ANA reporting is optimized everywhere."""
        if not self.ana_reporting:
            return {nsid: "optimized" for nsid in self.group_of}
        page = self.host.get_log_page(nvme.LOG_ANA, ANA_LOG_SIZE)
        return ana_states(nvme.parse_ana_log(page)[1], self.group_of)

    def read_changed_namespaces(self) -> list[int]:
        """The Changed Namespace List (read without RAE, which re-arms the namespace
        attribute event, as the kernel does before it rescans)."""
        # the same layout as an active namespace list: 1024 ids, zero-filled
        return nvme.parse_ns_list(self.host.get_log_page(nvme.LOG_CHANGED_NS, 4096))

    def arm_aer(self) -> None:
        self.aer_cid = self.host.submit_aer()

    def events(self) -> list[int]:
        """Asynchronous events completed since the last call (their dw0), re-arming the
        request after each; raises :class:`NvmeError` if the connection broke."""
        out = []
        while comps := self.host.admin.pump(0.0):
            for comp in comps:
                if comp.cid != self.aer_cid:
                    continue
                self.aer_cid = None
                if comp.status:
                    raise NvmeError(f"AER failed: {nvme.status_name(comp.status)}")
                out.append(comp.dw0)
                self.arm_aer()
        return out

    def pending_events(self) -> bool:
        """An event completion already read off the socket while waiting for another
        command (so no readable socket will announce it)."""
        return self.aer_cid is not None and self.aer_cid in self.host.admin.done

    def keep_alive(self) -> None:
        self.host.keep_alive()

    def admin_socket(self) -> socket.socket:
        return self.host.admin.sock

    # -- teardown ------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Wake whoever waits on either queue (they see the connection end); no close."""
        for q in (self.host.admin, *self.host.io):
            with contextlib.suppress(OSError):       # not connected any more
                q.sock.shutdown(socket.SHUT_RDWR)

    def close_admin(self) -> None:
        self.host.admin.close()

    def close_io(self) -> None:
        for q in self.host.io:
            q.close()
