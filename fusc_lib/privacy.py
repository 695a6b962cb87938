"""Identifiers that must never be stored in clear (patient IDs, study UIDs) become salted hashes.

The salt is per workdir (or `FUSC_ID_SALT` to share one across workdirs), so hashes link scans of
one patient inside an archive without being reversible by a dictionary of known IDs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

SALT_ENV = "FUSC_ID_SALT"


def new_salt() -> str:
    return secrets.token_hex(16)


def resolve_salt(stored: str | None) -> str:
    """The environment's salt when set, else the workdir's stored salt, else a fresh one."""
    return os.environ.get(SALT_ENV) or stored or new_salt()


def hash_identifier(value: str | None, salt: str) -> str | None:
    """HMAC-SHA256 of an identifier, shortened to 32 hex digits; None stays None."""
    if not value:
        return None
    return hmac.new(salt.encode(), value.strip().encode(), hashlib.sha256).hexdigest()[:32]
