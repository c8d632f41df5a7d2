# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Taking over a host that already runs Mastodon: which of its units the run replaces, and what they add to the
budget while it does.

The official guide's units (Mastodon's dist/) and those listed in mastodon_replace_units are replaced by the
planned units of the same program on the host. While the run replaces them they run beside the planned
processes, straight to PostgreSQL (the guide sets no pgbouncer): a server's count during the change is its
planned total plus every such unit that runs, whatever order the roles take (each planned process is behind
its host's pgbouncer, whose pools the planned total already counts in full).
"""

from __future__ import annotations

import fnmatch
import shlex
from typing import Any, Dict, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils import mastodon
from ansible_collections.fediscale.mastodon.plugins.module_utils.connections import endpoint_host
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_plan import resolve_redis_settings
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import host_where

# The Redis configurations whose data a replaced unit must find again under the planned units: the base one
# (home feeds, settings) and Sidekiq's (the queued jobs). The cache may start empty.
KEPT_REDIS_CONFIGURATIONS = ("REDIS", "SIDEKIQ_REDIS")

# Mastodon's dist/ units, as the official installation guide installs them.
STOCK_UNITS = ("mastodon-web.service", "mastodon-sidekiq.service", "mastodon-streaming.service",
               "mastodon-streaming@*.service")
# Where the roles keep each replaced unit file, for fediscale.mastodon.rollback.
BACKUP_DIR = "/var/backups/fediscale-mastodon/units"
# The planned service that takes over from each program.
SERVICE_OF_PROGRAM = {"puma": "web", "sidekiq": "sidekiq", "streaming": "streaming"}


def is_stock(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in STOCK_UNITS)


def sidekiq_concurrency(arguments: List[str]) -> Optional[int]:
    """sidekiq -c N (or --concurrency N, -cN); None when not given."""
    for index, argument in enumerate(arguments):
        if argument in ("-c", "--concurrency") and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif argument.startswith("-c") and argument[2:].isdigit():
            value = argument[2:]
        elif argument.startswith("--concurrency="):
            value = argument.split("=", 1)[1]
        else:
            continue
        return int(value) if value.isdigit() else None
    return None


def unit_sizing(version: str, unit: Dict[str, Any], env_production: Dict[str, str], where: str) -> Dict[str, Any]:
    """What a running unit opens on PostgreSQL, by the same formulas as the planned units."""
    env = unit["environment"]
    if unit["program"] == "puma":
        sizing = mastodon.web_sizing(env, env_production, where)
    elif unit["program"] == "streaming":
        sizing = mastodon.streaming_sizing(env, env_production, where)
    else:
        sizing = mastodon.sidekiq_sizing(version, sidekiq_concurrency(unit["arguments"]), env, env_production, where)
    return dict(sizing, connections=sizing["processes"] * sizing["pool"])


def redis_endpoints(settings: Dict[str, str], host: str, hosts: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Where each kept Redis configuration of ``settings`` goes, as [host, port] (None with sentinels)."""
    resolved = resolve_redis_settings({name: value for name, value in settings.items() if "REDIS" in name}, [])
    result = {}
    for name in KEPT_REDIS_CONFIGURATIONS:
        endpoint = resolved[name]["endpoint"]
        result[name] = None if endpoint is None else [endpoint_host(endpoint[0], host, hosts), endpoint[1]]
    return result


def host_adoption(host: str, hosts: Dict[str, Dict[str, Any]], version: str) -> Optional[Dict[str, Any]]:
    """The units a host runs that are not the plan's, and what the run does with each.

    ``replace``: stock or listed, and the plan runs the same program on the host (the run takes it over);
    ``outside_plan``: anything else that runs or starts at boot (the rules refuse it).
    """
    sections = hosts[host]
    running = sections["mastodon"]["running_units"]
    if not running:
        return None
    listed = set(sections["mastodon"]["replace_units"])
    # What the running units read, as found on the host (the inventory's mastodon_env_production otherwise).
    env_production = sections["mastodon"]["running_env_production"]
    if env_production is None:
        env_production = sections["mastodon"]["env_production"]
    where = host_where(host, "mastodon") + ".running_units"
    replace, outside = [], []
    for unit in running:
        if unit["managed"] or not (unit["active"] or unit["enabled"]):
            continue
        service = SERVICE_OF_PROGRAM[unit["program"]]
        row = {
            "name": unit["name"], "program": unit["program"], "service": service, "active": unit["active"],
            "enabled": unit["enabled"], "path": unit["path"], "command": shlex.join(unit["arguments"]),
            "stock": is_stock(unit["name"]), "listed": unit["name"] in listed,
            # An instance's file is its template's: the backup keeps the file's own name.
            "backup": "%s/%s" % (BACKUP_DIR, (unit["path"] or unit["name"]).rsplit("/", 1)[-1]),
            "live_postgresql_connections": unit["live_postgresql_connections"],
        }
        row.update(unit_sizing(version, unit, env_production, "%s.%s" % (where, unit["name"])))
        # dotenv: the unit's own settings win over .env.production.
        row["redis"] = redis_endpoints(dict(env_production, **unit["environment"]), host, hosts)
        # A listed Puma or streaming unit under another name would hold the planned one's port: only the guide's
        # names, which the planned units take over in place, are replaced there.
        if (row["stock"] or row["listed"] and service == "sidekiq") and service in sections:
            replace.append(row)
        else:
            outside.append(row)
    if not replace and not outside:
        return None
    return {
        "replace": replace,
        "outside_plan": outside,
        "env_production": env_production,
        # The connections they add on the primary while they run beside the planned processes.
        "connections": sum(row["connections"] for row in replace if row["active"]),
        "backup_dir": BACKUP_DIR,
        "quiet_sidekiq": [row["name"] for row in replace if row["service"] == "sidekiq" and row["active"]],
    }


def adoptions(hosts: Dict[str, Dict[str, Any]], version: str) -> Dict[str, Dict[str, Any]]:
    result = {}
    for host in sorted(hosts):
        found = host_adoption(host, hosts, version)
        if found is not None:
            result[host] = found
    return result


def during_change(servers: Dict[str, Dict[str, Any]], adopted: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The primary's count while the run replaces running units: its planned total plus theirs."""
    primary = servers["primary"]
    units = [{"host": host, "unit": row["name"], "connections": row["connections"]}
             for host, found in sorted(adopted.items()) for row in found["replace"] if row["active"]]
    running = sum(row["connections"] for row in units)
    return {"host": primary["host"], "planned": primary["total"], "running_units": running,
            "total": primary["total"] + running, "units": units}


def add_planned_redis(adopted: Dict[str, Dict[str, Any]], configurations: Dict[str, Dict[str, Any]],
                      hosts: Dict[str, Dict[str, Any]]) -> None:
    """Beside each adopted host's units: where the planned units of that host send the same configurations, and
    whether a planned instance (which the redis role starts afresh) sits there."""
    for host, found in adopted.items():
        planned = {}
        for name in KEPT_REDIS_CONFIGURATIONS:
            configuration = configurations[name]
            endpoint = configuration["endpoint"]
            planned[name] = {
                "endpoint": None if endpoint is None else [endpoint_host(endpoint[0], host, hosts), endpoint[1]],
                "instance": configuration["instance"],
                "source": configuration["source"],
            }
        found["planned_redis"] = planned
