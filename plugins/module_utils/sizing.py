# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizing of pgbouncer and nginx from the connections they carry."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import AUTO

PGBOUNCER_DEFAULT_POOL_SIZE = 20
# pgbouncer tracks protocol-level prepared statements in transaction mode from
# 1.21 (max_prepared_statements; 1.24's default is 200). Rails evicts its
# statement cache with SQL DEALLOCATE, which pgbouncer does not track, so the
# plan writes 0 and Mastodon gets PREPARED_STATEMENTS=false unless the admin
# opts in (pgbouncer_max_prepared_statements with its acknowledgement).
PGBOUNCER_PREPARED_STATEMENTS_SINCE = (1, 21)
# Several processes on one port need [peers] to route query cancellations.
PGBOUNCER_PEERS_SINCE = (1, 19)
PGBOUNCER_DEFAULT_MAX_CLIENT_CONN = 100
# Room for clients beyond today's plan (a deploy that briefly runs old and new
# processes side by side), and for sockets beyond clients and servers: listen
# sockets, the log, the admin console.
CLIENT_GROWTH_PERCENT = 20
FD_MARGIN = 64
# What pgbouncer itself adds in its start-up estimate ("max expected fd use"):
# 10 spare descriptors, the admin console's pool of 2, and, besides the
# Mastodon users, two more users per pool: the auth_file's stats user and
# pgbouncer's own admin user. Measured on pgbouncer 1.18: max_client_conn 100
# and pool 20 with one Mastodon user log 172.
PGBOUNCER_FD_SPARE = 10
PGBOUNCER_ADMIN_POOL = 2
PGBOUNCER_EXTRA_USERS = 2


def pgbouncer_fd_need(max_client_conn: int, pool_size: int, reserve_pool_size: int, databases: int,
                      users: int) -> int:
    """pgbouncer's own start-up estimate, with the reserve pool on top.

    max_client_conn + 10 + 2 + (pool + reserve) x databases x (users + 2).
    """
    known_users = users + PGBOUNCER_EXTRA_USERS
    return (max_client_conn + PGBOUNCER_FD_SPARE + PGBOUNCER_ADMIN_POOL
            + (pool_size + reserve_pool_size) * databases * known_users)


def pgbouncer_server_connections(processes: int, users: int, pool_size: int, reserve_pool_size: int,
                                 max_db_connections: int = 0, clients: Optional[int] = None) -> int:
    """Server connections of one host's pgbouncer processes to one database.

    Each process opens up to (pool + reserve) per user, or max_db_connections
    per database when that is lower (0: no cap). pgbouncer opens a server
    connection only for a client that needs one (min_pool_size 0), so the
    host never opens more than its ``clients`` (doc/config.md, default_pool_size
    and min_pool_size).
    """
    per_process = users * (pool_size + reserve_pool_size)
    if max_db_connections:
        per_process = min(per_process, max_db_connections)
    total = processes * per_process
    return total if clients is None else min(total, clients)


def pgbouncer_sizing(local_clients: int, server_share: Optional[int] = None, processes: int = 1,
                     databases: int = 1, users: int = 1, reserve_pool_size: int = 0,
                     default_pool_size: Any = AUTO, max_client_conn: Any = AUTO,
                     limit_nofile: Any = AUTO, max_db_connections: int = 0) -> Dict[str, int]:
    """Settings of each pgbouncer process on a host.

    ``local_clients``: connections the host's Mastodon processes open into
    pgbouncer (their pools, added up). ``server_share``: server connections
    this host may open to one database server, all processes together; None
    means no limit beyond pgbouncer's default.

    ``default_pool_size`` (auto): pgbouncer's default 20, lowered to the
    host's share per process and user, never above the clients a process
    serves, at least 1. ``max_client_conn`` (auto): every local client
    reaches any one process (SO_REUSEPORT does not balance evenly) plus
    CLIENT_GROWTH_PERCENT, at least pgbouncer's default 100.
    ``limit_nofile`` (auto): the file-descriptor need plus FD_MARGIN.
    ``server_connections``: to the database server the ``local_clients`` use,
    never more than they are.
    """
    if default_pool_size == AUTO:
        pool = PGBOUNCER_DEFAULT_POOL_SIZE
        if server_share is not None:
            pool = min(pool, server_share // (processes * users) - reserve_pool_size)
        pool = min(pool, -(-local_clients // processes))
        default_pool_size = max(pool, 1)
    if max_client_conn == AUTO:
        max_client_conn = max(PGBOUNCER_DEFAULT_MAX_CLIENT_CONN,
                              local_clients + -(-local_clients * CLIENT_GROWTH_PERCENT // 100))
    fd_need = pgbouncer_fd_need(max_client_conn, default_pool_size, reserve_pool_size, databases, users)
    if limit_nofile == AUTO:
        limit_nofile = fd_need + FD_MARGIN
    return {
        "default_pool_size": default_pool_size,
        "reserve_pool_size": reserve_pool_size,
        "max_client_conn": max_client_conn,
        "fd_need": fd_need,
        "limit_nofile": limit_nofile,
        "server_connections": pgbouncer_server_connections(processes, users, default_pool_size, reserve_pool_size,
                                                           max_db_connections, local_clients),
    }


def nginx_sizing(worker_connections: Any, worker_rlimit_nofile: Any = AUTO, limit_nofile: Any = AUTO,
                 expected_clients: int = 2048) -> Dict[str, int]:
    """A proxied client holds two connections (client and upstream), and one worker may get most clients.

    worker_connections >= 2 x expected clients; worker_rlimit_nofile >= 2 x worker_connections.
    """
    if worker_connections == AUTO:
        worker_connections = 2 * expected_clients
    if worker_rlimit_nofile == AUTO:
        worker_rlimit_nofile = 2 * worker_connections
    if limit_nofile == AUTO:
        limit_nofile = worker_rlimit_nofile
    return {
        "worker_connections": worker_connections,
        "worker_rlimit_nofile": worker_rlimit_nofile,
        "limit_nofile": limit_nofile,
    }
