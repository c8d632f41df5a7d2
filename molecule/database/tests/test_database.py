"""Live PostgreSQL and pgbouncer state against the plan's report (budget.json of this converge)."""

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PASSWORD = "molecule-test-only"
STATS_PASSWORD = "molecule-stats-only"
REPORT = json.load(open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "plan", "budget.json")))
SERVER = REPORT["postgresql"]["database-db"]
BOUNCER = REPORT["pgbouncer"]["database-app"]
UNITS_KB = {"kB": 1, "8kB": 8, "MB": 1024, "GB": 1024 * 1024}


def kb(text):
    number, unit = re.fullmatch(r"(\d+)(kB|MB|GB)", text).groups()
    return int(number) * UNITS_KB[unit]


def psql(host, sql, user="postgres", dbname="postgres"):
    return host.run("runuser -u %s -- psql -XAtq -d %s -c %s" % (user, dbname, json.dumps(sql)))


def probe(host, sql):
    """In Mastodon's database, where the replica tests keep their rows (a table Mastodon's role owns)."""
    return psql(host, sql, dbname="mastodon_production")


# Each test runs once; it picks the hosts it needs from the same inventory.
testinfra_hosts = ["ansible://database-db"]


def other(host, name):
    return host.get_host("ansible://%s" % name, ansible_inventory=host.backend.ansible_inventory)


@pytest.fixture(scope="module")
def db(host):
    return host


@pytest.fixture(scope="module")
def app(host):
    return other(host, "database-app")


@pytest.fixture(scope="module")
def outsider(host):
    return other(host, "database-outsider")


def live_setting(db, name):
    """A setting in kB (memory) or as PostgreSQL shows it."""
    setting, unit = psql(db, "SELECT setting || '|' || coalesce(unit, '') FROM pg_settings WHERE name = '%s'"
                         % name).stdout.strip().split("|")
    return int(setting) * UNITS_KB[unit] if unit in UNITS_KB else setting


@pytest.mark.parametrize("name", sorted(SERVER["settings"]))
def test_live_setting_is_the_plans(db, name):
    planned = SERVER["settings"][name]
    live = live_setting(db, name)
    if isinstance(planned, str) and re.fullmatch(r"\d+(kB|MB|GB)", planned):
        assert live == kb(planned)
    else:
        assert str(live) == str(planned)


def test_nothing_waits_for_a_restart(db):
    assert psql(db, "SELECT count(*) FROM pg_settings WHERE pending_restart").stdout.strip() == "0"


def test_synchronous_commit_stays_on_unless_opted_in(db):
    assert psql(db, "SHOW synchronous_commit").stdout.strip() == "on"


def test_mastodon_role_and_database(db):
    owner = psql(db, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mastodon_production'")
    assert owner.stdout.strip() == "mastodon"
    secret = psql(db, "SELECT rolpassword FROM pg_authid WHERE rolname = 'mastodon'").stdout.strip()
    assert secret.startswith("SCRAM-SHA-256$4096:")


def connect(host, address, port, user, password, dbname="mastodon_production", sql="SELECT 1"):
    return host.run("PGPASSWORD=%s psql -XAtq 'host=%s port=%d user=%s dbname=%s connect_timeout=5' -c %s"
                    % (password, address, port, user, dbname, json.dumps(sql)))


def test_app_host_connects_directly_with_scram_for_migrations(app):
    result = connect(app, SERVER["address"], 5432, "mastodon", PASSWORD, sql="SELECT current_user")
    assert result.rc == 0 and result.stdout.strip() == "mastodon", result.stderr


def test_app_host_cannot_log_in_as_another_role(app):
    result = connect(app, SERVER["address"], 5432, "postgres", PASSWORD)
    assert result.rc != 0 and "no pg_hba.conf entry" in result.stderr


def test_host_outside_the_plan_is_refused(outsider):
    result = connect(outsider, SERVER["address"], 5432, "mastodon", PASSWORD)
    assert result.rc != 0
    assert 'no pg_hba.conf entry for host "172.30.42.203"' in result.stderr


def test_hba_rules_are_scram_only_and_tls_from_other_hosts(db):
    methods = psql(db, "SELECT DISTINCT type || ' ' || auth_method FROM pg_hba_file_rules").stdout.splitlines()
    assert sorted(methods) == ["hostssl scram-sha-256", "local peer"]


# --- TLS between hosts ---

CA_FILE = REPORT["tls"]["ca_file"]


def test_plain_text_from_another_host_is_refused(app):
    result = app.run("PGPASSWORD=%s psql -XAtq 'host=%s user=mastodon dbname=mastodon_production sslmode=disable "
                     "connect_timeout=5' -c 'SELECT 1'" % (PASSWORD, SERVER["address"]))
    assert result.rc != 0 and 'host "172.30.42.202"' in result.stderr and "no encryption" in result.stderr


def test_the_servers_certificate_names_its_address_and_chains_to_the_ca(app):
    result = app.run("PGPASSWORD=%s psql -XAtq 'host=%s user=mastodon dbname=mastodon_production sslmode=verify-full "
                     "sslrootcert=%s connect_timeout=5' -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
                     % (PASSWORD, SERVER["address"], CA_FILE))
    assert (result.rc, result.stdout.strip()) == (0, "t"), result.stderr
    ca = app.file(CA_FILE)
    assert (ca.mode, ca.user) == (0o644, "root")


def test_the_servers_key_is_readable_by_postgresql_only(db):
    key = db.file(REPORT["tls"]["key_file"])
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
    assert psql(db, "SHOW ssl_cert_file").stdout.strip() == REPORT["tls"]["certificate_file"]


SERVERS_QUERY = """
import json, sys, psycopg
with psycopg.connect("host=127.0.0.1 port=6432 dbname=mastodon_production user=mastodon password=%r") as client:
    client.execute("SELECT 1")
rows = []
for socket_dir in sys.argv[1:]:
    conn = psycopg.connect(host=socket_dir, port=6432, dbname="pgbouncer", user="pgbouncer_stats", password=%r,
                           autocommit=True, cursor_factory=psycopg.ClientCursor)
    cur = conn.execute("SHOW SERVERS")
    rows += [dict(zip([column.name for column in cur.description], row)) for row in cur.fetchall()]
print(json.dumps(rows, default=str))
""" % (PASSWORD, STATS_PASSWORD)


def test_pgbouncer_reaches_postgresql_over_verified_tls(app, db):
    servers = json.loads(python(app, SERVERS_QUERY, *[process["socket_dir"] for process in PROCESSES]))
    assert servers and all(row["tls"].startswith("TLSv1.") for row in servers), servers
    remote = psql(db, "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                      "WHERE a.client_addr IS NOT NULL AND a.usename = 'mastodon'").stdout.strip()
    assert remote.split("|")[1] == "t" and int(remote.split("|")[0]) >= 1, remote


def test_a_capture_on_the_wire_shows_no_login_or_query_text(db, app):
    db.run("rm -f /tmp/wire.pcap /tmp/wire.log; "
           "(timeout 60 tcpdump -i any -U -w /tmp/wire.pcap tcp port 5432 > /tmp/wire.log 2>&1 &)")
    # Capturing once it says so: on a loaded machine it takes longer than a fixed wait.
    wait_for(lambda: "listening on" in db.run("cat /tmp/wire.log").stdout)
    for address, port in (("127.0.0.1", 6432), (SERVER["address"], 5432)):
        assert connect(app, address, port, "mastodon", PASSWORD, sql="SELECT 'cleartext-canary-' || 42").rc == 0
    time.sleep(1)
    db.run("pkill -INT tcpdump")
    time.sleep(1)
    packets = db.run("tcpdump -r /tmp/wire.pcap 2>/dev/null | wc -l").stdout
    text = db.run("tcpdump -A -r /tmp/wire.pcap 2>/dev/null").stdout
    assert int(packets) > 10
    for secret in ("cleartext-canary", "mastodon_production", "SCRAM-SHA-256"):
        assert secret not in text, secret


# --- pgbouncer ---

def test_client_connects_through_pgbouncer_with_mastodons_password(app):
    result = connect(app, "127.0.0.1", 6432, "mastodon", PASSWORD, sql="SELECT current_user")
    assert result.rc == 0 and result.stdout.strip() == "mastodon", result.stderr


def test_wrong_password_is_refused_by_pgbouncer(app):
    result = connect(app, "127.0.0.1", 6432, "mastodon", "not-the-password")
    assert result.rc != 0 and "SASL authentication failed" in result.stderr


PROCESSES = BOUNCER["process_units"]
UNITS = [process["unit"] for process in PROCESSES]


def test_pgbouncer_listens_on_loopback_only_once_per_process(app):
    local_addresses = [line.split()[3] for line in app.run("ss -Hltn 'sport = :6432'").stdout.splitlines()]
    assert local_addresses == ["127.0.0.1:6432"] * BOUNCER["processes"]


def test_each_process_has_its_own_console_socket(app):
    listening = app.run("ss -Hlx").stdout
    for process in PROCESSES:
        assert "%s/.s.PGSQL.6432" % process["socket_dir"] in listening


ADMIN_QUERY = """
import json, sys, psycopg
# Connections to the shared port first: the kernel hands them to the processes, so each shows the pool.
for _ in range(20):
    psycopg.connect("host=127.0.0.1 port=6432 dbname=mastodon_production user=mastodon password=%r").close()
out = {}
for host in sys.argv[1:]:
    conn = psycopg.connect(host=host, port=6432, dbname="pgbouncer", user="pgbouncer_stats", password=%r,
                           autocommit=True, cursor_factory=psycopg.ClientCursor)
    out[host] = {}
    for command in ("SHOW POOLS", "SHOW CONFIG", "SHOW DATABASES", "SHOW PEERS"):
        cur = conn.execute(command)
        names = [column.name for column in cur.description]
        out[host][command] = [dict(zip(names, row)) for row in cur.fetchall()]
print(json.dumps(out, default=str))
""" % (PASSWORD, STATS_PASSWORD)


def python(host, script, *args):
    encoded = base64.b64encode(script.encode()).decode()
    result = host.run("echo %s | base64 -d | python3 - %s" % (encoded, " ".join(args)))
    assert result.rc == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def consoles(app):
    """Each process's console, read through its own socket directory."""
    return json.loads(python(app, ADMIN_QUERY, *[process["socket_dir"] for process in PROCESSES]))


@pytest.fixture(scope="module")
def console(consoles):
    return consoles[PROCESSES[0]["socket_dir"]]


def test_show_config_is_the_plans_in_every_process(consoles):
    for process in PROCESSES:
        config = {row["key"]: row["value"] for row in consoles[process["socket_dir"]]["SHOW CONFIG"]}
        for key in ("pool_mode", "default_pool_size", "reserve_pool_size", "max_client_conn", "max_db_connections"):
            assert config[key] == str(BOUNCER[key]), key
        assert config["auth_type"] == "scram-sha-256"
        assert config["unix_socket_dir"] == process["socket_dir"]
        # pgbouncer 1.21+ (Debian 13's 1.24 defaults to 200): written out as 0; 1.18 does not know the setting.
        assert config.get("max_prepared_statements") == (None if BOUNCER["max_prepared_statements"] is None else "0")
        if BOUNCER["processes"] > 1:
            assert (config["peer_id"], config["so_reuseport"]) == (str(process["peer_id"]), "1")


def test_every_process_knows_its_peers(consoles):
    if BOUNCER["processes"] == 1:
        pytest.skip("one pgbouncer process has no peers")
    expected = sorted((process["peer_id"], process["socket_dir"]) for process in PROCESSES)
    for process in PROCESSES:
        peers = consoles[process["socket_dir"]]["SHOW PEERS"]
        assert sorted((int(row["peer_id"]), row["host"]) for row in peers) == expected


def test_every_process_serves_the_mastodon_pool_in_transaction_mode(consoles):
    # A process shows a pool once a client has reached it: the 20 connections reached every one.
    modes = [row["pool_mode"] for console in consoles.values() for row in console["SHOW POOLS"]
             if (row["database"], row["user"]) == ("mastodon_production", "mastodon")]
    assert modes == ["transaction"] * BOUNCER["processes"]


def test_show_databases_points_at_the_primary(console):
    databases = {row["name"]: row for row in console["SHOW DATABASES"]}
    entry = databases["mastodon_production"]
    assert (entry["host"], int(entry["port"]), int(entry["pool_size"])) == (
        SERVER["address"], 5432, BOUNCER["default_pool_size"])
    replica = databases["mastodon_production_replica"]
    assert (replica["host"], replica["database"]) == (REPORT["postgresql"]["database-replica"]["address"],
                                                      "mastodon_production")


def test_auth_file_holds_secrets_not_passwords(app):
    userlist = app.file("/etc/pgbouncer/userlist.txt")
    assert (userlist.user, userlist.group, userlist.mode) == ("root", "postgres", 0o640)
    content = app.run("cat /etc/pgbouncer/userlist.txt").stdout
    assert PASSWORD not in content and STATS_PASSWORD not in content
    assert content.count('"SCRAM-SHA-256$4096:') == 2


def start_up_logs(app):
    logs = {}
    for unit in UNITS:
        logs[unit] = app.run("journalctl -u %s -o cat --no-pager" % unit).stdout
    return logs


def test_start_up_log_shows_the_plans_file_descriptor_limit(app):
    for unit, log in start_up_logs(app).items():
        limits = re.findall(r"kernel file descriptor limit: (\d+) \(hard: (\d+)\); max_client_conn: (\d+)", log)
        assert limits, (unit, log[-2000:])
        assert limits[-1] == (str(BOUNCER["limit_nofile"]), str(BOUNCER["limit_nofile"]),
                              str(BOUNCER["max_client_conn"]))


def test_plans_fd_need_is_pgbouncers_own_estimate(app):
    for unit, log in start_up_logs(app).items():
        expected = re.findall(r"max expected fd use: (\d+)", log)
        assert expected, (unit, log[-2000:])
        # No reserve pool here, so the plan's figure is pgbouncer's exactly.
        assert BOUNCER["reserve_pool_size"] == 0 and int(expected[-1]) == BOUNCER["fd_need"]


def test_pgbouncer_processes_are_enabled_and_debians_unit_is_masked_beside_several(app):
    for unit in UNITS:
        service = app.service(unit)
        assert service.is_running and service.is_enabled, unit
    if BOUNCER["processes"] > 1:
        assert app.run("systemctl is-enabled pgbouncer.service").stdout.strip() == "masked"
        assert "Not read" in app.run("cat /etc/pgbouncer/pgbouncer.ini").stdout


def exposure(host, path):
    out = host.run("systemd-analyze security --offline=true --no-pager %s" % path).stdout
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))


def test_production_units_score_below_2(app):
    # Each unit with the hardening and limits drop-ins, without the container one, under another name:
    # offline scoring still applies the drop-ins of the unit's own name.
    dropins = "/etc/systemd/system/%s.d" % ("pgbouncer@.service" if BOUNCER["processes"] > 1 else "pgbouncer.service")
    unit = "/etc/systemd/system/pgbouncer@.service" if BOUNCER["processes"] > 1 else "/lib/systemd/system/pgbouncer.service"
    app.run("cat %s %s/hardening.conf %s/limits.conf > /tmp/score-ours.service" % (unit, dropins, dropins))
    app.run("cp /lib/systemd/system/pgbouncer.service /tmp/score-debian.service")
    ours, debian = exposure(app, "/tmp/score-ours.service"), exposure(app, "/tmp/score-debian.service")
    assert ours < 2.0 < debian


def test_postgresql_runs_sandboxed_and_its_production_unit_scores_below_4(db):
    version = SERVER["version"]
    db.run("cat /lib/systemd/system/postgresql@.service /etc/systemd/system/postgresql@.service.d/hardening.conf "
           "> /tmp/score-ours.service")
    db.run("cp /lib/systemd/system/postgresql@.service /tmp/score-debian.service")
    ours, debian = exposure(db, "/tmp/score-ours.service"), exposure(db, "/tmp/score-debian.service")
    assert ours < 4.0 < debian
    # The running server is the sandboxed one, and writes its data, log and socket directories.
    show = db.run("systemctl show -p ProtectSystem -p NoNewPrivileges -p CapabilityBoundingSet "
                  "postgresql@%s-main" % version).stdout
    assert "ProtectSystem=strict" in show and "NoNewPrivileges=yes" in show and "CapabilityBoundingSet=\n" in show + "\n"
    assert psql(db, "CREATE TABLE sandbox_probe AS SELECT 1 AS one; CHECKPOINT; DROP TABLE sandbox_probe").rc == 0
    assert db.file("/var/run/postgresql/.s.PGSQL.%d" % SERVER["port"]).is_socket


CANCEL = """
import sys, threading, time, psycopg
from psycopg import errors
cancelled = 0
for attempt in range(int(sys.argv[1])):
    conn = psycopg.connect("host=127.0.0.1 port=6432 dbname=mastodon_production user=mastodon password=%s")
    threading.Timer(0.5, conn.cancel).start()
    started = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(10)")
    except errors.QueryCanceled:
        cancelled += time.monotonic() - started < 5
    conn.close()
print(cancelled)
""" % PASSWORD


def test_a_cancellation_reaches_the_process_that_runs_the_query(app):
    """A cancel request is a new TCP connection, which the kernel may hand to another process: [peers] forwards it."""
    attempts = 12
    assert int(python(app, CANCEL, str(attempts))) == attempts


# --- the live-check modules, against the real servers ---

def postgres_connections(db, **args):
    text = " ".join("%s=%s" % item for item in args.items())
    return db.ansible("fediscale.mastodon.postgres_connections", text, check=True, become=True,
                      become_user="postgres")


def test_postgres_connections_reads_the_live_server(db):
    primary = REPORT["servers"]["primary"]
    result = postgres_connections(db, planned_max_connections=primary["max_connections"],
                                  planned_total=primary["total"], behind_pgbouncer="true")
    assert not result.get("failed"), result
    assert (result["max_connections"], result["superuser_reserved_connections"]) == (40, 3)
    assert result["usable"] == 37 and result["changed"] is False
    assert [f for f in result["findings"] if f["severity"] == "error"] == []


def test_postgres_connections_flags_a_plan_that_assumed_another_max_connections(db):
    result = postgres_connections(db, planned_max_connections=41, behind_pgbouncer="true")
    assert [finding["rule"] for finding in result["findings"]] == ["live-max-connections-differs-from-plan"]
    failed = postgres_connections(db, planned_max_connections=41, fail_on_error="true")
    # (ansible --tree, which testinfra reads, leaves the failed flag out; the message is the module's failure.)
    assert failed["msg"] == "the server runs with max_connections 40, the plan assumed 41"


# --- The read replica: streaming replication from the primary ---

REPLICA = REPORT["postgresql"]["database-replica"]
STREAM = SERVER["replication"]


@pytest.fixture(scope="module")
def replica(host):
    return other(host, "database-replica")


def wait_for(check, seconds=30):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within %d s" % seconds
        time.sleep(0.5)


def test_the_replica_streams_from_the_primary_through_its_slot_over_tls(db):
    row = psql(db, "SELECT r.application_name, host(r.client_addr), r.state, s.ssl, r.sync_state "
                   "FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)").stdout.strip()
    assert row == "%s|%s|streaming|t|async" % (STREAM["slot"], REPLICA["address"])
    slot = psql(db, "SELECT slot_type, active, wal_status FROM pg_replication_slots WHERE slot_name = '%s'"
                % STREAM["slot"]).stdout.strip()
    assert slot in ("physical|t|reserved", "physical|t|extended")


def test_replication_is_admitted_from_the_replicas_address_only(db, app):
    rules = psql(db, "SELECT type, database[1], user_name[1], address, auth_method FROM pg_hba_file_rules "
                     "WHERE 'replication' = ANY(database)").stdout.splitlines()
    assert rules == ["hostssl|replication|fediscale_replication|%s|scram-sha-256" % REPLICA["address"]]
    result = app.run("PGPASSWORD=molecule-replication-only psql -XAtq 'host=%s user=fediscale_replication "
                     "replication=true dbname=replication connect_timeout=5' -c 'IDENTIFY_SYSTEM'" % SERVER["address"])
    assert result.rc != 0 and 'no pg_hba.conf entry for replication connection from host "172.30.42.202"' \
        in result.stderr, result.stderr


def test_the_replicas_password_is_in_a_file_only_postgres_reads(replica):
    passfile = replica.file(REPLICA["replication"]["passfile"])
    assert (passfile.user, passfile.group, passfile.mode) == ("postgres", "postgres", 0o600)
    settings = psql(replica, "SHOW primary_conninfo").stdout
    assert "passfile=" in settings and "molecule-replication-only" not in settings
    assert "sslmode=verify-full" in settings
    assert "molecule-replication-only" not in replica.run("ps -eo args").stdout


def test_rows_written_on_the_primary_are_read_on_the_replica_within_seconds(db, replica):
    token = "row-%d" % time.time_ns()
    probe(db, "CREATE TABLE IF NOT EXISTS replica_probe (token text); ALTER TABLE replica_probe OWNER TO mastodon")
    probe(db, "INSERT INTO replica_probe VALUES ('%s')" % token)
    wait_for(lambda: probe(replica, "SELECT count(*) FROM replica_probe WHERE token = '%s'" % token)
             .stdout.strip() == "1", seconds=10)


def test_the_replica_refuses_writes(replica):
    result = probe(replica, "INSERT INTO replica_probe VALUES ('refused')")
    assert result.rc != 0 and "cannot execute INSERT in a read-only transaction" in result.stderr
    assert psql(replica, "SELECT pg_is_in_recovery()").stdout.strip() == "t"


def test_a_read_through_the_app_hosts_pgbouncer_replica_database_returns_the_primarys_data(db, app):
    token = "through-pgbouncer-%d" % time.time_ns()
    probe(db, "INSERT INTO replica_probe VALUES ('%s')" % token)
    sql = "SELECT pg_is_in_recovery(), inet_server_addr(), count(*) FROM replica_probe WHERE token = '%s'" % token
    wait_for(lambda: connect(app, "127.0.0.1", 6432, "mastodon", PASSWORD, dbname="mastodon_production_replica",
                             sql=sql).stdout.strip() == "t|%s|1" % REPLICA["address"], seconds=10)


def test_the_standby_module_reads_real_data_directories(db, replica):
    """On the replica: a standby of this primary. On the primary, judged as if it were the replica: it holds
    Mastodon's database, so it would never be replaced."""
    primary = db.ansible("fediscale.mastodon.postgresql_standby", "data_directory=%s version=%d"
                         % (STREAM["data_directory"], SERVER["version"]), check=True)
    assert primary["found"]["state"] == "in production" and primary["found"]["in_recovery"] is False
    standby = replica.ansible("fediscale.mastodon.postgresql_standby",
                              "data_directory=%s version=%d replica_host=database-replica primary_host=database-db "
                              "primary_system_identifier=%s slot_status=reserved"
                              % (STREAM["data_directory"], SERVER["version"],
                                 primary["found"]["system_identifier"]), check=True)
    assert standby["found"]["in_recovery"] is True and standby["decision"]["action"] == "keep"
    over_data = db.ansible("fediscale.mastodon.postgresql_standby",
                           "data_directory=%s version=%d replica_host=database-db primary_host=database-replica"
                           % (STREAM["data_directory"], SERVER["version"]), check=True)
    assert over_data["decision"]["action"] == "refuse"
    assert ("is a primary (not in recovery) holding 1 database besides postgres and the templates (base/"
            in over_data["decision"]["message"])


def test_live_checks_read_both_ends_of_the_stream(db, replica):
    primary = postgres_connections(db, replica_slots=STREAM["slot"], replica_max_lag_seconds=30)
    assert [row["state"] for row in primary["replication"]["senders"]] == ["streaming"]
    assert [f for f in primary["findings"] if f["rule"].startswith("live-replica")] == []
    standby = postgres_connections(replica)
    assert standby["replication"]["role"] == "standby"
    assert standby["replication"]["receiver"]["status"] == "streaming"
    assert [f for f in standby["findings"] if f["rule"].startswith("live-replica")] == []


def retained_mb(db):
    return int(psql(db, "SELECT (pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) / 1048576)::int "
                        "FROM pg_replication_slots WHERE slot_name = '%s'" % STREAM["slot"]).stdout.strip() or -1)


def write_wal_segments(db, count):
    for number in range(count):
        probe(db, "INSERT INTO replica_probe SELECT 'segment-%d' FROM generate_series(1, 100)" % number)
        psql(db, "SELECT pg_switch_wal()")
    psql(db, "CHECKPOINT")


def test_a_replica_that_was_down_catches_up_through_its_slot_within_the_limit(db, replica):
    unit = "postgresql@%d-main.service" % SERVER["version"]
    replica.run("systemctl stop %s" % unit)
    try:
        token = "while-down-%d" % time.time_ns()
        probe(db, "INSERT INTO replica_probe VALUES ('%s')" % token)
        write_wal_segments(db, 2)
        down = postgres_connections(db, replica_slots=STREAM["slot"])
        [finding] = [f for f in down["findings"] if f["rule"] == "live-replica-not-streaming"]
        assert finding["severity"] == "error" and "not connected" in finding["message"]
        assert 0 < retained_mb(db) <= kb(SERVER["settings"]["max_slot_wal_keep_size"]) // 1024
        assert psql(db, "SELECT wal_status FROM pg_replication_slots").stdout.strip() in ("reserved", "extended")
    finally:
        replica.run("systemctl start %s" % unit)
    wait_for(lambda: probe(replica, "SELECT count(*) FROM replica_probe WHERE token = '%s'" % token)
             .stdout.strip() == "1")


def test_a_plan_with_the_replica_below_the_primary_stops_before_any_host_changes(db, replica, app):
    """The replica at 30 connections beside the primary's 40: PostgreSQL would not run it as a hot standby."""
    # Extra variables win over host_vars and are templated per host.
    below = "postgresql_max_connections={{ 30 if inventory_hostname == 'database-replica' else 40 }}"
    state = "find /etc/postgresql /etc/pgbouncer /etc/ssl/fediscale-mastodon /etc/systemd/system -type f " \
            "-exec sha256sum {} + 2>/dev/null | sort"
    before = [host.run(state).stdout for host in (db, replica, app)]
    run = converge_database_hosts(db, "-e", below, limit="all")
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0
    assert "max_connections on the replica database-replica is 30, below the primary database-db's 40" in output, \
        output[-3000:]
    assert [host.run(state).stdout for host in (db, replica, app)] == before
    assert set(re.findall(r"changed=(\d+)", run.stdout)) <= {"0"}


def test_a_replica_whose_slot_was_invalidated_is_copied_again_even_when_a_run_is_killed(db, replica, tmp_path):
    """Away while the primary wrote more WAL than max_slot_wal_keep_size: the slot is lost, and a run says so and
    copies the primary again. That run is killed once the copy has started (and pg_basebackup with it, as a dropped
    SSH session would); the next run finishes the copy, and the standby streams what was written meanwhile."""
    unit = "postgresql@%d-main.service" % SERVER["version"]
    replica.run("systemctl stop %s" % unit)
    token = "after-loss-%d" % time.time_ns()
    probe(db, "INSERT INTO replica_probe VALUES ('%s')" % token)
    write_wal_segments(db, 6)
    wait_for(lambda: psql(db, "SELECT wal_status FROM pg_replication_slots").stdout.strip() == "lost", seconds=20)
    replica.run("systemctl start %s" % unit)

    killed_output = tmp_path / "killed.log"
    with open(killed_output, "w") as output:
        killed = converge_database_hosts(db, stdout=output, background=True)
        try:
            wait_for(lambda: replica.file(REPLICA["replication"]["copy_directory"]).exists, seconds=300)
        finally:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    replica.run("pkill -x pg_basebackup")
    assert "its slot %s on database-db was invalidated (wal_status lost" % STREAM["slot"] in \
        " ".join(killed_output.read_text().split())

    run = converge_database_hosts(db)
    assert run.returncode == 0, run.stdout[-3000:]
    assert psql(db, "SELECT active, wal_status FROM pg_replication_slots").stdout.strip() in ("t|reserved", "t|extended")
    wait_for(lambda: probe(replica, "SELECT count(*) FROM replica_probe WHERE token = '%s'" % token)
             .stdout.strip() == "1", seconds=10)
    assert not replica.file(REPLICA["replication"]["copy_directory"]).exists


def test_a_run_killed_between_the_copys_two_renames_is_finished_by_the_next(db, replica):
    """The copy is complete under its own name and the data directory is gone, as a kill between the renames
    leaves it: the next run puts the copy in place and the standby streams."""
    unit = "postgresql@%d-main.service" % SERVER["version"]
    streams = REPLICA["replication"]
    replica.run("systemctl stop %s" % unit)
    replica.run("mv %s %s" % (streams["data_directory"], streams["copy_directory"]))
    run = converge_database_hosts(db)
    assert run.returncode == 0, run.stdout[-3000:]
    assert replica.file(streams["data_directory"] + "/standby.signal").exists
    assert not replica.file(streams["copy_directory"]).exists
    token = "after-rename-%d" % time.time_ns()
    probe(db, "INSERT INTO replica_probe VALUES ('%s')" % token)
    wait_for(lambda: probe(replica, "SELECT count(*) FROM replica_probe WHERE token = '%s'" % token)
             .stdout.strip() == "1", seconds=20)


def test_check_mode_on_the_converged_pair_changes_nothing(db):
    """After the copies and drills above: the pair as the role left it."""
    run = converge_database_hosts(db, "--check", "--diff")
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.findall(r"(database-\w+)\s*: ok=\d+\s+changed=(\d+)", run.stdout) == [
        ("database-db", "0"), ("database-replica", "0")], run.stdout[-3000:]


def test_under_load_pgbouncer_queues_clients_and_postgres_sees_only_the_pools(app, db):
    """More clients than all processes' pools: pgbouncer makes them wait, the server sees only the pools.

    The kernel spreads the clients over the processes unevenly, so the figures are read per process (each
    through its socket) and added up.
    """
    pool = BOUNCER["default_pool_size"]
    clients = pool * BOUNCER["processes"] + 5
    # The clients hold their connections longer than the readings below take on a busy machine; they are
    # stopped once read.
    app.run("for i in $(seq %d); do PGPASSWORD=%s psql -XAtq 'host=127.0.0.1 port=6432 user=mastodon "
            "dbname=mastodon_production' -c 'SELECT pg_sleep(60)' >/dev/null 2>&1 & done; sleep 2"
            % (clients, PASSWORD))
    try:
        pools = app.ansible("fediscale.mastodon.pgbouncer_pools", "login_password=%s login_host=%s" % (
            STATS_PASSWORD, ",".join(process["socket_dir"] for process in PROCESSES)), check=True)
        live = postgres_connections(db, behind_pgbouncer="true")
    finally:
        app.run("pkill -x psql")
        # A backend notices its client has gone only when pg_sleep returns: end them now.
        psql(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'")
    assert pools["processes"] == BOUNCER["processes"]
    per_process = [row for row in pools["pools"] if row["database"] == "mastodon_production"]
    assert len(per_process) == BOUNCER["processes"]
    assert all(row["sv_active"] <= pool for row in per_process)
    total = next(row for row in pools["pool_totals"] if row["database"] == "mastodon_production")
    assert total["cl_active"] + total["cl_waiting"] == clients == pools["clients"]
    assert total["sv_active"] == sum(min(row["cl_active"] + row["cl_waiting"], pool) for row in per_process)
    assert total["cl_waiting"] >= clients - pool * BOUNCER["processes"] > 0
    assert "pgbouncer-clients-waiting" in [finding["rule"] for finding in pools["findings"]]
    from_pgbouncer = sum(item["count"] for item in live["by_client"] if item["client_addr"] == "172.30.42.202")
    assert from_pgbouncer == total["sv_active"] <= BOUNCER["primary_connections"]
    assert "live-no-idle-behind-pgbouncer" in [finding["rule"] for finding in live["findings"]]


# --- Live limits: a server the postgresql role does not manage ---

def plan_with_live_limits(host, tmp_path, *extra):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    playbook = Path(__file__).resolve().parents[1] / "plan-live.yml"
    run = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(playbook),
                          "-i", host.backend.ansible_inventory, "-e", "plan_report_dir=%s" % tmp_path,
                          "-e", "postgresql_limits_from=live", "-e", "postgresql_max_connections=60",
                          # The plan refuses archiving on a server the postgresql role does not manage.
                          "-e", "pgbackrest_archive=false"] + list(extra),
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    report = json.loads((tmp_path / "budget.json").read_text())
    return report["servers"]["primary"], {item["rule"]: item for item in report["findings"]
                                          if item["host"] == "database-db"}


def test_the_plan_takes_the_running_servers_limits(db, tmp_path):
    # The inventory says 60 (given with -e); the running server has what the role set.
    live = int(psql(db, "SHOW max_connections").stdout.strip())
    server, findings = plan_with_live_limits(db, tmp_path)
    assert (server["limits_source"], server["max_connections"]) == ("live", live)
    assert server["inventory_limits"]["max_connections"] == 60
    item = findings["postgresql-inventory-limits-differ-from-live"]
    assert item["host"] == "database-db" and "postgresql_max_connections: %d" % live in item["hint"]


def test_an_unreadable_server_leaves_the_inventorys_limits_and_a_warning(db, tmp_path):
    server, findings = plan_with_live_limits(db, tmp_path, "-e", "plan_postgresql_login_host=127.0.0.1",
                                             "-e", "plan_postgresql_login_port=5999")
    assert (server["limits_source"], server["max_connections"]) == ("inventory", 60)
    item = findings["postgresql-live-limits-unread"]
    assert item["severity"] == "warning" and "5999" in item["message"]


# --- A host upgraded from Debian 12 keeps its old cluster ---

def converge_database_hosts(db, *extra, limit="db", stdout=None, background=False):
    """converge.yml on the database hosts; ``background`` starts it in its own process group and returns it."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1")
    playbook = Path(__file__).resolve().parents[1] / "converge.yml"
    command = [str(Path(sys.executable).with_name("ansible-playbook")), str(playbook),
               "-i", db.backend.ansible_inventory, "--limit", limit] + list(extra)
    if background:
        return subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)


def converge_database_host(db, *extra):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    playbook = Path(__file__).resolve().parents[1] / "converge.yml"
    return subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(playbook),
                           "-i", db.backend.ansible_inventory, "--limit", "database-db"] + list(extra),
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def test_a_cluster_of_another_version_stops_the_role_before_it_changes_anything(db):
    """As after a Debian upgrade: the old major's cluster (binaries gone) beside the plan's version."""
    old = "14" if db.file("/etc/postgresql/15").exists else "15"
    db.run("mkdir -p /etc/postgresql/%s/main /var/lib/postgresql/%s/main" % (old, old))
    db.run("echo %s > /var/lib/postgresql/%s/main/PG_VERSION" % (old, old))
    db.run("printf \"data_directory = '/var/lib/postgresql/%s/main'\\nport = 5433\\n\" "
           "> /etc/postgresql/%s/main/postgresql.conf" % (old, old))
    before = db.run("find /etc/postgresql -type f -exec sha256sum {} + | sort").stdout
    try:
        run = converge_database_host(db)
        output = run.stdout + run.stderr
        assert run.returncode != 0
        assert "the PostgreSQL %s cluster main (/var/lib/postgresql/%s/main) is on this host" % (old, old) in output
        assert "pg_upgradecluster %s main" % old in output and "Nothing was changed" in output
        assert db.run("find /etc/postgresql -type f -exec sha256sum {} + | sort").stdout == before
    finally:
        db.run("rm -rf /etc/postgresql/%s /var/lib/postgresql/%s" % (old, old))


def test_a_planned_setting_that_alter_system_overrides_stops_the_role(db):
    """ALTER SYSTEM's postgresql.auto.conf is read after the plan's file, so its max_connections would win."""
    planned = psql(db, "SHOW max_connections").stdout.strip()
    psql(db, "ALTER SYSTEM SET max_connections = 999")
    try:
        run = converge_database_host(db)
        output = " ".join((run.stdout + run.stderr).split())
        assert run.returncode != 0
        assert ("host database-db: /var/lib/postgresql/%s/main/postgresql.auto.conf (ALTER SYSTEM) overrides the "
                "plan's max_connections (999 there, %s in the plan)" % (SERVER["version"], planned)) in output, \
            output[-3000:]
        assert "ALTER SYSTEM RESET max_connections;" in output
        assert psql(db, "SHOW max_connections").stdout.strip() == planned
    finally:
        psql(db, "ALTER SYSTEM RESET max_connections")


# --- Re-planned: one process instead of two, with prepared statements opted in; undone at the end ---

def converge_app(host, *extra):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    playbook = Path(__file__).resolve().parents[1] / "converge.yml"
    run = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(playbook),
                          "-i", host.backend.ansible_inventory, "--limit", "database-app"] + list(extra),
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    return run.stdout


def serves(app):
    return connect(app, "127.0.0.1", 6432, "mastodon", PASSWORD, sql="SELECT current_user").stdout.strip()


RAILS_LIKE_CLIENT = (Path(__file__).resolve().parents[1] / "rails_like_client.py").read_text()
PGBOUNCER_DSN = "host=127.0.0.1 port=6432 dbname=mastodon_production user=mastodon password=%s" % PASSWORD


def rails_like(app, conninfo, statement_limit=8):
    return json.loads(python(app, RAILS_LIKE_CLIENT, "'%s'" % conninfo, "--clients", "30", "--seconds", "6",
                             "--statement-limit", str(statement_limit)))


@pytest.fixture(scope="module")
def rails_like_before(app):
    """The Rails-like client as the plan deploys (max_prepared_statements 0), and straight to PostgreSQL."""
    return {"direct": rails_like(app, "host=%s port=5432 dbname=mastodon_production user=mastodon password=%s"
                                 % (SERVER["address"], PASSWORD)),
            "pgbouncer, max_prepared_statements 0": rails_like(app, PGBOUNCER_DSN)}


@pytest.fixture(scope="module")
def replanned(app, rails_like_before):
    """The app host converged with one pgbouncer process and the prepared-statements opt-in, then back.

    Both changes in one converge: each converge costs CI time, and they touch different settings."""
    if BOUNCER["processes"] == 1 or BOUNCER["max_prepared_statements"] is None:
        pytest.skip("this release's pgbouncer runs one process and tracks no prepared statements")
    try:
        converge_app(app, "-e", "pgbouncer_processes=1", "-e", "pgbouncer_max_prepared_statements=200",
                     "-e", "pgbouncer_acknowledge_prepared_statements=true")
        yield
    finally:
        converge_app(app)
        for unit in UNITS:
            assert app.service(unit).is_running and app.service(unit).is_enabled, unit
        assert app.run("systemctl is-enabled pgbouncer.service").stdout.strip() == "masked"
        assert serves(app) == "mastodon"


def test_going_to_one_process_leaves_only_debians_unit(app, replanned):
    assert app.service("pgbouncer.service").is_running and app.service("pgbouncer.service").is_enabled
    for unit in UNITS:
        # The template is gone, so systemd no longer knows its instances.
        assert app.run("systemctl is-active %s" % unit).stdout.strip() == "inactive", unit
        assert app.run("systemctl is-enabled %s" % unit).stdout.strip() == "not-found", unit
    assert not app.file("/etc/systemd/system/pgbouncer@.service").exists
    assert app.run("ls /etc/pgbouncer").stdout.split() == ["pgbouncer.ini", "userlist.txt"]
    assert "so_reuseport" not in app.run("cat /etc/pgbouncer/pgbouncer.ini").stdout
    assert serves(app) == "mastodon"


def test_rails_like_prepared_statements_fail_through_pgbouncer_that_does_not_track_them(rails_like_before):
    direct, untracked = rails_like_before["direct"], rails_like_before["pgbouncer, max_prepared_statements 0"]
    # The client itself is right: straight to PostgreSQL every statement works.
    assert direct["failed"] == 0 and direct["ok"] > 0
    # Untracked, a statement prepared on one server connection is missing (or already there) on the next.
    assert untracked["failed"] > 0 and any("does not exist" in kind for kind in untracked["errors"])


def test_rails_like_prepared_statements_through_pgbouncer_that_tracks_them(app, rails_like_before, replanned):
    """What Mastodon would meet with the opt-in; README's "Prepared statements" section has the numbers."""
    results = dict(rails_like_before)
    results["pgbouncer, max_prepared_statements 200"] = rails_like(app, PGBOUNCER_DSN)
    results["the same, no cache eviction"] = rails_like(app, PGBOUNCER_DSN, statement_limit=1000)
    print(json.dumps(results, indent=2))
    # Prepare and execute work until the cache evicts: Rails' SQL DEALLOCATE names a statement the server does
    # not know (pgbouncer renamed it), and the transaction it runs in is aborted.
    tracked = results["pgbouncer, max_prepared_statements 200"]
    assert tracked["ok"] > 0 and tracked["failed"] > 0
    assert list(tracked["errors"]) == [
        "ERROR:  current transaction is aborted, commands ignored until end of transaction block"]
    assert results["the same, no cache eviction"]["failed"] == 0


# --- backups (pgBackRest) to a repository host, and a point-in-time restore on another host ---

BACKUP = REPORT["backups"]["database-db"]
REPOSITORY = REPORT["backup_repositories"]["database-backup"]
SCENARIO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def restore_target(host):
    return other(host, "database-restore")


@pytest.fixture(scope="module")
def repository(host):
    return other(host, "database-backup")


def pgbackrest_info(host):
    run = host.run("runuser -u postgres -- pgbackrest --stanza=%s --output=json info" % BACKUP["stanza"])
    assert run.rc == 0, run.stderr
    return json.loads(run.stdout)[0]


def test_the_repository_host_keeps_the_encrypted_repository_and_only_it_has_the_passphrase(
        db, repository, replica):
    assert (BACKUP["repo_host"], BACKUP["backup_host"], REPOSITORY["primary"]) == (
        "database-backup", "database-backup", "database-db")
    config = repository.file(BACKUP["config_file"])
    assert (config.user, config.group, config.mode) == ("root", "postgres", 0o640)
    assert "repo1-cipher-pass=" in repository.run("cat %s" % BACKUP["config_file"]).stdout
    store = repository.file(REPOSITORY["repo_path"])
    assert (store.user, store.mode) == ("postgres", 0o750)
    # Encrypted: the repository's files are OpenSSL's salted format, not pgBackRest's plain [backrest] text.
    info_file = "%s/archive/%s/archive.info" % (REPOSITORY["repo_path"], BACKUP["stanza"])
    assert repository.run("head -c 8 %s" % info_file).stdout == "Salted__"
    assert repository.run("grep -ac '^\\[backrest\\]' %s" % info_file).stdout.strip() == "0"
    # The primary sends its WAL there over TLS, and holds neither the passphrase nor a repository.
    primary_config = db.run("cat %s" % BACKUP["config_file"]).stdout
    assert "repo1-cipher-pass" not in primary_config and "repo1-path" not in primary_config
    assert "repo1-host=172.30.42.206\nrepo1-host-type=tls\n" in primary_config
    assert not db.file(REPOSITORY["repo_path"]).exists
    # Nor does the replica, whose server the backups copy from.
    standby_config = replica.run("cat %s" % BACKUP["config_file"]).stdout
    assert "repo1-cipher-pass" not in standby_config and "pg1-path=%s" % BACKUP["standby"]["data_directory"] in \
        standby_config
    # The stanza is there, seen from both: ok, or (before the first backup) 2, "no valid backups".
    assert pgbackrest_info(db)["status"]["code"] in (0, 2)
    assert pgbackrest_info(repository)["status"]["code"] in (0, 2)


PROBE_PGBACKREST = """[global]
repo1-host=%s
repo1-host-type=tls
repo1-host-ca-file=/etc/ssl/fediscale-mastodon/ca.crt
repo1-host-cert-file=/root/probe-%s.crt
repo1-host-key-file=/root/probe-%s.key
"""


def test_pgbackrests_servers_admit_only_each_others_certificate_and_address(db, repository, outsider, replica):
    assert "tls-server-auth=database-db=mastodon" in repository.run("cat %s" % BACKUP["config_file"]).stdout
    for server in (db, replica):
        assert "tls-server-auth=database-backup=mastodon" in server.run("cat %s" % BACKUP["config_file"]).stdout
    for server in (db, repository, replica):
        assert server.service("pgbackrest.service").is_enabled and server.service("pgbackrest.service").is_running
    # An outsider on the same network gets no answer: the servers' units take packets from the other end only.
    for address in (REPOSITORY["address"], BACKUP["repo_host_address"], BACKUP["standby"]["address"]):
        reached = outsider.run("timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%d'" % (address, BACKUP["tls_port"]))
        assert reached.rc != 0, address
    # From the other end's address: a certificate that names the expected client but comes from another CA fails
    # the handshake; the replica's (the cluster's CA, another name) is refused by name.
    replica_pair = {kind: replica.file("/etc/ssl/fediscale-mastodon/server.%s" % kind).content_string
                    for kind in ("crt", "key")}
    for client, server_address, expected in ((repository, REPOSITORY["address"], "database-backup"),
                                             (db, BACKUP["repo_host_address"], "database-db")):
        client.run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=%s "
                   "-keyout /root/probe-forged.key -out /root/probe-forged.crt" % expected)
        for kind, content in replica_pair.items():
            client.run("printf '%%s' %s > /root/probe-replica.%s" % (shlex.quote(content), kind))
        try:
            for name, refusal in (("forged", "alert unknown ca"), ("replica", "access denied")):
                client.run("printf '%%s' %s > /root/probe-%s.conf && chmod 600 /root/probe-%s.*" % (
                    shlex.quote(PROBE_PGBACKREST % (server_address, name, name)), name, name))
                tried = client.run("pgbackrest --config=/root/probe-%s.conf --stanza=%s info" % (
                    name, BACKUP["stanza"]))
                assert refusal in tried.stdout + tried.stderr, (server_address, name, tried.stdout, tried.stderr)
        finally:
            client.run("rm -f /root/probe-*")


def assert_backup_timers_on(host, calendars):
    for kind, calendar in calendars.items():
        timer = "pgbackrest-backup-%s.timer" % kind
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer
        normalized = re.search(r"Normalized form: (.+)", host.run("systemd-analyze calendar '%s'" % calendar).stdout)
        shown = host.run("systemctl show -p TimersCalendar --value %s" % timer).stdout
        assert "OnCalendar=%s ;" % normalized.group(1).strip() in shown, (timer, shown)


def test_backup_timers_run_on_the_repository_host_on_the_plans_calendar(db, repository):
    assert_backup_timers_on(repository, REPOSITORY["calendars"])
    for kind in ("full", "diff"):
        assert not db.file("/etc/systemd/system/pgbackrest-backup-%s.timer" % kind).exists, kind


def test_a_daily_schedule_drops_the_differential_timer_and_weekly_brings_it_back(repository):
    """Daily full backups leave no day for a differential one: its timer and service go, systemd forgets them,
    the repository stays. The inventory's weekly schedule brings them back."""
    try:
        daily = converge_database_hosts(repository, "-e", "pgbackrest_full_backups=daily", limit="database-backup")
        assert daily.returncode == 0, daily.stdout[-3000:]
        assert_backup_timers_on(repository, {"full": "*-*-* 01:00:00"})
        for unit in ("pgbackrest-backup-diff.timer", "pgbackrest-backup-diff.service",
                     "pgbackrest-backup-diff.service.d"):
            assert not repository.file("/etc/systemd/system/%s" % unit).exists, unit
            assert repository.run("systemctl show -P LoadState %s" % unit).stdout.strip() == "not-found", unit
        assert pgbackrest_info(repository)["status"]["code"] in (0, 2)
    finally:
        weekly = converge_database_hosts(repository, limit="database-backup")
    assert weekly.returncode == 0, weekly.stdout[-3000:]
    assert_backup_timers_on(repository, REPOSITORY["calendars"])


def test_backup_units_score_no_worse_than_mastodons_own(repository):
    # The production form: the unit without the container's PrivateUsers relaxation.
    for kind in REPOSITORY["calendars"]:
        repository.run("cp /etc/systemd/system/pgbackrest-backup-%s.service /tmp/score-backup.service" % kind)
        assert exposure(repository, "/tmp/score-backup.service") <= 1.5, kind


def test_pgbackrests_server_runs_sandboxed_and_its_production_unit_scores_below_2(db, repository):
    for server in (db, repository):
        server.run("cat /lib/systemd/system/pgbackrest.service /etc/systemd/system/pgbackrest.service.d/hardening.conf "
                   "> /tmp/score-ours.service")
        server.run("cp /lib/systemd/system/pgbackrest.service /tmp/score-debian.service")
        ours, debian = exposure(server, "/tmp/score-ours.service"), exposure(server, "/tmp/score-debian.service")
        assert ours < 2.0 < debian, (ours, debian)
        show = server.run("systemctl show -p ProtectSystem -p NoNewPrivileges -p IPAddressDeny pgbackrest.service").stdout
        assert "ProtectSystem=strict" in show and "NoNewPrivileges=yes" in show, show


def test_a_repository_another_uid_wrote_stops_the_role_before_it_changes_anything(db):
    """A repository on the primary's own storage (no repository host), shared with a host whose postgres has
    another uid: the role would otherwise take the repository from the host that wrote it."""
    path = "/srv/pgbackrest-shared"
    postgres_uid = db.run("id -u postgres").stdout.strip()
    files = "find /etc/postgresql %s /etc/ssl/fediscale-mastodon -type f -exec sha256sum {} + | sort" % (
        BACKUP["config_file"])
    before = db.run(files).stdout
    db.run("mkdir -p %s/backup && chown 4242:4242 %s/backup" % (path, path))
    try:
        run = converge_database_host(db, "-e", json.dumps({"pgbackrest_repo_host": None, "pgbackrest_repo_path": path,
                                                           "pgbackrest_backup_from_standby": False}))
        output = " ".join((run.stdout + run.stderr).split())
        assert run.returncode != 0
        assert ("host database-db: the backup repository %s holds backups written by uid 4242, and PostgreSQL's "
                "user postgres is uid %s here" % (path, postgres_uid)) in output, output[-3000:]
        assert "useradd -r -u 4242 -g postgres" in output and "The repository was not touched." in output
        assert db.file(path + "/backup").uid == 4242
        assert db.run(files).stdout == before
    finally:
        db.run("rm -rf %s" % path)


# The bucket's storage: radosgw on database-s3 (prepare.yml), known to the plan through the media settings.
S3_REPOSITORY = {"pgbackrest_repo_host": None, "pgbackrest_backup_from_standby": False,
                 "pgbackrest_repo_s3_bucket": "mastodon-backups", "pgbackrest_repo_path": "/database-db",
                 "pgbackrest_s3_access_key_id": "molecule-s3-key",
                 "pgbackrest_s3_secret_access_key": "molecule-s3-secret-only",
                 "pgbackrest_s3_ca_file": "/etc/ssl/rig-s3.crt",
                 "mastodon_media": "s3", "mastodon_s3_bucket": "mastodon-media", "mastodon_s3_region": "default",
                 "mastodon_s3_endpoint": "https://172.30.42.207:7480", "mastodon_s3_alias_host": "files.example.test"}


def test_a_repository_in_a_bucket_takes_the_archive_and_a_backup_that_reads_back_whole(db):
    """The primary with its repository in a bucket on S3 storage (Ceph's radosgw): the stanza is created there,
    archive_command pushes over HTTPS, the sandboxed backup unit (which may reach only the storage's address)
    takes a full backup, pgBackRest's verify reads every file back and checks it, and the objects in the bucket
    are encrypted. Then the repository host again."""
    storage = other(db, "database-s3")
    # An empty path in the bucket, as on a first run.
    storage.run("s3cmd del --quiet --recursive --force s3://mastodon-backups/database-db/")
    try:
        run = converge_database_host(db, "-e", json.dumps(S3_REPOSITORY))
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        config = db.run("cat %s" % BACKUP["config_file"]).stdout
        assert "repo1-type=s3" in config and "repo1-s3-bucket=mastodon-backups" in config
        assert "repo1-s3-endpoint=172.30.42.207" in config and "repo1-storage-port=7480" in config
        assert "repo1-s3-uri-style=path" in config and "repo1-host" not in config
        unit = db.run("systemctl cat pgbackrest-backup-full.service").stdout
        assert "IPAddressAllow=172.30.42.207" in unit and "IPAddressDeny=any" in unit and "PrivateNetwork" not in unit
        # Its production form scores as the local form's does.
        db.run("cp /etc/systemd/system/pgbackrest-backup-full.service /tmp/score-backup.service")
        assert exposure(db, "/tmp/score-backup.service") <= 1.5
        assert "/srv/pgbackrest" not in db.file("/etc/systemd/system/postgresql@.service.d/archive.conf").content_string

        check = db.run("runuser -u postgres -- pgbackrest --stanza=mastodon check")
        assert check.rc == 0, check.stdout + check.stderr
        backup = db.run("systemctl start pgbackrest-backup-full.service")
        assert backup.rc == 0, backup.stderr + db.run("journalctl -u pgbackrest-backup-full.service -n 30").stdout
        info = json.loads(db.run("runuser -u postgres -- pgbackrest --stanza=mastodon --output=json info").stdout)
        assert [item["type"] for item in info[0]["backup"]] == ["full"], info
        verify = db.run("runuser -u postgres -- pgbackrest --stanza=mastodon --log-level-console=info verify")
        assert verify.rc == 0 and "verify command end: completed successfully" in verify.stdout, verify.stdout

        listing = storage.run("s3cmd ls -r s3://mastodon-backups/database-db/").stdout
        assert "/database-db/backup/mastodon/backup.info" in listing
        segments = re.findall(r"(s3://mastodon-backups/database-db/archive/mastodon/\S+/[0-9A-F]{24}-\S+)", listing)
        assert segments, listing
        # OpenSSL's format for aes-256-cbc: every object starts with "Salted__", none with gzip's magic.
        head = storage.run("s3cmd get --quiet --force %s /root/segment && head -c 8 /root/segment" % segments[0])
        assert head.stdout == "Salted__", head.stdout
    finally:
        run = converge_database_host(db)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "repo1-host=172.30.42.206" in db.run("cat %s" % BACKUP["config_file"]).stdout
    # The repository host runs the backups again; the timers the bucket's form started here are gone.
    assert db.run("systemctl list-unit-files --no-legend 'pgbackrest-backup-*'").stdout.strip() == ""
    assert db.run("ls -d /etc/systemd/system/pgbackrest-backup-*").stdout == ""
    check = db.run("runuser -u postgres -- pgbackrest --stanza=mastodon check")
    assert check.rc == 0, check.stdout + check.stderr


def restore_inventory(db, directory):
    """The inventory of an operator whose primary is lost: database-restore is now the db host, with the
    primary's settings and its repository host."""
    hosts = json.loads(subprocess.run(
        [str(Path(sys.executable).with_name("ansible-inventory")), "-i", db.backend.ansible_inventory, "--list"],
        capture_output=True, text=True, check=True).stdout)["_meta"]["hostvars"]
    connection = ("ansible_connection", "ansible_host")

    def host_vars(name, as_name=None):
        found = {key: value for key, value in hosts[as_name or name].items() if key in connection}
        found["ansible_host"] = name
        return found

    # No replica yet: the backups copy from the new primary until one is copied from it.
    primary = dict(yaml.safe_load((SCENARIO / "host_vars" / "database-db.yml").read_text()),
                   mastodon_address="172.30.42.205", pgbackrest_backup_from_standby=False,
                   **host_vars("database-restore", "database-db"))
    app = dict(yaml.safe_load((SCENARIO / "host_vars" / "database-app.yml").read_text()), **host_vars("database-app"))
    repository = dict(yaml.safe_load((SCENARIO / "host_vars" / "database-backup.yml").read_text()),
                      **host_vars("database-backup"))
    inventory = {"all": {"children": {"db": {"hosts": {"database-restore": primary}},
                                      "backup": {"hosts": {"database-backup": repository}}},
                         "hosts": {}}}
    for group in ("web", "streaming", "sidekiq"):
        inventory["all"]["children"][group] = {"hosts": {"database-app": app}}
    (directory / "group_vars").symlink_to(SCENARIO / "group_vars")
    (directory / "inventory.yml").write_text(json.dumps(inventory))
    return str(directory / "inventory.yml")


def restore(inventory, target_time):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "fediscale.mastodon.restore",
                           "-i", inventory, "-e", json.dumps({"pgbackrest_restore_target_time": target_time})],
                          env=env, capture_output=True, text=True, timeout=1200, check=False)


def test_a_point_in_time_restore_on_another_host_brings_back_a_dropped_table(
        db, repository, replica, restore_target, tmp_path):
    psql(db, "DROP TABLE IF EXISTS backup_probe; CREATE TABLE backup_probe (id int PRIMARY KEY); "
             "INSERT INTO backup_probe SELECT generate_series(1, 100)")
    # The full backup's own unit on the repository host, as its timer starts it, with pgBackRest's connections to
    # the primary and to the replica it copies from, and the primary's WAL senders, sampled meanwhile.
    samplers = {}
    for server, label in ((db, "primary"), (replica, "replica")):
        script = ("while :; do runuser -u postgres -- psql -XAtc \"SELECT (SELECT count(*) FROM pg_stat_activity "
                  "WHERE application_name LIKE 'pgBackRest%') || ' ' || (SELECT count(*) FROM pg_stat_replication)"
                  "\"; sleep 0.1; done")
        samplers[label] = (server, server.run(
            "printf '%%s' %s > /tmp/sample-pgbackrest.sh && setsid sh /tmp/sample-pgbackrest.sh "
            "> /tmp/pgbackrest-connections 2>&1 < /dev/null & echo $!" % shlex.quote(script)).stdout.strip())
    started = repository.run("systemctl start pgbackrest-backup-full.service")
    for server, pid in samplers.values():
        server.run("kill %s" % pid)
    assert started.rc == 0, repository.run("journalctl -u pgbackrest-backup-full.service --no-pager | tail -20").stdout
    samples = {label: [tuple(int(number) for number in line.split()) for line in server.run(
        "cat /tmp/pgbackrest-connections").stdout.splitlines() if re.fullmatch(r"\d+ \d+", line)]
        for label, (server, _pid) in samplers.items()}
    for label in ("primary", "replica"):
        assert samples[label] and 1 <= max(count for count, _senders in samples[label]) <= \
            REPORT["direct_connections"]["pgbackrest"], (label, samples[label])
    # No WAL sender beside the replica's stream: the copy goes through pgBackRest's servers.
    assert {senders for _count, senders in samples["primary"]} == {1}, samples["primary"]
    assert {senders for _count, senders in samples["replica"]} == {0}, samples["replica"]
    # pgBackRest waited for the replica to replay to the backup's start, and copied from it.
    log = repository.run("cat /var/log/pgbackrest/%s-backup.log" % BACKUP["stanza"]).stdout
    assert "replay on the standby" in log, log[-2000:]
    backups = pgbackrest_info(db)["backup"]
    assert backups[-1]["type"] == "full" and backups[-1]["error"] is False

    # The live check reads the same backup, and a threshold it is past.
    checked = db.ansible("fediscale.mastodon.postgres_connections", json.dumps({"backup": BACKUP}), check=True,
                         become=True, become_user="postgres")
    assert checked["backup"]["info"]["last_backup"]["label"] == backups[-1]["label"], checked
    # On a failure: which segment failed, when, and why (PostgreSQL's and pgBackRest's logs on the primary).
    assert checked["backup"]["archiver"]["failed_count"] == 0 and checked["backup"]["archiver"]["archived_count"] > 0, (
        checked["backup"]["archiver"], db.run("grep -h -B2 -A3 'archive command failed' /var/log/postgresql/*.log | "
                                              "tail -n 30; tail -n 30 /var/log/pgbackrest/%s-archive-push*.log"
                                              % BACKUP["stanza"]).stdout)
    assert not checked["backup"]["repository_beside_data"]
    assert [item["rule"] for item in checked["findings"] if item["rule"].startswith("live-backup")] == []
    strict = db.ansible("fediscale.mastodon.postgres_connections",
                        json.dumps({"backup": dict(BACKUP, backup_max_age_hours=0)}), check=True, become=True,
                        become_user="postgres")
    assert [item["rule"] for item in strict["findings"] if item["rule"].startswith("live-backup")] == [
        "live-backup-old"]

    psql(db, "INSERT INTO backup_probe SELECT generate_series(101, 150)")
    time.sleep(1.5)
    target_time = psql(db, "SELECT now()").stdout.strip()
    time.sleep(1.5)
    psql(db, "DROP TABLE backup_probe")
    # The segment with the drop is archived now, not at archive_timeout: the restore replays past the target.
    switched = psql(db, "SELECT pg_walfile_name(pg_switch_wal())").stdout.strip()
    for _attempt in range(60):
        if psql(db, "SELECT last_archived_wal >= '%s' FROM pg_stat_archiver" % switched).stdout.strip() == "t":
            break
        time.sleep(1)
    else:
        pytest.fail("segment %s was not archived in 60 s" % switched)

    # Archiving never failed on the primary, before or after the stanza was created.
    assert psql(db, "SELECT failed_count FROM pg_stat_archiver").stdout.strip() == "0"

    inventory = restore_inventory(db, tmp_path)
    try:
        restored_on_another_host(repository, restore_target, inventory, target_time)
    finally:
        # The repository host admits database-restore now; the scenario's primary again, as before the loss.
        back = converge_database_hosts(db, limit="database-backup")
    assert back.returncode == 0, back.stdout[-3000:]
    # The primary reaches its repository again: pgBackRest's check switches a segment and waits for its archive.
    checked = db.run("runuser -u postgres -- pgbackrest --stanza=%s check" % BACKUP["stanza"])
    assert checked.rc == 0, checked.stdout + checked.stderr


def restored_on_another_host(repository, restore_target, inventory, target_time):
    run = restore(inventory, target_time)
    assert run.returncode == 0, run.stdout[-4000:]
    assert psql(restore_target, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    assert psql(restore_target, "SELECT count(*), max(id) FROM backup_probe").stdout.strip() == "150|150"
    # Mastodon's role and database came back with it, and the plan's settings are live.
    assert psql(restore_target, "SELECT count(*) FROM pg_database WHERE datname = 'mastodon_production'"
                ).stdout.strip() == "1"
    for name in ("archive_mode", "archive_command", "max_connections"):
        assert str(live_setting(restore_target, name)) == str(SERVER["settings"][name]), name
    # The new timeline has its own full backup, beside the primary's.
    backups = pgbackrest_info(restore_target)["backup"]
    assert len(backups) >= 2 and backups[-1]["type"] == "full" and backups[-1]["error"] is False
    assert backups[-1]["archive"]["start"][:8] == "00000002"
    assert "tls-server-auth=database-restore=mastodon" in repository.run("cat %s" % BACKUP["config_file"]).stdout

    # A second restore would replace a running server with Mastodon's database: refused, nothing changed.
    again = restore(inventory, target_time)
    assert again.returncode != 0
    assert "PostgreSQL runs here with Mastodon's database" in again.stdout + again.stderr
    assert set(re.findall(r"changed=(\d+)", again.stdout.split("PLAY RECAP", 1)[1])) == {"0"}
    assert psql(restore_target, "SELECT count(*) FROM backup_probe").stdout.strip() == "150"


def test_archiving_without_a_repository_is_refused_before_any_host_is_touched(db):
    before = db.run("stat -c %Y /etc/pgbackrest.conf /etc/postgresql/*/main/conf.d/fediscale-mastodon.conf").stdout
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(SCENARIO / "converge.yml"),
                          "-i", db.backend.ansible_inventory, "-e", json.dumps({"pgbackrest_repo_path": None})],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "backup-archive-without-repository" in output and "set pgbackrest_repo_path" in output
    assert set(re.findall(r"changed=(\d+)", run.stdout.split("PLAY RECAP", 1)[1])) == {"0"}
    assert "TASK [fediscale.mastodon.postgresql" not in run.stdout
    assert db.run("stat -c %Y /etc/pgbackrest.conf /etc/postgresql/*/main/conf.d/fediscale-mastodon.conf").stdout \
        == before
