# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judging a live cluster: the numbers PostgreSQL and pgbouncer report, against the plan.

Pure functions over plain data; the modules postgres_connections and
pgbouncer_pools read the numbers and call these. Thresholds follow the
compendium: above 90 % of max_connections is too close, more than 20 %
idle connections is waste, none idle behind pgbouncer means pgbouncer is
the bottleneck, many WALWrite waits mean the server is write-latency bound.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils.capacity import (
    WARNING_LINE_PERCENT, usable, warning_line)

IDLE_WARNING_PERCENT = 20
WAL_WRITE_WARNING_PERCENT = 20
MAXWAIT_WARNING_SECONDS = 1.0


def _finding(rule_id: str, severity: str, message: str, hint: str, **numbers: Any) -> Dict[str, Any]:
    return {"rule": rule_id, "severity": severity, "message": message, "hint": hint, "numbers": numbers}


def postgres_findings(stats: Dict[str, Any], planned_max_connections: Optional[int] = None,
                      planned_total: Optional[int] = None, behind_pgbouncer: bool = False,
                      utilisation_warning_percent: int = WARNING_LINE_PERCENT,
                      idle_warning_percent: int = IDLE_WARNING_PERCENT,
                      wal_write_warning_percent: int = WAL_WRITE_WARNING_PERCENT,
                      peak_connections: Optional[int] = None) -> List[Dict[str, Any]]:
    """Findings from ``stats``: max_connections, reserved slots, client connections by state, waits; with
    ``peak_connections`` (the most seen while watching), the plan is judged against that peak."""
    findings = []
    max_connections = stats["max_connections"]
    usable_now = usable(max_connections, stats["superuser_reserved_connections"], stats.get("reserved_connections", 0))
    states = stats["states"]
    connections = sum(states.values())
    idle = states.get("idle", 0)
    if planned_max_connections is not None and planned_max_connections != max_connections:
        findings.append(_finding(
            "live-max-connections-differs-from-plan", "error",
            "the server runs with max_connections %d, the plan assumed %d" % (max_connections, planned_max_connections),
            "set postgresql_max_connections to the live value and plan again, or apply the postgresql role",
            live=max_connections, planned=planned_max_connections))
    judged = connections if peak_connections is None else max(connections, peak_connections)
    if planned_total is not None and judged > planned_total:
        findings.append(_finding(
            "live-connections-over-plan", "error",
            "%d client connections %s, more than the %d the plan counts"
            % (judged, "are open" if peak_connections is None else "were open at the peak", planned_total),
            "find the unplanned clients in by_client (a process outside the inventory, a pool set in "
            ".env.production) and add them to the plan",
            live=judged, planned=planned_total))
    percent = 100.0 * connections / max_connections if max_connections else 0.0
    # The plan's line: over it is over the percentage (connections are whole numbers).
    if connections > warning_line(max_connections, utilisation_warning_percent):
        findings.append(_finding(
            "live-utilisation-over-warning-line", "warning",
            "%d of %d max_connections in use (%.1f %%), over %d %%"
            % (connections, max_connections, percent, utilisation_warning_percent),
            "a deploy's overlap or a migration may be refused: lower pools or raise max_connections",
            connections=connections, max_connections=max_connections, usable=usable_now))
    if connections and 100.0 * idle / connections > idle_warning_percent and not behind_pgbouncer:
        findings.append(_finding(
            "live-idle-over-threshold", "warning",
            "%d of %d connections are idle (%.1f %%), over %d %%"
            % (idle, connections, 100.0 * idle / connections, idle_warning_percent),
            "idle connections hold memory and slots: lower DB_POOL, or put pgbouncer in front",
            idle=idle, connections=connections))
    if behind_pgbouncer and connections and idle == 0:
        findings.append(_finding(
            "live-no-idle-behind-pgbouncer", "warning",
            "none of the %d connections behind pgbouncer is idle: every server connection is busy" % connections,
            "pgbouncer is the bottleneck: check cl_waiting in SHOW POOLS and raise its pool sizes if the plan "
            "has room", connections=connections))
    active = states.get("active", 0)
    wal_write = sum(row["count"] for row in stats["waits"] if row["wait_event"] == "WALWrite")
    if active and 100.0 * wal_write / active > wal_write_warning_percent:
        findings.append(_finding(
            "live-wal-write-bound", "warning",
            "%d of %d active connections wait on WALWrite" % (wal_write, active),
            "the server is write-latency bound; synchronous_commit = off would help at the cost of losing the "
            "last transactions on a crash (postgresql_synchronous_commit_off, opt-in only)",
            wal_write=wal_write, active=active))
    return findings


def _maxwait_seconds(pool: Dict[str, Any]) -> float:
    return int(pool["maxwait"]) + int(pool.get("maxwait_us", 0)) / 1000000.0


# SHOW POOLS columns of server connections in any state; a pool opens at most its size of them.
SERVER_STATES = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


def pool_clients(rows: List[Dict[str, Any]]) -> int:
    """Client connections in SHOW POOLS rows (``cl_active`` holds the idle ones too), the console's left out."""
    return sum(int(row["cl_active"]) + int(row["cl_waiting"]) for row in rows if row["database"] != "pgbouncer")


def pool_servers(rows: List[Dict[str, Any]]) -> int:
    """Server connections in SHOW POOLS rows, in every state."""
    return sum(int(row.get(name, 0)) for row in rows if row["database"] != "pgbouncer" for name in SERVER_STATES)


def add_up_pools(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per database/user pair from the SHOW POOLS rows of several pgbouncer processes.

    Client and server counts add up; the longest wait (``maxwait``, ``maxwait_us``) is the longest of any
    process; other columns (``pool_mode``) are the first process's.
    """
    totals: Dict[tuple, Dict[str, Any]] = {}
    for row in rows:
        key = (row["database"], row["user"])
        if key not in totals:
            totals[key] = {name: value for name, value in row.items() if name != "process"}
            continue
        total = totals[key]
        if _maxwait_seconds(row) > _maxwait_seconds(total):
            total["maxwait"], total["maxwait_us"] = row["maxwait"], row.get("maxwait_us", 0)
        for name, value in row.items():
            if name.startswith(("cl_", "sv_")) and isinstance(value, int):
                total[name] = total.get(name, 0) + value
    return list(totals.values())


def pgbouncer_findings(pools: List[Dict[str, Any]],
                       maxwait_warning_seconds: float = MAXWAIT_WARNING_SECONDS) -> List[Dict[str, Any]]:
    """Findings from SHOW POOLS rows (the admin console's own pool is left out); a row with a ``process``
    (the socket directory of one of several processes) names it."""
    findings = []
    for pool in pools:
        if pool["database"] == "pgbouncer":
            continue
        where = "%s/%s" % (pool["database"], pool["user"])
        if pool.get("process"):
            where += " (process at %s)" % pool["process"]
        if int(pool["cl_waiting"]) > 0:
            findings.append(_finding(
                "pgbouncer-clients-waiting", "warning",
                "%s: %d clients wait for a server connection (%d active)"
                % (where, int(pool["cl_waiting"]), int(pool["cl_active"])),
                "the pool is too small for the load: raise the pool sizes if the plan has room, or lower "
                "the processes' concurrency", pool=where, cl_waiting=int(pool["cl_waiting"])))
        maxwait = _maxwait_seconds(pool)
        if maxwait > maxwait_warning_seconds:
            findings.append(_finding(
                "pgbouncer-maxwait-over-threshold", "warning",
                "%s: the oldest waiting client has waited %.3f s (threshold %.3f s)"
                % (where, maxwait, maxwait_warning_seconds),
                "the pool is too small or PostgreSQL is slow: compare with the server's load",
                pool=where, maxwait=maxwait))
    return findings


# --- Sidekiq's queues, as Sidekiq's API reads them from Redis ---

# Mastodon's RedisLock waits for and expires its locks after 15 minutes: a job that waited longer in its queue
# fails with Mastodon::RaceConditionError and retries, and the retries pile up (the compendium's threshold).
SIDEKIQ_LATENCY_ERROR_SECONDS = 900
SIDEKIQ_LATENCY_WARNING_SECONDS = 60


def job_latency(job: Dict[str, Any], now: float) -> float:
    """Seconds since ``enqueued_at``, as Sidekiq::Queue#latency computes it: Sidekiq 8 writes integer epoch
    milliseconds, earlier releases float epoch seconds."""
    enqueued_at = job.get("enqueued_at")
    if enqueued_at is None:
        return 0.0
    if isinstance(enqueued_at, float):
        return max(now - enqueued_at, 0.0)
    return max(now - enqueued_at / 1000.0, 0.0)


def sidekiq_queue_rows(sizes: Dict[str, int], latencies: Dict[str, float], processes: List[Dict[str, Any]],
                       work: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per queue: its size and latency, the processes and threads that listen to it (their ``info``),
    and the threads busy with its jobs now (the processes' ``:work`` entries)."""
    rows = []
    for queue in sorted(set(sizes) | {name for process in processes for name in process["queues"]}):
        listening = [process for process in processes if queue in process["queues"]]
        rows.append({"queue": queue, "size": sizes.get(queue, 0), "latency": round(latencies.get(queue, 0.0), 3),
                     "processes": len(listening), "threads": sum(process["concurrency"] for process in listening),
                     "busy": sum(1 for entry in work if entry.get("queue") == queue)})
    return rows


def sidekiq_queue_findings(rows: List[Dict[str, Any]], warning_seconds: float = SIDEKIQ_LATENCY_WARNING_SECONDS,
                           error_seconds: float = SIDEKIQ_LATENCY_ERROR_SECONDS) -> List[Dict[str, Any]]:
    findings = []
    for row in rows:
        latency = row["latency"]
        if row["size"] and not row["processes"]:
            findings.append(_finding(
                "sidekiq-queue-unserved", "error",
                "queue %s: %d jobs and no process listens to it" % (row["queue"], row["size"]),
                "add the queue to sidekiq_queues on a sidekiq host", queue=row["queue"], size=row["size"]))
        if latency > error_seconds:
            findings.append(_finding(
                "sidekiq-latency-over-lock-expiry", "error",
                "queue %s: the oldest job has waited %.0f s, past Mastodon's %d s lock expiry: its jobs fail with "
                "Mastodon::RaceConditionError and their retries pile up" % (row["queue"], latency, error_seconds),
                "add processes to the queue now (the advisor says how many the budget allows)",
                queue=row["queue"], latency=latency, threshold=error_seconds))
        elif latency > warning_seconds:
            findings.append(_finding(
                "sidekiq-latency-over-threshold", "warning",
                "queue %s: the oldest job has waited %.1f s (threshold %g s)" % (row["queue"], latency,
                                                                                 warning_seconds),
                "add processes to the queue if the latency keeps growing (the advisor says how many fit)",
                queue=row["queue"], latency=latency, threshold=warning_seconds))
    return findings


REPLICA_MAX_LAG_SECONDS = 30


def replication_findings(replication: Dict[str, Any], replica_slots: List[str],
                         max_lag_seconds: float = REPLICA_MAX_LAG_SECONDS) -> List[Dict[str, Any]]:
    """Findings on streaming replication. On a primary (``replication["role"] == "primary"``): each of
    ``replica_slots`` must exist, not be lost, and have a WAL sender streaming to it (``application_name``, which
    the role sets to the slot's name) within ``max_lag_seconds``. On a standby: its WAL receiver must stream, and
    its replay lag stay within ``max_lag_seconds``. A replica that does not stream serves Mastodon's reads from
    the past, and one that is down fails them."""
    findings = []
    lag_hint = ("look for long queries or I/O waits on the replica, and for network trouble between the hosts; "
                "Mastodon shows stale timelines and counters meanwhile")
    if replication["role"] == "standby":
        receiver = replication.get("receiver") or {}
        if receiver.get("status") != "streaming":
            findings.append(_finding(
                "live-replica-not-streaming", "error",
                "this standby's WAL receiver is %s, not streaming" % (receiver.get("status") or "not running"),
                "read the replica's log (journalctl -u postgresql@VERSION-main): the primary unreachable, a wrong "
                "password, or a slot the primary lost (the postgresql role copies the primary again)",
                status=receiver.get("status")))
        lag = replication.get("replay_lag_seconds")
        if lag is not None and lag > max_lag_seconds:
            findings.append(_finding("live-replica-lag", "warning",
                                     "this standby replays %.1f s behind its primary, more than %s s"
                                     % (lag, max_lag_seconds), lag_hint, lag=lag, limit=max_lag_seconds))
        return findings
    slots = {row["slot_name"]: row for row in replication.get("slots", [])}
    senders = {row["application_name"]: row for row in replication.get("senders", [])}
    # A slot nobody reads keeps WAL until max_slot_wal_keep_size (or without limit): a replica taken out of the
    # plan leaves its slot behind. Another tool's slot may be in use, so the role drops none.
    for name, row in sorted(slots.items()):
        if name not in replica_slots and not row["active"]:
            findings.append(_finding(
                "live-replica-slot-unplanned", "warning",
                "the physical slot %s is inactive, not the plan's, and keeps %s bytes of WAL on this primary"
                % (name, row["retained_bytes"]),
                "if no replica or tool reads it any more: SELECT pg_drop_replication_slot('%s');" % name,
                slot=name, retained_bytes=row["retained_bytes"]))
    for slot in replica_slots:
        if slot not in slots:
            findings.append(_finding("live-replica-not-streaming", "error",
                                     "the replica's slot %s is not on this primary" % slot,
                                     "run the postgresql role: it creates the slot and copies the primary again",
                                     slot=slot))
            continue
        if slots[slot]["wal_status"] == "lost":
            findings.append(_finding("live-replica-not-streaming", "error",
                                     "the replica's slot %s is lost: this primary removed WAL past "
                                     "max_slot_wal_keep_size while the replica was away" % slot,
                                     "run the postgresql role: it copies the primary to the replica again",
                                     slot=slot))
            continue
        sender = senders.get(slot)
        if sender is None or sender.get("state") != "streaming":
            findings.append(_finding(
                "live-replica-not-streaming", "error",
                "no WAL sender streams to the replica of slot %s (%s); the slot keeps %s bytes of WAL for it"
                % (slot, sender["state"] if sender else "not connected", slots[slot]["retained_bytes"]),
                "start the replica, or read its log; Mastodon's reads through REPLICA_DB_* fail while it is down",
                slot=slot, retained_bytes=slots[slot]["retained_bytes"]))
            continue
        lag = sender.get("replay_lag_seconds")
        if lag is not None and lag > max_lag_seconds:
            findings.append(_finding("live-replica-lag", "warning",
                                     "the replica of slot %s replays %.1f s behind, more than %s s"
                                     % (slot, lag, max_lag_seconds), lag_hint, slot=slot, lag=lag,
                                     limit=max_lag_seconds))
    return findings


def _repository(plan: Dict[str, Any]) -> str:
    if plan.get("s3"):
        return "%s in bucket %s" % (plan["repo_path"], plan["s3"]["bucket"])
    return plan["repo_path"]


def _hours(seconds: float) -> str:
    return "%.1f h" % (seconds / 3600.0)


def backup_findings(backup: Dict[str, Any], plan: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Findings on a server's backups (``backup``: what the postgres_connections module read; ``plan``: the
    plan's ``backups`` entry for the host). Archiving that fails loses the point-in-time window from then on;
    a backup or archive older than the plan's thresholds means a timer or the repository stopped working."""
    findings = []
    archiver = backup["archiver"]
    if archiver["failing"]:
        findings.append(_finding(
            "live-backup-archive-failing", "error",
            "archive_command fails: the last attempt, for %s, failed after the last success (%s failures in all); "
            "PostgreSQL keeps every unarchived segment in pg_wal" % (archiver["last_failed_wal"],
                                                                     archiver["failed_count"]),
            "read PostgreSQL's log and /var/log/pgbackrest: the repository unreachable or full, or a passphrase "
            "that does not open it", failed_count=archiver["failed_count"]))
    waiting = backup["ready_segments"]
    limit = 2 * plan["archive_timeout"]
    if waiting["count"] and waiting["oldest_age_seconds"] > limit:
        findings.append(_finding(
            "live-backup-archive-behind", "warning",
            "%d WAL segments wait to be archived, the oldest for %d s (more than twice archive_timeout, %d s)"
            % (waiting["count"], waiting["oldest_age_seconds"], plan["archive_timeout"]),
            "a restore would miss the writes in them: see whether the repository keeps up (its disk, its network)",
            segments=waiting["count"], oldest_age_seconds=waiting["oldest_age_seconds"]))
    info = backup["info"]
    if info["status_code"] != 0:
        findings.append(_finding(
            "live-backup-stanza-unusable", "error",
            "pgBackRest cannot use stanza %s in %s: %s" % (plan["stanza"], _repository(plan), info["status_message"]),
            "run site.yml (it creates the stanza), or see whether the repository is %s"
            % ("reachable (the bucket, its key)" if plan.get("s3") else "mounted"),
            status_code=info["status_code"]))
    elif info["last_backup"] is None:
        findings.append(_finding(
            "live-backup-none", "warning", "stanza %s has no backup yet: nothing could be restored" % plan["stanza"],
            "start one now: systemctl start pgbackrest-backup-full.service"))
    elif info["last_backup"]["age_seconds"] > plan["backup_max_age_hours"] * 3600:
        last = info["last_backup"]
        findings.append(_finding(
            "live-backup-old", "warning",
            "the last backup (%s, %s) ended %s ago, more than pgbackrest_backup_max_age_hours (%d)"
            % (last["label"], last["type"], _hours(last["age_seconds"]), plan["backup_max_age_hours"]),
            "see why the timers did not run it: systemctl list-timers 'pgbackrest-backup-*'; journalctl -u "
            "pgbackrest-backup-full.service -u pgbackrest-backup-diff.service",
            age_hours=round(last["age_seconds"] / 3600.0, 1), limit_hours=plan["backup_max_age_hours"]))
    if backup["repository_beside_data"]:
        findings.append(_finding(
            "live-backup-repository-beside-data", "warning",
            "the repository %s is on the same file system as the data directory %s: one disk failure loses the "
            "database and its backups" % (plan["repo_path"], plan["data_directory"]),
            "mount another disk or network storage at pgbackrest_repo_path"))
    return findings


def last_backup(info: List[Dict[str, Any]], now: float) -> Optional[Dict[str, Any]]:
    """The newest backup without an error in ``pgbackrest info --output=json`` of one stanza, with its age."""
    backups = [item for item in info[0].get("backup", []) if not item.get("error")] if info else []
    if not backups:
        return None
    newest = max(backups, key=lambda item: item["timestamp"]["stop"])
    return {"label": newest["label"], "type": newest["type"], "stop": newest["timestamp"]["stop"],
            "age_seconds": max(0.0, now - newest["timestamp"]["stop"])}
