# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection arithmetic: the database servers, each host's process groups and their pools, how each
pgbouncer is sized, and each server's total against its capacity and its 90 % line.

    total on a server = sum over hosts (pgbouncer server pools, or the processes' own pools when a host has
                        no pgbouncer) + direct connections (migrations, tootctl, ..., on the primary)

Every Rails process (web, sidekiq) opens a second pool of the same size on the replica when there is one;
streaming never does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.fediscale.mastodon.plugins.module_utils import mastodon
from ansible_collections.fediscale.mastodon.plugins.module_utils import pgtune
from ansible_collections.fediscale.mastodon.plugins.module_utils import replication
from ansible_collections.fediscale.mastodon.plugins.module_utils.capacity import usable, warning_line
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    AUTO, LIVE_LIMITS, WORK_MEM_MINIMUM_KB, PlanInputError, format_size_kb, host_where, version_tuple,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sizing import (
    PGBOUNCER_PREPARED_STATEMENTS_SINCE, pgbouncer_server_connections, pgbouncer_sizing,
)

PGBOUNCER_PORT = 6432
POSTGRESQL_PORT = 5432
NGINX_PORTS = (80, 443)
# While a restart replaces a Puma or streaming instance, a second one of the same unit listens this many ports
# above it; nginx has it as a backup server, so requests keep an answer meanwhile.
HANDOVER_PORT_OFFSET = 100
DEFAULT_HEADROOM_CONCURRENCY = 10
PGBOUNCER_SINGLE_PROCESS = {"peer_id": None, "unit": "pgbouncer.service", "config": "/etc/pgbouncer/pgbouncer.ini",
                            "socket_dir": "/run/pgbouncer"}


def usable_connections(server: Dict[str, Any]) -> int:
    return usable(server["max_connections"], server["superuser_reserved_connections"], server["reserved_connections"])


def check_ports(host: str, sections: Dict[str, Any]) -> None:
    """Every listener a host's sections plan needs a port of its own."""
    taken: Dict[int, str] = {}

    def take(port: int, where: Optional[str], label: str, handover: bool = False) -> None:
        if port in taken:
            raise PlanInputError(where or host_where(host, label), "port %d%s is also %s's on %s"
                                 % (port, " (%s)" % label if handover else "", taken[port], host),
                                 "give each service on a host its own port%s"
                                 % (", %d apart from every other" % HANDOVER_PORT_OFFSET if handover else ""))
        taken[port] = label

    if "postgresql" in sections:
        take(POSTGRESQL_PORT, None, "PostgreSQL")
    if sections.get("pgbouncer") and sections["pgbouncer"]["enabled"]:
        take(PGBOUNCER_PORT, None, "pgbouncer")
    if "nginx" in sections:
        for port in NGINX_PORTS:
            take(port, None, "nginx")
    if "web" in sections:
        take(sections["web"]["port"], host_where(host, "web.port"), "web_port")
    if "streaming" in sections:
        for index, port in enumerate(sections["streaming"]["ports"]):
            take(port, host_where(host, "streaming.ports[%d]" % index), "streaming_ports[%d]" % index)
    # Handover ports after every planned one, so that an error names the planned port it shadows.
    if "web" in sections:
        take(sections["web"]["port"] + HANDOVER_PORT_OFFSET, host_where(host, "web.port"),
             "the handover port of web_port, +%d" % HANDOVER_PORT_OFFSET, True)
    if "streaming" in sections:
        for index, port in enumerate(sections["streaming"]["ports"]):
            take(port + HANDOVER_PORT_OFFSET, host_where(host, "streaming.ports[%d]" % index),
                 "the handover port of streaming_ports[%d], +%d" % (index, HANDOVER_PORT_OFFSET), True)
    if "redis" in sections:
        for index, instance in enumerate(sections["redis"]["instances"]):
            take(instance["port"], host_where(host, "redis.instances[%d].port" % index),
                 "redis_instances[%d]" % index)
        if sections["redis"]["sentinel"]:
            take(sections["redis"]["sentinel_port"], host_where(host, "redis.sentinel_port"), "redis_sentinel_port")


def address_of(host: str, sections: Dict[str, Any]) -> str:
    return sections["mastodon"]["address"] or host


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def endpoint_host(name: str, host: str, hosts: Dict[str, Dict[str, Any]]) -> str:
    """An endpoint's host as the inventory names it, seen from ``host``: loopback is ``host`` itself, an address
    its host's name."""
    if name in LOOPBACK_NAMES:
        return host
    for other, sections in hosts.items():
        if sections["mastodon"]["address"] == name:
            return other
    return name


def database_servers(hosts: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    servers: Dict[str, Dict[str, Any]] = {}
    for host, sections in hosts.items():
        section = sections.get("postgresql")
        if section is None:
            continue
        role = section["role"]
        section = dict(section, limits_source="inventory", inventory_limits=None)
        live = section["live_limits"]
        if section["limits_from"] == "live" and live is not None and "error" not in live:
            section["inventory_limits"] = {key: section[key] for key in LIVE_LIMITS}
            section.update(live, limits_source="live")
        where = host_where(host, "postgresql")
        if role in servers:
            raise PlanInputError(where + ".role",
                                 "%s is already %s; the plan takes one primary and at most one replica"
                                 % (servers[role]["host"], role),
                                 "set postgresql_role: replica on the replica, or remove the second host from db")
        reserved = section["superuser_reserved_connections"] + section["reserved_connections"]
        if reserved >= section["max_connections"]:
            raise PlanInputError(where + ".superuser_reserved_connections",
                                 "%d reserved slots (superuser_reserved_connections %d + reserved_connections %d) "
                                 "leave none of max_connections %d: PostgreSQL refuses to start"
                                 % (reserved, section["superuser_reserved_connections"],
                                    section["reserved_connections"], section["max_connections"]),
                                 "raise postgresql_max_connections or lower the reserved slots")
        if pgtune.work_mem_limit_kb(section["ram"], section["max_connections"]) < WORK_MEM_MINIMUM_KB:
            raise PlanInputError(where + ".ram",
                                 "%s is too small for max_connections %d: even PostgreSQL's smallest work_mem "
                                 "(%dkB) per connection would pass twice the RAM"
                                 % (format_size_kb(section["ram"]), section["max_connections"], WORK_MEM_MINIMUM_KB),
                                 "give the host's real RAM, or lower postgresql_max_connections to %d or less"
                                 % (2 * section["ram"] // WORK_MEM_MINIMUM_KB))
        tuning = pgtune.tuning_kb(section["ram"], section["cpus"], section["max_connections"],
                                  section["disk_type"], section["database_size"], section["version"])
        # An explicit work_mem is kept as given, so the 2 x RAM rule can judge it.
        if section["work_mem"] is not None:
            tuning["work_mem"] = section["work_mem"]
        servers[role] = dict(section, host=host, address=address_of(host, sections), tuning=tuning,
                             work_mem_kb=tuning["work_mem"], work_mem=format_size_kb(tuning["work_mem"]))
    if "primary" not in servers:
        raise PlanInputError("group db, postgresql.role", "no host is the PostgreSQL primary",
                             "put the database host in group db (postgresql_role defaults to primary)")
    return servers


def process_groups(cluster: Dict[str, Any], host: str, sections: Dict[str, Any]) -> List[Dict[str, Any]]:
    version = cluster["version"]
    mastodon_where = host_where(host, "mastodon")
    host_env = sections["mastodon"]["environment"]
    env_production = sections["mastodon"]["env_production"]
    groups: List[Dict[str, Any]] = []

    def add(service: str, unit: str, sizing: Dict[str, Any], instances: int, rails: bool, **extra: Any) -> None:
        row = dict(host=host, service=service, unit=unit, instances=instances, rails=rails, **extra)
        row.update(sizing)
        row["processes"] = sizing["processes"] * instances
        row["connections"] = row["processes"] * row["pool"]
        groups.append(row)

    web = sections.get("web")
    if web is not None:
        unit = dict(host_env, WEB_CONCURRENCY=str(web["concurrency"]))
        if web["max_threads"] is not None:
            unit["MAX_THREADS"] = str(web["max_threads"])
        if web["db_pool"] is not None:
            unit["DB_POOL"] = str(web["db_pool"])
        add("web", "mastodon-web.service", mastodon.web_sizing(unit, env_production, mastodon_where), 1, True,
            port=web["port"], unit_environment=unit)
    streaming = sections.get("streaming")
    if streaming is not None:
        unit = dict(host_env)
        if streaming["db_pool"] is not None:
            unit["DB_POOL"] = str(streaming["db_pool"])
        for port in streaming["ports"]:
            add("streaming", "mastodon-streaming@%d.service" % port,
                mastodon.streaming_sizing(unit, env_production, mastodon_where), 1, False, port=port,
                unit_environment=unit)
    sidekiq = sections.get("sidekiq")
    if sidekiq is not None:
        seen: Dict[str, int] = {}
        for index, item in enumerate(sidekiq["queues"]):
            where = "%s.queues[%d]" % (host_where(host, "sidekiq"), index)
            queues = list(item["queues"] or []) + ([item["queue"]] if item["queue"] else [])
            if not queues:
                raise PlanInputError(where, "names no queue", "give it queue: NAME, e.g. queue: pull")
            for queue in queues:
                if queue in seen:
                    problem = ("queue %s is already sidekiq_queues[%d] on %s: both would write the unit "
                               "mastodon-sidekiq-%s@.service" % (queue, seen[queue], host, queue))
                    raise PlanInputError(where + ".queue", problem, "keep one entry per queue and raise its instances")
                seen[queue] = index
            unit = dict(host_env)
            if item["db_pool"] is not None:
                unit["DB_POOL"] = str(item["db_pool"])
            sizing = mastodon.sidekiq_sizing(version, item["concurrency"], unit, env_production, mastodon_where)
            add("sidekiq", "mastodon-sidekiq-%s@.service" % "-".join(queues), sizing, item["instances"], True,
                queues=queues, unit_environment=unit, shutdown_timeout=sidekiq["shutdown_timeout"],
                stop_timeout=sidekiq["stop_timeout"])
    return groups


def allocate_pgbouncers(hosts: Dict[str, Any], clients: Dict[str, Dict[str, int]],
                        servers: Dict[str, Dict[str, Any]], direct_total: int) -> Dict[str, Dict[str, Any]]:
    """Size each host's pgbouncer; auto pools share what the servers can take.

    An auto pool's share of a server is what is left below the 90 % line (or
    the usable capacity, when lower) after direct connections, hosts without
    pgbouncer and pgbouncers with a fixed pool: one connection per process
    and user each, the rest split by client count.
    """
    bouncers = {host: sections["pgbouncer"] for host, sections in hosts.items()
                if sections.get("pgbouncer") and sections["pgbouncer"]["enabled"] and clients[host]["primary"]}
    databases = 2 if "replica" in servers else 1
    shares: Dict[str, Optional[int]] = {host: None for host in bouncers}
    for role, server in servers.items():
        target = min(usable_connections(server), warning_line(server["max_connections"]))
        fixed = direct_total if role == "primary" else 0
        weights = {}
        for host in hosts:
            if host in bouncers:
                section = bouncers[host]
                if section["default_pool_size"] == AUTO:
                    weights[host] = clients[host][role]
                else:
                    fixed += _server_connections(section, section["default_pool_size"], clients[host][role])
            else:
                fixed += clients[host][role]
        weights = {host: weight for host, weight in weights.items() if weight}
        # Every pool gets its one connection per process and user first; the
        # rest is split by client count. Floors never push the sum over.
        floors = {host: bouncers[host]["processes"] * bouncers[host]["users"]
                  * (1 + bouncers[host]["reserve_pool_size"]) for host in weights}
        spread = max(target - fixed - sum(floors.values()), 0)
        total_weight = sum(weights.values())
        for host, weight in weights.items():
            share = floors[host] + spread * weight // total_weight
            shares[host] = share if shares[host] is None else min(shares[host], share)
    result = {}
    for host, section in bouncers.items():
        sized = pgbouncer_sizing(clients[host]["primary"], shares[host], section["processes"], databases,
                                 section["users"], section["reserve_pool_size"], section["default_pool_size"],
                                 section["max_client_conn"], section["limit_nofile"], section["max_db_connections"])
        pool = sized["default_pool_size"]
        result[host] = dict(
            section, host=host, databases=databases, clients=clients[host]["primary"],
            replica_clients=clients[host]["replica"], default_pool_size=pool,
            max_client_conn=sized["max_client_conn"], limit_nofile=sized["limit_nofile"],
            fd_need=sized["fd_need"], pool_size_auto=section["default_pool_size"] == AUTO,
            primary_connections=sized["server_connections"],
            replica_connections=_server_connections(section, pool, clients[host]["replica"]) if databases == 2 else 0,
            nofile_hard_limit=hosts[host]["mastodon"]["nofile_hard_limit"],
            # Written out where pgbouncer knows the setting, since its default there is not 0.
            # A version without the setting keeps a request above 0, which the rules refuse.
            max_prepared_statements=section["max_prepared_statements"]
            if section["max_prepared_statements"]
            or version_tuple(section["version"]) >= PGBOUNCER_PREPARED_STATEMENTS_SINCE else None,
            process_units=pgbouncer_process_units(section["processes"]),
        )
    return result


def pgbouncer_process_units(processes: int) -> List[Dict[str, Any]]:
    """How a host runs its pgbouncer processes: Debian's unit for one; for several, one instance of a template
    unit each, with its own ``peer_id``, configuration file and socket directory.

    The processes share 127.0.0.1:6432 with ``so_reuseport``, so a TCP connection (the console's too) reaches
    any one of them: each process's own figures are read through its socket directory.
    """
    if processes == 1:
        return [dict(PGBOUNCER_SINGLE_PROCESS)]
    return [{"peer_id": number, "unit": "pgbouncer@%d.service" % number,
             "config": "/etc/pgbouncer/pgbouncer-%d.ini" % number, "socket_dir": "/run/pgbouncer/%d" % number}
            for number in range(1, processes + 1)]


def _server_connections(section: Dict[str, Any], pool: int, clients: int) -> int:
    return pgbouncer_server_connections(section["processes"], section["users"], pool, section["reserve_pool_size"],
                                        section["max_db_connections"], clients)


def server_report(role: str, server: Dict[str, Any], sources: List[Dict[str, Any]],
                  concurrency: int) -> Dict[str, Any]:
    total = sum(source["connections"] for source in sources)
    line = warning_line(server["max_connections"])
    room = line - total
    return {
        "role": role,
        "host": server["host"],
        "max_connections": server["max_connections"],
        "superuser_reserved_connections": server["superuser_reserved_connections"],
        "reserved_connections": server["reserved_connections"],
        "usable": usable_connections(server),
        "warning_line": line,
        "total": total,
        # The room left, in one word each: "free" up to max_connections, "headroom" below the 90 % line (and the
        # sidekiq processes that fit there).
        "free": server["max_connections"] - total,
        "utilisation_percent": round(100.0 * total / server["max_connections"], 1),
        "sources": sources,
        "headroom": {
            "connections": room,
            "concurrency": concurrency,
            "sidekiq_processes": max(room, 0) // concurrency,
        },
        "work_mem": server["work_mem"],
        "work_mem_kb": server["work_mem_kb"],
        "ram_kb": server["ram"],
        "version": server["version"],
        "acknowledge_max_connections_over_1000": server["acknowledge_max_connections_over_1000"],
        "tuning": pgtune.formatted(server["tuning"]),
        "limits_from": server["limits_from"],
        "limits_source": server["limits_source"],
        "inventory_limits": server["inventory_limits"],
        "live_limits": server["live_limits"],
        "replication": replication.replication_report(server),
    }


def headroom_concurrency(processes: List[Dict[str, Any]]) -> int:
    counts = Counter(row["threads"] for row in processes if row["service"] == "sidekiq" and row["processes"])
    if not counts:
        return DEFAULT_HEADROOM_CONCURRENCY
    return max(counts, key=lambda threads: (counts[threads], threads))


def processes_and_clients(cluster: Dict[str, Any], hosts: Dict[str, Dict[str, Any]],
                          servers: Dict[str, Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, int]]]:
    """Every host's process groups, and the connections each host's processes open on each server."""
    processes: List[Dict[str, Any]] = []
    clients: Dict[str, Dict[str, int]] = {}
    for host in sorted(hosts):
        rows = process_groups(cluster, host, hosts[host])
        processes.extend(rows)
        clients[host] = {
            "primary": sum(row["connections"] for row in rows),
            "replica": sum(row["connections"] for row in rows if row["rails"]) if "replica" in servers else 0,
        }
    return processes, clients


def server_reports(servers: Dict[str, Dict[str, Any]], hosts: Dict[str, Dict[str, Any]],
                   bouncers: Dict[str, Dict[str, Any]], clients: Dict[str, Dict[str, int]], direct: Dict[str, int],
                   concurrency: int, replica_direct: Optional[Dict[str, int]] = None) -> Dict[str, Dict[str, Any]]:
    """Each server's report: who connects (a host's pgbouncer, or its processes directly, and the direct users:
    ``direct`` on the primary, ``replica_direct`` on the replica) and how many, against its capacity and its
    90 % line."""
    reports = {}
    for role, server in servers.items():
        sources = []
        for host in sorted(hosts):
            if host in bouncers:
                count = bouncers[host]["%s_connections" % role]
                via = "pgbouncer"
            else:
                count = clients[host][role]
                via = "direct"
            if count:
                sources.append({"host": host, "via": via, "connections": count})
        named = direct if role == "primary" else (replica_direct or {})
        sources.extend({"host": name, "via": "direct connection", "connections": count}
                       for name, count in sorted(named.items()) if count)
        reports[role] = server_report(role, server, sources, concurrency)
    if "replica" in reports:
        headroom = reports["primary"]["headroom"]
        headroom["sidekiq_processes"] = min(headroom["sidekiq_processes"],
                                            reports["replica"]["headroom"]["sidekiq_processes"])
    return reports


def mark_routes(processes: List[Dict[str, Any]], bouncers: Dict[str, Any], servers: Dict[str, Any]) -> None:
    """Whether each process group goes through its host's pgbouncer, and what it opens on the replica.

    Who reads from a replica follows Mastodon's source: the Rails processes, Puma and Sidekiq alike, when
    ``REPLICA_DB_*`` is set (config/database.yml's ``replica``, app/models/application_record.rb's
    ``connects_to``), through ``with_read_replica`` in controllers and in workers such as FeedInsertWorker and
    MergeWorker (app/helpers/database_helper.rb), each with a pool as large as its primary one. Streaming reads no
    ``REPLICA_*`` (streaming/database.js), and migrations and tootctl never get one (migrations.env drops them).
    """
    for row in processes:
        row["via"] = "pgbouncer" if row["host"] in bouncers else "direct"
        row["replica_connections"] = row["connections"] if row["rails"] and "replica" in servers else 0
