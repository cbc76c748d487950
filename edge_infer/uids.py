"""UID hashing without pydicom: identify a UID in logs, paths and reports without revealing it."""

from __future__ import annotations

import hashlib


def uid_hash(uid: str) -> str:
    """First 16 hex digits of the sha256 of a UID: identifies it in logs without revealing it."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:16]
