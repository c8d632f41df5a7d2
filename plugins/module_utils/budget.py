# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection budget: who opens how many PostgreSQL connections, and where.

    total on the primary = sum over hosts (pgbouncer server pools, or the
                           processes' own pools when a host has no pgbouncer)
                         + direct connections (migrations, tootctl, ...)

Every Rails process (web, sidekiq) opens a second pool of the same size on
the replica when there is one; streaming never does. ``compute`` returns the
report as plain data (JSON-ready); ``rules.check`` adds the findings.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any, Dict, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils import mastodon
from ansible_collections.fediscale.mastodon.plugins.module_utils import pgtune
from ansible_collections.fediscale.mastodon.plugins.module_utils.capacity import usable, warning_line
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    AUTO, LIVE_LIMITS, WORK_MEM_MINIMUM_KB, PlanInputError, format_size_kb, host_where, parse_description,
    version_tuple,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sizing import (
    PGBOUNCER_PREPARED_STATEMENTS_SINCE, nginx_sizing, pgbouncer_server_connections, pgbouncer_sizing,
)

PGBOUNCER_PORT = 6432
POSTGRESQL_PORT = 5432
NGINX_PORTS = (80, 443)
DEFAULT_HEADROOM_CONCURRENCY = 10
PGBOUNCER_SINGLE_PROCESS = {"peer_id": None, "unit": "pgbouncer.service", "config": "/etc/pgbouncer/pgbouncer.ini",
                            "socket_dir": "/run/pgbouncer"}


def usable_connections(server: Dict[str, Any]) -> int:
    return usable(server["max_connections"], server["superuser_reserved_connections"], server["reserved_connections"])


def check_ports(host: str, sections: Dict[str, Any]) -> None:
    """Every listener a host's sections plan needs a port of its own."""
    taken: Dict[int, str] = {}

    def take(port: int, where: Optional[str], label: str) -> None:
        if port in taken:
            raise PlanInputError(where or host_where(host, label), "port %d is also %s's on %s"
                                 % (port, taken[port], host), "give each service on a host its own port")
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
    if "redis" in sections:
        for index, instance in enumerate(sections["redis"]["instances"]):
            take(instance["port"], host_where(host, "redis.instances[%d].port" % index),
                 "redis_instances[%d]" % index)
        if sections["redis"]["sentinel"]:
            take(sections["redis"]["sentinel_port"], host_where(host, "redis.sentinel_port"), "redis_sentinel_port")


def _address(host: str, sections: Dict[str, Any]) -> str:
    return sections["mastodon"]["address"] or host


def _database_servers(hosts: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
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
        servers[role] = dict(section, host=host, address=_address(host, sections), tuning=tuning,
                             work_mem_kb=tuning["work_mem"], work_mem=format_size_kb(tuning["work_mem"]))
    if "primary" not in servers:
        raise PlanInputError("group db, postgresql.role", "no host is the PostgreSQL primary",
                             "put the database host in group db (postgresql_role defaults to primary)")
    return servers


def _process_groups(cluster: Dict[str, Any], host: str, sections: Dict[str, Any]) -> List[Dict[str, Any]]:
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


def _allocate_pgbouncers(hosts: Dict[str, Any], clients: Dict[str, Dict[str, int]],
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


def _server_report(role: str, server: Dict[str, Any], sources: List[Dict[str, Any]],
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
        "loose": server["max_connections"] - total,
        "spare": usable_connections(server) - total,
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
    }


def _headroom_concurrency(processes: List[Dict[str, Any]]) -> int:
    counts = Counter(row["threads"] for row in processes if row["service"] == "sidekiq" and row["processes"])
    if not counts:
        return DEFAULT_HEADROOM_CONCURRENCY
    return max(counts, key=lambda threads: (counts[threads], threads))


def _redis_url(instance: Optional[Dict[str, Any]]) -> Optional[str]:
    if instance is None:
        return None
    return "redis://%s:%d" % (instance["address"], instance["port"])


REDIS_PURPOSE_DEFAULTS = {
    "cache": {"maxmemory_policy": "allkeys-lru", "appendonly": False, "save": ""},
    "persistent": {"maxmemory_policy": "noeviction", "appendonly": True, "save": ""},
    "sidekiq": {"maxmemory_policy": "noeviction", "appendonly": True, "save": ""},
}
# Mastodon's three Redis configurations, by environment prefix.
REDIS_CONFIGURATIONS = {"REDIS": "base", "SIDEKIQ_REDIS": "sidekiq", "CACHE_REDIS": "cache"}


def redis_instance_settings(items: List[Dict[str, Any]], where: str) -> List[Dict[str, Any]]:
    """A host's Redis instances (parsed ``redis_instances``) with every setting its purpose implies.

    The redis role writes exactly these; the rules judge exactly these.
    """
    instances = []
    for index, item in enumerate(items):
        for key in ("name", "port"):
            clash = [other for other in instances if other[key] == item[key]]
            if clash:
                raise PlanInputError("%s[%d].%s" % (where, index, key),
                                     "%r is already used by instance %s" % (item[key], clash[0]["name"]),
                                     "each instance needs its own name and port")
        instance = dict(item)
        for key, value in REDIS_PURPOSE_DEFAULTS[item["purpose"]].items():
            if instance.get(key) is None:
                instance[key] = value
        instances.append(instance)
    return instances


def _redis_instances(hosts: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    instances = []
    for host, sections in sorted(hosts.items()):
        items = (sections.get("redis") or {}).get("instances", [])
        for instance in redis_instance_settings(items, host_where(host, "redis") + ".instances"):
            instance.update(host=host, address=_address(host, sections), version=sections["redis"]["version"],
                            server=sections["redis"]["server"])
            instances.append(instance)
    return instances


def sentinel_majority(sentinels: int) -> int:
    """Sentinels that make a majority: Sentinel needs one to authorise a failover, whatever the quorum."""
    return sentinels // 2 + 1


def redis_sentinel(hosts: Dict[str, Dict[str, Any]], cluster: Dict[str, Any],
                   instances: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The sentinels and the replicated sets they monitor.

    Every sentinel monitors every set. The instances that share a
    ``sentinel_master`` form a set; its first member by host name is the master
    a new set starts with. Later the sentinels decide, and the redis role asks
    them before it touches replication.
    """
    sentinels = [{"host": host, "address": _address(host, sections), "port": sections["redis"]["sentinel_port"]}
                 for host, sections in sorted(hosts.items())
                 if sections.get("redis") is not None and sections["redis"]["sentinel"]]
    quorum = cluster["redis_sentinel_quorum"]
    if quorum == AUTO:
        quorum = sentinel_majority(len(sentinels))
    sets: Dict[str, Dict[str, Any]] = {}
    for instance in instances:
        if instance["sentinel_master"] is None:
            continue
        entry = sets.setdefault(instance["sentinel_master"], {
            "name": instance["sentinel_master"], "members": [], "quorum": quorum,
            "down_after_ms": cluster["redis_sentinel_down_after_ms"]})
        entry["members"].append({key: instance[key] for key in ("host", "address", "port", "name", "purpose")})
    for entry in sets.values():
        first = entry["members"][0]
        entry["initial_master_host"] = first["host"]
        # What the redis_sentinel and redis_replication modules take.
        entry["monitor"] = {"name": entry["name"], "initial_master": "%s:%d" % (first["address"], first["port"]),
                            "quorum": quorum, "down_after_ms": entry["down_after_ms"]}
    return {"sentinels": sentinels, "sets": [sets[name] for name in sorted(sets)],
            "endpoints": ["%s:%d" % (item["address"], item["port"]) for item in sentinels]}


def _redis_target_settings(prefix: str, target: Dict[str, Any], sentinel: Dict[str, Any]) -> Dict[str, str]:
    """Mastodon's settings for one configuration: the sentinels when the target is in a monitored set."""
    if target["sentinel_master"] is not None and sentinel["sentinels"]:
        return {prefix + "_SENTINELS": ",".join("%s:%d" % (item["address"], item["port"])
                                                for item in sentinel["sentinels"]),
                prefix + "_SENTINEL_MASTER": target["sentinel_master"]}
    return {prefix + "_URL": _redis_url(target)}


def _redis(hosts: Dict[str, Dict[str, Any]], cluster: Dict[str, Any]) -> Dict[str, Any]:
    instances = _redis_instances(hosts)
    sentinel = redis_sentinel(hosts, cluster, instances)
    by_purpose: Dict[str, Dict[str, Any]] = {}
    for instance in instances:
        by_purpose.setdefault(instance["purpose"], instance)
    settings = cluster["redis_settings"]
    derived = settings is None
    if derived:
        targets = {
            "REDIS": by_purpose.get("persistent"),
            "SIDEKIQ_REDIS": by_purpose.get("sidekiq") or by_purpose.get("persistent"),
            "CACHE_REDIS": by_purpose.get("cache"),
        }
        settings = {}
        for prefix, target in targets.items():
            if target:
                settings.update(_redis_target_settings(prefix, target, sentinel))
    return {"instances": instances, "settings": settings, "derived": derived, "sentinel": sentinel,
            "configurations": resolve_redis_settings(settings, instances)}


def redis_sentinel_of(description: Any) -> Dict[str, Any]:
    """Only the sentinel part of a cluster description's plan: what the redis role needs on its own."""
    parsed = parse_description(description)
    return redis_sentinel(parsed["hosts"], parsed["mastodon"], _redis_instances(parsed["hosts"]))


def resolve_redis_settings(settings: Dict[str, str], instances: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Which endpoint each of Mastodon's Redis configurations uses, as lib/mastodon/redis_configuration.rb does.

    ``*_URL`` wins over ``*_HOST``/``*_PORT``; a sidekiq or cache configuration
    with neither URL, host nor sentinels falls back to the whole base
    configuration (a lone ``CACHE_REDIS_PORT`` is silently ignored).
    """
    resolved: Dict[str, Any] = {}
    for prefix in ("REDIS", "SIDEKIQ_REDIS", "CACHE_REDIS"):
        url = settings.get(prefix + "_URL")
        host = settings.get(prefix + "_HOST")
        sentinels = settings.get(prefix + "_SENTINELS")
        master = settings.get(prefix + "_SENTINEL_MASTER")
        ignored = []
        # Mastodon uses sentinels only with both the list and the master name; one alone is dropped silently.
        half_sentinel = ([name for name in (prefix + "_SENTINELS", prefix + "_SENTINEL_MASTER") if settings.get(name)]
                         if not url and bool(sentinels) != bool(master) else [])
        if url:
            endpoint = _endpoint_from_url(url)
            source = prefix + "_URL"
        elif sentinels and master:
            endpoint = ("sentinel", master)
            source = prefix + "_SENTINELS"
        elif host or prefix == "REDIS":
            endpoint = (host or "localhost", int(settings.get(prefix + "_PORT", 6379)))
            source = prefix + "_HOST" if host else "Mastodon's default localhost:6379"
        else:
            endpoint = resolved["REDIS"]["endpoint"]
            source = "the base REDIS_* configuration"
            ignored = [name for name in (prefix + "_PORT", prefix + "_DB", prefix + "_PASSWORD") if name in settings]
        if endpoint[0] == "sentinel":
            instance = next((item["name"] for item in instances if item["sentinel_master"] == endpoint[1]), None)
        else:
            instance = next((item["name"] for item in instances
                             if (item["address"], item["port"]) == tuple(endpoint)
                             or (item["host"], item["port"]) == tuple(endpoint)), None)
        resolved[prefix] = {"dataset": REDIS_CONFIGURATIONS[prefix], "endpoint": list(endpoint), "source": source,
                            "instance": instance, "ignored": ignored, "half_sentinel": half_sentinel}
    return resolved


def _endpoint_from_url(url: str) -> tuple:
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, colon, port = rest.rpartition(":")
    if not colon:
        return (rest, 6379)
    return (host, int(port) if port.isdigit() else 6379)


def replica_alias(db_name: str) -> str:
    """The name a local pgbouncer gives the replica's database (its primary twin keeps DB_NAME)."""
    return db_name + "_replica"


def _pgbouncer_databases(cluster: Dict[str, Any], servers: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The [databases] entries of every pgbouncer: the primary under DB_NAME, the replica under its alias."""
    entries = [{"alias": cluster["db_name"], "role": "primary", "host": servers["primary"]["address"],
                "port": POSTGRESQL_PORT, "dbname": cluster["db_name"]}]
    if "replica" in servers:
        entries.append({"alias": replica_alias(cluster["db_name"]), "role": "replica",
                        "host": servers["replica"]["address"], "port": POSTGRESQL_PORT, "dbname": cluster["db_name"]})
    return entries


def _postgresql_hosts(cluster: Dict[str, Any], servers: Dict[str, Any], hosts: Dict[str, Dict[str, Any]],
                      app_hosts: List[str]) -> Dict[str, Dict[str, Any]]:
    """What the postgresql role writes on each database host: settings and who may connect."""
    result = {}
    for role, server in servers.items():
        settings = dict(pgtune.formatted(server["tuning"]),
                        superuser_reserved_connections=server["superuser_reserved_connections"])
        if server["version"] >= 16:
            settings["reserved_connections"] = server["reserved_connections"]
        result[server["host"]] = {
            "role": role, "version": server["version"], "address": server["address"], "port": POSTGRESQL_PORT,
            "database": cluster["db_name"], "user": cluster["db_user"], "settings": settings,
            # pgbouncer and the direct connections (migrations, tootctl) come from the app hosts.
            "clients": sorted({hba_address(_address(host, hosts[host])) for host in app_hosts}),
        }
    return result


def hba_address(address: str) -> str:
    """A pg_hba.conf ADDRESS field: an IP as a single-host CIDR, a name as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return "%s/%d" % (ip, ip.max_prefixlen)


def _bind_address(host: str, hosts: Dict[str, Dict[str, Any]], nginx: Dict[str, Any]) -> str:
    """Where Puma and streaming listen (BIND): loopback, unless nginx runs on another host."""
    if set(nginx) <= {host}:
        return "127.0.0.1"
    return _address(host, hosts[host])


def _upstreams(proxy: str, processes: List[Dict[str, Any]], binds: Dict[str, str]) -> Dict[str, List[str]]:
    """nginx's upstream servers: every Puma, and every streaming instance (balanced with least_conn)."""
    servers: Dict[str, List[str]] = {"web_upstream": [], "streaming_upstream": []}
    for row in processes:
        if row["service"] in ("web", "streaming"):
            servers[row["service"] + "_upstream"].append("%s:%d" % (binds[row["host"]], row["port"]))
    return servers


def app_units(processes: List[Dict[str, Any]], bouncer: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The units the app roles write on one host (its ``processes``), each with its sizing environment, and
    the units they start after (the host's pgbouncer processes).

    Every sizing variable is written out, never left to Mastodon's defaults
    or to .env.production (Puma ignores some of them there: mastodon issue 28440).
    """
    after = ["network.target"] + [process["unit"] for process in (bouncer or {}).get("process_units", [])]
    units: Dict[str, Any] = {"web": None, "streaming": [], "sidekiq": [], "after": after}
    for row in processes:
        if row["service"] == "web":
            units["web"] = {"unit": row["unit"], "port": row["port"], "environment": {
                "WEB_CONCURRENCY": str(row["processes"]), "MAX_THREADS": str(row["threads"]),
                "DB_POOL": str(row["pool"]), "PORT": str(row["port"])}}
        elif row["service"] == "streaming":
            units["streaming"].append({"unit": row["unit"], "port": row["port"],
                                       "environment": {"DB_POOL": str(row["pool"])}})
        elif row["service"] == "sidekiq":
            template = row["unit"]
            units["sidekiq"].append({
                "queue": row["queues"][0] if len(row["queues"]) == 1 else row["queues"],
                "template": template,
                "instances": [template.replace("@.", "@%d." % number) for number in range(1, row["instances"] + 1)],
                "concurrency": row["threads"],
                "db_pool": row["pool"],
                "shutdown_timeout": row["shutdown_timeout"],
                "stop_timeout": row["stop_timeout"],
                "environment": {"DB_POOL": str(row["pool"]), "CONCURRENCY": str(row["threads"])},
            })
    return units


def _environment(host: str, sections: Dict[str, Any], cluster: Dict[str, Any], servers: Dict[str, Any],
                 bouncer: Optional[Dict[str, Any]], redis_settings: Dict[str, str],
                 bind: str) -> Dict[str, Dict[str, str]]:
    """Mastodon's database and Redis settings for a host's units, and the direct ones for migrations."""
    primary = servers["primary"]
    direct = {"DB_HOST": primary["address"], "DB_PORT": str(POSTGRESQL_PORT)}
    env = dict(direct, DB_NAME=cluster["db_name"], DB_USER=cluster["db_user"], BIND=bind)
    # Behind transaction pooling Mastodon prepares statements only where pgbouncer tracks them (an opt-in).
    prepared = "true" if bouncer is not None and bouncer["max_prepared_statements"] else "false"
    if bouncer is not None:
        env.update(DB_HOST="127.0.0.1", DB_PORT=str(PGBOUNCER_PORT))
        if bouncer["pool_mode"] != "session":
            env["PREPARED_STATEMENTS"] = prepared
    if "replica" in servers:
        if bouncer is not None:
            env.update(REPLICA_DB_HOST="127.0.0.1", REPLICA_DB_PORT=str(PGBOUNCER_PORT),
                       REPLICA_DB_NAME=replica_alias(cluster["db_name"]))
            if bouncer["pool_mode"] != "session":
                env["REPLICA_PREPARED_STATEMENTS"] = prepared
        else:
            env.update(REPLICA_DB_HOST=servers["replica"]["address"], REPLICA_DB_PORT=str(POSTGRESQL_PORT))
    env.update(redis_settings)
    # Read by Ruby only (Puma, Sidekiq, tootctl); streaming's Node ignores it.
    env["RUBY_YJIT_ENABLE"] = "1" if mastodon.yjit_enabled(cluster["yjit"], cluster["version"]) else "0"
    if cluster["trusted_proxy_ip"]:
        env["TRUSTED_PROXY_IP"] = cluster["trusted_proxy_ip"]
    # The admin's own unit-wide variables win: the rules check what they set.
    env.update(sections["mastodon"]["environment"])
    migrations = dict(env, **direct)
    for name in ("REPLICA_DB_HOST", "REPLICA_DB_PORT", "REPLICA_DB_NAME"):
        migrations.pop(name, None)
    return {"units": env, "migrations": migrations}


def compute(description: Any) -> Dict[str, Any]:
    """The budget report of a cluster description, without findings."""
    parsed = parse_description(description)
    cluster, hosts = parsed["mastodon"], parsed["hosts"]
    if mastodon.version_outside_model(cluster["version"]) < 0:
        raise PlanInputError("mastodon.version", "Mastodon %s is older than %s, the oldest release the plan models: "
                             "its pools and processes differ (streaming ran STREAMING_CLUSTER_NUM workers)"
                             % (cluster["version"], mastodon.OLDEST_MODELLED),
                             "upgrade Mastodon to %s or later first" % mastodon.OLDEST_MODELLED)
    for host in sorted(hosts):
        check_ports(host, hosts[host])
    servers = _database_servers(hosts)
    processes: List[Dict[str, Any]] = []
    clients: Dict[str, Dict[str, int]] = {}
    for host in sorted(hosts):
        rows = _process_groups(cluster, host, hosts[host])
        processes.extend(rows)
        clients[host] = {
            "primary": sum(row["connections"] for row in rows),
            "replica": sum(row["connections"] for row in rows if row["rails"]) if "replica" in servers else 0,
        }
    direct = mastodon.direct_connections(cluster["direct_connections"], cluster["tootctl_concurrency"],
                                         "mastodon.direct_connections")
    direct_total = sum(direct.values())
    bouncers = _allocate_pgbouncers(hosts, clients, servers, direct_total)
    concurrency = _headroom_concurrency(processes)

    server_reports = {}
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
        if role == "primary":
            sources.extend({"host": name, "via": "direct connection", "connections": count}
                           for name, count in sorted(direct.items()) if count)
        server_reports[role] = _server_report(role, server, sources, concurrency)
    if "replica" in server_reports:
        headroom = server_reports["primary"]["headroom"]
        headroom["sidekiq_processes"] = min(headroom["sidekiq_processes"],
                                            server_reports["replica"]["headroom"]["sidekiq_processes"])

    for row in processes:
        row["via"] = "pgbouncer" if row["host"] in bouncers else "direct"
        row["replica_connections"] = row["connections"] if row["rails"] and "replica" in servers else 0

    redis = _redis(hosts, cluster)
    nginx = {}
    for host, sections in sorted(hosts.items()):
        if sections.get("nginx") is not None:
            section = sections["nginx"]
            nginx[host] = dict(section, **nginx_sizing(section["worker_connections"], section["worker_rlimit_nofile"],
                                                       section["limit_nofile"], section["expected_clients"]),
                               nofile_hard_limit=sections["mastodon"]["nofile_hard_limit"])

    app_hosts = [host for host in sorted(hosts) if any(s in hosts[host] for s in ("web", "streaming", "sidekiq"))]
    processes_by_host: Dict[str, List[Dict[str, Any]]] = {}
    for row in processes:
        processes_by_host.setdefault(row["host"], []).append(row)
    binds = {host: _bind_address(host, hosts, nginx) for host in app_hosts}
    for host in nginx:
        nginx[host].update(_upstreams(host, processes, binds))
    pgbouncer_databases = _pgbouncer_databases(cluster, servers)
    for host, bouncer in bouncers.items():
        bouncer.update(listen_addr="127.0.0.1", listen_port=PGBOUNCER_PORT, database_entries=pgbouncer_databases,
                       user=cluster["db_user"])
    return {
        "mastodon": cluster,
        "servers": server_reports,
        "processes": processes,
        "clients": clients,
        "pgbouncer": bouncers,
        "direct_connections": direct,
        "redis": redis,
        "nginx": nginx,
        "postgresql": _postgresql_hosts(cluster, servers, hosts, app_hosts),
        "environment": {host: _environment(host, hosts[host], cluster, servers, bouncers.get(host), redis["settings"],
                                           binds[host])
                        for host in app_hosts},
        "units": {host: app_units(processes_by_host.get(host, []), bouncers.get(host)) for host in app_hosts},
        "hosts": {host: sorted(section for section in hosts[host] if section != "mastodon") for host in sorted(hosts)},
        "debian": {host: hosts[host]["mastodon"]["debian_version"] for host in sorted(hosts)},
        "env_production": {host: hosts[host]["mastodon"]["env_production"] for host in sorted(hosts)},
        "inventory": parsed["inventory"],
    }
