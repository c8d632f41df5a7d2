# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each Debian release the collection supports ships, and what Mastodon needs of it.

The plan's PostgreSQL, pgbouncer and Redis versions default to the host's
release (``mastodon_debian_version``); the roles check that the host runs that
release before they write a file. Sources: Debian's archive (packages.debian.org,
bookworm and trixie); Mastodon's release notes for 4.4 and 4.5.
"""

from __future__ import annotations

from typing import Dict, Optional

DEFAULT_RELEASE = 13
RELEASES = (13, 12)

SHIPPED: Dict[int, Dict[str, str]] = {
    12: {"postgresql": "15", "pgbouncer": "1.18", "redis": "7.0"},
    13: {"postgresql": "17", "pgbouncer": "1.24", "redis": "8.0", "valkey": "8.1"},
}

# Valkey forked Redis 7.2.4 and reports redis_version 7.2.4 to clients
# (its own version is valkey_version): to Mastodon and Sidekiq every Valkey
# is a Redis 7.2, which is what Mastodon's Redis floors are held against.
VALKEY_SPEAKS_REDIS = "7.2"

# Mastodon's floors, by the release that raised them: (Mastodon version, what, minimum, why).
FLOORS = (
    ("4.5", "postgresql", "14", "Mastodon 4.5 dropped PostgreSQL 13"),
    ("4.5", "redis", "7.0", "Sidekiq 8 (Mastodon 4.5) needs Redis 7.0"),
    ("4.4", "redis", "6.2", "Mastodon 4.4 dropped Redis before 6.2"),
)


def shipped(release: int, package: str) -> Optional[str]:
    """The version of ``package`` a Debian release ships; None when it ships none."""
    return SHIPPED[release].get(package)


def redis_protocol_version(server: str, version: str) -> str:
    """The Redis version a ``server`` (redis or valkey) of ``version`` is to its clients."""
    return version if server == "redis" else VALKEY_SPEAKS_REDIS
