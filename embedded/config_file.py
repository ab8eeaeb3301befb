"""The ``-c/--json`` file: read and checked before the target starts or says it is ready.

nvmf_tgt refuses to start on a configuration file it cannot use, and so does the embedded
target, in both modes and with one line that says why: the keeper checks the file before
it takes the RPC socket, so a crash-transparent target never says "ready" and then loses
worker after worker to a file that could never load. Only the standard library is used
here, as the keeper loads this module.

What is checked is the structure spdk_format.load_config walks (a save_config document:
an object whose ``subsystems`` is a list of objects, each with a ``config`` list of
objects naming a ``method``); whether each call succeeds is load_config's business.
"""
from __future__ import annotations

import json
from typing import Any


class ConfigFileError(Exception):
    """The configuration file cannot be used; the message is one line for the user."""


def read_config(path: str) -> dict[str, Any]:
    """The save_config document in ``path``; ConfigFileError if it is missing,
    unreadable, not JSON or not shaped like a save_config document."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: "
                              f"{exc.strerror or exc}") from None
    try:
        doc = json.loads(data)
    except ValueError as exc:   # JSONDecodeError, or bytes that are no Unicode at all
        raise ConfigFileError(f"config file {path} is not JSON: {exc}") from None
    problem = _shape_problem(doc)
    if problem:
        raise ConfigFileError(f"config file {path} is not a save_config document: "
                              f"{problem}")
    return doc


def _shape_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"the top level is {_kind(doc)}, not an object"
    subsystems = doc.get("subsystems", [])
    if not isinstance(subsystems, list):
        return f'"subsystems" is {_kind(subsystems)}, not a list'
    for i, sub in enumerate(subsystems):
        if not isinstance(sub, dict):
            return f"subsystems[{i}] is {_kind(sub)}, not an object"
        config = sub.get("config") or []
        if not isinstance(config, list):
            return f'subsystems[{i}]["config"] is {_kind(config)}, not a list'
        for j, entry in enumerate(config):
            where = f'subsystems[{i}]["config"][{j}]'
            if not isinstance(entry, dict):
                return f"{where} is {_kind(entry)}, not an object"
            if not isinstance(entry.get("method", ""), str):
                return f'{where}["method"] is {_kind(entry["method"])}, not a string'
    return None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
