"""NVMe structures: SQE, CQE, Connect, properties, Identify, log pages, status codes.

Declared once, with field names from the NVMe Base and NVMe over Fabrics specifications
(offsets checked against the specification tables). Target and initiator both use these
structs and builders; nothing else packs or unpacks NVMe structures by hand.
"""
from __future__ import annotations

import struct
import uuid as uuidlib
from collections.abc import Iterable

from nvmf_phoenix.wire.layout import Layout

# --- Submission / completion queue entries ---------------------------------------------
# The common command format (NVMe Base 4.1 figure "Common Command Format"), with DPTR as the
# one SGL descriptor NVMe over Fabrics uses (address, length, reserved, SGL identifier).
SQE = Layout(64, [
    ("opc", 0, "B"), ("fuse_psdt", 1, "B"), ("cid", 2, "H"), ("nsid", 4, "I"),
    ("cdw2", 8, "I"), ("cdw3", 12, "I"), ("mptr", 16, "Q"),
    ("sgl_addr", 24, "Q"), ("sgl_length", 32, "I"), ("sgl_id", 39, "B"),
    ("cdw10", 40, "I"), ("cdw11", 44, "I"), ("cdw12", 48, "I"), ("cdw13", 52, "I"),
    ("cdw14", 56, "I"), ("cdw15", 60, "I")])
SQE_SIZE = SQE.size
# What every command's dispatch reads first, and its SGL: precompiled, for the hot path.
SQE_HEAD = SQE.reader("opc", "cid", "nsid")
SQE_SGL = SQE.reader("sgl_addr", "sgl_length", "sgl_id")
SQE_CDWS = SQE.reader("cdw10", "cdw11", "cdw12", "cdw13", "cdw14", "cdw15")
PSDT_SGL = 0x40       # fuse_psdt: PSDT 01b, data described by SGLs (all fabrics commands)
# The completion queue entry; status: bit 0 phase, SC 1-8, SCT 9-11, CRD 12-13, M 14, DNR 15
CQE = Layout(16, [("dw0", 0, "I"), ("dw1", 4, "I"), ("sqhd", 8, "H"), ("sqid", 10, "H"),
                  ("cid", 12, "H"), ("status", 14, "H")])
CQE_SIZE = CQE.size

SGL_DATA_BLOCK_OFFSET = 0x01      # type 0 (data block), subtype 1 (offset): in-capsule
SGL_TRANSPORT_DATA_BLOCK = 0x5A   # type 5 (transport data block), subtype 0xA

# --- Opcodes ------------------------------------------------------------------------------
ADM_GET_LOG_PAGE, ADM_IDENTIFY, ADM_ABORT = 0x02, 0x06, 0x08
ADM_SET_FEATURES, ADM_GET_FEATURES, ADM_AER, ADM_KEEP_ALIVE = 0x09, 0x0A, 0x0C, 0x18
FABRICS = 0x7F
FCTYPE_PROPERTY_SET, FCTYPE_CONNECT, FCTYPE_PROPERTY_GET = 0x00, 0x01, 0x04
NVM_FLUSH, NVM_WRITE, NVM_READ, NVM_WRITE_ZEROES, NVM_DSM = 0x00, 0x01, 0x02, 0x08, 0x09
# A Dataset Management range: context attributes, length in logical blocks, starting LBA
DSM_RANGE = Layout(16, [("cattr", 0, "I"), ("nlb", 4, "I"), ("slba", 8, "Q")])
DSM_ATTR_DEALLOCATE = 0x4     # cdw11 AD

# --- Status: (SCT << 8) | SC --------------------------------------------------------------
SC_SUCCESS = 0x000
SC_INVALID_OPCODE = 0x001
SC_INVALID_FIELD = 0x002
SC_COMMAND_ID_CONFLICT = 0x003
SC_DATA_TRANSFER_ERROR = 0x004
SC_INTERNAL = 0x006
SC_ABORTED_BY_REQUEST = 0x007
SC_ABORTED_SQ_DELETION = 0x008
SC_INVALID_NS = 0x00B
SC_SGL_INVALID_TYPE = 0x011
SC_SGL_LENGTH_INVALID = 0x00F
SC_COMMAND_INTERRUPTED = 0x021   # retryable: the host re-issues it
SC_CMD_SEQUENCE_ERROR = 0x00C
SC_NS_NOT_READY = 0x082
SC_LBA_OUT_OF_RANGE = 0x080
SC_CAPACITY_EXCEEDED = 0x081
SC_INVALID_QUEUE_SIZE = 0x102
SC_AER_LIMIT_EXCEEDED = 0x105
SC_INVALID_LOG_PAGE = 0x109
SC_FEATURE_NOT_SAVEABLE = 0x10D
SC_CONNECT_INCOMPATIBLE_FORMAT = 0x180
SC_CONNECT_CONTROLLER_BUSY = 0x181
SC_CONNECT_INVALID_PARAMETERS = 0x182
SC_CONNECT_INVALID_HOST = 0x184
SC_ANA_PERSISTENT_LOSS = 0x301
SC_ANA_INACCESSIBLE = 0x302
SC_ANA_TRANSITION = 0x303
SC_HOST_PATH_ERROR = 0x370      # host-generated: no path could carry the command
STATUS_DNR = 0x8000

STATUS_NAMES = {SC_SUCCESS: "success", SC_INVALID_OPCODE: "invalid opcode",
                SC_INVALID_FIELD: "invalid field", SC_INVALID_NS: "invalid namespace",
                SC_INTERNAL: "internal error", SC_LBA_OUT_OF_RANGE: "LBA out of range",
                SC_CMD_SEQUENCE_ERROR: "command sequence error",
                SC_ABORTED_BY_REQUEST: "aborted by request",
                SC_CONNECT_INVALID_PARAMETERS: "connect invalid parameters",
                SC_CONNECT_INVALID_HOST: "connect invalid host",
                SC_CONNECT_CONTROLLER_BUSY: "controller busy",
                SC_ANA_INACCESSIBLE: "ANA inaccessible", SC_ANA_TRANSITION: "ANA transition",
                SC_ANA_PERSISTENT_LOSS: "ANA persistent loss",
                SC_HOST_PATH_ERROR: "host path error",
                SC_INVALID_LOG_PAGE: "invalid log page", SC_INVALID_QUEUE_SIZE:
                "invalid queue size", SC_DATA_TRANSFER_ERROR: "data transfer error",
                SC_NS_NOT_READY: "namespace not ready"}


def status_word(sc: int, dnr: bool = False) -> int:
    """The CQE status field (phase bit 0 unused on fabrics) for an (SCT<<8|SC) code."""
    return ((sc & 0x7FF) << 1) | (STATUS_DNR if dnr else 0)


def status_code(word: int) -> int:
    """(SCT<<8|SC) from a CQE status field."""
    return (word >> 1) & 0x7FF


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, f"status sct={code >> 8:#x} sc={code & 0xFF:#x}")


# --- Fabrics ------------------------------------------------------------------------------
# A fabrics command: the common fields it shares with every SQE, and FCTYPE at byte 4.
FABRICS_SQE = Layout(64, [
    ("opc", 0, "B"), ("fuse_psdt", 1, "B"), ("cid", 2, "H"), ("fctype", 4, "B"),
    ("sgl_addr", 24, "Q"), ("sgl_length", 32, "I"), ("sgl_id", 39, "B")])
FABRICS_FCTYPE = FABRICS_SQE.reader("fctype")
# The command-specific bytes 40..63 of Connect and of Property Get/Set (overlay a SQE).
CONNECT_SQE = Layout(64, [("recfmt", 40, "H"), ("qid", 42, "H"), ("sqsize", 44, "H"),
                          ("cattr", 46, "B"), ("kato", 48, "I")])
PROPERTY_SQE = Layout(64, [("attrib", 40, "B"), ("ofst", 44, "I"), ("value", 48, "Q")])
CONNECT_DATA = Layout(1024, [("hostid", 0, "16s"), ("cntlid", 16, "H"),
                             ("subnqn", 256, "256s"), ("hostnqn", 512, "256s")])
CONNECT_DATA_SIZE = CONNECT_DATA.size

PROP_CAP, PROP_VS, PROP_CC, PROP_CSTS = 0x00, 0x08, 0x14, 0x1C
CC_EN = 0x1
CC_SHN_MASK = 0x3 << 14
CSTS_RDY = 0x1
CSTS_CFS = 0x2
CSTS_SHST_COMPLETE = 0x2 << 2
NVME_VS_1_3 = 0x00010300

# --- Features -----------------------------------------------------------------------------
FEAT_ARBITRATION, FEAT_POWER_MGMT, FEAT_TEMP_THRESHOLD = 0x01, 0x02, 0x04
FEAT_ERROR_RECOVERY, FEAT_VOLATILE_WC, FEAT_NUM_QUEUES = 0x05, 0x06, 0x07
FEAT_IRQ_COALESCE, FEAT_IRQ_CONFIG, FEAT_WRITE_ATOMIC = 0x08, 0x09, 0x0A
FEAT_ASYNC_EVENT, FEAT_AUTO_PST, FEAT_TIMESTAMP, FEAT_KATO = 0x0B, 0x0C, 0x0E, 0x0F
FEAT_HOST_ID = 0x81

# --- Asynchronous events ----------------------------------------------------------------------
AER_TYPE_NOTICE = 0x2
AER_NOTICE_NS_ATTR_CHANGED = 0x00
AER_NOTICE_ANA_CHANGE = 0x03
AEC_NS_ATTR = 1 << 8     # Async Event Configuration / OAES bits
AEC_ANA_CHANGE = 1 << 11


def aer_dw0(info: int, log_page: int, event_type: int = AER_TYPE_NOTICE) -> int:
    return event_type | (info << 8) | (log_page << 16)


# --- Log pages ----------------------------------------------------------------------------
LOG_ERROR, LOG_SMART, LOG_FW_SLOT, LOG_CHANGED_NS = 0x01, 0x02, 0x03, 0x04
LOG_CMD_EFFECTS, LOG_ANA, LOG_DISCOVERY = 0x05, 0x0C, 0x70
ANA_STATE_CODES = {"optimized": 0x1, "non_optimized": 0x2, "inaccessible": 0x3,
                   "persistent_loss": 0x4, "change": 0xF}

# --- Identify -----------------------------------------------------------------------------
CNS_NAMESPACE, CNS_CONTROLLER, CNS_ACTIVE_NS_LIST, CNS_NS_DESC_LIST = 0x00, 0x01, 0x02, 0x03
CNS_CS_NAMESPACE, CNS_CS_CONTROLLER, CNS_CS_ACTIVE_NS_LIST = 0x05, 0x06, 0x07
NIDT_EUI64, NIDT_NGUID, NIDT_UUID, NIDT_CSI = 0x1, 0x2, 0x3, 0x4
CNTRLTYPE_IO, CNTRLTYPE_DISCOVERY = 1, 2
IDENTIFY_SIZE = 4096
MDTS = 5                      # maximum data transfer: 2^MDTS pages of 4 KiB
MAX_TRANSFER = 4096 << MDTS


def _ascii(text: str, size: int) -> bytes:
    """Space-padded ASCII, as Identify wants for SN, MN and FR."""
    return text.encode("ascii", "replace")[:size].ljust(size, b" ")


def _nqn(text: str) -> bytes:
    return text.encode()[:255].ljust(256, b"\0")


# Identify Controller (CNS 01h), the fields a fabrics controller reports or a host reads.
IDENTIFY_CONTROLLER = Layout(IDENTIFY_SIZE, [
    ("vid", 0, "H"), ("ssvid", 2, "H"), ("sn", 4, "20s"), ("mn", 24, "40s"),
    ("fr", 64, "8s"), ("rab", 72, "B"), ("ieee", 73, "3s"), ("cmic", 76, "B"),
    ("mdts", 77, "B"), ("cntlid", 78, "H"), ("ver", 80, "I"), ("oaes", 92, "I"),
    ("cntrltype", 111, "B"),
    ("acl", 258, "B"), ("aerl", 259, "B"), ("frmw", 260, "B"), ("lpa", 261, "B"),
    ("elpe", 262, "B"), ("npss", 263, "B"), ("kas", 320, "H"),
    ("anatt", 342, "B"), ("anacap", 343, "B"), ("anagrpmax", 344, "I"),
    ("nanagrpid", 348, "I"),
    ("sqes", 512, "B"), ("cqes", 513, "B"), ("maxcmd", 514, "H"), ("nn", 516, "I"),
    ("oncs", 520, "H"), ("fuses", 522, "H"), ("fna", 524, "B"), ("vwc", 525, "B"),
    ("sgls", 536, "I"), ("mnan", 540, "I"), ("subnqn", 768, "256s"),
    ("ioccsz", 1792, "I"), ("iorcsz", 1796, "I"), ("icdoff", 1800, "H"),
    ("fcatt", 1802, "B"), ("msdbd", 1803, "B")])
# Identify Namespace (CNS 00h) with its first LBA format (the only one we report).
IDENTIFY_NAMESPACE = Layout(IDENTIFY_SIZE, [
    ("nsze", 0, "Q"), ("ncap", 8, "Q"), ("nuse", 16, "Q"), ("nsfeat", 24, "B"),
    ("nlbaf", 25, "B"), ("flbas", 26, "B"), ("mc", 27, "B"), ("dpc", 28, "B"),
    ("dps", 29, "B"), ("nmic", 30, "B"), ("rescap", 31, "B"), ("fpi", 32, "B"),
    ("dlfeat", 33, "B"), ("anagrpid", 92, "I"), ("nguid", 104, "16s"),
    ("eui64", 120, "8s"), ("lbaf0_ms", 128, "H"), ("lbaf0_lbads", 130, "B"),
    ("lbaf0_rp", 131, "B")])
LBA_FORMAT = Layout(4, [("ms", 0, "H"), ("lbads", 2, "B"), ("rp", 3, "B")])
LBAF_OFFSET = IDENTIFY_NAMESPACE.offset("lbaf0_ms")


def identify_controller(*, cntlid: int, serial: str, model: str, firmware: str, subnqn: str,
                        mqes: int, nn: int, kas: int, cntrltype: int, ioccsz_bytes: int,
                        ana_reporting: bool, anagrpmax: int, mdts: int = MDTS) -> bytes:
    """Identify Controller (CNS 01h) for a fabrics controller."""
    ana = {"anatt": 10,   # seconds
           # reports optimized/non-optimized/inaccessible/persistent loss/change;
           # ANAGRPID not changed while attached
           "anacap": 0x1F | 0x40, "anagrpmax": anagrpmax, "nanagrpid": anagrpmax,
           # SPDK (ctrlr.c) sets MNAN with ANA reporting; Linux refuses ANA without it
           "mnan": anagrpmax} if ana_reporting else {}
    return bytes(IDENTIFY_CONTROLLER.build(
        vid=0x1B36, ssvid=0x1B36, sn=_ascii(serial, 20), mn=_ascii(model, 40),
        fr=_ascii(firmware, 8), rab=6,
        cmic=0x0B if ana_reporting else 0x02,   # multi-controller, ANA reporting
        mdts=mdts, cntlid=cntlid, ver=NVME_VS_1_3,
        oaes=AEC_NS_ATTR | (AEC_ANA_CHANGE if ana_reporting else 0), cntrltype=cntrltype,
        acl=3, aerl=3,            # 0-based
        frmw=0x03,                # slot 1 read-only
        lpa=0x06,                 # command effects log, extended data for Get Log Page
        elpe=63, npss=0, kas=kas, **ana,
        sqes=0x66, cqes=0x44, maxcmd=mqes + 1, nn=nn,
        oncs=0x000C,              # Dataset Management, Write Zeroes
        fuses=0, fna=0, vwc=0x01,  # volatile write cache present
        sgls=0x00100005,          # keyed/unkeyed data blocks, offsets, transport blocks
        subnqn=_nqn(subnqn), ioccsz=ioccsz_bytes // 16, iorcsz=1, icdoff=0, fcatt=0,
        msdbd=1))


def identify_namespace(*, nsze: int, lbads: int, nguid: str | None, eui64: str | None,
                       anagrpid: int, shared: bool = True) -> bytes:
    """Identify Namespace (CNS 00h): one LBA format, deallocated blocks read as zeroes."""
    return bytes(IDENTIFY_NAMESPACE.build(
        nsze=nsze, ncap=nsze, nuse=nsze,
        nsfeat=0x00,              # no thin provisioning, no deallocated-error support
        nmic=1 if shared else 0,
        dlfeat=0x01,              # deallocated blocks read as zeroes
        anagrpid=anagrpid, nguid=bytes.fromhex(nguid) if nguid else b"",
        eui64=bytes.fromhex(eui64) if eui64 else b"", lbaf0_lbads=lbads))


# A Namespace Identification Descriptor's header; NIDL bytes of NID follow it.
NS_DESC = Layout(4, [("nidt", 0, "B"), ("nidl", 1, "B")])


def ns_descriptors(*, uuid: str | None, nguid: str | None, eui64: str | None) -> bytes:
    """Namespace Identification Descriptor list (CNS 03h)."""
    ids = [(NIDT_EUI64, bytes.fromhex(eui64) if eui64 else b""),
           (NIDT_NGUID, bytes.fromhex(nguid) if nguid else b""),
           (NIDT_UUID, uuidlib.UUID(uuid).bytes if uuid else b""),
           (NIDT_CSI, b"\0")]                          # the NVM command set
    out = b"".join(NS_DESC.pack(nidt, len(nid)) + nid for nidt, nid in ids if nid)
    return out.ljust(IDENTIFY_SIZE, b"\0")


def ns_list(nsids: Iterable[int], above: int = 0) -> bytes:
    """Active namespace list (CNS 02h): ids greater than ``above``, ascending, 1024 max."""
    ids = sorted(n for n in nsids if n > above)[:1024]
    return struct.pack(f"<{len(ids)}I", *ids).ljust(IDENTIFY_SIZE, b"\0")


def parse_ns_list(data: bytes) -> list[int]:
    """The namespace ids of an active namespace list (CNS 02h), without the zeroes."""
    ids = struct.unpack_from(f"<{IDENTIFY_SIZE // 4}I", data)
    return [i for i in ids if i]


def parse_ns_descriptors(data: bytes) -> dict[int, bytes]:
    """NIDT -> NID from a CNS 03h list (used by the initiator and tests)."""
    out, pos = {}, 0
    while pos + NS_DESC.size <= len(data):
        nidt, nidl = NS_DESC.unpack_from(data, pos)
        if nidt == 0:
            break
        pos += NS_DESC.size
        out[nidt] = bytes(data[pos:pos + nidl])
        pos += nidl
    return out


SMART_LOG = Layout(512, [("critical_warning", 0, "B"), ("composite_temperature", 1, "H"),
                         ("avail_spare", 3, "B"), ("avail_spare_threshold", 4, "B")])
FW_SLOT_LOG = Layout(512, [("afi", 0, "B"), ("frs1", 8, "8s")])


def smart_log() -> bytes:
    """SMART / Health Information: healthy, 25 degC, nothing used up."""
    return bytes(SMART_LOG.build(composite_temperature=298, avail_spare=100,
                                 avail_spare_threshold=10))


def firmware_slot_log(firmware: str) -> bytes:
    return bytes(FW_SLOT_LOG.build(afi=0x01,       # slot 1 active
                                   frs1=_ascii(firmware, 8)))


def changed_ns_log(nsids: Iterable[int]) -> bytes:
    ids = sorted(set(nsids))
    if len(ids) > 1023:
        ids = [0xFFFFFFFF]   # more than fit: the spec's "scan everything" marker
    return struct.pack(f"<{len(ids)}I", *ids).ljust(4096, b"\0")


def cmd_effects_log(admin: Iterable[int], io: Iterable[int]) -> bytes:
    """Commands Supported and Effects: CSUPP for each supported opcode, LBCC for writes."""
    buf = bytearray(4096)
    for op in admin:
        struct.pack_into("<I", buf, op * 4, 0x1)
    for op in io:
        lbcc = 0x2 if op in (NVM_WRITE, NVM_WRITE_ZEROES, NVM_DSM) else 0
        struct.pack_into("<I", buf, 1024 + op * 4, 0x1 | lbcc)
    return bytes(buf)


ANA_HDR = Layout(16, [("chgcnt", 0, "Q"), ("ngrps", 8, "H")])
ANA_GROUP = Layout(32, [("anagrpid", 0, "I"), ("nnsid", 4, "I"), ("chgcnt", 8, "Q"),
                        ("anas", 16, "B")])


def ana_log(chgcnt: int, groups: list[tuple[int, int, list[int]]], rgo: bool = False) -> bytes:
    """ANA log: ``groups`` is [(anagrpid, state code, nsids)], ascending by group."""
    out = bytearray(ANA_HDR.pack(chgcnt, len(groups)))
    for grp, state, nsids in groups:
        ids = [] if rgo else nsids
        out += ANA_GROUP.pack(grp, len(ids), chgcnt, state)
        out += struct.pack(f"<{len(ids)}I", *ids)
    return bytes(out)


def parse_ana_log(data: bytes) -> tuple[int, dict[int, tuple[int, list[int]]]]:
    chgcnt, ngrps = ANA_HDR.unpack_from(data, 0)
    pos, groups = ANA_HDR.size, {}
    for _ in range(ngrps):
        grp, nnsid, _, state = ANA_GROUP.unpack_from(data, pos)
        pos += ANA_GROUP.size
        groups[grp] = (state, list(struct.unpack_from(f"<{nnsid}I", data, pos)))
        pos += 4 * nnsid
    return chgcnt, groups


# --- Discovery log page -------------------------------------------------------------------
DISC_HDR = Layout(1024, [("genctr", 0, "Q"), ("numrec", 8, "Q"), ("recfmt", 16, "H")])
DISC_ENTRY = Layout(1024, [
    ("trtype", 0, "B"), ("adrfam", 1, "B"), ("subtype", 2, "B"), ("treq", 3, "B"),
    ("portid", 4, "H"), ("cntlid", 6, "H"), ("asqsz", 8, "H"), ("eflags", 10, "H"),
    ("trsvcid", 32, "32s"), ("subnqn", 256, "256s"), ("traddr", 512, "256s"),
    ("tsas_sectype", 768, "B")])
TRTYPE_TCP = 3
ADRFAM_CODES = {"IPv4": 1, "IPv6": 2}
SUBTYPE_REFERRAL, SUBTYPE_NVME, SUBTYPE_CURRENT_DISCOVERY = 1, 2, 3


def discovery_entry(*, subtype: int, portid: int, trsvcid: str, subnqn: str, traddr: str,
                    adrfam: str = "IPv4", treq: int = 0x2) -> bytes:
    """One 1024-byte entry: TRTYPE, ADRFAM, SUBTYPE, TREQ, PORTID, CNTLID (FFFFh: dynamic),
    ASQSZ, EFLAGS, TRSVCID, SUBNQN, TRADDR, TSAS (SECTYPE none)."""
    return DISC_ENTRY.pack(TRTYPE_TCP, ADRFAM_CODES.get(adrfam, 1), subtype, treq, portid,
                           0xFFFF, 32, 0, trsvcid.encode().ljust(32, b" "),
                           _nqn(subnqn), traddr.encode().ljust(256, b" "), 0)


def discovery_log(genctr: int, entries: list[bytes]) -> bytes:
    return DISC_HDR.pack(genctr, len(entries), 0) + b"".join(entries)


def parse_discovery_log(data: bytes) -> tuple[int, list[dict[str, object]]]:
    genctr, numrec, _ = DISC_HDR.unpack_from(data, 0)
    out: list[dict[str, object]] = []
    for i in range(numrec):
        off = 1024 + i * 1024
        if off + 1024 > len(data):
            break
        (trtype, adrfam, subtype, treq, portid, cntlid, asqsz, _, trsvcid, subnqn, traddr,
         _) = DISC_ENTRY.unpack_from(data, off)
        out.append({"trtype": trtype, "adrfam": adrfam, "subtype": subtype, "treq": treq,
                    "portid": portid, "cntlid": cntlid, "asqsz": asqsz,
                    "trsvcid": trsvcid.decode().strip(" \0"),
                    "subnqn": subnqn.rstrip(b"\0").decode(),
                    "traddr": traddr.decode().strip(" \0")})
    return genctr, out


def parse_identify_controller(data: bytes) -> dict[str, object]:
    """The Identify Controller fields hosts and tests look at."""
    f = IDENTIFY_CONTROLLER.get(data)
    out: dict[str, object] = {k: f[k] for k in (
        "vid", "ssvid", "cmic", "mdts", "cntlid", "ver", "oaes", "cntrltype", "kas", "sqes",
        "cqes", "maxcmd", "nn", "oncs", "ioccsz", "iorcsz", "anagrpmax", "nanagrpid")}
    out.update(sn=f["sn"].decode().rstrip(), mn=f["mn"].decode().rstrip(),
               fr=f["fr"].decode().rstrip(), subnqn=f["subnqn"].rstrip(b"\0").decode())
    return out


def parse_identify_namespace(data: bytes) -> dict[str, object]:
    f = IDENTIFY_NAMESPACE.get(data)
    lbaf = LBA_FORMAT.get(data, LBAF_OFFSET + LBA_FORMAT.size * (f["flbas"] & 0xF))
    out: dict[str, object] = {k: f[k] for k in (
        "nsze", "ncap", "nuse", "nsfeat", "nlbaf", "flbas", "anagrpid", "nmic", "dlfeat")}
    out.update(nguid=f["nguid"].hex().upper(), eui64=f["eui64"].hex(),
               block_size=1 << lbaf["lbads"] if lbaf["lbads"] else 0)
    return out
