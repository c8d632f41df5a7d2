# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups with pgBackRest: what the primary archives and backs up, where to, on which schedule, and what the
budget counts for it.

Measured on Debian 13 (pgBackRest 2.55, PostgreSQL 17, ``pg_stat_activity`` sampled every 0.2 s): a backup holds
one connection to the server it copies for its whole run (``pgBackRest [backup]``) whatever its
``process-max`` (the extra processes copy files, they do not log in) and uses no WAL sender; ``archive-push``
opens no connection. (``check`` connects too, by pgBackRest's documentation; the role's ``stanza-create
--no-online`` does not.)
"""

from __future__ import annotations

from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from ansible_collections.fediscale.mastodon.plugins.module_utils import media
from ansible_collections.fediscale.mastodon.plugins.module_utils.connections import POSTGRESQL_PORT, address_of
from ansible_collections.fediscale.mastodon.plugins.module_utils.firewall import is_ip
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError, host_where

STANZA = "mastodon"
# A backup (the timer's, or one an operator starts: pgBackRest's lock lets one run at a time) and a ``check``
# an operator runs meanwhile.
PGBACKREST_CONNECTIONS = 2
CONFIG_FILE = "/etc/pgbackrest.conf"
# pgBackRest's server (Debian's pgbackrest.service), on a repository host and on the primary that backs up to it:
# the repository host reaches the primary's data directory through it, the primary its repository.
TLS_SERVER_PORT = 8432
# A repository under the data directory's parent shares its disk: one failure loses the data and its backups.
POSTGRESQL_DATA_ROOT = "/var/lib/postgresql"
# The repository's path inside a bucket, unless pgbackrest_repo_path gives one.
S3_DEFAULT_PATH = "/pgbackrest"
HTTPS_PORT = 443
FULL_INTERVAL_DAYS = {"weekly": 7, "daily": 1}
# systemd calendar events; the differential backups fill the days between the full ones, at the same hour, so
# the two never run at once.
BACKUP_TIME = "01:00:00"
CALENDARS = {
    "weekly": {"full": "Sun *-*-* " + BACKUP_TIME, "diff": "Mon..Sat *-*-* " + BACKUP_TIME},
    "daily": {"full": "*-*-* " + BACKUP_TIME},
}


def archive_command(stanza: str = STANZA) -> str:
    return "pgbackrest --stanza=%s archive-push %%p" % stanza


def plan_backups(servers: Dict[str, Dict[str, Any]], hosts: Dict[str, Dict[str, Any]],
                 cluster: Dict[str, Any]) -> Dict[str, Any]:
    """Each database host's backup plan (None where it does not archive)."""
    result: Dict[str, Optional[Dict[str, Any]]] = {}
    for role, server in sorted(servers.items()):
        host = server["host"]
        section = hosts[host]["pgbackrest"]
        where = host_where(host, "pgbackrest")
        if not section["archive"]:
            result[host] = None
            continue
        if role != "primary":
            raise PlanInputError(where + ".archive", "is on for the replica, which archives nothing with "
                                 "archive_mode on and takes its WAL from the primary",
                                 "set pgbackrest_archive: true on the primary (%s) and leave it off here"
                                 % servers["primary"]["host"])
        if server["limits_from"] == "live":
            raise PlanInputError(where + ".archive", "is on for a server the postgresql role does not manage "
                                 "(postgresql_limits_from: live), whose archive_command the collection cannot set",
                                 "set up its backups where it is managed, or let the postgresql role manage it")
        repo_host = _repository_host(host, section, hosts)
        s3 = _s3_repository(host, section, repo_host, cluster)
        standby = _standby(host, section, repo_host, servers, hosts)
        result[host] = {
            "stanza": STANZA,
            "config_file": CONFIG_FILE,
            "address": address_of(host, hosts[host]),
            "port": server.get("port", POSTGRESQL_PORT),
            "repo_path": section["repo_path"] or (S3_DEFAULT_PATH if s3 else None),
            # Where the repository is kept: posix (a directory on the host that keeps it) or s3 (a bucket).
            "repo_type": "s3" if s3 else "posix",
            "s3": s3,
            "repo_host": repo_host,
            "repo_host_address": address_of(repo_host, hosts[repo_host]) if repo_host else None,
            # pgBackRest runs backups where the repository is.
            "backup_host": repo_host or host,
            "tls_port": TLS_SERVER_PORT,
            # pgBackRest's units may then reach only each other (IPAddressAllow takes addresses, not names).
            "peers_by_ip": bool(repo_host) and is_ip(address_of(host, hosts[host]))
            and is_ip(address_of(repo_host, hosts[repo_host]))
            and (standby is None or is_ip(standby["address"])),
            # Where the backup copies the data directory from, besides the primary (None: the primary only).
            "standby": standby,
            "retention_days": section["retention_days"],
            "full_backups": section["full_backups"],
            "full_interval_days": FULL_INTERVAL_DAYS[section["full_backups"]],
            "calendars": CALENDARS[section["full_backups"]],
            "process_max": section["process_max"],
            "archive_timeout": section["archive_timeout"],
            "backup_max_age_hours": section["backup_max_age_hours"],
            "data_directory": "%s/%d/main" % (POSTGRESQL_DATA_ROOT, server["version"]),
            "settings": {"archive_mode": "on", "archive_command": archive_command(),
                         "archive_timeout": section["archive_timeout"]},
        }
    return result


def _repository_host(host: str, section: Dict[str, Any], hosts: Dict[str, Dict[str, Any]]) -> Optional[str]:
    name = section["repo_host"]
    if name is None:
        return None
    where = host_where(host, "pgbackrest") + ".repo_host"
    if name not in hosts:
        raise PlanInputError(where, "names %s, which is in none of the plan's groups" % name,
                             "add %s to group backup, or correct the name (the plan's hosts: %s)"
                             % (name, ", ".join(sorted(hosts))))
    if "backup" not in hosts[name]:
        raise PlanInputError(where, "names %s, which is not in group backup: the repository's play would not run "
                             "there" % name, "add %s to group backup" % name)
    return name


def _s3_repository(host: str, section: Dict[str, Any], repo_host: Optional[str],
                   cluster: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The bucket pgBackRest keeps the repository in, on the media's S3 storage, as its repo1-s3-* options take
    it: the endpoint's host, its port, the region and the URI style Paperclip uses there (None: no bucket)."""
    bucket = section["repo_s3_bucket"]
    if bucket is None:
        return None
    where = host_where(host, "pgbackrest") + ".repo_s3_bucket"
    if repo_host is not None:
        raise PlanInputError(where, "and pgbackrest_repo_host are both set: the repository is either in the bucket "
                             "or on %s's disk" % repo_host,
                             "unset one of them")
    if cluster["media"] != "s3":
        raise PlanInputError(where, "is set, and the media settings give no S3 storage (mastodon_media is %s) whose "
                             "endpoint and region the repository would use" % cluster["media"],
                             "set mastodon_media: s3 with its mastodon_s3_* settings, or keep the repository on a "
                             "disk (pgbackrest_repo_path) or a repository host (pgbackrest_repo_host)")
    origin = media.bucket_origin(dict(cluster, s3_bucket=bucket))
    if origin["scheme"] != "https":
        raise PlanInputError(where, "is set, and the media's S3 storage is reached over %s: pgBackRest speaks to S3 "
                             "only over TLS" % origin["scheme"],
                             "serve the storage over https (mastodon_s3_endpoint https://..., or "
                             "mastodon_s3_protocol: https)")
    path_style = origin["path"] != ""
    # The endpoint's host and port, without the bucket virtual-host style puts before it.
    netloc = origin["host"] if path_style else origin["host"][len(bucket) + 1:]
    parts = urlsplit("https://" + netloc)
    return {"bucket": bucket, "endpoint": parts.hostname, "port": parts.port or HTTPS_PORT,
            "region": cluster["s3_region"] or media.S3_DEFAULT_REGION,
            "uri_style": "path" if path_style else "host",
            # The backup units may reach only the storage when it is known by address.
            "address": parts.hostname if is_ip(parts.hostname) else None}


def _standby(host: str, section: Dict[str, Any], repo_host: Optional[str], servers: Dict[str, Dict[str, Any]],
             hosts: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not section["backup_from_standby"]:
        return None
    where = host_where(host, "pgbackrest") + ".backup_from_standby"
    if "replica" not in servers:
        raise PlanInputError(where, "is on, and the plan has no replica to copy the backups from",
                             "add the replica (postgresql_role: replica in group db), or set "
                             "pgbackrest_backup_from_standby: false")
    if repo_host is None:
        raise PlanInputError(where, "is on without pgbackrest_repo_host: pgBackRest copies from the standby only "
                             "from a repository host, which reaches both servers",
                             "set pgbackrest_repo_host to a host in group backup, or pgbackrest_backup_from_standby: "
                             "false")
    replica = servers["replica"]
    if replica["limits_from"] == "live":
        raise PlanInputError(where, "is on, and the replica %s is a server the postgresql role does not manage "
                             "(postgresql_limits_from: live), so nothing sets up pgBackRest's server there"
                             % replica["host"], "set pgbackrest_backup_from_standby: false")
    return {"host": replica["host"], "address": address_of(replica["host"], hosts[replica["host"]]),
            "port": replica.get("port", POSTGRESQL_PORT),
            "data_directory": "%s/%d/main" % (POSTGRESQL_DATA_ROOT, replica["version"])}


def plan_standbys(backups: Dict[str, Any]) -> Dict[str, Any]:
    """The replica a backup copies from: its pgBackRest server's plan (the repository host's pair, as for the
    primary)."""
    result: Dict[str, Any] = {}
    for primary, plan in sorted(backups.items()):
        if plan and plan["standby"]:
            standby = plan["standby"]
            result[standby["host"]] = dict(plan, primary=primary, address=standby["address"], port=standby["port"],
                                           data_directory=standby["data_directory"], settings={})
    return result


def plan_repositories(backups: Dict[str, Any], hosts: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Each repository host's plan: the primary it backs up, where it keeps the repository, when it runs the
    backups (None where no primary names it)."""
    result: Dict[str, Optional[Dict[str, Any]]] = {host: None for host in sorted(hosts) if "backup" in hosts[host]}
    for primary, plan in sorted(backups.items()):
        if plan and plan["repo_host"]:
            result[plan["repo_host"]] = dict(plan, primary=primary)
    return result


def replica_direct_connections(backups: Dict[str, Any]) -> Dict[str, int]:
    """pgBackRest's connections to the replica, where a backup copies from it (it also keeps its connection to the
    primary, which starts and stops the backup)."""
    return {"pgbackrest": PGBACKREST_CONNECTIONS} if any(plan and plan["standby"] for plan in backups.values()) else {}


def add_direct_connections(direct: Dict[str, int], backups: Dict[str, Any], given: Dict[str, Any]) -> None:
    """pgBackRest's connections to the primary, counted beside migrations and tootctl."""
    if not any(backups.values()):
        return
    if "pgbackrest" in given:
        raise PlanInputError("mastodon.direct_connections.pgbackrest",
                             "is counted by the plan when the primary archives with pgBackRest (%d: a backup and "
                             "a check at once)" % PGBACKREST_CONNECTIONS,
                             "remove pgbackrest from mastodon_direct_connections")
    direct["pgbackrest"] = PGBACKREST_CONNECTIONS
