# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every scaling rule the collection enforces, one function each, found by its id.

A rule reads the budget report (``model.compute``) and yields findings: the
rule id, error or warning, the host and service at fault, the numbers, and
what to do. Tests: tests/unit/plugins/module_utils/test_rules.py, one class
per rule, named after it.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Dict, Iterator, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils import debian, mastodon, replication
from ansible_collections.fediscale.mastodon.plugins.module_utils.media import is_network_filesystem
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_plan import sentinel_majority
from ansible_collections.fediscale.mastodon.plugins.module_utils.pgtune import work_mem_limit_kb
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    LIVE_LIMITS, format_size_kb, version_tuple)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sizing import (
    PGBOUNCER_ADMIN_POOL, PGBOUNCER_EXTRA_USERS, PGBOUNCER_FD_SPARE, PGBOUNCER_PEERS_SINCE,
    PGBOUNCER_PREPARED_STATEMENTS_SINCE)

ERROR = "error"
WARNING = "warning"

Finding = Dict[str, Any]
Report = Dict[str, Any]
RULES: Dict[str, Callable[[Report], Iterator[Finding]]] = {}


def rule(rule_id: str) -> Callable:
    def register(function: Callable[[Report], Iterator[Finding]]) -> Callable[[Report], Iterator[Finding]]:
        RULES[rule_id] = function
        function.rule_id = rule_id  # type: ignore[attr-defined]
        return function
    return register


def finding(rule_id: str, severity: str, host: Optional[str], service: str, message: str, hint: str,
            **numbers: Any) -> Finding:
    return {"rule": rule_id, "severity": severity, "host": host, "service": service,
            "message": message, "hint": hint, "numbers": numbers}


def check(report: Report) -> List[Finding]:
    """All findings of all rules, errors first."""
    findings = [item for function in RULES.values() for item in function(report)]
    return sorted(findings, key=lambda item: (item["severity"] != ERROR, item["rule"], item["host"] or ""))


def _breakdown(server: Dict[str, Any]) -> str:
    parts = {}
    for source in server["sources"]:
        parts[source["via"]] = parts.get(source["via"], 0) + source["connections"]
    return ", ".join("%s %d" % (via, count) for via, count in sorted(parts.items()))


# --- the inventory and the model ---

@rule("mastodon-version-newer-than-model")
def mastodon_version_newer_than_model(report: Report) -> Iterator[Finding]:
    version = report["mastodon"]["version"]
    if mastodon.version_outside_model(version) > 0:
        yield finding(
            "mastodon-version-newer-than-model", WARNING, None, "mastodon",
            "Mastodon %s is newer than %s, the newest release the plan models: pools, queues and settings are "
            "counted as %s counts them" % (version, mastodon.NEWEST_MODELLED, mastodon.NEWEST_MODELLED),
            "check the release notes for new queues or pool settings, or upgrade fediscale.mastodon",
            version=version, newest=mastodon.NEWEST_MODELLED)


@rule("inventory-variable-unknown")
def inventory_variable_unknown(report: Report) -> Iterator[Finding]:
    for entry in report["inventory"]["unknown_variables"]:
        hosts = entry["hosts"]
        yield finding(
            "inventory-variable-unknown", WARNING, hosts[0] if len(hosts) == 1 else None, entry["variable"],
            "%s, set in %s, looks like a variable of the plan but is none; %d host(s) have it (%s)"
            % (entry["variable"], entry["origin"], len(hosts),
               ", ".join(hosts) if len(hosts) <= 3 else "%s .. %s" % (hosts[0], hosts[-1])),
            "did you mean %s? If another role reads it, list it in mastodon_foreign_variables"
            % entry["suggestion"], hosts=len(hosts))


def _floors(report: Report, what: str) -> Iterator[tuple]:
    """Mastodon's floors for ``what`` that this plan's Mastodon version has."""
    mastodon_version = version_tuple(report["mastodon"]["version"])
    for since, name, minimum, why in debian.FLOORS:
        if name == what and mastodon_version >= version_tuple(since):
            yield minimum, why


@rule("postgresql-below-mastodon-floor")
def postgresql_below_mastodon_floor(report: Report) -> Iterator[Finding]:
    for role, server in sorted(report["servers"].items()):
        for minimum, why in _floors(report, "postgresql"):
            if server["version"] < int(minimum):
                yield finding(
                    "postgresql-below-mastodon-floor", ERROR, server["host"], "postgresql %s" % role,
                    "PostgreSQL %d is below %s, the oldest Mastodon %s runs on (%s)"
                    % (server["version"], minimum, report["mastodon"]["version"], why),
                    "upgrade the cluster first (pg_upgradecluster %d main; Debian %d ships PostgreSQL %s) and set "
                    "postgresql_version, or stay on an older Mastodon"
                    % (server["version"], debian.DEFAULT_RELEASE, debian.shipped(debian.DEFAULT_RELEASE, "postgresql")),
                    version=server["version"], minimum=int(minimum))
                break


@rule("redis-below-mastodon-floor")
def redis_below_mastodon_floor(report: Report) -> Iterator[Finding]:
    seen = set()
    for instance in report["redis"]["instances"]:
        if instance["host"] in seen:
            continue
        seen.add(instance["host"])
        speaks = debian.redis_protocol_version(instance["server"], instance["version"])
        for minimum, why in _floors(report, "redis"):
            if version_tuple(speaks) < version_tuple(minimum):
                yield finding(
                    "redis-below-mastodon-floor", ERROR, instance["host"], "redis",
                    "Redis %s is below %s, the oldest Mastodon %s runs on (%s)"
                    % (speaks, minimum, report["mastodon"]["version"], why),
                    "upgrade Redis on %s (Debian %d ships %s) and set redis_version"
                    % (instance["host"], debian.DEFAULT_RELEASE, debian.shipped(debian.DEFAULT_RELEASE, "redis")),
                    version=speaks, minimum=minimum)
                break


# --- PostgreSQL capacity ---

@rule("connections-over-usable-capacity")
def connections_over_usable_capacity(report: Report) -> Iterator[Finding]:
    for role, server in report["servers"].items():
        if server["total"] > server["usable"]:
            yield finding(
                "connections-over-usable-capacity", ERROR, server["host"], "postgresql %s" % role,
                "the plan opens %d connections on the %s (%s) but only %d are usable: max_connections %d minus "
                "%d superuser_reserved_connections and %d reserved_connections"
                % (server["total"], role, _breakdown(server), server["usable"], server["max_connections"],
                   server["superuser_reserved_connections"], server["reserved_connections"]),
                "remove %d connections: lower DB_POOL or sidekiq concurrency, put the hosts behind pgbouncer "
                "(pgbouncer_enabled) with smaller pools, or raise postgresql_max_connections"
                % (server["total"] - server["usable"]),
                total=server["total"], usable=server["usable"], max_connections=server["max_connections"])


@rule("connections-over-warning-line")
def connections_over_warning_line(report: Report) -> Iterator[Finding]:
    for role, server in report["servers"].items():
        # Reported beside connections-over-usable-capacity too: both numbers matter to the fix.
        if server["total"] > server["warning_line"]:
            yield finding(
                "connections-over-warning-line", WARNING, server["host"], "postgresql %s" % role,
                "the plan opens %d of %d connections on the %s (%.1f %%), over the 90 %% line of %d; %s"
                % (server["total"], server["max_connections"], role, server["utilisation_percent"],
                   server["warning_line"], "%d are left" % server["free"] if server["free"] >= 0
                   else "%d more than max_connections" % -server["free"]),
                "keep room for migrations, tootctl and a deploy's overlap: remove %d connections or raise "
                "postgresql_max_connections" % (server["total"] - server["warning_line"]),
                total=server["total"], warning_line=server["warning_line"], max_connections=server["max_connections"])


@rule("max-connections-over-512")
def max_connections_over_512(report: Report) -> Iterator[Finding]:
    for role, server in report["servers"].items():
        if 512 < server["max_connections"] <= 1000:
            yield finding(
                "max-connections-over-512", WARNING, server["host"], "postgresql %s" % role,
                "max_connections is %d; above 512 PostgreSQL grows unstable under load" % server["max_connections"],
                "put pgbouncer in front of every app host and lower max_connections",
                max_connections=server["max_connections"])


@rule("max-connections-over-1000")
def max_connections_over_1000(report: Report) -> Iterator[Finding]:
    for role, server in report["servers"].items():
        if server["max_connections"] > 1000:
            acknowledged = server["acknowledge_max_connections_over_1000"]
            yield finding(
                "max-connections-over-1000", WARNING if acknowledged else ERROR, server["host"],
                "postgresql %s" % role,
                "max_connections is %d; above about 1000 throughput collapses (up to 46 %% fewer queries per second)"
                % server["max_connections"],
                "pool with pgbouncer and lower max_connections; if you have measured it, set "
                "postgresql_acknowledge_max_connections_over_1000: true" if not acknowledged
                else "acknowledged by postgresql_acknowledge_max_connections_over_1000",
                max_connections=server["max_connections"])


def _limits(values: Dict[str, Any]) -> str:
    return ", ".join("%s %d" % (key, values[key]) for key in LIVE_LIMITS)


@rule("postgresql-live-limits-unread")
def postgresql_live_limits_unread(report: Report) -> Iterator[Finding]:
    for role, server in sorted(report["servers"].items()):
        if server["limits_from"] == "live" and server["limits_source"] != "live":
            live = server["live_limits"]
            why = (live["error"] if live else
                   "nothing read them: plan.yml and the filters contact no host, site.yml's plan play does")
            yield finding(
                "postgresql-live-limits-unread", WARNING, server["host"], "postgresql %s" % role,
                "postgresql_limits_from is live, but the running server's limits were not read (%s); the plan "
                "uses the inventory's: %s" % (why, _limits(server)),
                "let site.yml's plan play log in on %s (plan_postgresql_login_host, _user, _password), or keep "
                "the inventory's values equal to the server's" % server["host"],
                **{key: server[key] for key in LIVE_LIMITS})


@rule("postgresql-inventory-limits-differ-from-live")
def postgresql_inventory_limits_differ_from_live(report: Report) -> Iterator[Finding]:
    for role, server in sorted(report["servers"].items()):
        inventory = server["inventory_limits"]
        if server["limits_source"] == "live" and any(inventory[key] != server[key] for key in LIVE_LIMITS):
            yield finding(
                "postgresql-inventory-limits-differ-from-live", WARNING, server["host"], "postgresql %s" % role,
                "the running server has %s; the inventory says %s. The plan uses the server's"
                % (_limits(server), _limits(inventory)),
                "set %s in the inventory, so that plans which read no server (plan.yml) agree"
                % ", ".join("postgresql_%s: %d" % (key, server[key]) for key in LIVE_LIMITS
                            if inventory[key] != server[key]),
                live=server["max_connections"], inventory=inventory["max_connections"])


# --- a read replica (module_utils/replication.py) ---

def _primary_and_replica(report: Report) -> Optional[tuple]:
    servers = report["servers"]
    return (servers["primary"], servers["replica"]) if "replica" in servers else None


@rule("replica-below-primary")
def replica_below_primary(report: Report) -> Iterator[Finding]:
    pair = _primary_and_replica(report)
    if pair is None:
        return
    primary, replica = pair
    lower = replication.below_primary(primary["replication"]["hot_standby"], replica["replication"]["hot_standby"])
    for name, (theirs, ours) in sorted(lower.items()):
        yield finding(
            "replica-below-primary", ERROR, replica["host"], "postgresql replica",
            "%s on the replica %s is %d, below the primary %s's %d: a hot standby needs at least the primary's, "
            "or PostgreSQL stops replaying WAL and will not start it"
            % (name, replica["host"], ours, primary["host"], theirs),
            "set postgresql_%s: %d (or more) on %s%s"
            % (name, theirs, replica["host"],
               "; PGTune takes it from postgresql_cpus, so give the replica as many CPUs as the primary"
               if name == "max_worker_processes" else ""),
            primary=theirs, replica=ours)


@rule("replica-primary-short-of-wal-senders")
def replica_primary_short_of_wal_senders(report: Report) -> Iterator[Finding]:
    pair = _primary_and_replica(report)
    if pair is None:
        return
    primary = pair[0]
    senders = primary["replication"]["hot_standby"]["max_wal_senders"]
    slots = primary["replication"]["max_replication_slots"]
    for name, have, need in (("max_wal_senders", senders, replication.wal_senders_needed(1)),
                             ("max_replication_slots", slots, replication.slots_needed(1))):
        if have < need:
            yield finding(
                "replica-primary-short-of-wal-senders", ERROR, primary["host"], "postgresql primary",
                "%s on the primary %s is %d; its replica takes 1 and pg_basebackup's first copy %d more, %d in all"
                % (name, primary["host"], have, need - 1, need),
                "set postgresql_%s: %d (or more) on %s" % (name, need, primary["host"]), have=have, need=need)


@rule("replica-slot-wal-unbounded")
def replica_slot_wal_unbounded(report: Report) -> Iterator[Finding]:
    pair = _primary_and_replica(report)
    if pair is None:
        return
    primary = pair[0]
    keep, free = (primary["replication"]["max_slot_wal_keep_size_kb"], primary["replication"]["wal_disk_free_kb"])
    if keep is None or free is None:
        missing = [name for name, value in (("postgresql_max_slot_wal_keep_size", keep),
                                            ("postgresql_wal_disk_free", free)) if value is None]
        yield finding(
            "replica-slot-wal-unbounded", ERROR, primary["host"], "postgresql primary",
            "the primary %s keeps WAL for its replica's slot without a limit the plan can check (%s not set): a "
            "replica that is down fills the primary's disk, and the primary stops"
            % (primary["host"], " and ".join(missing)),
            "set postgresql_wal_disk_free to the free space of %s's WAL disk and postgresql_max_slot_wal_keep_size "
            "below it" % primary["host"])
    elif keep >= free:
        yield finding(
            "replica-slot-wal-unbounded", ERROR, primary["host"], "postgresql primary",
            "max_slot_wal_keep_size %s on the primary %s is not below the %s free on its WAL disk: a replica that "
            "is down fills it before the slot is given up"
            % (format_size_kb(keep), primary["host"], format_size_kb(free)),
            "lower postgresql_max_slot_wal_keep_size below %s (the WAL of normal work needs room too)"
            % format_size_kb(free), keep_kb=keep, free_kb=free)


@rule("replica-of-unmanaged-primary")
def replica_of_unmanaged_primary(report: Report) -> Iterator[Finding]:
    """The postgresql role copies and streams a replica from a primary it manages: it creates the replication role,
    the slot and the pg_hba line there."""
    pair = _primary_and_replica(report)
    if pair is not None and pair[0]["limits_from"] == "live" and pair[1]["limits_from"] == "inventory":
        yield finding(
            "replica-of-unmanaged-primary", ERROR, pair[1]["host"], "postgresql replica",
            "the postgresql role would copy the primary %s to the replica %s, but does not manage %s "
            "(postgresql_limits_from: live), so it cannot give it the replication role, slot and pg_hba line the "
            "copy needs" % (pair[0]["host"], pair[1]["host"], pair[0]["host"]),
            "make the replica yourself and set postgresql_limits_from: live on %s too, or let the role manage %s "
            "(postgresql_limits_from: inventory)" % (pair[1]["host"], pair[0]["host"]))


@rule("replica-wal-level-minimal")
def replica_wal_level_minimal(report: Report) -> Iterator[Finding]:
    pair = _primary_and_replica(report)
    if pair is not None and not replication.wal_level_allows_replicas(pair[0]["replication"]["wal_level"]):
        yield finding(
            "replica-wal-level-minimal", ERROR, pair[0]["host"], "postgresql primary",
            "wal_level is minimal on the primary %s: its WAL cannot feed the replica %s"
            % (pair[0]["host"], pair[1]["host"]),
            "set postgresql_wal_level: replica (PostgreSQL's default) on %s" % pair[0]["host"])


@rule("work-mem-over-twice-ram")
def work_mem_over_twice_ram(report: Report) -> Iterator[Finding]:
    for role, server in report["servers"].items():
        worst = server["max_connections"] * server["work_mem_kb"]
        if worst > 2 * server["ram_kb"]:
            limit = work_mem_limit_kb(server["ram_kb"], server["max_connections"])
            yield finding(
                "work-mem-over-twice-ram", ERROR, server["host"], "postgresql %s" % role,
                "max_connections %d x work_mem %s = %s, more than twice the RAM (%s)"
                % (server["max_connections"], server["work_mem"], format_size_kb(worst),
                   format_size_kb(server["ram_kb"])),
                "set postgresql_work_mem to %s or less, or leave it out to get the PGTune value"
                % format_size_kb(limit),
                max_connections=server["max_connections"], work_mem_kb=server["work_mem_kb"],
                ram_kb=server["ram_kb"], work_mem_limit_kb=limit)


# --- pgbouncer ---

@rule("pgbouncer-clients-over-max-client-conn")
def pgbouncer_clients_over_max_client_conn(report: Report) -> Iterator[Finding]:
    for host, bouncer in sorted(report["pgbouncer"].items()):
        if bouncer["clients"] > bouncer["max_client_conn"]:
            yield finding(
                "pgbouncer-clients-over-max-client-conn", ERROR, host, "pgbouncer",
                "the Mastodon processes on %s open %d client connections into pgbouncer, max_client_conn is %d"
                % (host, bouncer["clients"], bouncer["max_client_conn"]),
                "raise pgbouncer_max_client_conn to %d or more, or leave it out (auto)" % bouncer["clients"],
                clients=bouncer["clients"], max_client_conn=bouncer["max_client_conn"])


@rule("pgbouncer-fd-need-over-limit-nofile")
def pgbouncer_fd_need_over_limit_nofile(report: Report) -> Iterator[Finding]:
    for host, bouncer in sorted(report["pgbouncer"].items()):
        if bouncer["fd_need"] > bouncer["limit_nofile"]:
            yield finding(
                "pgbouncer-fd-need-over-limit-nofile", ERROR, host, "pgbouncer",
                "pgbouncer may need %d file descriptors (max_client_conn %d + %d + (pool %d + reserve %d) x %d "
                "databases x %d users, its stats and admin users included), LimitNOFILE is %d"
                % (bouncer["fd_need"], bouncer["max_client_conn"], PGBOUNCER_FD_SPARE + PGBOUNCER_ADMIN_POOL,
                   bouncer["default_pool_size"], bouncer["reserve_pool_size"], bouncer["databases"],
                   bouncer["users"] + PGBOUNCER_EXTRA_USERS, bouncer["limit_nofile"]),
                "raise pgbouncer_limit_nofile to %d or more, or leave it out (auto)" % bouncer["fd_need"],
                fd_need=bouncer["fd_need"], limit_nofile=bouncer["limit_nofile"])


@rule("limit-nofile-over-hard-limit")
def limit_nofile_over_hard_limit(report: Report) -> Iterator[Finding]:
    services = [("pgbouncer", host, item) for host, item in report["pgbouncer"].items()]
    services += [("nginx", host, item) for host, item in report["nginx"].items()]
    for service, host, item in sorted(services, key=lambda entry: (entry[1], entry[0])):
        if item["limit_nofile"] > item["nofile_hard_limit"]:
            yield finding(
                "limit-nofile-over-hard-limit", ERROR, host, service,
                "%s needs LimitNOFILE=%d but the host's hard open-file limit is %d: systemd cannot grant it"
                % (service, item["limit_nofile"], item["nofile_hard_limit"]),
                "lower %s's connection limits, run more hosts, or raise the hard limit and set "
                "mastodon_nofile_hard_limit for %s" % (service, host),
                limit_nofile=item["limit_nofile"], nofile_hard_limit=item["nofile_hard_limit"])


@rule("pgbouncer-processes-need-peers")
def pgbouncer_processes_need_peers(report: Report) -> Iterator[Finding]:
    for host, bouncer in sorted(report["pgbouncer"].items()):
        if bouncer["processes"] > 1 and version_tuple(bouncer["version"]) < PGBOUNCER_PEERS_SINCE:
            yield finding(
                "pgbouncer-processes-need-peers", ERROR, host, "pgbouncer",
                "%d pgbouncer processes share a port with so_reuseport, but pgbouncer %s has no [peers] section "
                "(1.19+): a query cancellation can reach the wrong process"
                % (bouncer["processes"], bouncer["version"]),
                "set pgbouncer_processes: 1, or install pgbouncer 1.19 or newer and set pgbouncer_version",
                processes=bouncer["processes"], version=bouncer["version"])


# What a client that prepares as Rails does met through pgbouncer 1.24 with
# max_prepared_statements 200 (molecule/database,
# test_rails_like_prepared_statements_through_pgbouncer_that_tracks_them; README, "Prepared statements").
PREPARED_STATEMENTS_MEASURED = (
    "measured on pgbouncer 1.24 with a client that prepares as Rails does, every transaction in which a "
    "connection's full statement cache (statement_limit, 1000 by default) evicts a statement fails with "
    "'current transaction is aborted'")


@rule("prepared-statements-with-transaction-pooling")
def prepared_statements_with_transaction_pooling(report: Report) -> Iterator[Finding]:
    """Off unless pgbouncer tracks them (1.21+) and the admin has accepted what Rails' SQL DEALLOCATE does."""
    for host, bouncer in sorted(report["pgbouncer"].items()):
        if bouncer["pool_mode"] == "session":
            continue
        tracked = bouncer["max_prepared_statements"] or 0
        if tracked and version_tuple(bouncer["version"]) < PGBOUNCER_PREPARED_STATEMENTS_SINCE:
            yield finding(
                "prepared-statements-with-transaction-pooling", ERROR, host, "pgbouncer",
                "pgbouncer_max_prepared_statements is %d but pgbouncer %s does not track prepared statements "
                "(1.21+): behind pool_mode = %s they break when a transaction lands on another server connection"
                % (tracked, bouncer["version"], bouncer["pool_mode"]),
                "set pgbouncer_max_prepared_statements: 0, or install pgbouncer 1.21 or newer and set "
                "pgbouncer_version", max_prepared_statements=tracked, version=bouncer["version"])
            continue
        if tracked:
            acknowledged = bouncer["acknowledge_prepared_statements"]
            yield finding(
                "prepared-statements-with-transaction-pooling", WARNING if acknowledged else ERROR, host,
                "pgbouncer",
                "Mastodon would prepare statements through pgbouncer (max_prepared_statements %d): pgbouncer "
                "tracks the protocol's prepare and close, not the SQL DEALLOCATE with which Rails evicts its "
                "statement cache; %s" % (tracked, PREPARED_STATEMENTS_MEASURED),
                "acknowledged by pgbouncer_acknowledge_prepared_statements" if acknowledged else
                "set pgbouncer_max_prepared_statements: 0 (the default), or accept it with "
                "pgbouncer_acknowledge_prepared_statements: true",
                max_prepared_statements=tracked, version=bouncer["version"])
            continue
        units = report["environment"][host]["units"]
        names = ["PREPARED_STATEMENTS"] + (["REPLICA_PREPARED_STATEMENTS"] if "replica" in report["servers"] else [])
        for name in names:
            if units.get(name, "true").lower() != "false":
                yield finding(
                    "prepared-statements-with-transaction-pooling", ERROR, host, "pgbouncer",
                    "pgbouncer runs pool_mode = %s but Mastodon's units get %s=%s: prepared statements break "
                    "when a transaction lands on another server connection" % (bouncer["pool_mode"], name,
                                                                               units.get(name, "(unset)")),
                    "remove %s from mastodon_environment (the collection sets it to false), or see "
                    "pgbouncer_max_prepared_statements" % name,
                    pool_mode=bouncer["pool_mode"])


@rule("migrations-through-pgbouncer")
def migrations_through_pgbouncer(report: Report) -> Iterator[Finding]:
    if report["mastodon"]["migrations_via"] == "pgbouncer" and report["pgbouncer"]:
        yield finding(
            "migrations-through-pgbouncer", ERROR, None, "migrations",
            "rails db:migrate is routed through pgbouncer (mastodon_migrations_via: pgbouncer): its advisory "
            "locks break under transaction pooling (mastodon issues 29526, 36485)",
            "set mastodon_migrations_via: direct; the plan counts the direct connections in "
            "mastodon_direct_connections.migrations")


# --- sidekiq ---

def _sidekiq(report: Report) -> List[Dict[str, Any]]:
    return [row for row in report["processes"] if row["service"] == "sidekiq"]


@rule("sidekiq-db-pool-below-concurrency")
def sidekiq_db_pool_below_concurrency(report: Report) -> Iterator[Finding]:
    for row in _sidekiq(report):
        if row["pool"] < row["threads"]:
            yield finding(
                "sidekiq-db-pool-below-concurrency", ERROR, row["host"], row["unit"],
                "DB_POOL %d (%s) is below the concurrency -c %d: threads wait for a connection and time out"
                % (row["pool"], row["pool_source"], row["threads"]),
                "set db_pool to %d for this queue, or leave it out to follow the concurrency" % row["threads"],
                pool=row["pool"], concurrency=row["threads"])


@rule("sidekiq-db-pool-above-concurrency")
def sidekiq_db_pool_above_concurrency(report: Report) -> Iterator[Finding]:
    for row in _sidekiq(report):
        if row["pool"] > row["threads"]:
            yield finding(
                "sidekiq-db-pool-above-concurrency", WARNING, row["host"], row["unit"],
                "DB_POOL %d (%s) is above the concurrency -c %d: %d connections per process are never used"
                % (row["pool"], row["pool_source"], row["threads"], row["pool"] - row["threads"]),
                "set db_pool to %d for this queue, or leave it out to follow the concurrency" % row["threads"],
                pool=row["pool"], concurrency=row["threads"])


@rule("sidekiq-concurrency-over-25")
def sidekiq_concurrency_over_25(report: Report) -> Iterator[Finding]:
    for row in _sidekiq(report):
        if row["threads"] > 25:
            yield finding(
                "sidekiq-concurrency-over-25", WARNING, row["host"], row["unit"],
                "concurrency -c %d: sidekiq does poorly above 25 threads per process" % row["threads"],
                "use -c 25 or less and raise instances instead (%d instances at 25 keep the same threads)"
                % -(-row["threads"] * row["instances"] // 25),
                concurrency=row["threads"])


@rule("sidekiq-unit-with-several-queues")
def sidekiq_unit_with_several_queues(report: Report) -> Iterator[Finding]:
    for row in _sidekiq(report):
        if len(row["queues"]) > 1:
            yield finding(
                "sidekiq-unit-with-several-queues", ERROR, row["host"], row["unit"],
                "one unit listens to %d queues (%s): logs, scaling and the connection count are per queue"
                % (len(row["queues"]), ", ".join(row["queues"])),
                "split it into one sidekiq_queues entry per queue",
                queues=len(row["queues"]))


@rule("sidekiq-unknown-queue")
def sidekiq_unknown_queue(report: Report) -> Iterator[Finding]:
    known = mastodon.known_queues(report["mastodon"]["version"])
    for row in _sidekiq(report):
        for queue in row["queues"]:
            if queue not in known:
                yield finding(
                    "sidekiq-unknown-queue", ERROR, row["host"], row["unit"],
                    "queue %r is not a queue of Mastodon %s" % (queue, report["mastodon"]["version"]),
                    "use one of %s" % ", ".join(known))


@rule("sidekiq-queue-without-worker")
def sidekiq_queue_without_worker(report: Report) -> Iterator[Finding]:
    used = mastodon.used_queues(report["mastodon"]["version"], report["mastodon"]["experimental_features"])
    served = {queue for row in _sidekiq(report) if row["processes"] for queue in row["queues"]}
    for queue in used:
        if queue not in served:
            yield finding(
                "sidekiq-queue-without-worker", ERROR, None, "sidekiq %s" % queue,
                "no sidekiq process in the cluster listens to queue %r: its jobs pile up forever" % queue,
                "add {queue: %s, instances: 1} to sidekiq_queues on a host in group sidekiq" % queue)


@rule("sidekiq-scheduler-count")
def sidekiq_scheduler_count(report: Report) -> Iterator[Finding]:
    rows = [row for row in _sidekiq(report) if "scheduler" in row["queues"] and row["processes"]]
    count = sum(row["processes"] for row in rows)
    if count != 1:
        where = ", ".join("%s %s x%d" % (row["host"], row["unit"], row["processes"]) for row in rows)
        yield finding(
            "sidekiq-scheduler-count", ERROR, rows[0]["host"] if len(rows) == 1 else None, "sidekiq scheduler",
            "%d sidekiq processes listen to the scheduler queue%s; exactly one must: none means scheduled jobs "
            "never run, two or more run them twice (mastodon issue 14764)"
            % (count, " (%s)" % where if where else ""),
            "keep one scheduler entry with instances: 1 on one host" if count else
            "add {queue: scheduler, instances: 1} to sidekiq_queues on one host",
            processes=count)


# After -t runs out, Sidekiq's hard shutdown gives the threads up to 3 s more, then pushes the unfinished
# jobs back to Redis (Sidekiq::Manager#hard_shutdown); systemd must not kill it before that.
SIDEKIQ_PUSH_BACK_SECONDS = 5


@rule("sidekiq-stop-timeout-within-shutdown-timeout")
def sidekiq_stop_timeout_within_shutdown_timeout(report: Report) -> Iterator[Finding]:
    # Both timeouts are per host: one finding per host names its units.
    by_host: Dict[str, List[Dict[str, Any]]] = {}
    for row in _sidekiq(report):
        if row["stop_timeout"] < row["shutdown_timeout"] + SIDEKIQ_PUSH_BACK_SECONDS:
            by_host.setdefault(row["host"], []).append(row)
    for host, rows in by_host.items():
        stop, shutdown = rows[0]["stop_timeout"], rows[0]["shutdown_timeout"]
        yield finding(
            "sidekiq-stop-timeout-within-shutdown-timeout", ERROR, host, "sidekiq",
            "the sidekiq units' stop timeout (sidekiq_stop_timeout %d s) ends before sidekiq's shutdown timeout "
            "(sidekiq_shutdown_timeout %d s) plus %d s to push unfinished jobs back: systemd kills it first and "
            "every stop of %s loses the jobs still running"
            % (stop, shutdown, SIDEKIQ_PUSH_BACK_SECONDS, ", ".join(row["unit"] for row in rows)),
            "set sidekiq_stop_timeout to %d or more, or lower sidekiq_shutdown_timeout"
            % (shutdown + SIDEKIQ_PUSH_BACK_SECONDS),
            stop_timeout=stop, shutdown_timeout=shutdown)


# --- taking over a host that runs Mastodon already (adoption.py) ---

def _adopted(report: Report) -> Iterator[tuple]:
    for host, found in sorted((report.get("adoption") or {}).items()):
        yield host, found


def _unit_counted(row: Dict[str, Any]) -> str:
    return "%s (%s, pool %d%s: %d connections)" % (
        row["name"], row["command"], row["pool"],
        " × %d workers" % row["processes"] if row["processes"] > 1 else "", row["connections"])


@rule("mastodon-unit-outside-plan")
def mastodon_unit_outside_plan(report: Report) -> Iterator[Finding]:
    for host, found in _adopted(report):
        for row in found["outside_plan"]:
            state = " and ".join(word for word, on in (("runs", row["active"]), ("starts at boot", row["enabled"]))
                                 if on)
            if row["listed"] and not row["stock"] and row["service"] != "sidekiq":
                why = ("mastodon_replace_units takes over sidekiq units only: the planned %s has the official "
                       "guide's unit name and port, and this unit would hold them" % row["service"])
                hint = "stop and disable it (systemctl disable --now %s) before the run" % row["name"]
            elif row["stock"] or row["listed"]:
                why = ("the plan runs no %s on %s to take over from it, so it would keep running beside the planned "
                       "processes, uncounted" % (row["program"].capitalize() if row["program"] == "puma"
                                                 else row["program"], host))
                hint = ("put %s in group %s, or stop and disable it first (systemctl disable --now %s) if nothing "
                        "needs it" % (host, row["service"], row["name"]))
            else:
                why = ("it is neither the official guide's unit nor planned, so it would keep running beside the "
                       "planned processes, uncounted")
                hint = ("stop and disable it (systemctl disable --now %s), or list it in mastodon_replace_units "
                        "so that the run quiets, stops and backs it up like the official guide's units" % row["name"])
            yield finding(
                "mastodon-unit-outside-plan", ERROR, host, row["service"],
                "%s (%s) %s %s from Mastodon's checkout: %s"
                % (row["name"], row["path"] or "no unit file", state, _unit_counted(row), why),
                hint, connections=row["connections"])


@rule("change-over-usable-capacity")
def change_over_usable_capacity(report: Report) -> Iterator[Finding]:
    change = report.get("during_change")
    if not change:
        return
    server = report["servers"]["primary"]
    if change["total"] > server["usable"]:
        units = ", ".join("%s on %s %d" % (row["unit"], row["host"], row["connections"]) for row in change["units"])
        yield finding(
            "change-over-usable-capacity", ERROR, server["host"], "postgresql primary",
            "while the run replaces the running units (%s), they connect straight to PostgreSQL beside the planned "
            "processes: the primary would hold %d connections (planned %d + running units %d) but only %d are "
            "usable" % (units, change["total"], change["planned"], change["running_units"], server["usable"]),
            "make room for %d connections during the change: raise postgresql_max_connections first, lower the "
            "planned pools for this run (sidekiq_queues concurrency, pgbouncer_default_pool_size), or stop the "
            "running units in a maintenance window" % (change["total"] - server["usable"]),
            total=change["total"], planned=change["planned"], running_units=change["running_units"],
            usable=server["usable"])


@rule("redis-changes-under-running-units")
def redis_changes_under_running_units(report: Report) -> Iterator[Finding]:
    for host, found in _adopted(report):
        for row in found["replace"]:
            for name, endpoint in sorted(row["redis"].items()):
                planned = found["planned_redis"][name]
                what = "the queued jobs" if name == "SIDEKIQ_REDIS" else "home feeds and settings"
                if endpoint != planned["endpoint"]:
                    problem = ("the planned units would use %s (%s): %s in the running server would stay behind"
                               % (_endpoint(planned["endpoint"]), planned["source"], what))
                elif planned["instance"] is not None:
                    problem = ("that is where the plan puts Redis instance %s, which the redis role starts afresh "
                               "after stopping Debian's redis-server there: %s would be lost"
                               % (planned["instance"], what))
                else:
                    continue
                yield finding(
                    "redis-changes-under-running-units", ERROR, host, "redis",
                    "%s keeps %s in Redis at %s (%s settings); %s" % (row["name"], what, _endpoint(endpoint), name,
                                                                      problem),
                    "keep that server for this run: leave its host out of group redis and set "
                    "mastodon_redis_settings: {REDIS_HOST: %s, REDIS_PORT: '%s'}; move the data to planned "
                    "instances in a later change" % (endpoint[0] if endpoint else "...",
                                                     endpoint[1] if endpoint else "..."),
                    configuration=name)


def _endpoint(endpoint: Optional[List[Any]]) -> str:
    return "%s:%s" % tuple(endpoint) if endpoint else "Sentinel"


@rule("env-production-endpoint-overridden")
def env_production_endpoint_overridden(report: Report) -> Iterator[Finding]:
    for host, found in _adopted(report):
        env = found["env_production"]
        planned = report["environment"].get(host, {}).get("units", {})
        lines = ["%s=%s" % (name, env[name]) for name in mastodon.ENDPOINT_SETTINGS
                 if name in env and planned.get(name) != env[name]]
        if not lines:
            continue
        theirs = ["%s=%s" % (name, planned[name]) for name in mastodon.ENDPOINT_SETTINGS
                  if name in planned and name in env]
        yield finding(
            "env-production-endpoint-overridden", WARNING, host, "mastodon",
            "%s's .env.production has %s; the planned units set their own (%s), which win, but a command run by "
            "hand from the checkout (bin/tootctl, rails) still reads these lines and goes around the plan"
            % (host, ", ".join(lines), ", ".join(theirs) or "none of them"),
            "the collection leaves .env.production as it is: remove these lines yourself, and run such commands "
            "with the app role's migrations.env, which connects directly as the plan counts it",
            lines=lines)


# --- Mastodon's environment ---

def _env_settings(report: Report, name: str) -> Iterator[tuple]:
    for host, env in sorted(report["env_production"].items()):
        if name in env:
            yield host, ".env.production"
    for host, env in sorted(report["environment"].items()):
        if name in env["units"]:
            yield host, "mastodon_environment"


@rule("streaming-cluster-num-ignored")
def streaming_cluster_num_ignored(report: Report) -> Iterator[Finding]:
    # Every release the plan models (4.2 and later) ignores it.
    for host, place in _env_settings(report, "STREAMING_CLUSTER_NUM"):
        yield finding(
            "streaming-cluster-num-ignored", ERROR, host, "streaming",
            "STREAMING_CLUSTER_NUM is set in %s but Mastodon %s ignores it (removed in 4.2): the plan would "
            "count processes that never start" % (place, report["mastodon"]["version"]),
            "remove it and list one port per process in streaming_ports")


@rule("redis-namespace-aborts-boot")
def redis_namespace_aborts_boot(report: Report) -> Iterator[Finding]:
    if version_tuple(report["mastodon"]["version"]) < (4, 4):
        return
    for host, place in _env_settings(report, "REDIS_NAMESPACE"):
        yield finding(
            "redis-namespace-aborts-boot", ERROR, host, "mastodon",
            "REDIS_NAMESPACE is set in %s: Mastodon %s refuses to boot with it"
            % (place, report["mastodon"]["version"]),
            "migrate the namespaced keys (tootctl redis migrate) and remove REDIS_NAMESPACE; use one Redis "
            "instance per dataset instead")


@rule("sizing-variable-in-env-production")
def sizing_variable_in_env_production(report: Report) -> Iterator[Finding]:
    rows_by_host: Dict[str, List[Dict[str, Any]]] = {}
    for row in report["processes"]:
        rows_by_host.setdefault(row["host"], []).append(row)
    for host, env in sorted(report["env_production"].items()):
        rows = rows_by_host.get(host, [])
        for name in mastodon.SIZING_VARIABLES:
            if name not in env:
                continue
            reached = [row["unit"] for row in rows if name not in row["unit_environment"]]
            if not reached:
                continue
            note = ""
            if name in ("WEB_CONCURRENCY", "MAX_THREADS") and any(row["service"] == "web" for row in rows):
                note = "; Puma ignores it there for workers and threads (mastodon issue 28440)"
            yield finding(
                "sizing-variable-in-env-production", WARNING, host, ".env.production",
                "%s=%s in .env.production reaches %s, which do not set it themselves%s"
                % (name, env[name], ", ".join(reached), note),
                "remove it from .env.production and size each unit in the inventory (web_db_pool, "
                "streaming_db_pool, sidekiq_queues[].db_pool); the plan counts what it reaches today",
                processes=len(reached))


# --- Redis ---

def _configurations(report: Report) -> Dict[str, Dict[str, Any]]:
    return report["redis"]["configurations"]


def _instance(report: Report, name: Optional[str]) -> Optional[Dict[str, Any]]:
    return next((item for item in report["redis"]["instances"] if item["name"] == name), None) if name else None


def _persistent_instances(report: Report) -> Iterator[tuple]:
    seen = set()
    for prefix in ("REDIS", "SIDEKIQ_REDIS"):
        instance = _instance(report, _configurations(report)[prefix]["instance"])
        if instance is not None and instance["name"] not in seen:
            seen.add(instance["name"])
            yield prefix, instance


@rule("redis-dataset-without-instance")
def redis_dataset_without_instance(report: Report) -> Iterator[Finding]:
    if not report["redis"]["derived"]:
        return
    purposes = {item["purpose"] for item in report["redis"]["instances"]}
    for purpose in ("persistent", "cache"):
        if purpose not in purposes:
            yield finding(
                "redis-dataset-without-instance", ERROR, None, "redis %s" % purpose,
                "no Redis instance has purpose %s, so Mastodon's %s data has nowhere to go"
                % (purpose, "base and sidekiq" if purpose == "persistent" else "cache"),
                "add {name: %s, purpose: %s, port: ...} to redis_instances on a host in group redis, or set "
                "mastodon_redis_settings for an external Redis" % (purpose, purpose))


@rule("redis-cache-shares-instance")
def redis_cache_shares_instance(report: Report) -> Iterator[Finding]:
    configurations = _configurations(report)
    cache = configurations["CACHE_REDIS"]
    for prefix in ("REDIS", "SIDEKIQ_REDIS"):
        if configurations[prefix]["endpoint"] == cache["endpoint"]:
            yield finding(
                "redis-cache-shares-instance", ERROR, None, "redis",
                "the cache (%s) and the %s data (%s) use the same Redis %s: evicting cache keys can evict "
                "feeds and jobs, and a cache spike slows the job queue"
                % (cache["source"], configurations[prefix]["dataset"], configurations[prefix]["source"],
                   ":".join(str(part) for part in cache["endpoint"])),
                "run a separate cache instance (purpose: cache) and point CACHE_REDIS_URL at it")


@rule("redis-persistent-without-aof")
def redis_persistent_without_aof(report: Report) -> Iterator[Finding]:
    for prefix, instance in _persistent_instances(report):
        if not instance["appendonly"]:
            yield finding(
                "redis-persistent-without-aof", ERROR, instance["host"], "redis %s" % instance["name"],
                "Redis %s holds Mastodon's %s data (%s) without appendonly: a crash loses feeds and queued jobs"
                % (instance["name"], _configurations(report)[prefix]["dataset"], prefix),
                "set appendonly: true (appendfsync everysec) on this instance")


@rule("redis-persistent-evicting-policy")
def redis_persistent_evicting_policy(report: Report) -> Iterator[Finding]:
    for prefix, instance in _persistent_instances(report):
        if instance["maxmemory_policy"] != "noeviction":
            yield finding(
                "redis-persistent-evicting-policy", ERROR, instance["host"], "redis %s" % instance["name"],
                "Redis %s holds Mastodon's %s data with maxmemory-policy %s: it would silently drop jobs and feeds"
                % (instance["name"], _configurations(report)[prefix]["dataset"], instance["maxmemory_policy"]),
                "set maxmemory_policy: noeviction (writes then fail loudly when memory is full)")


def _cache_instance(report: Report) -> Optional[Dict[str, Any]]:
    return _instance(report, _configurations(report)["CACHE_REDIS"]["instance"])


@rule("redis-cache-without-maxmemory")
def redis_cache_without_maxmemory(report: Report) -> Iterator[Finding]:
    instance = _cache_instance(report)
    if instance is not None and instance["purpose"] == "cache" and not instance.get("maxmemory"):
        yield finding(
            "redis-cache-without-maxmemory", WARNING, instance["host"], "redis %s" % instance["name"],
            "the cache instance %s has no maxmemory: it grows until the host runs out of memory" % instance["name"],
            "set maxmemory (e.g. 2GB) on it; it evicts with %s" % instance["maxmemory_policy"])


@rule("redis-cache-persistence-on")
def redis_cache_persistence_on(report: Report) -> Iterator[Finding]:
    instance = _cache_instance(report)
    if instance is not None and instance["purpose"] == "cache" and (instance["appendonly"] or instance["save"]):
        yield finding(
            "redis-cache-persistence-on", WARNING, instance["host"], "redis %s" % instance["name"],
            "the cache instance %s persists to disk (appendonly %s, save %r): wasted I/O for disposable data"
            % (instance["name"], "yes" if instance["appendonly"] else "no", instance["save"]),
            "set appendonly: false and save: \"\" on it")


@rule("redis-setting-ignored")
def redis_setting_ignored(report: Report) -> Iterator[Finding]:
    for prefix, configuration in sorted(_configurations(report).items()):
        if configuration["ignored"]:
            yield finding(
                "redis-setting-ignored", ERROR, None, "redis %s" % configuration["dataset"],
                "%s is set without %s_URL or %s_HOST: Mastodon ignores it and uses the base REDIS_* configuration"
                % (", ".join(configuration["ignored"]), prefix, prefix),
                "set %s_URL (or %s_HOST with the port)" % (prefix, prefix))


@rule("redis-tls-scheme-mismatch")
def redis_tls_scheme_mismatch(report: Report) -> Iterator[Finding]:
    """A configuration that dials an instance with the other scheme: TLS against a plain port, or plain against a
    TLS-only one (the instance's plain port is closed). Derived settings always agree; given ones may not."""
    for prefix, configuration in sorted(_configurations(report).items()):
        endpoint = tuple(configuration["endpoint"])
        # A configuration that falls back to the base one is judged with it.
        if endpoint[0] == "sentinel" or configuration["source"] == "the base REDIS_* configuration":
            continue
        instance = next((item for item in report["redis"]["instances"]
                         if endpoint in ((item["address"], item["port"]), (item["host"], item["port"]))), None)
        if instance is None or instance["tls"] == configuration["tls"]:
            continue
        yield finding(
            "redis-tls-scheme-mismatch", ERROR, instance["host"], "redis %s" % instance["name"],
            "%s reaches Redis %s on %s %s, but the instance %s: Mastodon could not connect"
            % (configuration["source"], instance["name"], instance["host"],
               "over TLS (rediss://)" if configuration["tls"] else "without TLS",
               "takes only TLS on port %d" % instance["port"] if instance["tls"] else "has no TLS"),
            "write %s_URL as %s://%s:%d, or set tls: %s on the instance"
            % (prefix, "rediss" if instance["tls"] else "redis", instance["address"], instance["port"],
               "false" if instance["tls"] else "true"),
            instance_port=instance["port"])


@rule("redis-sentinel-half-set")
def redis_sentinel_half_set(report: Report) -> Iterator[Finding]:
    for prefix, configuration in sorted(_configurations(report).items()):
        if configuration["half_sentinel"]:
            [given] = configuration["half_sentinel"]
            missing = prefix + ("_SENTINEL_MASTER" if given.endswith("_SENTINELS") else "_SENTINELS")
            yield finding(
                "redis-sentinel-half-set", ERROR, None, "redis %s" % configuration["dataset"],
                "%s is set without %s: Mastodon needs both and silently connects to %s instead"
                % (given, missing, ":".join(str(part) for part in configuration["endpoint"])),
                "set %s_SENTINELS (host:port,...) and %s_SENTINEL_MASTER (the name the sentinels monitor) together"
                % (prefix, prefix))


@rule("redis-sentinel-before-4-3")
def redis_sentinel_before_4_3(report: Report) -> Iterator[Finding]:
    version = report["mastodon"]["version"]
    if version_tuple(version) >= (4, 3):
        return
    for prefix, configuration in sorted(_configurations(report).items()):
        if configuration["source"].endswith("_SENTINELS"):
            yield finding(
                "redis-sentinel-before-4-3", ERROR, None, "redis %s" % configuration["dataset"],
                "Mastodon %s does not read %s_SENTINELS (4.3 does): it would connect to localhost:6379"
                % (version, prefix),
                "upgrade to Mastodon 4.3 or later before using sentinels, or point %s_URL at the master" % prefix)


def _sentinel(report: Report) -> Dict[str, Any]:
    return report["redis"]["sentinel"]


def _sentinel_hosts(report: Report) -> str:
    return ", ".join(item["host"] for item in _sentinel(report)["sentinels"]) or "none"


@rule("redis-sentinel-too-few-sentinels")
def redis_sentinel_too_few_sentinels(report: Report) -> Iterator[Finding]:
    count = len(_sentinel(report)["sentinels"])
    if count >= 3:
        return
    for entry in _sentinel(report)["sets"]:
        yield finding(
            "redis-sentinel-too-few-sentinels", ERROR, None, "redis sentinel %s" % entry["name"],
            "%d sentinel(s) (%s) monitor the set %s: once one host is lost the others are no majority of %d, "
            "and without a majority Sentinel never fails over"
            % (count, _sentinel_hosts(report), entry["name"], sentinel_majority(count)),
            "set redis_sentinel: true on at least 3 hosts of group redis, on separate machines (a host may run a "
            "sentinel and no instance)",
            sentinels=count, needed=3)


@rule("redis-sentinel-quorum-over-sentinels")
def redis_sentinel_quorum_over_sentinels(report: Report) -> Iterator[Finding]:
    count = len(_sentinel(report)["sentinels"])
    for entry in _sentinel(report)["sets"]:
        if count and entry["quorum"] > count:
            yield finding(
                "redis-sentinel-quorum-over-sentinels", ERROR, None, "redis sentinel %s" % entry["name"],
                "quorum %d, but only %d sentinels (%s) exist: the master of %s is never agreed to be down"
                % (entry["quorum"], count, _sentinel_hosts(report), entry["name"]),
                "set mastodon_redis_sentinel_quorum to at most %d (auto: a majority, %d)"
                % (count, sentinel_majority(count)),
                quorum=entry["quorum"], sentinels=count)


@rule("redis-sentinel-set-without-replica")
def redis_sentinel_set_without_replica(report: Report) -> Iterator[Finding]:
    for entry in _sentinel(report)["sets"]:
        if len(entry["members"]) < 2:
            [member] = entry["members"]
            yield finding(
                "redis-sentinel-set-without-replica", ERROR, member["host"], "redis %s" % member["name"],
                "only Redis %s on %s has sentinel_master %s: there is no replica to fail over to"
                % (member["name"], member["host"], entry["name"]),
                "give an instance with sentinel_master: %s and the same purpose on at least one more host"
                % entry["name"],
                members=1, needed=2)


@rule("redis-sentinel-set-members-share-host")
def redis_sentinel_set_members_share_host(report: Report) -> Iterator[Finding]:
    for entry in _sentinel(report)["sets"]:
        seen: Dict[str, str] = {}
        for member in entry["members"]:
            if member["host"] in seen:
                yield finding(
                    "redis-sentinel-set-members-share-host", ERROR, member["host"], "redis %s" % member["name"],
                    "Redis %s and %s on %s are both in the set %s: losing that host loses both copies"
                    % (seen[member["host"]], member["name"], member["host"], entry["name"]),
                    "keep one instance of the set per host")
            seen[member["host"]] = member["name"]


@rule("redis-sentinel-set-mixed-purposes")
def redis_sentinel_set_mixed_purposes(report: Report) -> Iterator[Finding]:
    for entry in _sentinel(report)["sets"]:
        purposes = sorted({member["purpose"] for member in entry["members"]})
        if len(purposes) > 1:
            yield finding(
                "redis-sentinel-set-mixed-purposes", ERROR, None, "redis sentinel %s" % entry["name"],
                "the set %s mixes purposes (%s): a replica holds its master's data and must be configured alike"
                % (entry["name"], ", ".join("%s %s on %s" % (member["purpose"], member["name"], member["host"])
                                            for member in entry["members"])),
                "give every instance with sentinel_master: %s the same purpose" % entry["name"])


@rule("redis-sentinel-address-not-ip")
def redis_sentinel_address_not_ip(report: Report) -> Iterator[Finding]:
    sentinel = _sentinel(report)
    if not sentinel["sets"]:
        return
    named = {item["host"]: ("sentinel", item["address"]) for item in sentinel["sentinels"]}
    for entry in sentinel["sets"]:
        named.update({member["host"]: ("redis %s" % member["name"], member["address"])
                      for member in entry["members"]})
    for host, (service, address) in sorted(named.items()):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            yield finding(
                "redis-sentinel-address-not-ip", ERROR, host, service,
                "%s is known as %r, not an IP address: Sentinel reports masters and replicas by IP, so Mastodon "
                "and the role could not match them" % (host, address),
                "set mastodon_address to the host's private IP address")


@rule("redis-sentinel-without-set")
def redis_sentinel_without_set(report: Report) -> Iterator[Finding]:
    if _sentinel(report)["sentinels"] and not _sentinel(report)["sets"]:
        yield finding(
            "redis-sentinel-without-set", WARNING, None, "redis sentinel",
            "sentinels run on %s, but no Redis instance has a sentinel_master: they monitor nothing"
            % _sentinel_hosts(report),
            "set sentinel_master on the persistent instance of each Redis host, or redis_sentinel: false")


# --- nginx and the web tier ---

@rule("nginx-rlimit-below-twice-worker-connections")
def nginx_rlimit_below_twice_worker_connections(report: Report) -> Iterator[Finding]:
    for host, nginx in sorted(report["nginx"].items()):
        if nginx["worker_rlimit_nofile"] < 2 * nginx["worker_connections"]:
            yield finding(
                "nginx-rlimit-below-twice-worker-connections", ERROR, host, "nginx",
                "worker_rlimit_nofile %d is below 2 x worker_connections %d: a proxied request holds two "
                "connections" % (nginx["worker_rlimit_nofile"], nginx["worker_connections"]),
                "set nginx_worker_rlimit_nofile to %d or more, or leave it out (auto)"
                % (2 * nginx["worker_connections"]),
                worker_rlimit_nofile=nginx["worker_rlimit_nofile"], worker_connections=nginx["worker_connections"])


@rule("nginx-limit-nofile-below-rlimit")
def nginx_limit_nofile_below_rlimit(report: Report) -> Iterator[Finding]:
    for host, nginx in sorted(report["nginx"].items()):
        if nginx["limit_nofile"] < nginx["worker_rlimit_nofile"]:
            yield finding(
                "nginx-limit-nofile-below-rlimit", ERROR, host, "nginx",
                "systemd LimitNOFILE %d is below worker_rlimit_nofile %d: the workers cannot raise their limit"
                % (nginx["limit_nofile"], nginx["worker_rlimit_nofile"]),
                "set nginx_limit_nofile to %d or more, or leave it out (auto)" % nginx["worker_rlimit_nofile"],
                limit_nofile=nginx["limit_nofile"], worker_rlimit_nofile=nginx["worker_rlimit_nofile"])


@rule("nginx-proxy-timeout-below-request-timeout")
def nginx_proxy_timeout_below_request_timeout(report: Report) -> Iterator[Finding]:
    timeout = report["mastodon"]["request_timeout"]
    for host, nginx in sorted(report["nginx"].items()):
        if nginx["proxy_read_timeout"] < timeout:
            yield finding(
                "nginx-proxy-timeout-below-request-timeout", ERROR, host, "nginx",
                "proxy_read_timeout %ds is shorter than Mastodon's request timeout %ds: nginx gives up while "
                "Rails keeps working, clients retry and duplicate work lands on the database"
                % (nginx["proxy_read_timeout"], timeout),
                "set nginx_proxy_read_timeout to %d or more" % timeout,
                proxy_read_timeout=nginx["proxy_read_timeout"], request_timeout=timeout)


@rule("nginx-upstream-empty")
def nginx_upstream_empty(report: Report) -> Iterator[Finding]:
    for host, nginx in sorted(report["nginx"].items()):
        for name, group in (("web_upstream", "web"), ("streaming_upstream", "streaming")):
            if not nginx[name]:
                yield finding(
                    "nginx-upstream-empty", ERROR, host, "nginx",
                    "nginx on %s proxies to %s, but no host in group %s runs it: nginx refuses an empty upstream "
                    "and the site would not load" % (host, group, group),
                    "add a host to group %s, or remove %s from group proxy" % (group, host))


@rule("trusted-proxy-ip-missing")
def trusted_proxy_ip_missing(report: Report) -> Iterator[Finding]:
    proxies = set(report["nginx"])
    if not proxies:
        return
    for host, sections in sorted(report["hosts"].items()):
        if "web" not in sections or host in proxies:
            continue
        if "TRUSTED_PROXY_IP" in report["environment"][host]["units"] or \
                "TRUSTED_PROXY_IP" in report["env_production"][host]:
            continue
        yield finding(
            "trusted-proxy-ip-missing", ERROR, host, "web",
            "Puma on %s sits behind nginx on %s, but TRUSTED_PROXY_IP is not set: Mastodon logs and rate-limits "
            "the proxy's address instead of the client's" % (host, ", ".join(sorted(proxies))),
            "set mastodon_trusted_proxy_ip to the proxies' addresses (it replaces the default private ranges)")


# --- media ---

def _hosts_text(hosts: List[str]) -> str:
    return ", ".join(hosts)


@rule("media-local-on-several-hosts")
def media_local_on_several_hosts(report: Report) -> Iterator[Finding]:
    plan = report["media"]
    if plan["mode"] != "local":
        return
    involved = sorted(set(plan["hosts"]) | set(plan["proxies"]))
    if len(involved) < 2:
        return
    proxies = [host for host in plan["proxies"] if host not in plan["hosts"]]
    yield finding(
        "media-local-on-several-hosts", ERROR, None, "media",
        "local media lives on each host's own disk, and Puma and Sidekiq write it on %s%s: every host would keep "
        "its own copy, and an upload on one is missing on the others"
        % (_hosts_text(plan["hosts"]) or "no host",
           " (nginx serves it from its own disk on %s)" % _hosts_text(proxies) if proxies else ""),
        "keep media in object storage (mastodon_media: s3, with mastodon_s3_bucket and mastodon_s3_alias_host), "
        "or run web, sidekiq and nginx on one host (streaming may stay apart: it never touches media)",
        hosts=len(involved))


@rule("media-on-network-filesystem")
def media_on_network_filesystem(report: Report) -> Iterator[Finding]:
    plan = report["media"]
    if plan["mode"] != "local":
        return
    for host in plan["hosts"]:
        filesystem = plan["filesystems"][host]
        found = filesystem["found"] or {}
        for fstype, how in ((filesystem["declared"], "mastodon_media_path_fs says"),
                            (found.get("type"), "the host mounts %s there" % found.get("mount"))):
            if fstype and is_network_filesystem(fstype):
                yield finding(
                    "media-on-network-filesystem", ERROR, host, "media",
                    "the media path %s is on %s (%s): Mastodon writes media inside database transactions, so on a "
                    "network file system Sidekiq and the database wait on each other, a slow write holding a "
                    "transaction, its row locks and a pooled connection"
                    % (found.get("path") or plan["path"] or "public/system", fstype, how),
                    "keep media in object storage (mastodon_media: s3), or on a local disk of this host",
                    filesystem=fstype)
                break


@rule("media-s3-setting-ignored")
def media_s3_setting_ignored(report: Report) -> Iterator[Finding]:
    plan = report["media"]
    s3 = plan["s3"]
    if plan["mode"] == "local":
        ignored = sorted(key for key, value in s3.items() if value not in (None, False))
        if s3["s3_protocol"] == "https":
            ignored = [key for key in ignored if key != "s3_protocol"]
        reason = "Mastodon reads S3_* only with S3_ENABLED=true, and mastodon_media is local"
        fix = "set mastodon_media: s3, or remove %s"
    else:
        ignored = ["s3_override_path_style"] if s3["s3_override_path_style"] and not s3["s3_endpoint"] else []
        reason = "Paperclip reads S3_OVERRIDE_PATH_STYLE only with S3_ENDPOINT"
        fix = "set mastodon_s3_endpoint, or remove %s"
    if ignored:
        names = ", ".join("mastodon_" + key for key in ignored)
        yield finding("media-s3-setting-ignored", ERROR, None, "media", "%s: Mastodon ignores it (%s)"
                      % (names, reason), fix % names, settings=len(ignored))


@rule("media-s3-without-bucket")
def media_s3_without_bucket(report: Report) -> Iterator[Finding]:
    if report["media"]["mode"] == "s3" and not report["media"]["s3"]["s3_bucket"]:
        yield finding("media-s3-without-bucket", ERROR, None, "media",
                      "mastodon_media is s3 but no bucket is named: every upload would fail",
                      "set mastodon_s3_bucket (and mastodon_s3_endpoint for storage other than Amazon's)")


@rule("media-s3-without-alias-host")
def media_s3_without_alias_host(report: Report) -> Iterator[Finding]:
    if report["media"]["mode"] == "s3" and not report["media"]["s3"]["s3_alias_host"]:
        yield finding("media-s3-without-alias-host", WARNING, None, "media",
                      "media is linked at the storage provider's own address: every view is metered bandwidth, "
                      "nothing is cached, and links break if the instance moves to another provider",
                      "set mastodon_s3_alias_host (e.g. files.example.com): nginx on the proxy hosts then serves it "
                      "from the bucket through its cache")


# --- firewall ---

def _client_edges(report: Report, client: str) -> str:
    """Which listeners a host connects to, for a message: ``postgresql on db1:5432, redis on redis1:6379``."""
    edges = ["%s on %s:%d" % (item["service"], host, item["port"])
             for host, items in sorted(report["firewall"]["hosts"].items()) for item in items
             if client in item["clients"]]
    return ", ".join(edges[:4]) + (" and %d more" % (len(edges) - 4) if len(edges) > 4 else "")


@rule("firewall-client-without-address")
def firewall_client_without_address(report: Report) -> Iterator[Finding]:
    # Under mastodon_firewall: auto the firewall stays off instead, and the report's firewall line says why.
    plan = report["firewall"]
    if plan["setting"] is not True:
        return
    for client in plan["unaddressed"]:
        yield finding(
            "firewall-client-without-address", ERROR, client, "firewall",
            "mastodon_firewall is true, and this host connects to %s, but the plan knows it by name, not by IP "
            "address: nftables matches addresses, so the firewall would cut it off" % _client_edges(report, client),
            "set mastodon_address to the IP address the other hosts see it at, or mastodon_firewall: auto to leave "
            "every listener open to the network until each host has one")


# --- backups ---

def _backups(report: Report) -> Iterator[tuple]:
    for host, plan in sorted(report["backups"].items()):
        if plan:
            yield host, plan


@rule("backup-archive-without-repository")
def backup_archive_without_repository(report: Report) -> Iterator[Finding]:
    for host, plan in _backups(report):
        if not plan["repo_path"]:
            yield finding(
                "backup-archive-without-repository", ERROR, host, "pgbackrest",
                "pgbackrest_archive is on but no repository is given: every archive_command would fail, and "
                "PostgreSQL keeps each unarchived WAL segment in pg_wal until its disk is full",
                "set pgbackrest_repo_path to the repository's directory (best on a repository host, "
                "pgbackrest_repo_host, or the mount of another disk or of network storage), or "
                "pgbackrest_archive: false")


@rule("backup-retention-shorter-than-full-interval")
def backup_retention_shorter_than_full_interval(report: Report) -> Iterator[Finding]:
    for host, plan in _backups(report):
        if plan["retention_days"] < plan["full_interval_days"]:
            yield finding(
                "backup-retention-shorter-than-full-interval", ERROR, host, "pgbackrest",
                "pgbackrest_retention_days is %d but full backups come every %d days (pgbackrest_full_backups: "
                "%s): pgBackRest keeps a full backup until a newer one is %d days old, so the repository holds up "
                "to %d days of backups and WAL, not the %d asked for, and storage sized for them runs short"
                % (plan["retention_days"], plan["full_interval_days"], plan["full_backups"], plan["retention_days"],
                   plan["retention_days"] + plan["full_interval_days"], plan["retention_days"]),
                "raise pgbackrest_retention_days to %d or more, or set pgbackrest_full_backups: daily"
                % plan["full_interval_days"],
                retention_days=plan["retention_days"], full_interval_days=plan["full_interval_days"])


@rule("backup-repository-beside-data")
def backup_repository_beside_data(report: Report) -> Iterator[Finding]:
    for host, plan in _backups(report):
        path = plan["repo_path"]
        root = plan["data_directory"].rsplit("/", 2)[0]
        if path and not plan["repo_host"] and not plan["s3"] and (path == root or path.startswith(root + "/")):
            yield finding(
                "backup-repository-beside-data", WARNING, host, "pgbackrest",
                "the repository %s is under %s, on the data directory's disk: one disk failure loses the "
                "database and its backups" % (path, root),
                "put pgbackrest_repo_path on another disk or on network storage mounted on this host")


@rule("backup-repository-on-database-host")
def backup_repository_on_database_host(report: Report) -> Iterator[Finding]:
    for host, plan in _backups(report):
        if plan["repo_host"] in report["postgresql"]:
            yield finding(
                "backup-repository-on-database-host", ERROR, host, "pgbackrest",
                "pgbackrest_repo_host is %s, which is also in group db: a repository on a database host is lost "
                "with it" % plan["repo_host"],
                "name a host outside group db (a backup server in group backup), or leave pgbackrest_repo_host "
                "unset for a repository on this host's own disk or network storage")


@rule("backup-bucket-is-the-media-bucket")
def backup_bucket_is_the_media_bucket(report: Report) -> Iterator[Finding]:
    for host, plan in _backups(report):
        if plan["s3"] and plan["s3"]["bucket"] == report["media"]["s3"]["s3_bucket"]:
            yield finding(
                "backup-bucket-is-the-media-bucket", ERROR, host, "pgbackrest",
                "pgbackrest_repo_s3_bucket is %s, Mastodon's media bucket: media buckets are commonly readable by "
                "everyone (S3_PERMISSION public-read, or a bucket policy), and Mastodon's key, on every app host, "
                "may delete in it, so the backups would be as exposed as the media" % plan["s3"]["bucket"],
                "create a bucket of its own for the backups, with a key only the database hosts have "
                "(pgbackrest_s3_access_key_id and pgbackrest_s3_secret_access_key)")


@rule("backup-host-unused")
def backup_host_unused(report: Report) -> Iterator[Finding]:
    for host, plan in sorted(report["backup_repositories"].items()):
        if plan is None:
            yield finding(
                "backup-host-unused", WARNING, host, "pgbackrest",
                "%s is in group backup but no primary backs up to it: site.yml installs nothing there" % host,
                "set pgbackrest_repo_host: %s (with pgbackrest_archive: true) on the primary, or take %s out of "
                "group backup" % (host, host))
