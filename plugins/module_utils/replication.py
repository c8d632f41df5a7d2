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

import re
from typing import Any, Dict, List, Optional

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


# Streaming replication as the postgresql role sets it up: PostgreSQL's own pg_basebackup and a physical slot.
REPLICATION_USER = "fediscale_replication"
# What the role writes beside a replica's settings, and where Debian keeps cluster "main" (pg_createcluster).
STANDBY_SETTINGS = ("primary_conninfo", "primary_slot_name")
COPY_SUFFIX = ".fediscale-copy"


def config_directory(version: int) -> str:
    return "/etc/postgresql/%d/main" % version


def data_directory(version: int) -> str:
    return "/var/lib/postgresql/%d/main" % version


def passfile(version: int) -> str:
    """The replica's libpq password file (mode 0600, the postgres user's): primary_conninfo names it, and
    pg_basebackup reads it, so the replication password is in no setting and no command line."""
    return config_directory(version) + "/replication.pgpass"


def slot_name(host: str) -> str:
    """The physical slot on the primary for the replica ``host``: its name, as PostgreSQL allows slot names
    (lower-case letters, digits and underscores, at most 63)."""
    return re.sub(r"[^a-z0-9_]", "_", host.lower())[:63]


def standby_settings(primary: Dict[str, Any], replica: Dict[str, Any], sslmode: Optional[str],
                     ca_file: str) -> Dict[str, str]:
    """``primary_conninfo`` and ``primary_slot_name`` of a replica (both reloadable since PostgreSQL 13)."""
    conninfo = ["host=%s" % primary["address"], "port=%d" % primary.get("port", 5432),
                "user=%s" % REPLICATION_USER, "passfile=%s" % passfile(replica["version"]),
                "application_name=%s" % slot_name(replica["host"])]
    if sslmode is not None:
        conninfo.append("sslmode=%s" % sslmode)
        if sslmode in ("verify-ca", "verify-full"):
            conninfo.append("sslrootcert=%s" % ca_file)
    return {"primary_conninfo": " ".join(conninfo), "primary_slot_name": slot_name(replica["host"])}


# The first OID a database created after initdb can have (FirstNormalObjectId, src/include/access/transam.h):
# base/ of an empty cluster holds only template1, template0 and postgres, below it.
FIRST_NORMAL_OID = 16384
# pg_controldata's "Database cluster state" of a standby, running or stopped (src/bin/pg_controldata).
RECOVERY_STATES = ("in archive recovery", "shut down in recovery")


def parse_controldata(text: str) -> Dict[str, Optional[str]]:
    """The system identifier and the cluster state from ``pg_controldata``'s output (run with LC_ALL=C)."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    value = {key.strip(): item.strip() for key, item in fields.items()}
    return {"system_identifier": value.get("Database system identifier"),
            "state": value.get("Database cluster state")}


def controldata_in_recovery(state: Optional[str]) -> bool:
    return state in RECOVERY_STATES


def user_database_directories(names: List[str]) -> List[str]:
    """The directories of ``base/`` that hold a database besides postgres and the templates."""
    return sorted("base/" + name for name in names if name.isdigit() and int(name) >= FIRST_NORMAL_OID)


# What standby_decision finds on each side, and what the role then does.
KEEP, COPY, COPY_AGAIN, REFUSE = "keep", "copy", "copy again", "refuse"


def standby_decision(replica_host: str, found: Dict[str, Any], primary_host: str,
                     primary: Dict[str, Any]) -> Dict[str, Any]:
    """Whether the replica's data directory may be replaced by a copy of the primary.

    ``found`` is what the replica's cluster holds (``version``, ``data_directory``, ``in_recovery``,
    ``system_identifier``, ``databases``: those besides postgres and the templates, by name or directory, and
    ``copy_unfinished``: the copy directory is there, which the copy's last step renames away);
    ``primary`` what the primary reports (``system_identifier``, None before it has a cluster, and
    ``slot_status``: the slot's ``wal_status``, None when there is none). Only an empty primary (Debian's
    package creates one at install) and a standby of this primary that cannot go on (its slot invalidated or
    gone) are replaced; data of any other kind never is.
    """
    slot = slot_name(replica_host)
    where = "host %s, postgresql replica: " % replica_host
    drop = ("if it is not needed, remove it as root (pg_dropcluster --stop %s main; pg_createcluster %s main) and "
            "run again; if it is, take %s out of group db" % (found["version"], found["version"], replica_host))
    if not found["in_recovery"]:
        if found["databases"]:
            return {"action": REFUSE, "message": where + (
                "%s is a primary (not in recovery) holding %d database%s besides postgres and the templates "
                "(%s); the role copies %s only over an empty cluster and never over data. Nothing was changed. "
                "Keep that data elsewhere first, then: %s."
                % (found["data_directory"], len(found["databases"]), "" if len(found["databases"]) == 1 else "s",
                   ", ".join(sorted(found["databases"])), primary_host, drop))}
        return {"action": COPY, "message": where + (
            "%s is an empty cluster (no database but postgres and the templates): it is replaced by a copy of %s."
            % (found["data_directory"], primary_host))}
    if str(found["system_identifier"]) != str(primary["system_identifier"]):
        return {"action": REFUSE, "message": where + (
            "%s is a standby of another primary (system identifier %s; %s's is %s), and the role never replaces "
            "one. Nothing was changed. If it should follow %s instead: %s."
            % (found["data_directory"], found["system_identifier"], primary_host,
               primary["system_identifier"] or "none: it has no cluster yet", primary_host, drop))}
    if found.get("copy_unfinished"):
        return {"action": COPY_AGAIN, "message": where + (
            "a copy of %s that an earlier run started did not finish (%s%s is still there): it is made again."
            % (primary_host, found["data_directory"], COPY_SUFFIX))}
    if primary.get("slot_status") == "lost":
        return {"action": COPY_AGAIN, "message": where + (
            "its slot %s on %s was invalidated (wal_status lost: the primary removed WAL past "
            "max_slot_wal_keep_size while the replica was away). The standby holds nothing %s lacks: it is "
            "copied again." % (slot, primary_host, primary_host))}
    if primary.get("slot_status") is None:
        return {"action": COPY_AGAIN, "message": where + (
            "its slot %s is gone from %s, so the WAL it needs may be too. The standby holds nothing %s lacks: "
            "it is copied again." % (slot, primary_host, primary_host))}
    return {"action": KEEP, "message": where + "a standby of %s through slot %s." % (primary_host, slot)}
