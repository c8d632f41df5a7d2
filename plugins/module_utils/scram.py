# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SCRAM-SHA-256 secrets as PostgreSQL and pgbouncer store them (RFC 5802, RFC 7677).

    SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>

A secret is kept while it still verifies the password, so writing it is
idempotent; a new one gets a random salt, as PostgreSQL's own does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import Optional

ITERATIONS = 4096
SALT_BYTES = 16
SECRET_PATTERN = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def keys(password: str, salt: bytes, iterations: int) -> tuple:
    """(StoredKey, ServerKey) of a password. The password is used as given (no SASLprep)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    return stored_key, _hmac(salted, b"Server Key")


def secret(password: str, salt: Optional[bytes] = None, iterations: int = ITERATIONS) -> str:
    """A SCRAM-SHA-256 secret of ``password``; a random salt unless one is given."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    encoded = [base64.b64encode(part).decode("ascii") for part in (salt, *keys(password, salt, iterations))]
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, encoded[0], encoded[1], encoded[2])


def verifies(existing: Optional[str], password: str) -> bool:
    """Whether ``existing`` is a SCRAM-SHA-256 secret of ``password``."""
    match = SECRET_PATTERN.match(existing or "")
    if not match:
        return False
    iterations, salt, stored_key, server_key = match.groups()
    expected = keys(password, base64.b64decode(salt), int(iterations))
    return all(hmac.compare_digest(base64.b64decode(given), wanted)
               for given, wanted in zip((stored_key, server_key), expected))


def kept_or_new_secret(password: str, existing: Optional[str] = None) -> str:
    """``existing`` when it verifies ``password``, else a new secret."""
    return existing if existing and verifies(existing, password) else secret(password)
