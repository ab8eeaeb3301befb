"""Where nvmf-phoenix keeps a cluster's state in etcd: every key, declared once.

Under the user's prefix (``--store etcd://HOSTS/PREFIX``)::

    PREFIX/nodes/<node>                    {"node", "address", "slot", "since"}  under the
                                           node's lease: present while the node is alive
    PREFIX/slots/<slot>                    "<node>": a node's claim on a controller-ID
                                           range (persistent, so a node keeps its range)
    PREFIX/groups/<group>/owner            {"node", "epoch"} under the owner node's lease:
                                           the one node that serves the group optimized
    PREFIX/groups/<group>/epoch            "<n>": grows by one on every change of owner
    PREFIX/groups/<group>/head             {"seq", "base", "chunks", "tag"}: the newest
                                           committed seq and the whole state it builds on;
                                           every commit compares its mod revision (one
                                           writer wins)
    PREFIX/groups/<group>/state/<base>-<tag>/<i>
                                           chunk i of the whole state at seq ``base``
                                           written by the store tagged ``tag`` (zlib'd
                                           JSON; chunks keep each request under etcd's
                                           1.5 MiB request limit; the tag keeps two
                                           writers of the same seq off each other's keys)
    PREFIX/groups/<group>/changes/<seq>    one acknowledged change (changes.py operations)
                                           after ``base``; seq zero-padded to 20 digits

A group is the configuration one target process serves (one supervisor per node and
group). Values are JSON unless said otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SEQ_DIGITS = 20


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes) -> Any:
    return json.loads(raw)


@dataclass(frozen=True)
class ClusterKeys:
    prefix: str

    def node(self, node: str) -> str:
        return f"{self.prefix}/nodes/{node}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}/nodes/"

    def slot(self, slot: int) -> str:
        return f"{self.prefix}/slots/{slot}"

    @property
    def slots(self) -> str:
        return f"{self.prefix}/slots/"

    @property
    def groups(self) -> str:
        return f"{self.prefix}/groups/"

    def group(self, group: str) -> GroupKeys:
        return GroupKeys(f"{self.prefix}/groups/{group}")


@dataclass(frozen=True)
class GroupKeys:
    root: str

    @property
    def owner(self) -> str:
        return f"{self.root}/owner"

    @property
    def epoch(self) -> str:
        return f"{self.root}/epoch"

    @property
    def head(self) -> str:
        return f"{self.root}/head"

    def state_chunk(self, base: int, i: int, tag: str = "") -> str:
        return f"{self.state_of(base, tag)}{i:06d}"

    def state_of(self, base: int, tag: str = "") -> str:
        return f"{self.root}/state/{base:0{SEQ_DIGITS}d}{'-' + tag if tag else ''}/"

    @property
    def states(self) -> str:
        return f"{self.root}/state/"

    def change(self, seq: int) -> str:
        return f"{self.root}/changes/{seq:0{SEQ_DIGITS}d}"

    @property
    def changes(self) -> str:
        return f"{self.root}/changes/"

    @property
    def all(self) -> str:
        return f"{self.root}/"
