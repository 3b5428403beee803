"""Content-addressed files: image bytes live on disk under the SHA-256 of their content.

A file's name is its hash (`ab/abcdef….png`), so writing the same bytes twice stores them once (a
variation's init image is the very PNG it varies), a name never points at different bytes, and
the database only holds short keys. Writes go to a temporary file in the same folder and are
renamed into place, so a crash never leaves a half-written file under a real name.

This is plain blocking file I/O; `Storage` calls it from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from engine.types import ImagineError

_KEY = re.compile(r"^([0-9a-f]{2})/(\1[0-9a-f]{62})\.([a-z0-9]{1,12})$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,12}$")


class MissingFile(ImagineError):
    """A stored key whose file is gone (the data directory was moved, pruned or restored partly)."""


def sniff_suffix(data: bytes) -> str:
    """A file suffix from the magic bytes of an uploaded image, `.bin` when unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    return ".bin"


class FileStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def key_for(self, data: bytes, suffix: str) -> str:
        if not _SUFFIX.match(suffix):
            raise ValueError(f"bad file suffix {suffix!r}")
        digest = hashlib.sha256(data).hexdigest()
        return f"{digest[:2]}/{digest}{suffix}"

    def path(self, key: str) -> Path:
        """Where `key` lives. Keys come from the database, so one that is not a hash name is refused
        rather than joined onto the data directory."""
        if not _KEY.match(key):
            raise ValueError(f"not a stored file key: {key!r}")
        return self.root / key

    def put(self, data: bytes, suffix: str) -> str:
        """Store `data` and return its key; bytes already stored are not written again."""
        key = self.key_for(data, suffix)
        target = self.path(key)
        try:
            if target.stat().st_size == len(data):
                return key
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise MissingFile(f"A stored image ({key}) is missing from the data directory.") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()
