"""Names that become file and folder names on someone else's disk: portable, and compared
the way case-insensitive file systems compare them.

A batch's SKUs and prompt names become archive folders and the CLI's download tree
(``OUT/{sku}/{prompt}/...``), which people unpack on macOS and Windows. There ``SKU-A`` and
``sku-a`` (or a composed and a decomposed ``é``) are one folder, so two such names would
overwrite each other; and ``CON``, ``a:b`` or ``x.`` cannot be created at all. The schema,
the api's distinct-name check and the CLI all apply the rule below, so it lives here.

Written out rather than taken from ``pathvalidate``: that library measured 25 µs a name here
(a quarter of a second on a 10,000-image batch, a quarter of the whole submit), accepts
``.`` and ``..``, and raises UnicodeEncodeError on a lone surrogate instead of refusing it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

MAX_NAME_BYTES = 255  # the common file-name limit (ext4, APFS, NTFS in UTF-16 is laxer)
NAME_RULE = (
    'a portable file name of 1-100 characters: no / \\ < > : " | ? * or control characters, '
    "not blank, not ending in a dot or a space, not a Windows device name (CON, PRN, AUX, "
    "NUL, COM1-9, LPT1-9, with or without an extension), at most 255 bytes of UTF-8"
)

# Windows refuses these characters in any file name; / and \ would make a subfolder.
_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
# Windows device names are reserved in every folder, whatever the case and whatever the
# extension ("nul.txt" and "NUL .tar.gz" are the device too). Superscript 1-3 count as
# digits there (Microsoft's "Naming Files, Paths, and Namespaces").
_DEVICE_STEMS = frozenset({"CON", "PRN", "AUX", "NUL", "COM", "LPT"})  # a cheap first look
_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[1-9¹²³]|LPT[1-9¹²³]) *(\..*)?", re.I | re.S)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file name on every common system, or None when it can."""
    if not name.strip():
        return "is blank"
    if not name.isascii():  # ASCII (the usual sku): one byte a character, nothing to encode
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            return "is not valid Unicode (it holds a lone surrogate, half of an emoji)"
        if size > MAX_NAME_BYTES:
            return f"is {size} bytes of UTF-8; a file name holds at most {MAX_NAME_BYTES}"
    elif len(name) > MAX_NAME_BYTES:
        return f"is {len(name)} bytes of UTF-8; a file name holds at most {MAX_NAME_BYTES}"
    if found := _FORBIDDEN.search(name):
        return f"contains {found.group()!r}, which Windows or a path would not keep"
    if name[-1] in ". ":
        return "ends in a dot or a space, which Windows drops"
    if name[:3].upper() in _DEVICE_STEMS and _RESERVED.fullmatch(name):
        return "is a Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    return None


def is_portable(name: str) -> bool:
    """Whether ``name`` can be a file name on every common system."""
    return name_problem(name) is None


def name_key(name: str) -> str:
    """What a case-insensitive, normalisation-insensitive disk (macOS, Windows) compares:
    two names with one key are one file there."""
    # Unicode's canonical caseless match: NFD before case folding, one form after.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def first_collision(names: Sequence[str]) -> tuple[int, int] | None:
    """The positions (earlier, later) of the first two names that are one file on such a
    disk, or None when all are distinct there."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        first = seen.setdefault(name_key(name), i)
        if first != i:
            return first, i
    return None
