"""Live-check findings: each threshold, broken and kept."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import live
from ansible_collections.fediscale.mastodon.plugins.module_utils.live import (
    add_up_pools, pgbouncer_findings, pool_clients, pool_servers, postgres_findings, replication_findings)


def stats(states, waits=(), max_connections=100):
    return {"max_connections": max_connections, "superuser_reserved_connections": 3, "reserved_connections": 0,
            "states": states, "waits": list(waits)}


def ids(findings):
    return [finding["rule"] for finding in findings]


def test_a_healthy_server_has_no_findings():
    assert postgres_findings(stats({"active": 40, "idle": 5}), planned_max_connections=100, planned_total=50) == []


def test_live_max_connections_differs_from_the_plan():
    [finding] = postgres_findings(stats({"active": 1}), planned_max_connections=200)
    assert finding["severity"] == "error" and finding["numbers"] == {"live": 100, "planned": 200}
    assert "max_connections 100, the plan assumed 200" in finding["message"]


def test_more_connections_than_planned():
    [finding] = postgres_findings(stats({"active": 30, "idle": 5}), planned_total=30)
    assert finding["rule"] == "live-connections-over-plan" and finding["numbers"] == {"live": 35, "planned": 30}


def test_a_watched_peak_over_the_plan_is_judged_though_the_load_has_gone():
    [finding] = postgres_findings(stats({"active": 4}), planned_total=30, peak_connections=31)
    assert finding["numbers"] == {"live": 31, "planned": 30} and "were open at the peak" in finding["message"]
    assert postgres_findings(stats({"active": 4}), planned_total=30, peak_connections=30) == []


def test_utilisation_over_90_percent():
    assert "live-utilisation-over-warning-line" in ids(postgres_findings(stats({"active": 91})))
    assert "live-utilisation-over-warning-line" not in ids(postgres_findings(stats({"active": 90})))


def test_idle_over_20_percent_without_pgbouncer_only():
    assert ids(postgres_findings(stats({"active": 7, "idle": 3}))) == ["live-idle-over-threshold"]
    assert ids(postgres_findings(stats({"active": 8, "idle": 2}))) == []
    assert ids(postgres_findings(stats({"active": 7, "idle": 3}), behind_pgbouncer=True)) == []


def test_no_idle_connection_behind_pgbouncer_means_pgbouncer_is_the_bottleneck():
    assert ids(postgres_findings(stats({"active": 20}), behind_pgbouncer=True)) == ["live-no-idle-behind-pgbouncer"]


def test_many_wal_write_waits_suggest_synchronous_commit_off():
    waits = [{"backend_type": "client backend", "wait_event_type": "IO", "wait_event": "WALWrite", "count": 5}]
    [finding] = postgres_findings(stats({"active": 20}, waits))
    assert finding["rule"] == "live-wal-write-bound" and "synchronous_commit = off" in finding["hint"]
    assert postgres_findings(stats({"active": 30}, waits)) == []


def pool(**values):
    row = {"database": "mastodon_production", "user": "mastodon", "cl_active": 10, "cl_waiting": 0, "maxwait": 0,
           "maxwait_us": 0}
    row.update(values)
    return row


def test_waiting_clients_and_long_waits():
    assert pgbouncer_findings([pool()]) == []
    [waiting] = pgbouncer_findings([pool(cl_waiting=3)])
    assert waiting["rule"] == "pgbouncer-clients-waiting" and "mastodon_production/mastodon: 3 clients" in waiting["message"]
    [slow] = pgbouncer_findings([pool(maxwait=1, maxwait_us=500000)])
    assert slow["rule"] == "pgbouncer-maxwait-over-threshold" and slow["numbers"]["maxwait"] == pytest.approx(1.5)
    assert pgbouncer_findings([pool(database="pgbouncer", user="pgbouncer", cl_waiting=1)]) == []


def test_a_finding_of_one_of_several_processes_names_it():
    [waiting] = pgbouncer_findings([pool(cl_waiting=2, process="/run/pgbouncer/2")])
    assert "mastodon_production/mastodon (process at /run/pgbouncer/2): 2 clients" in waiting["message"]


def test_several_processes_add_up_and_keep_the_longest_wait():
    rows = [pool(cl_active=4, cl_waiting=1, sv_active=3, maxwait=0, maxwait_us=200, pool_mode="transaction",
                 process="/run/pgbouncer/1"),
            pool(cl_active=6, cl_waiting=0, sv_active=5, maxwait=2, maxwait_us=10, pool_mode="transaction",
                 process="/run/pgbouncer/2"),
            pool(database="pgbouncer", user="pgbouncer", cl_active=1, process="/run/pgbouncer/1")]
    mastodon, console = add_up_pools(rows)
    assert (mastodon["cl_active"], mastodon["cl_waiting"], mastodon["sv_active"]) == (10, 1, 8)
    assert (mastodon["maxwait"], mastodon["maxwait_us"], mastodon["pool_mode"]) == (2, 10, "transaction")
    assert "process" not in mastodon and console["database"] == "pgbouncer"


def test_clients_and_servers_of_pools_in_every_state_without_the_console():
    rows = [{"database": "mastodon_production", "cl_active": 25, "cl_waiting": 5, "sv_active": 15, "sv_idle": 2,
             "sv_used": 1, "sv_tested": 0, "sv_login": 1},
            {"database": "pgbouncer", "cl_active": 1, "cl_waiting": 0, "sv_active": 0, "sv_idle": 0, "sv_used": 0}]
    assert (pool_clients(rows), pool_servers(rows)) == (30, 19)


def primary_replication(senders=(), slots=()):
    return {"role": "primary", "senders": list(senders), "slots": list(slots)}


SLOT = {"slot_name": "db2", "active": True, "wal_status": "reserved", "retained_bytes": 16384, "safe_wal_size": None}
SENDER = {"application_name": "db2", "client_addr": "10.0.0.12", "state": "streaming", "replay_lag_seconds": 0.4}


class TestReplicationFindings:
    def test_a_streaming_replica_within_the_lag(self):
        assert replication_findings(primary_replication([SENDER], [SLOT]), ["db2"]) == []

    def test_a_primary_without_replicas_is_not_judged(self):
        assert replication_findings(primary_replication(), []) == []

    def test_a_replica_that_is_down_is_an_error_with_the_wal_its_slot_keeps(self):
        [finding] = replication_findings(primary_replication([], [dict(SLOT, active=False)]), ["db2"])
        assert (finding["rule"], finding["severity"]) == ("live-replica-not-streaming", "error")
        assert finding["message"] == ("no WAL sender streams to the replica of slot db2 (not connected); the slot "
                                      "keeps 16384 bytes of WAL for it")

    def test_a_lost_or_missing_slot(self):
        [lost] = replication_findings(primary_replication([], [dict(SLOT, wal_status="lost")]), ["db2"])
        assert "slot db2 is lost" in lost["message"] and "copies the primary" in lost["hint"]
        [missing] = replication_findings(primary_replication(), ["db2"])
        assert missing["message"] == "the replica's slot db2 is not on this primary"

    def test_lag_over_the_limit_is_a_warning(self):
        [finding] = replication_findings(primary_replication([dict(SENDER, replay_lag_seconds=45.0)], [SLOT]),
                                         ["db2"], max_lag_seconds=30)
        assert (finding["rule"], finding["severity"], finding["numbers"]["lag"]) == ("live-replica-lag", "warning", 45.0)
        assert finding["message"] == "the replica of slot db2 replays 45.0 s behind, more than 30 s"

    def test_a_standby_that_streams_and_one_that_does_not(self):
        streaming = {"role": "standby", "receiver": {"status": "streaming"}, "replay_lag_seconds": 0}
        assert replication_findings(streaming, []) == []
        [down] = replication_findings({"role": "standby", "receiver": None, "replay_lag_seconds": None}, [])
        assert down["message"] == "this standby's WAL receiver is not running, not streaming"
        [late] = replication_findings(dict(streaming, replay_lag_seconds=90.5), [], max_lag_seconds=60)
        assert late["message"] == "this standby replays 90.5 s behind its primary, more than 60 s"

    def test_an_inactive_slot_the_plan_does_not_know_is_a_warning(self):
        leftover = dict(SLOT, slot_name="old_replica", active=False, retained_bytes=1 << 30)
        [finding] = replication_findings(primary_replication([SENDER], [SLOT, leftover]), ["db2"])
        assert (finding["rule"], finding["severity"]) == ("live-replica-slot-unplanned", "warning")
        assert finding["message"] == ("the physical slot old_replica is inactive, not the plan's, and keeps "
                                      "1073741824 bytes of WAL on this primary")
        assert finding["hint"] == ("if no replica or tool reads it any more: "
                                   "SELECT pg_drop_replication_slot('old_replica');")
        assert replication_findings(primary_replication([], [dict(leftover, active=True)]), []) == []


# --- backups ---

BACKUP_PLAN = {"stanza": "mastodon", "repo_path": "/srv/pgbackrest", "data_directory": "/var/lib/postgresql/17/main",
               "archive_timeout": 300, "backup_max_age_hours": 36}


def backup_state(**changes):
    state = {"archiver": {"archived_count": 40, "last_archived_wal": "000000010000000000000028", "failed_count": 0,
                          "last_failed_wal": None, "last_archived_age_seconds": 20.0, "failing": False},
             "ready_segments": {"count": 0, "oldest_age_seconds": 0.0},
             "info": {"status_code": 0, "status_message": "ok",
                      "last_backup": {"label": "20261201-010000F", "type": "full", "stop": 1796000000,
                                      "age_seconds": 3600.0}},
             "repository_beside_data": False}
    for key, value in changes.items():
        state[key] = dict(state[key], **value) if isinstance(value, dict) else value
    return state


def backup_rules(**changes):
    return [(item["rule"], item["severity"]) for item in live.backup_findings(backup_state(**changes), BACKUP_PLAN)]


def test_healthy_backups_have_no_findings():
    assert backup_rules() == []


def test_failing_archive_command_is_an_error():
    [item] = live.backup_findings(backup_state(archiver={"failing": True, "failed_count": 3,
                                                         "last_failed_wal": "000000010000000000000029"}), BACKUP_PLAN)
    assert (item["rule"], item["severity"]) == ("live-backup-archive-failing", "error")
    assert "for 000000010000000000000029, failed after the last success (3 failures in all)" in item["message"]


def test_segments_waiting_past_twice_archive_timeout_are_a_warning():
    assert backup_rules(ready_segments={"count": 4, "oldest_age_seconds": 601.0}) == [
        ("live-backup-archive-behind", "warning")]
    assert backup_rules(ready_segments={"count": 4, "oldest_age_seconds": 599.0}) == []


def test_no_backup_an_old_one_and_an_unusable_stanza():
    assert backup_rules(info={"last_backup": None}) == [("live-backup-none", "warning")]
    old = dict(backup_state()["info"]["last_backup"], age_seconds=37 * 3600.0)
    [item] = live.backup_findings(backup_state(info={"last_backup": old}), BACKUP_PLAN)
    assert item["rule"] == "live-backup-old" and item["numbers"] == {"age_hours": 37.0, "limit_hours": 36}
    assert backup_rules(info={"status_code": 1, "status_message": "missing stanza path", "last_backup": None}) == [
        ("live-backup-stanza-unusable", "error")]


def test_an_unusable_stanza_in_a_bucket_names_the_bucket_and_its_key():
    plan = dict(BACKUP_PLAN, s3={"bucket": "mastodon-backups"})
    [item] = live.backup_findings(backup_state(info={"status_code": 1, "status_message": "missing stanza path",
                                                     "last_backup": None}), plan)
    assert "stanza %s in %s in bucket mastodon-backups: missing stanza path" % (
        plan["stanza"], plan["repo_path"]) in item["message"]
    assert "reachable (the bucket, its key)" in item["hint"]


def test_a_repository_on_the_data_directorys_file_system_is_a_warning():
    assert backup_rules(repository_beside_data=True) == [("live-backup-repository-beside-data", "warning")]


def test_last_backup_is_the_newest_without_an_error():
    info = [{"backup": [
        {"label": "A", "type": "full", "error": False, "timestamp": {"stop": 100}},
        {"label": "B", "type": "diff", "error": False, "timestamp": {"stop": 200}},
        {"label": "C", "type": "diff", "error": True, "timestamp": {"stop": 300}}]}]
    assert live.last_backup(info, 250.0) == {"label": "B", "type": "diff", "stop": 200, "age_seconds": 50.0}
    assert live.last_backup([{"backup": []}], 250.0) is None
