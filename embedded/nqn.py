"""NQN validity as SPDK judges it (lib/nvmf/subsystem.c, nvmf_nqn_is_valid).

SPDK accepts: the discovery NQN; "nqn.2014-08.org.nvmexpress:uuid:" followed by a
canonical UUID; or "nqn.yyyy-mm." + a reverse domain + ":" + a non-empty user string,
at most 223 bytes in all. Its domain check walks the labels up to the first ':' and has
quirks worth keeping, since matching SPDK means accepting what it accepts: the month is
any two digits ("2016-13" passes), a label may end in '.' just before the ':'
("io.spdk.:x" passes), and an empty domain ("nqn.2016-06.:x") passes.
"""
from __future__ import annotations

import re

from nvmf_phoenix.model import DISCOVERY_NQN

MIN_LEN, MAX_LEN = 11, 223
UUID_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"
UUID_FORM = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                       r"[0-9a-fA-F]{12}")
DATE = re.compile(r"nqn\.[0-9]{4}-[0-9]{2}\.")
LABEL_MAX = 63


def nqn_problem(nqn: str) -> str | None:
    """Why SPDK refuses ``nqn`` (its SPDK_ERRLOG reason), or None when it accepts it."""
    try:
        raw = nqn.encode()
    except UnicodeEncodeError:
        return f'Invalid NQN "{nqn!r}": not valid UTF-8'
    if len(raw) > MAX_LEN:
        return f'Invalid NQN "{nqn}": length {len(raw)} > max {MAX_LEN}'
    if len(raw) < MIN_LEN:
        return f'Invalid NQN "{nqn}": length {len(raw)} < min {MIN_LEN}'
    if nqn == DISCOVERY_NQN:
        return None
    if nqn.startswith(UUID_PREFIX):
        rest = nqn[len(UUID_PREFIX):]
        if len(rest) != 36 or not UUID_FORM.fullmatch(rest):
            return f'Invalid NQN "{nqn}": uuid is not the correct length or form'
        return None
    if not nqn.startswith("nqn."):
        return f'Invalid NQN "{nqn}": NQN must begin with "nqn.".'
    if not DATE.match(nqn):
        return f'Invalid date code in NQN "{nqn}"'
    end = nqn.find(":")
    if end < 0 or end >= len(nqn) - 1:
        return (f'Invalid NQN "{nqn}". NQN must contain user specified name with a ":" as '
                "a prefix.")
    return _domain_problem(nqn, nqn[12:end] if end > 12 else "")


def _domain_problem(nqn: str, domain: str) -> str | None:
    """SPDK's label state machine: a label starts with a letter, holds letters, digits
    and inner hyphens, and is at most 63 characters."""
    state, length = "letter", 0
    for i, c in enumerate(domain):
        if length > LABEL_MAX:
            return f'Invalid domain name in NQN "{nqn}". At least one Label is too long.'
        last = i == len(domain) - 1
        if state == "letter":
            if not (c.isascii() and c.isalpha()):
                return f'Invalid domain name in NQN "{nqn}". Label names must start with a letter.'
            state, length = "any", length + 1
        elif c.isascii() and c.isalnum():
            state, length = "any", length + 1
        elif c == "-":
            if last:
                return (f'Invalid domain name in NQN "{nqn}". Label names must end with an '
                        "alphanumeric symbol.")
            state, length = "ldh", length + 1
        elif c == "." and state == "any":
            state, length = "letter", 0
        elif c == ".":
            return (f'Invalid domain name in NQN "{nqn}". Label names must end with an '
                    "alphanumeric symbol.")
        else:
            return (f'Invalid domain name in NQN "{nqn}". Label names must contain only '
                    "[a-z,A-Z,0-9,'-','.'].")
    return None
