"""`docker ps`: a container's state as dockerd names it, and which containers `--filter`s select."""
from __future__ import annotations

import re

from ..errors import InvalidValue, NotFound
from .requests import parse_json_body
from .state import Engine, Record

# A container's state as dockerd names it (inspect's State.Status, ps's State, `ps --filter status=`).
STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def state_name(record: Record) -> str:
    return "paused" if record.paused else "restarting" if record.restarting else record.status


def _matches(record: Record, key: str, value: str, images) -> bool:
    """One `docker ps --filter key=value`."""
    if key == "name":
        return re.search(value.lstrip("/"), record.name) is not None
    if key == "id":
        return record.id.startswith(value)
    if key == "status":
        return state_name(record) == value
    if key == "exited":
        return record.status == "exited" and record.exit_code == int(value)
    if key == "label":
        name, sep, wanted = value.partition("=")
        return name in record.spec.labels and (not sep or record.spec.labels[name] == wanted)
    try:                                                  # ancestor
        return images.find(value).id == record.image_id
    except NotFound:
        return False


def filter_values(values) -> "list[str]":
    """The values of one filter key, as the CLI sends them: {"v": true}, or the older ["v"] or "v"."""
    values = [v for v, on in values.items() if on] if isinstance(values, dict) else \
        (values if isinstance(values, list) else [values])
    return [str(v) for v in values]


def parse_filters(text: str) -> "dict[str, list[str]]":
    """`docker ps --filter`s, every key and value checked before any container is looked at (as dockerd
    does: a wrong filter is a 400 even when no container exists)."""
    filters = parse_json_body(text.encode()) if text else {}
    if not isinstance(filters, dict):
        raise InvalidValue("filters", text, 'a JSON object like {"status": ["exited"]}')
    checked = {}
    for key, values in filters.items():
        values = filter_values(values)
        if key not in ("name", "id", "status", "exited", "label", "ancestor"):
            raise InvalidValue("filter", key, "name, id, status, exited, label or ancestor")
        for value in values:
            if key == "status" and value not in STATES:
                raise InvalidValue("filter", f"status={value}", "a state: " + ", ".join(STATES))
            if key == "exited" and not re.fullmatch(r"[+-]?\d+", value):
                raise InvalidValue("filter", f"exited={value}", "an exit code (a whole number)")
        checked[key] = values
    return checked


def select(engine: Engine, filters_json: str, all: bool) -> "list[Record]":
    """The containers `docker ps [-a] --filter ...` lists."""
    filters = parse_filters(filters_json)
    # A status filter looks at stopped containers too, as dockerd's does (exited=N needs -a there).
    records = engine.list(all=all or "status" in filters)
    for key, values in filters.items():
        # Values of one key are alternatives; different keys must all match (as dockerd does).
        records = [r for r in records if any(_matches(r, key, v, engine.images) for v in values)]
    return records
