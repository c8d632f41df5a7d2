# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL's connection capacity: the one definition the plan and the live checks share."""

from __future__ import annotations

# The compendium: over 90 % of max_connections is too close (a deploy's overlap or a migration is refused).
WARNING_LINE_PERCENT = 90


def warning_line(max_connections: int, percent: int = WARNING_LINE_PERCENT) -> int:
    """The most connections that stay at or below ``percent`` of max_connections."""
    return max_connections * percent // 100


def usable(max_connections: int, superuser_reserved_connections: int, reserved_connections: int = 0) -> int:
    """What non-superusers may open: max_connections less both reserves (reserved_connections: PostgreSQL 16+)."""
    return max_connections - superuser_reserved_connections - reserved_connections
