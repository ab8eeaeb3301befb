"""A thin etcd v3 client over etcd's JSON gateway (``/v3/...``), with requests.

etcd is where the checkpoint lives when more than one node may run a group's target
(recovery/etcd_store.py, recovery/ownership.py). Only what those need is here: range,
put, delete, a transaction with compares, leases (grant, keep-alive, revoke, time to
live) and watch, each a thin wrapper over one gateway endpoint, in the spirit of SPDK's
rpc wrappers. Keys and values are bytes on the wire (base64 in JSON); 64-bit numbers come
back as JSON strings and fields equal to zero or false are left out: :class:`KV` and the
helpers below normalise both once.

Several endpoints (the members of a cluster) may be given: a request goes to the member
that answered last and moves on to the next when one cannot be reached or has no leader,
so a dead member costs one timeout, not the cluster. :class:`EtcdUnavailable` says no
member could answer; :class:`EtcdError` carries etcd's own refusal.
"""
from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

DEFAULT_TIMEOUT = 2.0


class EtcdError(Exception):
    """etcd refused a request (the message is etcd's, with the endpoint and the path)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (network, a dead member, or a member without quorum)."""


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes | str) -> bytes:
    """The range end that makes a range request cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"                 # every key


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KV:
        return cls(unb64(d.get("key")), unb64(d.get("value")),
                   int(d.get("create_revision", 0)), int(d.get("mod_revision", 0)),
                   int(d.get("version", 0)), int(d.get("lease", 0)))


@dataclass(frozen=True)
class Endpoints:
    """Where the cluster is and the key prefix in it: ``etcd://H:P[,H:P...]/PREFIX``."""
    urls: tuple[str, ...]
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoints:
        parts = urlsplit(url)
        if parts.scheme not in ("etcd", "etcd+https"):
            raise ValueError(f"{url!r}: an etcd store is etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
        hosts = [h for h in parts.netloc.split(",") if h]
        if not hosts:
            raise ValueError(f"{url!r}: no etcd endpoint (etcd://HOST:PORT/PREFIX)")
        for h in hosts:
            if ":" not in h.rstrip("]"):
                raise ValueError(f"{url!r}: endpoint {h!r} has no port (etcd's is 2379)")
        prefix = parts.path.strip("/")
        if not prefix:
            raise ValueError(f"{url!r}: name a key prefix (etcd://HOST:PORT/PREFIX), so "
                             "several clusters of targets can share one etcd")
        scheme = "https" if parts.scheme == "etcd+https" else "http"
        return cls(tuple(f"{scheme}://{h}" for h in hosts), prefix)


# -- request bodies: one helper per kind of operation inside a transaction ---------------
def put_op(key: str | bytes, value: bytes | str, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: str | bytes, range_end: bytes | None = None) -> dict[str, Any]:
    body = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return {"request_delete_range": body}


def range_op(key: str | bytes, range_end: bytes | None = None) -> dict[str, Any]:
    body = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return {"request_range": body}


def compare(key: str | bytes, target: str, value: Any, result: str = "EQUAL") -> dict[str, Any]:
    """One txn compare: target is VALUE, MOD, CREATE, VERSION or LEASE (etcd's names)."""
    field = {"VALUE": "value", "MOD": "mod_revision", "CREATE": "create_revision",
             "VERSION": "version", "LEASE": "lease"}[target]
    wire = b64(value) if target == "VALUE" else str(int(value))
    return {"key": b64(key), "target": target, "result": result, field: wire}


@dataclass
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]

    def kvs(self, i: int) -> list[KV]:
        """The key-values of the ``i``-th operation, a range."""
        got = self.responses[i].get("response_range", {})
        return [KV.from_json(kv) for kv in got.get("kvs", [])]


class EtcdClient:
    """One session to a cluster; thread-safe (requests' Session is, per request)."""

    def __init__(self, urls: tuple[str, ...] | list[str], timeout: float = DEFAULT_TIMEOUT
                 ) -> None:
        if not urls:
            raise ValueError("no etcd endpoint")
        self.urls = list(urls)
        self.timeout = timeout
        self._current = 0
        self._lock = threading.Lock()
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def _post(self, path: str, body: dict[str, Any], timeout: float | None = None
              ) -> dict[str, Any]:
        """POST to the member that answered last, then to each other one."""
        errors = []
        with self._lock:
            start = self._current
        for i in range(len(self.urls)):
            idx = (start + i) % len(self.urls)
            url = self.urls[idx]
            try:
                r = self.session.post(url + path, data=json.dumps(body),
                                      timeout=timeout or self.timeout)
            except requests.RequestException as exc:
                errors.append(f"{url}: {type(exc).__name__}")
                continue
            doc = _json(r)
            if r.status_code != 200 or "error" in doc:
                msg = doc.get("message") or doc.get("error") or r.text[:200]
                if _retry_elsewhere(msg, r.status_code):
                    errors.append(f"{url}: {msg}")
                    continue
                raise EtcdError(f"etcd {url}{path}: {msg}")
            with self._lock:
                self._current = idx
            return doc
        raise EtcdUnavailable(f"etcd {path}: no member answered ({'; '.join(errors)})")

    # -- key-value ---------------------------------------------------------------------
    def get(self, key: str | bytes) -> KV | None:
        found = self.range(key)[1]
        return found[0] if found else None

    def range(self, key: str | bytes, range_end: bytes | None = None,
              revision: int = 0) -> tuple[int, list[KV]]:
        """(the cluster's revision, the key-values from key to range_end)."""
        body: dict[str, Any] = range_op(key, range_end)["request_range"]
        if revision:
            body["revision"] = str(revision)
        doc = self._post("/v3/kv/range", body)
        return _revision(doc), [KV.from_json(kv) for kv in doc.get("kvs", [])]

    def prefix(self, prefix: str | bytes) -> tuple[int, list[KV]]:
        return self.range(prefix, prefix_end(prefix))

    def put(self, key: str | bytes, value: bytes | str, lease: int = 0) -> int:
        return _revision(self._post("/v3/kv/put", put_op(key, value, lease)["request_put"]))

    def delete(self, key: str | bytes, range_end: bytes | None = None) -> int:
        doc = self._post("/v3/kv/deleterange",
                         delete_op(key, range_end)["request_delete_range"])
        return int(doc.get("deleted", 0))

    def txn(self, compares: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> TxnResult:
        doc = self._post("/v3/kv/txn", {"compare": compares, "success": success,
                                        "failure": failure or []})
        return TxnResult(bool(doc.get("succeeded", False)), _revision(doc),
                         doc.get("responses", []))

    # -- leases ------------------------------------------------------------------------
    def lease_grant(self, ttl: int) -> int:
        doc = self._post("/v3/lease/grant", {"TTL": str(ttl)})
        return int(doc["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns the TTL it now has (0: it had already expired)."""
        doc = self._post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(doc.get("result", doc).get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        try:
            self._post("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    def lease_ttl(self, lease: int) -> int:
        """Seconds left on ``lease``; -1 once it expired or was revoked."""
        doc = self._post("/v3/lease/timetolive", {"ID": str(lease)})
        return int(doc.get("TTL", -1))

    # -- watch -------------------------------------------------------------------------
    def watch(self, key: str | bytes, range_end: bytes | None = None, start_revision: int = 0,
              timeout: float = 30.0) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Yield (revision, events) for changes to the range, from ``start_revision``.

        Ends (returns) when the stream does: the member went away or ``timeout`` passed
        without a byte (the caller re-watches from the revision it last saw). Each event
        is etcd's: {"type": "PUT"|"DELETE", "kv": {...}}.
        """
        create: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        if start_revision:
            create["start_revision"] = str(start_revision)
        with self._lock:
            url = self.urls[self._current]
        try:
            with self.session.post(url + "/v3/watch", data=json.dumps({"create_request": create}),
                                   stream=True, timeout=(self.timeout, timeout)) as r:
                for line in r.iter_lines():
                    if not line:
                        continue
                    result = json.loads(line).get("result", {})
                    events = result.get("events", [])
                    if events:
                        yield _revision(result), events
        except (requests.RequestException, ValueError):
            with self._lock:
                self._current = (self._current + 1) % len(self.urls)
            return


def _json(r: requests.Response) -> dict[str, Any]:
    try:
        doc = r.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _revision(doc: dict[str, Any]) -> int:
    return int(doc.get("header", {}).get("revision", 0))


# Refusals another member may not give: this one lost its leader or is shutting down.
_ELSEWHERE = ("no leader", "leader changed", "timed out", "stopped", "not capable",
              "too many requests", "unhealthy")


def _retry_elsewhere(msg: str, status: int) -> bool:
    return status >= 500 and any(s in msg for s in _ELSEWHERE)
