# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection budget of a cluster description, as plain data (JSON-ready); ``rules.check`` adds the findings.

One step per concern: ``connections`` (who opens how many PostgreSQL connections, and where), ``redis_plan``
(the Redis instances, sentinels and Mastodon's Redis settings), ``deploy`` (what each host deploys).
"""

from __future__ import annotations

from typing import Any, Dict

from ansible_collections.fediscale.mastodon.plugins.module_utils import (
    adoption, backups, connections, deploy, firewall, mastodon, media, tls,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_plan import plan_redis
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError, parse_description


def _check_modelled(cluster: Dict[str, Any]) -> None:
    if mastodon.version_outside_model(cluster["version"]) < 0:
        raise PlanInputError("mastodon.version", "Mastodon %s is older than %s, the oldest release the plan models: "
                             "its pools and processes differ (streaming ran STREAMING_CLUSTER_NUM workers)"
                             % (cluster["version"], mastodon.OLDEST_MODELLED),
                             "upgrade Mastodon to %s or later first" % mastodon.OLDEST_MODELLED)


def compute(description: Any) -> Dict[str, Any]:
    """The budget report of a cluster description, without findings."""
    parsed = parse_description(description)
    cluster, hosts = parsed["mastodon"], parsed["hosts"]
    _check_modelled(cluster)
    for host in sorted(hosts):
        connections.check_ports(host, hosts[host])

    servers = connections.database_servers(hosts)
    processes, clients = connections.processes_and_clients(cluster, hosts, servers)
    direct = mastodon.direct_connections(cluster["direct_connections"], cluster["tootctl_concurrency"],
                                         "mastodon.direct_connections")
    backup = backups.plan_backups(servers, hosts, cluster)
    backups.add_direct_connections(direct, backup, cluster["direct_connections"])
    bouncers = connections.allocate_pgbouncers(hosts, clients, servers, sum(direct.values()))
    server_reports = connections.server_reports(servers, hosts, bouncers, clients, direct,
                                                connections.headroom_concurrency(processes),
                                                backups.replica_direct_connections(backup))
    connections.mark_routes(processes, bouncers, servers)

    adopted = adoption.adoptions(hosts, cluster["version"])

    redis = plan_redis(hosts, cluster)
    adoption.add_planned_redis(adopted, redis["configurations"], hosts)
    nginx = deploy.nginx_hosts(hosts)
    app_hosts = [host for host in sorted(hosts) if any(s in hosts[host] for s in ("web", "streaming", "sidekiq"))]
    binds = {host: deploy.bind_address(host, hosts, nginx) for host in app_hosts}
    for host in nginx:
        nginx[host].update(deploy.upstreams(host, processes, binds))
        nginx[host]["media"] = media.nginx_media(cluster, hosts[host]["nginx"])
    encryption = tls.plan_tls(servers, hosts, app_hosts, redis["instances"], backup)
    deploy.add_pgbouncer_listeners(bouncers, cluster, servers, encryption["sslmode"])
    units = {host: deploy.app_units([row for row in processes if row["host"] == host], bouncers.get(host))
             for host in app_hosts}
    standbys = backups.plan_standbys(backup)
    postgresql = deploy.postgresql_hosts(cluster, servers, hosts, app_hosts, encryption["sslmode"], backup, standbys)
    return {
        "mastodon": cluster,
        "servers": server_reports,
        "processes": processes,
        "clients": clients,
        "pgbouncer": bouncers,
        "direct_connections": direct,
        "redis": redis,
        "nginx": nginx,
        "postgresql": postgresql,
        "backups": backup,
        "backup_repositories": backups.plan_repositories(backup, hosts),
        "backup_standbys": standbys,
        "firewall": firewall.plan_firewall(cluster, hosts, app_hosts, redis, nginx, units, binds, postgresql,
                                           backup),
        "tls": encryption,
        "media": media.report(cluster, hosts),
        "environment": {host: deploy.environment(host, hosts[host], cluster, servers, bouncers.get(host),
                                                 redis, binds[host], encryption["sslmode"])
                        for host in app_hosts},
        "units": units,
        "hosts": {host: sorted(section for section in hosts[host] if section != "mastodon") for host in sorted(hosts)},
        "debian": {host: hosts[host]["mastodon"]["debian_version"] for host in sorted(hosts)},
        "env_production": {host: hosts[host]["mastodon"]["env_production"] for host in sorted(hosts)},
        "inventory": parsed["inventory"],
        "adoption": adopted,
        "during_change": adoption.during_change(server_reports, adopted) if adopted else None,
    }
