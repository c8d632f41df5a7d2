# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: postgres_connections
short_description: Read PostgreSQL's live connections and judge them against the plan
version_added: 0.1.0
description:
  - Reads C(max_connections), the reserved slots, the client connections of C(pg_stat_activity) by state and by
    client, and the wait events by backend type (leaving out C(Activity)), as the compendium's monitoring queries
    do.
  - Returns findings, warnings unless marked C(error) (C(live-max-connections-differs-from-plan),
    C(live-connections-over-plan)); utilisation over 90 %, more than 20 % idle, no idle connection behind
    pgbouncer (pgbouncer is the bottleneck), many C(WALWrite) waits (it suggests C(synchronous_commit = off)
    and never applies it).
  - Reads streaming replication too, on a primary C(pg_stat_replication) and C(pg_replication_slots) (with the
    WAL each slot retains), on a standby C(pg_stat_wal_receiver) and its replay lag; errors for a replica that
    does not stream (C(live-replica-not-streaming)), a warning past O(replica_max_lag_seconds)
    (C(live-replica-lag)), and one for an inactive slot that is not in O(replica_slots) and keeps WAL
    (C(live-replica-slot-unplanned), such as the slot of a replica taken out of the plan; it is never dropped).
  - With O(backup) (the plan's C(backups) entry of the host), reads the server's backups too (C(pg_stat_archiver),
    the WAL segments waiting to be archived (C(pg_ls_archive_statusdir)), C(pgbackrest info) of the stanza, and
    whether the repository shares the data directory's file system). Errors when archiving fails
    (C(live-backup-archive-failing)) or the stanza is unusable (C(live-backup-stanza-unusable)); warnings for no
    backup yet (C(live-backup-none)), a last backup older than C(backup_max_age_hours) (C(live-backup-old)),
    segments waiting longer than twice C(archive_timeout) (C(live-backup-archive-behind)) and a repository on the
    data directory's file system (C(live-backup-repository-beside-data)). It then runs on the database host as
    C(postgres), which reads the repository.
  - Changes nothing; runs where it can reach the server (the database host itself, by default over the local
    socket as C(postgres)).
requirements:
  - psycopg 3 (Debian's C(python3-psycopg)) on the host it runs on
options:
  login_host:
    description: Host or socket directory of the server.
    type: str
    default: /var/run/postgresql
  login_port:
    description: Port of the server.
    type: int
    default: 5432
  login_user:
    description: User to connect as; it must see every session in C(pg_stat_activity) (a superuser or C(pg_monitor)).
    type: str
    default: postgres
  login_password:
    description: Password of O(login_user), when the server asks for one.
    type: str
  login_db:
    description: Database to connect to.
    type: str
    default: postgres
  planned_max_connections:
    description: The C(max_connections) the plan assumed (C(servers.primary.max_connections) of the report).
    type: int
  planned_total:
    description: The connections the plan counts on this server (C(servers.primary.total) of the report).
    type: int
  behind_pgbouncer:
    description: Whether Mastodon's processes reach this server through pgbouncer.
    type: bool
    default: false
  utilisation_warning_percent:
    description: Utilisation of C(max_connections) above which to warn.
    type: int
    default: 90
  idle_warning_percent:
    description: Share of idle connections above which to warn (without pgbouncer).
    type: int
    default: 20
  wal_write_warning_percent:
    description: Share of active connections waiting on C(WALWrite) above which to warn.
    type: int
    default: 20
  replica_slots:
    description:
      - On a primary, the slots of its replicas (the plan's C(postgresql[PRIMARY].replication.slot)); each must
        exist, keep its WAL and have a WAL sender streaming to it.
    type: list
    elements: str
    default: []
  replica_max_lag_seconds:
    description: Replay lag of a replica above which to warn (the plan's C(replication.max_lag_seconds)).
    type: float
    default: 30
  backup:
    description:
      - The plan's C(backups) entry of this host (C(stanza), C(repo_path), C(data_directory),
        C(archive_timeout), C(backup_max_age_hours)); unset or null for a server the plan does not back up.
    type: dict
  fail_on_error:
    description: Fail when a finding is an error.
    type: bool
    default: false
extends_documentation_fragment:
  - fediscale.mastodon.live_check
  - fediscale.mastodon.live_check.watch
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Check the primary against the plan
  fediscale.mastodon.postgres_connections:
    planned_max_connections: "{{ plan_budget.servers.primary.max_connections }}"
    planned_total: "{{ plan_budget.servers.primary.total }}"
    behind_pgbouncer: true
  become: true
  become_user: postgres
  register: live
"""

RETURN = r"""
max_connections:
  description: The live C(max_connections).
  returned: success
  type: int
superuser_reserved_connections:
  description: The live C(superuser_reserved_connections).
  returned: success
  type: int
reserved_connections:
  description: The live C(reserved_connections) (PostgreSQL 16+; 0 before).
  returned: success
  type: int
usable:
  description: C(max_connections) minus both reserves.
  returned: success
  type: int
connections:
  description: Client connections open now (this module's own left out).
  returned: success
  type: int
states:
  description: Client connections by state (C(active), C(idle), C(idle in transaction), ...).
  returned: success
  type: dict
by_client:
  description: Client connections by user, database, client address and state, most first.
  returned: success
  type: list
  elements: dict
waits:
  description: Sessions by backend type and wait event, C(Activity) waits left out, most first.
  returned: success
  type: list
  elements: dict
peak:
  description:
    - With O(watch_seconds), the reading with the most client connections (C(connections)), those connections by
      user, database, client address and state (C(by_client)), and when it was taken (C(after_seconds)).
  returned: when O(watch_seconds) is above 0
  type: dict
replication:
  description:
    - C(role) (C(primary) or C(standby)); on a primary C(senders) (C(application_name), C(client_addr), C(state),
      C(replay_lag_seconds)) and C(slots) (C(slot_name), C(active), C(wal_status), C(retained_bytes),
      C(safe_wal_size)); on a standby C(receiver) (C(status), C(sender_host), C(slot_name)) and
      C(replay_lag_seconds) (0 when it has replayed all it received).
  returned: success
  type: dict
backup:
  description:
    - C(archiver) (C(pg_stat_archiver)'s counts, its last archived and failed segments, C(last_archived_age_seconds)
      and C(failing)), C(ready_segments) (C(count), C(oldest_age_seconds)), C(info) (C(status_code),
      C(status_message), C(last_backup) with C(label), C(type), C(stop) and C(age_seconds)) and
      C(repository_beside_data).
  returned: when O(backup) is given
  type: dict
findings:
  description: What the numbers say, each with C(rule), C(severity), C(message), C(hint) and C(numbers).
  returned: success
  type: list
  elements: dict
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fediscale.mastodon.plugins.module_utils.capacity import usable
from ansible_collections.fediscale.mastodon.plugins.module_utils.live import (
    backup_findings, last_backup, postgres_findings, replication_findings)

try:
    import psycopg
    from psycopg.rows import dict_row
except ImportError:
    psycopg = None

SETTINGS = """
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved_connections
"""
CLIENTS = """
SELECT usename, datname, host(client_addr) AS client_addr, coalesce(state, 'unknown') AS state, count(*) AS count
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
 GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC, 1, 2, 3, 4
"""
WAITS = """
SELECT backend_type, wait_event_type, wait_event, count(*) AS count
  FROM pg_stat_activity
 WHERE wait_event IS NOT NULL AND wait_event_type <> 'Activity' AND pid <> pg_backend_pid()
 GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3
"""

SENDERS = """
SELECT application_name, host(client_addr) AS client_addr, state,
       extract(epoch FROM replay_lag)::float AS replay_lag_seconds
  FROM pg_stat_replication ORDER BY 1
"""
SLOTS = """
SELECT slot_name, active, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes,
       safe_wal_size
  FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1
"""
RECEIVER = "SELECT status, sender_host, slot_name FROM pg_stat_wal_receiver"
# Nothing to replay means no lag, however long ago the primary last wrote.
STANDBY_LAG = """
SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float END AS replay_lag_seconds
"""


ARCHIVER = """
SELECT archived_count, last_archived_wal, failed_count, last_failed_wal,
       extract(epoch FROM now() - last_archived_time)::float AS last_archived_age_seconds,
       coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) AS failing
  FROM pg_stat_archiver
"""
READY_SEGMENTS = """
SELECT count(*) AS count, coalesce(extract(epoch FROM now() - min(modification)), 0)::float AS oldest_age_seconds
  FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'
"""


def read_backup(module, conn, plan):
    """What PostgreSQL and pgBackRest say of the server's backups."""
    rc, out, err = module.run_command(["pgbackrest", "--stanza=%s" % plan["stanza"], "--output=json", "info"])
    if rc != 0:
        info = dict(status_code=rc, status_message=(err or out).strip()[-500:], last_backup=None)
    else:
        stanzas = json.loads(out)
        status = stanzas[0]["status"] if stanzas else {"code": 1, "message": "missing stanza"}
        info = dict(status_code=status["code"], status_message=status["message"],
                    last_backup=last_backup(stanzas, time.time()))
    try:
        # A repository host's path is not on this host, nor is a bucket's.
        beside = not plan.get("repo_host") and not plan.get("s3") and os.stat(plan["repo_path"]).st_dev == os.stat(
            plan["data_directory"]).st_dev
    except OSError:
        beside = False
    return dict(archiver=conn.execute(ARCHIVER).fetchone(), ready_segments=conn.execute(READY_SEGMENTS).fetchone(),
                info=info, repository_beside_data=beside)


def read_replication(conn):
    if not conn.execute("SELECT pg_is_in_recovery() AS standby").fetchone()["standby"]:
        return dict(role="primary", senders=conn.execute(SENDERS).fetchall(), slots=conn.execute(SLOTS).fetchall())
    return dict(role="standby", receiver=conn.execute(RECEIVER).fetchone(),
                replay_lag_seconds=conn.execute(STANDBY_LAG).fetchone()["replay_lag_seconds"])


def watch(conn, seconds, interval):
    """The reading of CLIENTS with the most connections over ``seconds``; None when not watching."""
    if seconds <= 0:
        return None
    started = time.monotonic()
    peak = None
    while True:
        rows = conn.execute(CLIENTS).fetchall()
        count = sum(row["count"] for row in rows)
        elapsed = time.monotonic() - started
        if peak is None or count > peak["connections"]:
            peak = dict(connections=count, by_client=rows, after_seconds=round(elapsed, 1))
        if elapsed >= seconds:
            return peak
        time.sleep(interval)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            login_host=dict(type="str", default="/var/run/postgresql"),
            login_port=dict(type="int", default=5432),
            login_user=dict(type="str", default="postgres"),
            login_password=dict(type="str", no_log=True),
            login_db=dict(type="str", default="postgres"),
            planned_max_connections=dict(type="int"),
            planned_total=dict(type="int"),
            behind_pgbouncer=dict(type="bool", default=False),
            utilisation_warning_percent=dict(type="int", default=90),
            idle_warning_percent=dict(type="int", default=20),
            wal_write_warning_percent=dict(type="int", default=20),
            watch_seconds=dict(type="float", default=0),
            watch_interval=dict(type="float", default=0.2),
            replica_slots=dict(type="list", elements="str", default=[]),
            replica_max_lag_seconds=dict(type="float", default=30),
            backup=dict(type="dict"),
            fail_on_error=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if psycopg is None:
        module.fail_json(msg=missing_required_lib("psycopg (Debian: python3-psycopg)"))
    params = module.params
    try:
        with psycopg.connect(host=params["login_host"], port=params["login_port"], user=params["login_user"],
                             password=params["login_password"], dbname=params["login_db"], autocommit=True,
                             row_factory=dict_row, connect_timeout=10) as conn:
            peak = watch(conn, params["watch_seconds"], params["watch_interval"])
            settings = conn.execute(SETTINGS).fetchone()
            by_client = conn.execute(CLIENTS).fetchall()
            waits = conn.execute(WAITS).fetchall()
            replication = read_replication(conn)
            backup = read_backup(module, conn, params["backup"]) if params["backup"] else None
    except psycopg.Error as error:
        module.fail_json(msg="cannot read %s:%s as %s: %s" % (params["login_host"], params["login_port"],
                                                              params["login_user"], error))
    states = {}
    for row in by_client:
        states[row["state"]] = states.get(row["state"], 0) + row["count"]
    stats = dict(settings, states=states, waits=waits)
    findings = postgres_findings(stats, params["planned_max_connections"], params["planned_total"],
                                 params["behind_pgbouncer"], params["utilisation_warning_percent"],
                                 params["idle_warning_percent"], params["wal_write_warning_percent"],
                                 peak["connections"] if peak else None)
    findings += replication_findings(replication, params["replica_slots"], params["replica_max_lag_seconds"])
    if backup:
        findings += backup_findings(backup, params["backup"])
    result = dict(
        changed=False,
        usable=usable(settings["max_connections"], settings["superuser_reserved_connections"],
                      settings["reserved_connections"]),
        connections=sum(states.values()), states=states, by_client=by_client, waits=waits, replication=replication,
        findings=findings,
        **settings)
    if peak:
        result["peak"] = peak
    if backup:
        result["backup"] = backup
    errors = [finding for finding in findings if finding["severity"] == "error"]
    if errors and params["fail_on_error"]:
        module.fail_json(msg="; ".join(finding["message"] for finding in errors), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
