# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: pgbouncer_pools
short_description: Read pgbouncer's pools, stats and databases from its admin console, and judge them
version_added: 0.1.0
description:
  - Runs C(SHOW POOLS), C(SHOW STATS) and C(SHOW DATABASES) on pgbouncer's C(pgbouncer) console, over the simple
    query protocol the console speaks (psycopg's C(ClientCursor), autocommit, no C(SET)). Columns are read by
    name, as they change between pgbouncer versions.
  - Several processes sharing one port (C(so_reuseport)) are read one by one through their socket directories,
    since a TCP connection to the port reaches any one of them; their figures are added up.
  - Returns findings (warnings) for a pool with clients waiting (C(cl_waiting) above 0) and for a C(maxwait) above
    O(maxwait_warning_seconds).
  - Changes nothing; runs on the pgbouncer host.
requirements:
  - psycopg 3 (Debian's C(python3-psycopg)) on the host it runs on
options:
  login_host:
    description:
      - Address or socket directory pgbouncer listens on.
      - A list reads several processes of one pgbouncer, each through its own socket directory (the plan's
        C(process_units)).
    type: list
    elements: str
    default: [127.0.0.1]
  login_port:
    description: Port of pgbouncer.
    type: int
    default: 6432
  login_user:
    description: A user in pgbouncer's C(stats_users) or C(admin_users).
    type: str
    default: pgbouncer_stats
  login_password:
    description: Password of O(login_user).
    type: str
  maxwait_warning_seconds:
    description: C(maxwait) above which to warn.
    type: float
    default: 1.0
extends_documentation_fragment:
  - fediscale.mastodon.live_check
  - fediscale.mastodon.live_check.watch
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Read this host's pgbouncer
  fediscale.mastodon.pgbouncer_pools:
    login_password: "{{ pgbouncer_stats_password }}"
  register: pools

- name: Read every process of this host's pgbouncer, as the plan runs them
  fediscale.mastodon.pgbouncer_pools:
    login_host: "{{ plan_budget.pgbouncer[inventory_hostname].process_units | map(attribute='socket_dir') }}"
    login_password: "{{ pgbouncer_stats_password }}"
  register: pools
"""

RETURN = r"""
pools:
  description: C(SHOW POOLS) rows of every process, numbers as integers; C(process) is the O(login_host) read.
  returned: success
  type: list
  elements: dict
pool_totals:
  description:
    - One row per database and user, added up over the processes; C(maxwait) is the longest of any process.
  returned: success
  type: list
  elements: dict
stats:
  description: C(SHOW STATS) rows of every process, numbers as integers, with C(process).
  returned: success
  type: list
  elements: dict
databases:
  description: C(SHOW DATABASES) rows of every process, numbers as integers, with C(process).
  returned: success
  type: list
  elements: dict
processes:
  description: How many processes were read (the length of O(login_host)).
  returned: success
  type: int
clients:
  description:
    - Client connections of all pools and processes together (C(cl_active) plus C(cl_waiting)), the console's
      left out.
  returned: success
  type: int
servers:
  description: Server connections of all pools and processes together, in every state (C(sv_active), C(sv_idle),
    C(sv_used), C(sv_tested), C(sv_login)).
  returned: success
  type: int
peak_clients:
  description: With O(watch_seconds), the most client connections seen at once, all processes together.
  returned: when O(watch_seconds) is above 0
  type: int
peak_servers:
  description: With O(watch_seconds), the most server connections seen at once, all processes together.
  returned: when O(watch_seconds) is above 0
  type: int
findings:
  description: Each with C(rule), C(severity), C(message), C(hint) and C(numbers).
  returned: success
  type: list
  elements: dict
"""

import time
from decimal import Decimal

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fediscale.mastodon.plugins.module_utils.live import (
    add_up_pools, pgbouncer_findings, pool_clients, pool_servers)

try:
    import psycopg
except ImportError:
    psycopg = None


def _plain(value):
    """Console numbers arrive as numeric (Decimal) or text, depending on the column and version."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _rows(conn, command, process):
    cursor = conn.execute(command)
    names = [column.name for column in cursor.description]
    return [dict({name: _plain(value) for name, value in zip(names, values)}, process=process)
            for values in cursor.fetchall()]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            login_host=dict(type="list", elements="str", default=["127.0.0.1"]),
            login_port=dict(type="int", default=6432),
            login_user=dict(type="str", default="pgbouncer_stats"),
            login_password=dict(type="str", no_log=True),
            watch_seconds=dict(type="float", default=0),
            watch_interval=dict(type="float", default=0.2),
            maxwait_warning_seconds=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    if psycopg is None:
        module.fail_json(msg=missing_required_lib("psycopg (Debian: python3-psycopg)"))
    params = module.params
    if not params["login_host"]:
        module.fail_json(msg="login_host is empty: give the address or the socket directory of each process")
    several = len(params["login_host"]) > 1
    connections = {}
    try:
        for login_host in params["login_host"]:
            try:
                # The console speaks only the simple query protocol and takes no SET.
                connections[login_host] = psycopg.connect(
                    host=login_host, port=params["login_port"], user=params["login_user"],
                    password=params["login_password"], dbname="pgbouncer", autocommit=True,
                    cursor_factory=psycopg.ClientCursor, connect_timeout=10)
            except psycopg.Error as error:
                module.fail_json(msg="cannot read pgbouncer's console at %s:%s as %s: %s" % (
                    login_host, params["login_port"], params["login_user"], error))
        peak = watch(connections, several, params["watch_seconds"], params["watch_interval"])
        pools, stats, databases = [], [], []
        for login_host, conn in connections.items():
            process = login_host if several else None
            pools += _rows(conn, "SHOW POOLS", process)
            stats += _rows(conn, "SHOW STATS", process)
            databases += _rows(conn, "SHOW DATABASES", process)
    except psycopg.Error as error:
        module.fail_json(msg="reading pgbouncer's console failed: %s" % error)
    finally:
        for conn in connections.values():
            conn.close()
    result = dict(changed=False, pools=pools, pool_totals=add_up_pools(pools), stats=stats, databases=databases,
                  processes=len(params["login_host"]), clients=pool_clients(pools), servers=pool_servers(pools),
                  findings=pgbouncer_findings(pools, params["maxwait_warning_seconds"]))
    if peak:
        result.update(peak_clients=peak[0], peak_servers=peak[1])
    module.exit_json(**result)


def watch(connections, several, seconds, interval):
    """The most clients and the most server connections seen at once over ``seconds``; None when not watching."""
    if seconds <= 0:
        return None
    started, peak_clients, peak_servers = time.monotonic(), 0, 0
    while True:
        pools = [row for login_host, conn in connections.items()
                 for row in _rows(conn, "SHOW POOLS", login_host if several else None)]
        peak_clients, peak_servers = max(peak_clients, pool_clients(pools)), max(peak_servers, pool_servers(pools))
        if time.monotonic() - started >= seconds:
            return peak_clients, peak_servers
        time.sleep(interval)


if __name__ == "__main__":
    main()
