"""Checksums of files: what identifies a weights file, a checkpoint or a features file by content."""

from __future__ import annotations

import hashlib


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
