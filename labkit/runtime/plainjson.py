"""json.dumps for the runtime's small documents, without importing json when it is not needed.

`labkit-runtime state` prints the OCI state, and every verb writes a --log line in JSON. Importing
the json package (which compiles its regular expressions) costs about 6 ms of CPU - most of what
`state` costs beyond Python's own start. These documents hold ids, paths, time stamps and numbers:
strings that need no escaping. For such a document `dumps` writes the text itself, exactly as
json.dumps would; any string that would need escaping (a quote, a backslash, a control or non-ASCII
character) hands the whole document to the json module.
"""
from __future__ import annotations


class _NeedsJson(Exception):
    pass


def _plain(text: str) -> str:
    if not (text.isascii() and text.isprintable()) or '"' in text or "\\" in text:
        raise _NeedsJson
    return f'"{text}"'


def _encode(value, indent: int | None, depth: int) -> str:
    if isinstance(value, str):
        return _plain(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (dict, list)) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _NeedsJson
        items = [f"{_plain(key)}: {_encode(item, indent, depth + 1)}" for key, item in value.items()]
        opening, closing = "{", "}"
    elif isinstance(value, list):
        items = [_encode(v, indent, depth + 1) for v in value]
        opening, closing = "[", "]"
    else:
        raise _NeedsJson                        # floats and anything else: json's own rules
    if indent is None:
        return opening + ", ".join(items) + closing
    inner, outer = "\n" + " " * (indent * (depth + 1)), "\n" + " " * (indent * depth)
    return opening + inner + ("," + inner).join(items) + outer + closing


def dumps(value, indent: int | None = None) -> str:
    """The same text as json.dumps(value, indent=indent)."""
    try:
        return _encode(value, indent, 0)
    except _NeedsJson:
        import json
        return json.dumps(value, indent=indent)
