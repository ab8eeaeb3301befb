"""SPDK-style parameter decoding: exact names, exact types, no extras.

SPDK decodes params with a table per method and answers any mismatch (unknown key,
missing key, wrong type) with -32602 "Invalid parameters". So do we, with the ``detail``
naming the offending key for our own logs and CLI.
"""
from __future__ import annotations

import ipaddress
import uuid as uuidlib
from typing import Any

from nvmf_phoenix.embedded.config_store import INTERNAL_ERROR, INVALID_PARAMS, invalid
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import ListenAddress

# A spec maps a parameter name to (accepted type or types, required).
Spec = dict[str, tuple[type | tuple[type, ...], bool]]


class U16(int):
    """Spec marker: an unsigned 16-bit integer (SPDK's spdk_json_decode_uint16)."""


class U32(int):
    """Spec marker: an unsigned 32-bit integer (spdk_json_decode_uint32)."""


class U64(int):
    """Spec marker: an unsigned 64-bit integer (spdk_json_decode_uint64)."""


WIDTH = {U16: 1 << 16, U32: 1 << 32, U64: 1 << 64}
DECODE_FAILED = "spdk_json_decode_object failed"


def decode(params: Any, spec: Spec, relaxed: bool = False) -> dict[str, Any]:
    """Check ``params`` against ``spec``; return only the keys given.

    ``relaxed`` ignores unknown keys, as SPDK does where a method passes its params on to
    a module (nvmf_create_transport hands transport options to the transport).
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise invalid("params must be an object")
    for key in params:
        if key not in spec and not relaxed:
            raise invalid(f"unknown parameter {key!r}")
    out: dict[str, Any] = {}
    for key, (types, required) in spec.items():
        if key not in params:
            if required:
                raise invalid(f"missing parameter {key!r}")
            continue
        value = params[key]
        if not _is(value, types):
            raise invalid(f"parameter {key!r} has the wrong type ({type(value).__name__})")
        out[key] = value
    return out


def decode_bdev(params: Any, spec: Spec) -> dict[str, Any]:
    """Decode for the bdev module methods (malloc, aio): SPDK answers any decode failure
    there with -32603 "spdk_json_decode_object failed", where nvmf methods say -32602."""
    try:
        return decode(params, spec)
    except TargetError as err:
        raise TargetError(INTERNAL_ERROR, DECODE_FAILED, err.detail) from None


def _is(value: Any, types: type | tuple[type, ...]) -> bool:
    """SPDK's decoders: a bool is never a number, and an unsigned field takes only
    integers that fit it (-1 or 2^40 for a uint32 is 'Invalid parameters')."""
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types
    for t in types:
        if t in WIDTH and isinstance(value, int):
            return 0 <= value < WIDTH[t]
    if isinstance(value, int) and int in types:
        return -(1 << 63) <= value < (1 << 64)
    return isinstance(value, tuple(t for t in types if t is not bool))


def no_params(params: Any, message: str = "Invalid parameters") -> None:
    """Refuse any params, an empty object too (SPDK tests ``params != NULL``);
    ``message`` is the method's own wording in SPDK."""
    if params is not None:
        raise TargetError(INVALID_PARAMS, message, "this method takes no parameters")


def not_found(detail: str) -> TargetError:
    return TargetError(-19, "No such device", detail)


ADDRESS_SPEC: Spec = {"trtype": (str, True), "adrfam": (str, False), "traddr": (str, True),
                      "trsvcid": (str, False), "subnqn": (str, False)}
# The one target the embedded process holds, named as nvmf_tgt names its default one.
TARGET_NAME = "nvmf_tgt"
# Address families SPDK knows (case-insensitive) and the IP version each means for TCP.
ADRFAMS = {"ipv4": 4, "ipv6": 6, "ib": None, "fc": None, "intra_host": None}


def listen_address(raw: Any) -> ListenAddress:
    """A TCP listen address as SPDK's nvmf RPCs take it: a known address family that
    fits the address (an IPv4 address under "ipv6" is refused), a literal IP address,
    and a port (TCP has no default one: trsvcid is required). Refusals: -32602."""
    p = decode(raw, ADDRESS_SPEC)
    if p["trtype"].upper() != "TCP":
        raise invalid(f"transport {p['trtype']} is not served by the embedded target")
    try:
        version = ipaddress.ip_address(p["traddr"]).version
    except ValueError:
        raise invalid(f"{p['traddr']!r} is not an IP address") from None
    fam = p.get("adrfam")
    if fam is not None and ADRFAMS.get(fam.lower(), 0) != version:
        raise invalid(f"address family {fam!r} does not exist or does not fit {p['traddr']}")
    port = p.get("trsvcid")
    if port is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise invalid(f"trsvcid {port!r} is not a TCP port")
    return ListenAddress.make(p["traddr"], port, "TCP", fam)


def check_target(tgt_name: str | None, message: str = "Unable to find a target.",
                 code: int = INTERNAL_ERROR) -> None:
    """Refuse a tgt_name other than the one target; each method has SPDK's own words."""
    if tgt_name is not None and tgt_name != TARGET_NAME:
        raise TargetError(code, message, f"no target named {tgt_name!r}: the embedded "
                          f"target holds one, {TARGET_NAME!r}")


def check_uuid(value: str | None, bdev: bool = False) -> str:
    """A uuid parameter in its canonical form ("" when not given); for bdevs a bad one is
    a decode failure (spdk_json_decode_uuid), for namespaces "Invalid parameters"."""
    if value is None:
        return ""
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        if bdev:
            raise TargetError(INTERNAL_ERROR, DECODE_FAILED, f"{value!r} is not a UUID"
                              ) from None
        raise invalid(f"{value!r} is not a UUID") from None
