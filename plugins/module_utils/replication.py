# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A read replica: what a hot standby needs from its primary, and the settings both are written with.

A hot standby stops replaying WAL (and PostgreSQL will not start it) when one of ``HOT_STANDBY_SETTINGS`` is
below the primary's: the standby must hold every lock, prepared transaction, connection and worker the primary's
WAL may describe (PostgreSQL's documentation, "Hot Standby", administrator's overview). The primary serves each
replica a WAL sender and a slot, and ``pg_basebackup`` two more senders (the copy and its WAL stream) and a
temporary slot for the first copy. A slot keeps WAL for a replica that is down, without limit unless
``max_slot_wal_keep_size`` caps it below the free space of the primary's WAL disk.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import format_size_kb

# PostgreSQL's defaults for the settings a hot standby must match or exceed.
HOT_STANDBY_DEFAULTS = {"max_connections": 100, "max_worker_processes": 8, "max_wal_senders": 10,
                        "max_prepared_transactions": 0, "max_locks_per_transaction": 64}
HOT_STANDBY_SETTINGS = tuple(HOT_STANDBY_DEFAULTS)
# What pg_basebackup takes on the primary beyond the replicas' own.
BASEBACKUP_WAL_SENDERS = 2
BASEBACKUP_SLOTS = 2
# PostgreSQL's defaults for the other settings the plan may write.
REPLICATION_DEFAULTS = {"wal_level": "replica", "max_replication_slots": 10, "max_slot_wal_keep_size": None}
WAL_LEVELS = ("minimal", "replica", "logical")


def hot_standby_values(server: Dict[str, Any]) -> Dict[str, int]:
    """The values a server runs ``HOT_STANDBY_SETTINGS`` with: the plan's, PGTune's worker count, or the default."""
    values = {name: server.get(name) for name in HOT_STANDBY_SETTINGS}
    values["max_worker_processes"] = server["tuning"].get("max_worker_processes")
    return {name: HOT_STANDBY_DEFAULTS[name] if value is None else value for name, value in values.items()}


def replication_report(server: Dict[str, Any]) -> Dict[str, Any]:
    """What the rules judge of a server's replication settings."""
    return {
        "hot_standby": hot_standby_values(server),
        "wal_level": server["wal_level"],
        "max_replication_slots": server["max_replication_slots"],
        "max_slot_wal_keep_size_kb": server["max_slot_wal_keep_size"],
        "wal_disk_free_kb": server["wal_disk_free"],
    }


def replication_settings(server: Dict[str, Any]) -> Dict[str, Any]:
    """The settings the postgresql role writes beyond PGTune's: those that differ from PostgreSQL's defaults, and on
    a replica ``hot_standby`` and ``hot_standby_feedback`` (without it vacuum on the primary cancels long reads)."""
    settings: Dict[str, Any] = {}
    for name in ("max_wal_senders", "max_prepared_transactions", "max_locks_per_transaction"):
        if server[name] != HOT_STANDBY_DEFAULTS[name]:
            settings[name] = server[name]
    for name in ("wal_level", "max_replication_slots"):
        if server[name] != REPLICATION_DEFAULTS[name]:
            settings[name] = server[name]
    if server["max_slot_wal_keep_size"] is not None:
        settings["max_slot_wal_keep_size"] = format_size_kb(server["max_slot_wal_keep_size"])
    if server["role"] == "replica":
        settings.update(hot_standby="on", hot_standby_feedback="on")
    return settings


def wal_senders_needed(replicas: int) -> int:
    return replicas + BASEBACKUP_WAL_SENDERS


def slots_needed(replicas: int) -> int:
    return replicas + BASEBACKUP_SLOTS


def below_primary(primary: Dict[str, int], replica: Dict[str, int]) -> Dict[str, tuple]:
    """Each hot-standby setting where the replica is below the primary: ``{name: (primary's, replica's)}``."""
    return {name: (primary[name], replica[name]) for name in HOT_STANDBY_SETTINGS if replica[name] < primary[name]}


def wal_level_allows_replicas(wal_level: Optional[str]) -> bool:
    return WAL_LEVELS.index(wal_level or "replica") >= WAL_LEVELS.index("replica")
