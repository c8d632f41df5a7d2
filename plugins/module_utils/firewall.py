# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who may reach each listener the collection runs: the plan's edges, from which the firewall role writes one
nftables input rule per listener.

A listener accepts the hosts the plan connects to it, loopback, and, for the data tier, the inventory's
``mastodon_admin_addresses`` (a bastion, monitoring); any other host's connection is refused. Nothing else a host
receives or sends is filtered: Puma and Sidekiq fetch from and deliver to the whole internet, which is why an input
rule per listener fits and systemd's ``IPAddressDeny=`` (both directions, every port) does not. The edges:

- PostgreSQL: the app hosts (their pgbouncer, migrations and tootctl), the ones pg_hba.conf admits;
- a Redis instance: the app hosts, when Mastodon's settings name it or the sentinels of its set; the other members
  of its set (replication) and the sentinels' hosts (they watch and reconfigure it);
- a sentinel: the app hosts, when Mastodon's settings name sentinels; the other sentinels; the hosts of the set's
  members (the redis role asks the sentinels from there);
- Puma and streaming, with their handover ports: the proxies (nginx's upstreams), where they listen beyond loopback;
- pgBackRest's server, where the primary backs up to a repository host: on the primary the repository host (it
  reads the data directory for a backup), on the repository host the primary (it pushes WAL and reads the
  repository for a restore); on a replica that backups copy from, the repository host.

pgbouncer listens on loopback only, and nginx serves everyone: neither gets a rule.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Set

from ansible_collections.fediscale.mastodon.plugins.module_utils.connections import POSTGRESQL_PORT, address_of
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import AUTO

DATA_TIER = ("postgresql", "redis", "sentinel")


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def _redis_clients(redis: Dict[str, Any], app_hosts: List[str]) -> Dict[tuple, Set[str]]:
    """Per Redis instance (host, port): the hosts that connect to it."""
    instances = redis["instances"]
    sentinel_hosts = {item["host"] for item in redis["sentinel"]["sentinels"]}
    clients: Dict[tuple, Set[str]] = {(item["host"], item["port"]): set() for item in instances}
    for configuration in redis["configurations"].values():
        endpoint = configuration["endpoint"]
        if endpoint and endpoint[0] == "sentinel":
            used = [item for item in instances if item["sentinel_master"] == endpoint[1]]
        elif endpoint:
            used = [item for item in instances if (item["address"], item["port"]) == (endpoint[0], endpoint[1])]
        else:
            used = []
        for item in used:
            clients[(item["host"], item["port"])].update(app_hosts)
    for item in instances:
        if item["sentinel_master"] is None or not sentinel_hosts:
            continue
        peers = {other["host"] for other in instances if other["sentinel_master"] == item["sentinel_master"]}
        clients[(item["host"], item["port"])].update((peers | sentinel_hosts) - {item["host"]})
    return clients


def _sentinel_clients(redis: Dict[str, Any], app_hosts: List[str]) -> Set[str]:
    """The hosts that connect to the sentinels (each sentinel's own host aside)."""
    sentinel = redis["sentinel"]
    if not sentinel["sentinels"]:
        return set()
    hosts = {item["host"] for item in sentinel["sentinels"]}
    hosts |= {member["host"] for entry in sentinel["sets"] for member in entry["members"]}
    if any(item["endpoint"] and item["endpoint"][0] == "sentinel" for item in redis["configurations"].values()):
        hosts |= set(app_hosts)
    return hosts


def _listener(service: str, host: str, port: int, clients: Set[str], hosts: Dict[str, Dict[str, Any]],
              admin: List[str]) -> Dict[str, Any]:
    others = sorted(clients - {host})
    return {"service": service, "port": port, "clients": others,
            "addresses": sorted({address_of(client, hosts[client]) for client in others}),
            "admin_addresses": list(admin) if service in DATA_TIER else []}


def plan_firewall(cluster: Dict[str, Any], hosts: Dict[str, Dict[str, Any]], app_hosts: List[str],
                  redis: Dict[str, Any], nginx: Dict[str, Any], units: Dict[str, Any], binds: Dict[str, str],
                  postgresql: Dict[str, Any], backups: Dict[str, Any]) -> Dict[str, Any]:
    """The listeners of each host and who may reach them; ``enabled`` says whether the firewall role applies them.

    With ``mastodon_firewall: auto`` the firewall is on when every client of every listener has an IP address:
    nftables matches addresses, and a client known only by name would be cut off.
    """
    admin = cluster["admin_addresses"]
    listeners: Dict[str, List[Dict[str, Any]]] = {}
    for host in sorted(postgresql):
        # A primary also streams WAL to its replica.
        streams_to = postgresql[host]["replication"] if postgresql[host]["role"] == "primary" else None
        clients = set(app_hosts) | ({streams_to["replica"]} if streams_to else set())
        listeners.setdefault(host, []).append(_listener("postgresql", host, POSTGRESQL_PORT, clients, hosts, admin))
    for (host, port), clients in sorted(_redis_clients(redis, app_hosts).items()):
        listeners.setdefault(host, []).append(_listener("redis", host, port, clients, hosts, admin))
    sentinel_clients = _sentinel_clients(redis, app_hosts)
    for item in redis["sentinel"]["sentinels"]:
        listeners.setdefault(item["host"], []).append(
            _listener("sentinel", item["host"], item["port"], sentinel_clients, hosts, admin))
    for host, plan in sorted(backups.items()):
        if plan and plan["repo_host"]:
            pairs = [(host, plan["repo_host"]), (plan["repo_host"], host)]
            if plan["standby"]:
                pairs.append((plan["standby"]["host"], plan["repo_host"]))
            for server, client in pairs:
                listeners.setdefault(server, []).append(
                    _listener("pgbackrest", server, plan["tls_port"], {client}, hosts, admin))
    proxies = set(nginx)
    for host in app_hosts:
        if binds[host] == "127.0.0.1":
            continue
        ports = []
        if units[host]["web"]:
            ports.append(("puma", units[host]["web"]["port"]))
            ports.append(("puma", units[host]["web"]["handover_port"]))
        for item in units[host]["streaming"]:
            ports.extend([("streaming", item["port"]), ("streaming", item["handover_port"])])
        for service, port in ports:
            listeners.setdefault(host, []).append(_listener(service, host, port, proxies, hosts, admin))
    unaddressed = sorted({client for items in listeners.values() for item in items for client in item["clients"]
                          if not is_ip(address_of(client, hosts[client]))})
    setting = cluster["firewall"]
    enabled = bool(listeners) and (setting is True or (setting == AUTO and not unaddressed))
    return {"setting": setting, "enabled": enabled, "unaddressed": unaddressed, "admin_addresses": list(admin),
            "hosts": {host: sorted(items, key=lambda item: (item["port"], item["service"]))
                      for host, items in sorted(listeners.items())}}
