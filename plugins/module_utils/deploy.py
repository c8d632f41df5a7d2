# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each host deploys, from the plan: pgbouncer's databases and listeners, PostgreSQL's settings and
pg_hba clients, nginx's limits and upstreams, and each app host's units and environment.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils import mastodon, media, pgtune, replication, tls
from ansible_collections.fediscale.mastodon.plugins.module_utils.connections import (
    HANDOVER_PORT_OFFSET, PGBOUNCER_PORT, POSTGRESQL_PORT, address_of,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sizing import nginx_sizing


def replica_alias(db_name: str) -> str:
    """The name a local pgbouncer gives the replica's database (its primary twin keeps DB_NAME)."""
    return db_name + "_replica"


def pgbouncer_databases(cluster: Dict[str, Any], servers: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The [databases] entries of every pgbouncer: the primary under DB_NAME, the replica under its alias."""
    entries = [{"alias": cluster["db_name"], "role": "primary", "host": servers["primary"]["address"],
                "port": POSTGRESQL_PORT, "dbname": cluster["db_name"]}]
    if "replica" in servers:
        entries.append({"alias": replica_alias(cluster["db_name"]), "role": "replica",
                        "host": servers["replica"]["address"], "port": POSTGRESQL_PORT, "dbname": cluster["db_name"]})
    return entries


# Linux's net.core.somaxconn since 5.4 (Debian 12 and 13 run 6.1 and 6.12): listen() cuts a longer backlog to it,
# silently. The listeners the collection leaves at their defaults stay below it (Redis 511, nginx 511, pgbouncer
# 128, Puma 1024); PostgreSQL's grows with max_connections.
KERNEL_SOMAXCONN = 4096


def postgresql_listen_backlog(max_connections: int) -> int:
    """PostgreSQL listens with twice max_connections (src/backend/libpq/pqcomm.c)."""
    return 2 * max_connections


def postgresql_hosts(cluster: Dict[str, Any], servers: Dict[str, Any], hosts: Dict[str, Dict[str, Any]],
                     app_hosts: List[str], sslmodes: Dict[str, Optional[str]],
                     backups: Dict[str, Any], standbys: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """What the postgresql role writes on each database host: settings (archiving when it backs up), and who may
    connect and how (clients on another host over TLS when their sslmode encrypts)."""
    result = {}
    for role, server in servers.items():
        settings = dict(pgtune.formatted(server["tuning"]),
                        superuser_reserved_connections=server["superuser_reserved_connections"])
        if server["version"] >= 16:
            settings["reserved_connections"] = server["reserved_connections"]
        settings.update(replication.replication_settings(server))
        if role == "replica" and server["limits_from"] == "inventory":
            settings.update(replication.standby_settings(servers["primary"], server, sslmodes["primary"],
                                                         tls.CA_FILE))
        if backups.get(server["host"]):
            settings.update(backups[server["host"]]["settings"])
        encrypted = sslmodes[role] not in (None, "disable")
        if encrypted and server["limits_from"] == "inventory":
            settings.update(ssl="on", ssl_cert_file=tls.CERTIFICATE_FILE, ssl_key_file=tls.KEY_FILE)
        # pgbouncer and the direct connections (migrations, tootctl) come from the app hosts.
        clients = sorted({hba_address(address_of(host, hosts[host])) for host in app_hosts})
        result[server["host"]] = {
            "role": role, "version": server["version"], "address": server["address"], "port": POSTGRESQL_PORT,
            "database": cluster["db_name"], "user": cluster["db_user"], "settings": settings,
            "clients": clients,
            "hba": [{"type": "hostssl" if encrypted and not tls.is_loopback(client.split("/")[0]) else "host",
                     "address": client} for client in clients],
            # Mastodon's processes on the database host itself may log in as the official guide has them: by
            # peer, over the socket, as the system user of Mastodon's role name.
            "local_peer": server["host"] in app_hosts,
            "replication": replication_of(role, servers, sslmodes["primary"]),
            "backup": backups.get(server["host"]),
            # pgBackRest's server on the replica a backup copies from.
            "backup_standby": standbys.get(server["host"]),
            # Raised only past the kernel's default, never lowered.
            "somaxconn": max(postgresql_listen_backlog(server["max_connections"]), KERNEL_SOMAXCONN)
            if postgresql_listen_backlog(server["max_connections"]) > KERNEL_SOMAXCONN else None,
        }
    return result


def replication_of(role: str, servers: Dict[str, Any], sslmode: Optional[str]) -> Optional[Dict[str, Any]]:
    """Who streams from whom: on the primary, its replica's slot and the pg_hba line that admits it (hostssl when
    the primary's clients encrypt); on the replica, where the role copies the primary from and to."""
    if "replica" not in servers:
        return None
    primary, replica = servers["primary"], servers["replica"]
    common = {"user": replication.REPLICATION_USER, "slot": replication.slot_name(replica["host"]),
              "primary": primary["host"], "replica": replica["host"], "max_lag_seconds": replica["replica_max_lag"],
              "data_directory": replication.data_directory(servers[role]["version"])}
    if role == "primary":
        address = hba_address(replica["address"])
        encrypted = sslmode not in (None, "disable") and not tls.is_loopback(replica["address"])
        return dict(common, hba={"type": "hostssl" if encrypted else "host", "address": address})
    return dict(common, passfile=replication.passfile(replica["version"]),
                copy_directory=replication.data_directory(replica["version"]) + replication.COPY_SUFFIX,
                primary_address=primary["address"], port=POSTGRESQL_PORT)


def hba_address(address: str) -> str:
    """A pg_hba.conf ADDRESS field: an IP as a single-host CIDR, a name as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return "%s/%d" % (ip, ip.max_prefixlen)


def bind_address(host: str, hosts: Dict[str, Dict[str, Any]], nginx: Dict[str, Any]) -> str:
    """Where Puma and streaming listen (BIND): loopback, unless nginx runs on another host."""
    if set(nginx) <= {host}:
        return "127.0.0.1"
    return address_of(host, hosts[host])


def upstreams(proxy: str, processes: List[Dict[str, Any]], binds: Dict[str, str]) -> Dict[str, List[str]]:
    """nginx's upstream servers: every Puma, and every streaming instance (balanced with least_conn); each with
    its handover port as a backup server, which answers only while a restart replaces the planned one."""
    servers: Dict[str, List[str]] = {"web_upstream": [], "streaming_upstream": [], "web_backup_upstream": [],
                                     "streaming_backup_upstream": []}
    for row in processes:
        if row["service"] in ("web", "streaming"):
            servers[row["service"] + "_upstream"].append("%s:%d" % (binds[row["host"]], row["port"]))
            servers[row["service"] + "_backup_upstream"].append(
                "%s:%d" % (binds[row["host"]], row["port"] + HANDOVER_PORT_OFFSET))
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
            units["web"] = {"unit": row["unit"], "port": row["port"],
                            "handover_port": row["port"] + HANDOVER_PORT_OFFSET, "environment": {
                "WEB_CONCURRENCY": str(row["processes"]), "MAX_THREADS": str(row["threads"]),
                "DB_POOL": str(row["pool"]), "PORT": str(row["port"])}}
        elif row["service"] == "streaming":
            units["streaming"].append({"unit": row["unit"], "port": row["port"],
                                       "handover_unit": "mastodon-streaming@%d.service"
                                                        % (row["port"] + HANDOVER_PORT_OFFSET),
                                       "handover_port": row["port"] + HANDOVER_PORT_OFFSET,
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


def environment(host: str, sections: Dict[str, Any], cluster: Dict[str, Any], servers: Dict[str, Any],
                bouncer: Optional[Dict[str, Any]], redis: Dict[str, Any],
                bind: str, sslmodes: Dict[str, Optional[str]]) -> Dict[str, Dict[str, str]]:
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
    env.update(tls.client_environment(sslmodes["primary"], bouncer is not None))
    env.update(redis["settings"])
    env.update(tls.redis_client_environment(redis["configurations"]))
    # Read by Ruby only (Puma, Sidekiq, tootctl); streaming's Node ignores it.
    env["RUBY_YJIT_ENABLE"] = "1" if mastodon.yjit_enabled(cluster["yjit"], cluster["version"]) else "0"
    if cluster["trusted_proxy_ip"]:
        env["TRUSTED_PROXY_IP"] = cluster["trusted_proxy_ip"]
    # The credentials are secrets: the app role adds them to the file, never the plan.
    env.update(media.environment(cluster))
    # The admin's own unit-wide variables win: the rules check what they set.
    env.update(sections["mastodon"]["environment"])
    migrations = dict(env, **direct)
    for name in ("REPLICA_DB_HOST", "REPLICA_DB_PORT", "REPLICA_DB_NAME", "DB_SSLMODE", "NODE_EXTRA_CA_CERTS"):
        migrations.pop(name, None)
    migrations.update(tls.client_environment(sslmodes["primary"], False))
    migrations.pop("NODE_EXTRA_CA_CERTS", None)
    return {"units": env, "migrations": migrations}


def nginx_hosts(hosts: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Each proxy's nginx with its limits sized (upstreams come later, once every app host's bind is known)."""
    nginx = {}
    for host, sections in sorted(hosts.items()):
        if sections.get("nginx") is not None:
            section = sections["nginx"]
            nginx[host] = dict(section, **nginx_sizing(section["worker_connections"], section["worker_rlimit_nofile"],
                                                       section["limit_nofile"], section["expected_clients"]),
                               nofile_hard_limit=sections["mastodon"]["nofile_hard_limit"])
    return nginx


def add_pgbouncer_listeners(bouncers: Dict[str, Dict[str, Any]], cluster: Dict[str, Any],
                            servers: Dict[str, Any], sslmodes: Dict[str, Optional[str]]) -> None:
    """Where each pgbouncer listens, the databases it serves and how it reaches them (server_tls_sslmode is one
    setting for every server: the primary's)."""
    databases = pgbouncer_databases(cluster, servers)
    for bouncer in bouncers.values():
        bouncer.update(listen_addr="127.0.0.1", listen_port=PGBOUNCER_PORT, database_entries=databases,
                       user=cluster["db_user"], server_tls_sslmode=sslmodes["primary"],
                       server_tls_ca_file=tls.CA_FILE if sslmodes["primary"] in tls.VERIFYING else None)
