# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scaling advisor: live signals against the plan, in plain lines and inventory changes.

Pure functions over plain data. The signals are what the live modules return: sidekiq_queues (each queue's
size, latency, processes and busy threads) and postgres_connections (connections by state, wait events). A
late queue gets more processes only as far as the plan, made again with them, still passes below the 90 %
line; when the database itself is the bottleneck, the advice is that more processes will not help.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.live import SIDEKIQ_LATENCY_WARNING_SECONDS

# Share of the active client connections waiting on locks or WAL writes above which the database, not the
# number of workers, limits the throughput.
DATABASE_WAIT_PERCENT = 20


def database_bottleneck(postgres: Dict[str, Any], wait_percent: int = DATABASE_WAIT_PERCENT) -> Optional[str]:
    """Why the database is the bottleneck, or None: lock and WALWrite waits of client backends."""
    active = postgres.get("states", {}).get("active", 0)
    locks, wal = _wait_counts(postgres)
    if not active or 100.0 * (locks + wal) / active <= wait_percent:
        return None
    reason = "the database is the bottleneck: %d of %d active connections wait (%d on locks, %d on WAL writes); " \
             "adding sidekiq processes will not help" % (locks + wal, active, locks, wal)
    if wal > locks:
        reason += ". synchronous_commit = off would relieve the WAL writes at the cost of the last transactions " \
                  "on a crash; the collection never sets it, weigh that trade yourself"
    return reason


# What a pgbouncer runs with: when the new plan changes one of these on any host, the pgbouncer play must run too.
PGBOUNCER_SIZING = ("default_pool_size", "reserve_pool_size", "max_client_conn", "max_db_connections", "processes")


def _wait_counts(postgres: Dict[str, Any]) -> tuple:
    waits = [row for row in postgres.get("waits", []) if row.get("backend_type") == "client backend"]
    return (sum(row["count"] for row in waits if row.get("wait_event_type") == "Lock"),
            sum(row["count"] for row in waits if row.get("wait_event") == "WALWrite"))


def database_lines(postgres: Dict[str, Any], behind_pgbouncer: bool) -> List[str]:
    """The primary's client connections by state and its waits; behind pgbouncer, no idle connection means the
    pools are full (the compendium: pgbouncer is then the bottleneck)."""
    states = postgres.get("states", {})
    total, idle = sum(states.values()), states.get("idle", 0)
    locks, wal = _wait_counts(postgres)
    lines = ["primary: %d client connections, %d active, %d idle (%.0f %% idle); %d waiting on locks, %d on WAL "
             "writes" % (total, states.get("active", 0), idle, 100.0 * idle / total if total else 0.0, locks, wal)]
    if behind_pgbouncer and total and not idle:
        lines.append("primary: no idle connection behind pgbouncer: its pools are full, and more processes behind "
                     "them wait for a server connection (pgbouncer_pools reports them waiting)")
    # A replica that lags or is down: Mastodon's reads through REPLICA_DB_* are stale or fail.
    for finding in postgres.get("findings", []):
        if finding["rule"] in ("live-replica-lag", "live-replica-not-streaming"):
            lines.append("replica: %s (%s)" % (finding["message"], finding["hint"]))
    # Backups that stopped working: what a restore could no longer bring back.
    backup = postgres.get("backup")
    if backup:
        last = backup["info"]["last_backup"]
        lines.append("backups: %s, %d WAL segments waiting to be archived"
                     % ("the last a %s backup %.1f h ago" % (last["type"], last["age_seconds"] / 3600.0) if last
                        else "none yet", backup["ready_segments"]["count"]))
    lines.extend("backups: %s (%s)" % (finding["message"], finding["hint"])
                 for finding in postgres.get("findings", []) if finding["rule"].startswith("live-backup-"))
    return lines


def _plan_with(description: Dict[str, Any], host: str, queue: str, instances: int) -> Dict[str, Any]:
    changed = copy.deepcopy(description)
    for entry in changed["hosts"][host]["sidekiq"]["queues"]:
        if entry.get("queue") == queue:
            entry["instances"] = instances
    return plan.connection_budget(changed)


def _fits(report: Dict[str, Any]) -> bool:
    """The plan passes: no error and not over the 90 % line."""
    return not any(item["severity"] == "error" or item["rule"] == "connections-over-warning-line"
                   for item in report["findings"])


def _tags(before: Dict[str, Any], after: Dict[str, Any]) -> str:
    """The site.yml tags that apply a change of sidekiq instances: the pgbouncer play as well when the plan
    re-sized a pgbouncer (auto pools share the room by client count)."""
    resized = any({key: bouncer.get(key) for key in PGBOUNCER_SIZING}
                  != {key: before["pgbouncer"].get(host, {}).get(key) for key in PGBOUNCER_SIZING}
                  for host, bouncer in after["pgbouncer"].items())
    return "sidekiq,pgbouncer" if resized else "sidekiq"


def _queue_line(row: Dict[str, Any]) -> str:
    trend = ""
    if "growing" in row:
        trend = " and growing" if row["growing"] else " and falling" if row["latency"] < row["latency_before"] else ""
    return "%s: %d jobs, latency %.1f s%s; %d process%s, %d of %d threads busy" % (
        row["queue"], row["size"], row["latency"], trend, row["processes"], "" if row["processes"] == 1 else "es",
        row["busy"], row["threads"])


def _scale(description: Dict[str, Any], report: Dict[str, Any], row: Dict[str, Any]) -> Dict[str, Any]:
    """How many processes to add to a late queue, on the first host that runs it, within the budget."""
    queue = row["queue"]
    hosts = sorted(host for host, units in report["units"].items()
                   if any(unit["queue"] == queue for unit in units["sidekiq"]))
    if not hosts:
        return {"line": "%s is late and no host in the plan runs it: add it to sidekiq_queues" % queue}
    host = hosts[0]
    unit = next(unit for unit in report["units"][host]["sidekiq"] if unit["queue"] == queue)
    instances, concurrency = len(unit["instances"]), unit["concurrency"]
    servers = report["servers"]
    room = min(server["headroom"]["connections"] for server in servers.values())
    allowed = max(room, 0) // concurrency
    while allowed and not _fits(_plan_with(description, host, queue, instances + allowed)):
        allowed -= 1
    if not allowed:
        return {"line": "%s is late, but the budget has no room for another %s process (%d connections, %d free "
                        "below the 90 %% line): raise postgresql_max_connections or lower other pools first"
                        % (queue, queue, concurrency, room)}
    # At most double the queue's processes at once; read the latency again before adding more.
    add = min(allowed, max(instances, 1))
    tags = _tags(report, _plan_with(description, host, queue, instances + add))
    return {"line": "%s: latency %.0f s%s; the budget allows %d more %s processes on %s (%d connections each, %d "
                    "free below the 90 %% line): add %d, set instances: %d"
                    % (queue, row["latency"], " and growing" if row.get("growing") else "", allowed, queue, host,
                       concurrency, room, add, instances + add),
            "change": {"host": host, "queue": queue, "instances": instances + add, "concurrency": concurrency,
                       "allowed": allowed, "tags": tags}}


def advise(description: Dict[str, Any], queues: List[Dict[str, Any]], postgres: Optional[Dict[str, Any]] = None,
           latency_warning_seconds: float = SIDEKIQ_LATENCY_WARNING_SECONDS) -> Dict[str, Any]:
    """The advice for a cluster description (the plan's input) and the live readings.

    Returns ``lines`` (what the queues and the database show, then the verdict) and ``changes`` (per late
    queue: the host, the queue and the instances to set in its sidekiq_queues entry).
    """
    report = plan.connection_budget(description)
    lines = [_queue_line(row) for row in queues]
    if postgres:
        lines += database_lines(postgres, bool(report["pgbouncer"]))
    late = [row for row in queues if row["size"] and row["latency"] > latency_warning_seconds]
    bottleneck = database_bottleneck(postgres) if postgres else None
    changes = []
    if not late:
        lines.append("verdict: every queue's latency is under %g s: nothing to add" % latency_warning_seconds)
    elif bottleneck:
        lines.append("verdict: " + bottleneck)
    else:
        for row in late:
            advice = _scale(description, report, row)
            lines.append("verdict: " + advice["line"])
            if "change" in advice:
                changes.append(advice["change"])
    for change in changes:
        lines.append("inventory: on %s, set the sidekiq_queues entry of %s to {queue: %s, instances: %d, "
                     "concurrency: %d}, then run site.yml --tags %s"
                     % (change["host"], change["queue"], change["queue"], change["instances"],
                        change["concurrency"], change["tags"]))
    return {"lines": lines, "changes": changes}
