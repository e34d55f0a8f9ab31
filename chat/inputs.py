"""Bounds on what clients send: JSON we can parse (`parse_json`) and text we can store
(`check_text`). Every JSON body or frame goes through `parse_json`, which checks every string in
it; text from forms and query strings goes through `check_text` in the domain rules.

Python's json module recurses once per nested array or object, so `[` repeated a few thousand
times raises RecursionError, which no caller expects. The nesting depth is therefore counted
before parsing, with regular expressions (strings removed, then everything but brackets), which
run in C over the text and cannot recurse. Our bodies nest a few levels deep; MAX_DEPTH leaves
room for a webhook payload's metadata.

PostgreSQL cannot store NUL in text (nor `\\u0000` in jsonb), and a lone surrogate (`\\ud800`
in JSON) is not a character at all: it cannot even be encoded as UTF-8. Both are refused with
the name of the field that holds them, since retrying cannot help.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

from chat.errors import ChatError

MAX_DEPTH = 32
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEPS = str.maketrans({"[": "+", "{": "+", "]": "-", "}": "-"})
# json.loads joins a surrogate pair into one character: any surrogate left is a lone one.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_text(value: str, field: str) -> str:
    """`value`, unless it holds a NUL character or a lone surrogate (ChatError `bad_text`)."""
    if _UNSTORABLE.search(value):
        raise ChatError(
            "bad_text",
            f"`{field}` holds a NUL character or a lone surrogate, which cannot be stored.",
            field=field,
        )
    return value


def nesting_depth(text: str) -> int:
    """How deep the arrays and objects of JSON `text` nest (brackets inside strings do not
    count); an upper bound for text that is not valid JSON."""
    steps = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_STEPS)
    return max(accumulate(1 if step == "+" else -1 for step in steps), default=0)


def parse_json(raw: str | bytes, *, max_bytes: int) -> object:
    """The value of JSON `raw`. ChatError `too_large` past `max_bytes`; `bad_json` when it is
    not UTF-8 JSON or nests deeper than MAX_DEPTH; `bad_text` when a string in it cannot be
    stored (`field` is its path, as `messages[0].content`)."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ChatError("too_large", f"The JSON is larger than {max_bytes:,} bytes.")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ChatError("bad_json", "The JSON is not UTF-8 text.") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise ChatError("bad_json", f"The JSON nests deeper than {MAX_DEPTH} levels.")
    try:
        value = json.loads(text)
    except ValueError:
        raise ChatError("bad_json", "The JSON is not valid.") from None
    _check_strings(value, "")
    return value


def _check_strings(value: object, path: str) -> None:
    """check_text on every key and string in `value` (recursive: the depth is bounded)."""
    if isinstance(value, str):
        check_text(value, path or "(the body)")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"a key in {path or 'the body'}")
            _check_strings(item, f"{path}.{key}" if path else key)
