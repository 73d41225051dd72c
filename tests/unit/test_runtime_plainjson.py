"""labkit.runtime.plainjson writes what json.dumps writes, for every document (the runtime's `state`
output and --log lines are read by containerd's shim and by json.loads in notebook 41)."""
from __future__ import annotations

import json

import pytest

from labkit.runtime import plainjson

DOCUMENTS = [
    {"ociVersion": "1.0.2", "id": "4f2a", "pid": 1234, "status": "running", "bundle": "/run/b",
     "rootfs": "/run/b/rootfs", "created": "2026-11-29T10:00:00.000000000Z", "owner": "", "annotations": {}},
    {"level": "info", "msg": "start 4f2a", "time": "2026-11-29T10:00:00.1Z"},
    {"nested": {"a": [1, 2, {"b": None}], "t": True, "f": False, "e": []}},
    [3, 1, 2], [], {}, "plain", 0, -7,
    {"msg": 'a "quoted" \\ path'}, {"msg": "tab\there"}, {"msg": "caf\u00e9"}, {"x": 1.5}, {1: "int key"},
]


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("indent", [None, 2])
def test_the_text_is_json_dumps_text(document, indent):
    assert plainjson.dumps(document, indent=indent) == json.dumps(document, indent=indent)
