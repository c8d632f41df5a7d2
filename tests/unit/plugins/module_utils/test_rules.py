"""One class per rule in plugins/module_utils/rules.py: a plan that breaks it, and one that keeps it."""

import copy
import re
from pathlib import Path

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan, rules

from ...clusters import QUEUES, cluster


def found(description, rule_id):
    return [item for item in plan.connection_budget(description)["findings"] if item["rule"] == rule_id]


def test_every_rule_has_a_test_class():
    names = {name for name in globals() if name.startswith("Test")}
    expected = {"Test" + "".join(part.capitalize() for part in rule_id.replace("-", " ").split())
                for rule_id in rules.RULES}
    assert expected - names == set()


def test_the_base_cluster_has_no_findings():
    assert plan.connection_budget(cluster())["findings"] == []


def sidekiq(*entries):
    """Every queue at concurrency 5, with some entries replaced."""
    queues = {queue: {"queue": queue, "concurrency": 5} for queue in QUEUES}
    for entry in entries:
        queues[entry.get("queue", entry.get("name"))] = entry
    return [entry for entry in queues.values() if "name" not in entry] + [
        dict(entry, queue=None) for entry in entries if "name" in entry]


class TestConnectionsOverUsableCapacity:
    def test_over_usable_is_an_error_with_numbers(self):
        # 58 in the base plan; 150 more sidekiq connections make 208 > 197.
        [item] = found(cluster(hosts__worker2={"sidekiq": {"queues": [
            {"queue": "pull", "instances": 6, "concurrency": 25}]}, "pgbouncer": {"enabled": False}}),
            "connections-over-usable-capacity")
        assert item["severity"] == "error"
        assert item["host"] == "db1"
        assert item["numbers"] == {"total": 208, "usable": 197, "max_connections": 200}
        assert "208 connections" in item["message"] and "197 are usable" in item["message"]
        assert "remove 11 connections" in item["hint"]

    def test_reserved_connections_count(self):
        description = cluster(hosts__db1={"postgresql": {"max_connections": 60, "ram": "16GB",
                                                         "superuser_reserved_connections": 5,
                                                         "reserved_connections": 4}})
        [item] = found(description, "connections-over-usable-capacity")
        assert item["numbers"]["usable"] == 51 and item["numbers"]["total"] == 58

    def test_pgbouncer_pools_count_instead_of_clients(self):
        description = cluster(hosts__worker1__pgbouncer={"default_pool_size": 10},
                              hosts__db1={"postgresql": {"max_connections": 40, "ram": "16GB"}})
        [item] = found(description, "connections-over-usable-capacity")
        # 10 server connections from worker1's pgbouncer (not its 30 clients) + web1's 20 + 8 direct.
        assert item["numbers"] == {"total": 38, "usable": 37, "max_connections": 40}
        assert "pgbouncer 10" in item["message"] and "direct connection 8" in item["message"]

    def test_at_usable_is_no_error(self):
        description = cluster(hosts__db1={"postgresql": {"max_connections": 61, "ram": "16GB"}})
        assert found(description, "connections-over-usable-capacity") == []

    def test_replica_gets_its_own_sum(self):
        # Both at 40: a hot standby runs with at least the primary's max_connections.
        description = with_replica(primary={"max_connections": 200}, replica={"max_connections": 40})
        description["hosts"]["db1"]["postgresql"]["max_connections"] = 40
        [item] = [entry for entry in found(description, "connections-over-usable-capacity")
                  if entry["service"] == "postgresql replica"]
        # web 10 + sidekiq 30 on the replica; streaming never uses it.
        assert item["service"] == "postgresql replica" and item["numbers"]["total"] == 40


# A replica the rules accept: the primary's limits, and the primary's slot bounded below its WAL disk.
SOUND_REPLICA = {"hosts__db2": {"postgresql": {"role": "replica", "ram": "16GB"}},
                 "hosts__db1": {"postgresql": {"ram": "16GB", "max_slot_wal_keep_size": "50GB",
                                               "wal_disk_free": "200GB"}}}


def with_replica(primary=None, replica=None):
    description = cluster(**copy.deepcopy(SOUND_REPLICA))
    description["hosts"]["db1"]["postgresql"].update(primary or {})
    description["hosts"]["db2"]["postgresql"].update(replica or {})
    return description


class TestReplicaBelowPrimary:
    def test_fewer_connections_than_the_primary(self):
        [item] = found(with_replica(replica={"max_connections": 150}), "replica-below-primary")
        assert (item["severity"], item["host"], item["numbers"]) == ("error", "db2", {"primary": 200, "replica": 150})
        assert item["message"].startswith("max_connections on the replica db2 is 150, below the primary db1's 200")
        assert item["hint"] == "set postgresql_max_connections: 200 (or more) on db2"

    def test_fewer_cpus_mean_fewer_workers(self):
        [item] = found(with_replica(primary={"cpus": 16}, replica={"cpus": 4}), "replica-below-primary")
        assert "max_worker_processes on the replica db2 is 4, below the primary db1's 16" in item["message"]
        assert "give the replica as many CPUs as the primary" in item["hint"]

    def test_each_lower_setting_is_named(self):
        items = found(with_replica(primary={"max_prepared_transactions": 10, "max_locks_per_transaction": 128}),
                      "replica-below-primary")
        assert [item["numbers"] for item in items] == [{"primary": 128, "replica": 64}, {"primary": 10, "replica": 0}]

    def test_a_replica_at_the_primarys_limits_or_above(self):
        assert found(with_replica(replica={"max_connections": 300}), "replica-below-primary") == []


class TestReplicaOfUnmanagedPrimary:
    def test_a_managed_replica_of_a_primary_the_role_leaves_alone(self):
        [item] = found(with_replica(primary={"limits_from": "live"}), "replica-of-unmanaged-primary")
        assert (item["severity"], item["host"], item["service"]) == ("error", "db2", "postgresql replica")
        assert item["message"].startswith("the postgresql role would copy the primary db1 to the replica db2, but "
                                          "does not manage db1 (postgresql_limits_from: live)")
        assert item["hint"].startswith("make the replica yourself and set postgresql_limits_from: live on db2 too")

    def test_both_managed_or_both_left_alone(self):
        assert found(with_replica(), "replica-of-unmanaged-primary") == []
        assert found(with_replica(primary={"limits_from": "live"}, replica={"limits_from": "live"}),
                     "replica-of-unmanaged-primary") == []


class TestReplicaPrimaryShortOfWalSenders:
    def test_too_few_senders_and_slots(self):
        items = found(with_replica(primary={"max_wal_senders": 2, "max_replication_slots": 1},
                                   replica={"max_wal_senders": 2}), "replica-primary-short-of-wal-senders")
        assert [(item["host"], item["numbers"]) for item in items] == [
            ("db1", {"have": 2, "need": 3}), ("db1", {"have": 1, "need": 3})]
        assert items[0]["message"] == ("max_wal_senders on the primary db1 is 2; its replica takes 1 and "
                                       "pg_basebackup's first copy 2 more, 3 in all")

    def test_defaults_cover_a_replica(self):
        assert found(with_replica(), "replica-primary-short-of-wal-senders") == []


class TestReplicaSlotWalUnbounded:
    def test_no_limit(self):
        description = with_replica()
        del description["hosts"]["db1"]["postgresql"]["max_slot_wal_keep_size"]
        [item] = found(description, "replica-slot-wal-unbounded")
        assert item["host"] == "db1" and "(postgresql_max_slot_wal_keep_size not set)" in item["message"]

    def test_limit_not_below_the_free_disk(self):
        [item] = found(with_replica(primary={"max_slot_wal_keep_size": "200GB"}), "replica-slot-wal-unbounded")
        assert item["message"].startswith("max_slot_wal_keep_size 200GB on the primary db1 is not below the 200GB "
                                          "free on its WAL disk")

    def test_without_a_replica_nothing_is_asked(self):
        assert found(cluster(), "replica-slot-wal-unbounded") == []

    def test_a_limit_below_the_free_disk(self):
        assert found(with_replica(), "replica-slot-wal-unbounded") == []


class TestReplicaWalLevelMinimal:
    def test_minimal(self):
        [item] = found(with_replica(primary={"wal_level": "minimal"}), "replica-wal-level-minimal")
        assert item["message"] == "wal_level is minimal on the primary db1: its WAL cannot feed the replica db2"

    def test_replica_and_logical(self):
        assert found(with_replica(primary={"wal_level": "logical"}), "replica-wal-level-minimal") == []


def test_a_sound_replica_has_no_findings_and_is_written_as_a_hot_standby():
    report = plan.connection_budget(with_replica())
    assert report["findings"] == []
    assert {key: report["postgresql"]["db2"]["settings"].get(key) for key in ("hot_standby", "hot_standby_feedback")} \
        == {"hot_standby": "on", "hot_standby_feedback": "on"}
    assert report["postgresql"]["db1"]["settings"]["max_slot_wal_keep_size"] == "50GB"
    assert "max_wal_senders" not in report["postgresql"]["db1"]["settings"]  # PostgreSQL's default


class TestConnectionsOverWarningLine:
    def test_between_line_and_usable_is_a_warning(self):
        [item] = found(cluster(hosts__db1={"postgresql": {"max_connections": 64, "ram": "16GB"}}),
                       "connections-over-warning-line")
        assert item["severity"] == "warning"
        assert item["numbers"] == {"total": 58, "warning_line": 57, "max_connections": 64}
        assert "6 are left" in item["message"]

    def test_at_the_line_is_fine(self):
        # 90 % of 65 is 58.5: 58 connections stay below.
        assert found(cluster(hosts__db1={"postgresql": {"max_connections": 65, "ram": "16GB"}}),
                     "connections-over-warning-line") == []

    def test_still_reported_when_over_capacity(self):
        report = plan.connection_budget(cluster(hosts__db1={"postgresql": {"max_connections": 50, "ram": "16GB"}}))
        rules_found = [item["rule"] for item in report["findings"]]
        assert rules_found == ["connections-over-usable-capacity", "connections-over-warning-line"]
        warning = report["findings"][1]
        assert warning["numbers"] == {"total": 58, "warning_line": 45, "max_connections": 50}
        assert "8 more than max_connections" in warning["message"]


class TestMaxConnectionsOver512:
    def test_warns_above_512(self):
        [item] = found(cluster(hosts__db1={"postgresql": {"max_connections": 513, "ram": "64GB"}}),
                       "max-connections-over-512")
        assert item["severity"] == "warning" and item["numbers"] == {"max_connections": 513}

    def test_512_is_fine(self):
        assert found(cluster(hosts__db1={"postgresql": {"max_connections": 512, "ram": "64GB"}}),
                     "max-connections-over-512") == []


class TestMaxConnectionsOver1000:
    def test_error_above_1000(self):
        [item] = found(cluster(hosts__db1={"postgresql": {"max_connections": 1001, "ram": "64GB"}}),
                       "max-connections-over-1000")
        assert item["severity"] == "error"
        assert "postgresql_acknowledge_max_connections_over_1000" in item["hint"]

    def test_acknowledged_is_a_warning(self):
        [item] = found(cluster(hosts__db1={"postgresql": {"max_connections": 1001, "ram": "64GB",
                                                          "acknowledge_max_connections_over_1000": True}}),
                       "max-connections-over-1000")
        assert item["severity"] == "warning"

    def test_1000_is_no_error(self):
        assert found(cluster(hosts__db1={"postgresql": {"max_connections": 1000, "ram": "64GB"}}),
                     "max-connections-over-1000") == []


LIVE = {"max_connections": 100, "superuser_reserved_connections": 3, "reserved_connections": 0}


class TestPostgresqlLiveLimitsUnread:
    def test_unreachable_server(self):
        [item] = found(cluster(hosts__db1__postgresql__limits_from="live",
                               hosts__db1__postgresql__live_limits={"error": "connection refused"}),
                       "postgresql-live-limits-unread")
        assert item["severity"] == "warning" and item["host"] == "db1" and item["service"] == "postgresql primary"
        assert "not read (connection refused)" in item["message"]
        assert "uses the inventory's: max_connections 200, superuser_reserved_connections 3" in item["message"]
        assert "plan_postgresql_login_host" in item["hint"]

    def test_plan_yml_reads_nothing(self):
        [item] = found(cluster(hosts__db1__postgresql__limits_from="live"), "postgresql-live-limits-unread")
        assert "plan.yml and the filters contact no host" in item["message"]

    def test_read(self):
        assert found(cluster(hosts__db1__postgresql__limits_from="live", hosts__db1__postgresql__live_limits=LIVE),
                     "postgresql-live-limits-unread") == []


class TestPostgresqlInventoryLimitsDifferFromLive:
    def test_the_plan_takes_the_servers_limits_and_says_so(self):
        description = cluster(hosts__db1__postgresql__limits_from="live", hosts__db1__postgresql__live_limits=LIVE)
        report = plan.connection_budget(description)
        server = report["servers"]["primary"]
        assert (server["max_connections"], server["limits_source"], server["usable"]) == (100, "live", 97)
        [item] = [entry for entry in report["findings"] if entry["rule"] == "postgresql-inventory-limits-differ-from-live"]
        assert "the running server has max_connections 100" in item["message"]
        assert "the inventory says max_connections 200" in item["message"]
        assert item["hint"].startswith("set postgresql_max_connections: 100 in the inventory")

    def test_live_limits_count_only_when_asked_for(self):
        report = plan.connection_budget(cluster(hosts__db1__postgresql__live_limits=LIVE))
        assert report["servers"]["primary"]["max_connections"] == 200
        assert report["servers"]["primary"]["limits_source"] == "inventory"

    def test_same_values(self):
        assert found(cluster(hosts__db1__postgresql__limits_from="live",
                             hosts__db1__postgresql__live_limits=dict(LIVE, max_connections=200)),
                     "postgresql-inventory-limits-differ-from-live") == []


class TestWorkMemOverTwiceRam:
    def test_error_names_the_limit(self):
        # 200 x 200MB = 40000MB > 2 x 16GB = 32768MB.
        [item] = found(cluster(hosts__db1={"postgresql": {"max_connections": 200, "ram": "16GB",
                                                          "work_mem": "200MB"}}), "work-mem-over-twice-ram")
        assert item["severity"] == "error" and item["host"] == "db1"
        assert item["numbers"]["work_mem_limit_kb"] == 2 * 16 * 1024 * 1024 // 200
        assert "167772kB or less" in item["hint"]

    def test_exactly_twice_is_fine(self):
        assert found(cluster(hosts__db1={"postgresql": {"max_connections": 200, "ram": "16GB",
                                                        "work_mem": "167772kB"}}), "work-mem-over-twice-ram") == []

    def test_default_work_mem_never_breaks_it(self):
        assert found(cluster(hosts__db1={"postgresql": {"max_connections": 1000, "ram": "1GB",
                                                        "acknowledge_max_connections_over_1000": True}}),
                     "work-mem-over-twice-ram") == []


class TestPgbouncerClientsOverMaxClientConn:
    def test_error_names_host_and_numbers(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={"max_client_conn": 20}),
                       "pgbouncer-clients-over-max-client-conn")
        assert (item["host"], item["service"]) == ("worker1", "pgbouncer")
        assert item["numbers"] == {"clients": 30, "max_client_conn": 20}

    def test_auto_always_fits(self):
        assert found(cluster(hosts__worker1__pgbouncer={}), "pgbouncer-clients-over-max-client-conn") == []


class TestPgbouncerFdNeedOverLimitNofile:
    def test_error(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={"limit_nofile": 100}),
                       "pgbouncer-fd-need-over-limit-nofile")
        # max_client_conn 100 (auto) + 12 + pool 20 (auto) x 1 database x 3 users (Mastodon, stats, admin).
        assert item["numbers"] == {"fd_need": 172, "limit_nofile": 100}
        assert "x 1 databases x 3 users" in item["message"]
        assert "172 or more" in item["hint"]

    def test_auto_fits(self):
        assert found(cluster(hosts__worker1__pgbouncer={}), "pgbouncer-fd-need-over-limit-nofile") == []


class TestLimitNofileOverHardLimit:
    def test_pgbouncer_limit_beyond_the_host(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={"max_client_conn": 30000},
                               hosts__worker1__mastodon={"nofile_hard_limit": 20000}),
                       "limit-nofile-over-hard-limit")
        assert (item["host"], item["service"]) == ("worker1", "pgbouncer")
        assert item["numbers"] == {"limit_nofile": 30000 + 12 + 20 * 3 + 64, "nofile_hard_limit": 20000}

    def test_nginx_limit_beyond_the_host(self):
        [item] = found(cluster(hosts__lb1={"nginx": {"worker_connections": 16384},
                                           "mastodon": {"nofile_hard_limit": 20000}},
                               mastodon__trusted_proxy_ip="10.0.0.1"), "limit-nofile-over-hard-limit")
        assert (item["host"], item["service"]) == ("lb1", "nginx")
        assert item["numbers"]["limit_nofile"] == 32768

    def test_within_the_limit(self):
        assert found(cluster(hosts__worker1__pgbouncer={}, hosts__worker1__mastodon={"nofile_hard_limit": 20000}),
                     "limit-nofile-over-hard-limit") == []


class TestPgbouncerProcessesNeedPeers:
    def test_error_names_the_version(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={"processes": 2},
                               hosts__worker1__mastodon={"debian_version": 12}), "pgbouncer-processes-need-peers")
        assert "pgbouncer 1.18" in item["message"] and item["host"] == "worker1"

    def test_fine_from_1_19(self):
        assert found(cluster(hosts__worker1__pgbouncer={"processes": 2, "version": "1.19"}),
                     "pgbouncer-processes-need-peers") == []


class TestPreparedStatementsWithTransactionPooling:
    def test_error_when_the_admin_turns_them_on(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={},
                               hosts__worker1__mastodon={"environment": {"PREPARED_STATEMENTS": "true"}}),
                       "prepared-statements-with-transaction-pooling")
        assert item["host"] == "worker1" and "PREPARED_STATEMENTS=true" in item["message"]

    def test_replica_twin_is_checked(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={},
                               hosts__worker1__mastodon={"environment": {"REPLICA_PREPARED_STATEMENTS": "yes"}},
                               hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"}}),
                       "prepared-statements-with-transaction-pooling")
        assert "REPLICA_PREPARED_STATEMENTS" in item["message"]

    def test_the_collection_sets_them_off(self):
        description = cluster(hosts__worker1__pgbouncer={},
                              hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"}})
        assert found(description, "prepared-statements-with-transaction-pooling") == []
        env = plan.connection_budget(description)["environment"]["worker1"]["units"]
        assert env["PREPARED_STATEMENTS"] == "false" and env["REPLICA_PREPARED_STATEMENTS"] == "false"

    def test_opt_in_without_the_acknowledgement_is_an_error_that_says_what_breaks(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={"max_prepared_statements": 200}),
                       "prepared-statements-with-transaction-pooling")
        assert (item["severity"], item["host"], item["service"]) == ("error", "worker1", "pgbouncer")
        assert "max_prepared_statements 200" in item["message"] and "DEALLOCATE" in item["message"]
        assert rules.PREPARED_STATEMENTS_MEASURED in item["message"]
        assert "pgbouncer_acknowledge_prepared_statements: true" in item["hint"]

    def test_acknowledged_opt_in_is_a_warning_and_mastodon_prepares(self):
        description = cluster(hosts__worker1__pgbouncer={"max_prepared_statements": 200,
                                                         "acknowledge_prepared_statements": True},
                              hosts__web1__pgbouncer={},
                              hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"}})
        [item] = found(description, "prepared-statements-with-transaction-pooling")
        assert item["severity"] == "warning" and "acknowledged" in item["hint"]
        report = plan.connection_budget(description)
        env = report["environment"]["worker1"]["units"]
        assert env["PREPARED_STATEMENTS"] == "true" and env["REPLICA_PREPARED_STATEMENTS"] == "true"
        assert report["pgbouncer"]["worker1"]["max_prepared_statements"] == 200
        # Only that host's Mastodon prepares; the others' pgbouncers track nothing.
        assert report["environment"]["web1"]["units"]["PREPARED_STATEMENTS"] == "false"

    def test_opt_in_on_a_pgbouncer_that_cannot_track_them_is_an_error_even_acknowledged(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={"max_prepared_statements": 100, "version": "1.18",
                                                          "acknowledge_prepared_statements": True}),
                       "prepared-statements-with-transaction-pooling")
        assert item["severity"] == "error" and "pgbouncer 1.18 does not track" in item["message"]
        assert "pgbouncer_max_prepared_statements: 0" in item["hint"]

    def test_session_pooling_keeps_them(self):
        assert found(cluster(hosts__worker1__pgbouncer={"pool_mode": "session"},
                             hosts__worker1__mastodon={"environment": {"PREPARED_STATEMENTS": "true"}}),
                     "prepared-statements-with-transaction-pooling") == []


class TestMigrationsThroughPgbouncer:
    def test_error(self):
        [item] = found(cluster(hosts__worker1__pgbouncer={}, mastodon__migrations_via="pgbouncer"),
                       "migrations-through-pgbouncer")
        assert "advisory" in item["message"] and "mastodon_migrations_via: direct" in item["hint"]

    def test_direct_migrations_bypass_pgbouncer(self):
        report = plan.connection_budget(cluster(hosts__worker1__pgbouncer={}))
        assert found(cluster(hosts__worker1__pgbouncer={}), "migrations-through-pgbouncer") == []
        assert report["environment"]["worker1"]["migrations"]["DB_PORT"] == "5432"
        assert report["environment"]["worker1"]["units"]["DB_PORT"] == "6432"


class TestSidekiqDbPoolBelowConcurrency:
    def test_error_names_host_and_unit(self):
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(
            {"queue": "pull", "concurrency": 10, "db_pool": 5})}), "sidekiq-db-pool-below-concurrency")
        assert (item["host"], item["service"]) == ("worker1", "mastodon-sidekiq-pull@.service")
        assert item["numbers"] == {"pool": 5, "concurrency": 10}

    def test_leaked_db_pool_counts(self):
        findings = found(cluster(hosts__worker1__mastodon={"env_production": {"DB_POOL": "3"}}),
                         "sidekiq-db-pool-below-concurrency")
        assert len(findings) == len(QUEUES)
        assert all("DB_POOL 3 (DB_POOL from .env.production)" in item["message"] for item in findings)

    def test_equal_is_fine(self):
        assert found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(
            {"queue": "pull", "concurrency": 10, "db_pool": 10})}), "sidekiq-db-pool-below-concurrency") == []


class TestSidekiqDbPoolAboveConcurrency:
    def test_warning(self):
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(
            {"queue": "push", "concurrency": 10, "db_pool": 25})}), "sidekiq-db-pool-above-concurrency")
        assert item["severity"] == "warning" and "15 connections per process" in item["message"]

    def test_pool_follows_concurrency_by_default(self):
        assert found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(
            {"queue": "push", "concurrency": 10})}), "sidekiq-db-pool-above-concurrency") == []


class TestSidekiqConcurrencyOver25:
    def test_warning_suggests_instances(self):
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(
            {"queue": "default", "concurrency": 50, "instances": 1})}), "sidekiq-concurrency-over-25")
        assert item["severity"] == "warning" and "2 instances at 25" in item["hint"]

    def test_25_is_fine(self):
        assert found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(
            {"queue": "default", "concurrency": 25})}), "sidekiq-concurrency-over-25") == []


class TestSidekiqUnitWithSeveralQueues:
    def test_error(self):
        [item] = found(cluster(hosts__worker2={"sidekiq": {"queues": [{"queues": ["default", "push"]}]}}),
                       "sidekiq-unit-with-several-queues")
        assert item["host"] == "worker2" and "default, push" in item["message"]

    def test_one_queue_is_fine(self):
        assert found(cluster(hosts__worker2={"sidekiq": {"queues": [{"queues": ["default"]}]}}),
                     "sidekiq-unit-with-several-queues") == []


class TestSidekiqUnknownQueue:
    def test_error_lists_known_queues(self):
        [item] = found(cluster(hosts__worker2={"sidekiq": {"queues": [{"queue": "defualt"}]}}),
                       "sidekiq-unknown-queue")
        assert "'defualt'" in item["message"] and "default" in item["hint"]

    def test_fasp_is_unknown_before_4_4(self):
        description = cluster(mastodon__version="4.3", hosts__worker2={"sidekiq": {"queues": [{"queue": "fasp"}]}})
        assert len(found(description, "sidekiq-unknown-queue")) == 1
        assert found(cluster(hosts__worker2={"sidekiq": {"queues": [{"queue": "fasp"}]}}),
                     "sidekiq-unknown-queue") == []


class TestSidekiqQueueWithoutWorker:
    def test_error_names_the_queue(self):
        queues = [entry for entry in sidekiq() if entry["queue"] != "mailers"]
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": queues}), "sidekiq-queue-without-worker")
        assert item["service"] == "sidekiq mailers" and "queue: mailers" in item["hint"]

    def test_zero_instances_do_not_serve(self):
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": sidekiq({"queue": "push", "instances": 0})}),
                       "sidekiq-queue-without-worker")
        assert item["service"] == "sidekiq push"

    def test_fasp_needed_only_with_the_feature(self):
        assert found(cluster(), "sidekiq-queue-without-worker") == []
        [item] = found(cluster(mastodon__experimental_features=["fasp"]), "sidekiq-queue-without-worker")
        assert item["service"] == "sidekiq fasp"


class TestSidekiqSchedulerCount:
    def test_two_schedulers(self):
        [item] = found(cluster(hosts__worker2={"sidekiq": {"queues": [{"queue": "scheduler"}]}}),
                       "sidekiq-scheduler-count")
        assert item["numbers"] == {"processes": 2}
        assert "worker1" in item["message"] and "worker2" in item["message"]

    def test_two_instances_of_one_unit(self):
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": sidekiq({"queue": "scheduler", "instances": 2})}),
                       "sidekiq-scheduler-count")
        assert item["host"] == "worker1" and "x2" in item["message"]

    def test_none(self):
        queues = [entry for entry in sidekiq() if entry["queue"] != "scheduler"]
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": queues}), "sidekiq-scheduler-count")
        assert item["numbers"] == {"processes": 0} and "never run" in item["message"]


class TestSidekiqStopTimeoutWithinShutdownTimeout:
    def test_systemd_killing_before_the_push_back(self):
        # Debian's and Mastodon's old unit stop timeout of 15 s against Sidekiq's 25 s.
        [item] = found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(), "stop_timeout": 15}),
                       "sidekiq-stop-timeout-within-shutdown-timeout")
        assert (item["severity"], item["host"], item["service"]) == ("error", "worker1", "sidekiq")
        assert item["numbers"] == {"stop_timeout": 15, "shutdown_timeout": 25}
        assert "mastodon-sidekiq-pull@.service" in item["message"] and "loses the jobs still running" in item["message"]
        assert "sidekiq_stop_timeout to 30 or more" in item["hint"]

    def test_a_shorter_shutdown_timeout_fits(self):
        assert found(cluster(hosts__worker1__sidekiq={"queues": sidekiq(), "stop_timeout": 15,
                                                      "shutdown_timeout": 10}),
                     "sidekiq-stop-timeout-within-shutdown-timeout") == []

    def test_the_defaults_fit(self):
        assert found(cluster(), "sidekiq-stop-timeout-within-shutdown-timeout") == []


class TestStreamingClusterNumIgnored:
    def test_error_on_4_2_and_later(self):
        [item] = found(cluster(hosts__web1__mastodon={"env_production": {"STREAMING_CLUSTER_NUM": "4"}}),
                       "streaming-cluster-num-ignored")
        assert item["host"] == "web1" and ".env.production" in item["message"]

    def test_not_set(self):
        assert found(cluster(), "streaming-cluster-num-ignored") == []


class TestRedisNamespaceAbortsBoot:
    def test_error_on_4_4(self):
        [item] = found(cluster(hosts__web1__mastodon={"environment": {"REDIS_NAMESPACE": "m"}}),
                       "redis-namespace-aborts-boot")
        assert "mastodon_environment" in item["message"]

    def test_allowed_on_4_3(self):
        assert found(cluster(mastodon__version="4.3", hosts__web1__mastodon={"environment": {"REDIS_NAMESPACE": "m"}}),
                     "redis-namespace-aborts-boot") == []


class TestSizingVariableInEnvProduction:
    def test_db_pool_names_the_processes_it_reaches(self):
        [item] = found(cluster(hosts__web1__mastodon={"env_production": {"DB_POOL": "25"}}),
                       "sizing-variable-in-env-production")
        assert "mastodon-web.service" in item["message"] and "mastodon-streaming@4000.service" in item["message"]

    def test_the_leak_is_counted(self):
        report = plan.connection_budget(cluster(hosts__web1__mastodon={"env_production": {"DB_POOL": "25"}}))
        streaming = [row for row in report["processes"] if row["service"] == "streaming"][0]
        assert (streaming["pool"], streaming["pool_source"]) == (25, "DB_POOL from .env.production")

    def test_max_threads_is_ignored_by_puma(self):
        description = cluster(hosts__web1={"web": {}, "pgbouncer": {"enabled": False},
                                           "mastodon": {"env_production": {"MAX_THREADS": "10"}}})
        [item] = found(description, "sizing-variable-in-env-production")
        assert "28440" in item["message"]
        web = plan.connection_budget(description)["processes"][0]
        assert (web["threads"], web["pool"]) == (5, 10)

    def test_no_warning_when_every_unit_sets_it(self):
        assert found(cluster(hosts__web1={"web": {"db_pool": 5}, "pgbouncer": {"enabled": False},
                                          "mastodon": {"env_production": {"DB_POOL": "25"}}}),
                     "sizing-variable-in-env-production") == []


REDIS_ONE = [{"name": "all", "purpose": "persistent", "port": 6379}]


class TestRedisDatasetWithoutInstance:
    def test_no_cache_instance(self):
        [item] = found(cluster(hosts__redis1={"redis": {"instances": REDIS_ONE}}), "redis-dataset-without-instance")
        assert item["service"] == "redis cache"

    def test_external_settings_need_no_instance(self):
        assert found(cluster(hosts__redis1={"redis": {"instances": []}}, mastodon__redis_settings={
            "REDIS_URL": "redis://r1:6379", "CACHE_REDIS_URL": "redis://r2:6379"}),
            "redis-dataset-without-instance") == []


class TestRedisCacheSharesInstance:
    def test_same_endpoint(self):
        [item] = found(cluster(mastodon__redis_settings={"REDIS_URL": "redis://redis1:6379/0",
                                                         "SIDEKIQ_REDIS_URL": "redis://redis1:6381/0",
                                                         "CACHE_REDIS_URL": "redis://redis1:6379/1"}),
                       "redis-cache-shares-instance")
        assert "redis1:6379" in item["message"] and "base data (REDIS_URL)" in item["message"]

    def test_cache_falls_back_to_base(self):
        # No CACHE_REDIS_URL: the cache lands on the base instance.
        findings = found(cluster(mastodon__redis_settings={"REDIS_URL": "redis://redis1:6379"}),
                         "redis-cache-shares-instance")
        assert len(findings) == 2  # base and sidekiq

    def test_split(self):
        assert found(cluster(), "redis-cache-shares-instance") == []


class TestRedisPersistentWithoutAof:
    def test_error(self):
        [item] = found(cluster(hosts__redis1={"redis": {"instances": [
            {"name": "persistent", "purpose": "persistent", "appendonly": False},
            {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB"}]}}), "redis-persistent-without-aof")
        assert (item["host"], item["service"]) == ("redis1", "redis persistent")

    def test_judged_by_what_it_serves(self):
        # Mastodon's base data pointed at the cache instance: that instance needs AOF.
        findings = found(cluster(mastodon__redis_settings={"REDIS_URL": "redis://redis1:6380",
                                                           "CACHE_REDIS_URL": "redis://redis1:6379"}),
                         "redis-persistent-without-aof")
        assert [item["service"] for item in findings] == ["redis cache"]


class TestRedisPersistentEvictingPolicy:
    def test_error(self):
        [item] = found(cluster(hosts__redis1={"redis": {"instances": [
            {"name": "persistent", "purpose": "persistent", "maxmemory_policy": "allkeys-lru"},
            {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB"}]}}),
            "redis-persistent-evicting-policy")
        assert "allkeys-lru" in item["message"]

    def test_noeviction_is_fine(self):
        assert found(cluster(), "redis-persistent-evicting-policy") == []


class TestRedisCacheWithoutMaxmemory:
    def test_warning(self):
        [item] = found(cluster(hosts__redis1={"redis": {"instances": [
            {"name": "persistent", "purpose": "persistent"},
            {"name": "cache", "purpose": "cache", "port": 6380}]}}), "redis-cache-without-maxmemory")
        assert item["severity"] == "warning"

    def test_with_maxmemory(self):
        assert found(cluster(), "redis-cache-without-maxmemory") == []


class TestRedisCachePersistenceOn:
    def test_warning_for_aof(self):
        [item] = found(cluster(hosts__redis1={"redis": {"instances": [
            {"name": "persistent", "purpose": "persistent"},
            {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB", "appendonly": True}]}}),
            "redis-cache-persistence-on")
        assert "appendonly yes" in item["message"]

    def test_warning_for_snapshots(self):
        [item] = found(cluster(hosts__redis1={"redis": {"instances": [
            {"name": "persistent", "purpose": "persistent"},
            {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB", "save": ["3600 1"]}]}}),
            "redis-cache-persistence-on")
        assert "3600 1" in item["message"]

    def test_default_cache_writes_nothing(self):
        assert found(cluster(), "redis-cache-persistence-on") == []


class TestRedisSettingIgnored:
    def test_cache_port_alone(self):
        [item] = found(cluster(mastodon__redis_settings={"REDIS_URL": "redis://redis1:6379",
                                                         "CACHE_REDIS_PORT": "6380"}), "redis-setting-ignored")
        assert item["severity"] == "error" and "CACHE_REDIS_PORT" in item["message"]

    def test_cache_host_and_port(self):
        assert found(cluster(mastodon__redis_settings={"REDIS_URL": "redis://redis1:6379",
                                                       "CACHE_REDIS_HOST": "redis1", "CACHE_REDIS_PORT": "6380"}),
                     "redis-setting-ignored") == []


class TestRedisTlsSchemeMismatch:
    SETTINGS = {"REDIS_URL": "redis://redis1:6379", "CACHE_REDIS_URL": "rediss://redis1:6380"}

    def test_plain_url_to_an_instance_that_takes_only_tls(self):
        [item] = found(cluster(mastodon__redis_settings=self.SETTINGS), "redis-tls-scheme-mismatch")
        assert (item["severity"], item["host"], item["service"]) == ("error", "redis1", "redis persistent")
        assert item["message"] == ("REDIS_URL reaches Redis persistent on redis1 without TLS, but the instance takes "
                                   "only TLS on port 6379: Mastodon could not connect")
        assert item["hint"] == "write REDIS_URL as rediss://redis1:6379, or set tls: false on the instance"

    def test_tls_url_to_a_plain_instance(self):
        instances = [{"name": "persistent", "purpose": "persistent", "port": 6379, "tls": False},
                     {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB", "tls": False}]
        [item] = found(cluster(mastodon__redis_settings=self.SETTINGS, hosts__redis1__redis={"instances": instances}),
                       "redis-tls-scheme-mismatch")
        assert item["service"] == "redis cache" and "over TLS (rediss://), but the instance has no TLS" in item["message"]
        assert item["hint"] == "write CACHE_REDIS_URL as redis://redis1:6380, or set tls: true on the instance"

    def test_derived_settings_agree(self):
        assert found(cluster(), "redis-tls-scheme-mismatch") == []


class TestRedisSentinelHalfSet:
    def test_sentinels_without_master(self):
        [item] = found(cluster(mastodon__redis_settings={"REDIS_SENTINELS": "r1:26379,r2:26379,r3:26379",
                                                         "CACHE_REDIS_URL": "redis://redis1:6380"}),
                       "redis-sentinel-half-set")
        assert item["severity"] == "error"
        assert "REDIS_SENTINELS is set without REDIS_SENTINEL_MASTER" in item["message"]
        assert "localhost:6379" in item["message"] and "REDIS_SENTINEL_MASTER" in item["hint"]

    def test_master_without_sentinels(self):
        [item] = found(cluster(mastodon__redis_settings={"REDIS_URL": "redis://redis1:6379",
                                                         "SIDEKIQ_REDIS_SENTINEL_MASTER": "jobs",
                                                         "CACHE_REDIS_URL": "redis://redis1:6380"}),
                       "redis-sentinel-half-set")
        assert "SIDEKIQ_REDIS_SENTINEL_MASTER is set without SIDEKIQ_REDIS_SENTINELS" in item["message"]

    def test_both_set(self):
        assert found(cluster(mastodon__redis_settings={"REDIS_SENTINELS": "r1:26379,r2:26379,r3:26379",
                                                       "REDIS_SENTINEL_MASTER": "mastodon",
                                                       "CACHE_REDIS_URL": "redis://redis1:6380"}),
                     "redis-sentinel-half-set") == []


def sentinel_cluster(sentinels=3, members=("redis1", "redis2"), purposes=None, **changes):
    """BASE with a persistent set "mastodon" on ``members`` and sentinels on the first ``sentinels`` of r1..r5."""
    hosts = ["redis1", "redis2", "redis3", "web1", "worker1"][:sentinels]
    description = cluster(**changes)
    for index, host in enumerate(["redis1", "redis2", "redis3", "web1", "worker1"]):
        section = description["hosts"].setdefault(host, {}).setdefault("mastodon", {})
        section.setdefault("address", "10.0.0.%d" % (11 + index))
    for host in set(hosts) | set(members):
        description["hosts"].setdefault(host, {}).setdefault("redis", {}).setdefault("instances", [])
    for index, host in enumerate(members):
        instances = description["hosts"][host]["redis"]["instances"]
        purpose = (purposes or {}).get(index, "persistent")
        existing = [item for item in instances if item["purpose"] == "persistent" and "sentinel_master" not in item]
        if existing and purpose == "persistent":
            existing[0]["sentinel_master"] = "mastodon"
        else:
            instances.append({"name": "set%d" % index, "purpose": purpose, "port": 6390 + index,
                              "sentinel_master": "mastodon"})
    for host in hosts:
        description["hosts"][host]["redis"]["sentinel"] = True
    return description


class TestRedisSentinelBefore43:
    def test_4_2_ignores_sentinels(self):
        items = found(sentinel_cluster(mastodon__version="4.2"), "redis-sentinel-before-4-3")
        assert [item["service"] for item in items] == ["redis base", "redis sidekiq"]
        assert "Mastodon 4.2 does not read REDIS_SENTINELS" in items[0]["message"]
        assert "upgrade to Mastodon 4.3" in items[0]["hint"]

    def test_4_3(self):
        assert found(sentinel_cluster(mastodon__version="4.3"), "redis-sentinel-before-4-3") == []


class TestRedisSentinelTooFewSentinels:
    def test_two_sentinels_are_no_majority_after_a_loss(self):
        [item] = found(sentinel_cluster(sentinels=2), "redis-sentinel-too-few-sentinels")
        assert item["severity"] == "error" and item["service"] == "redis sentinel mastodon"
        assert "2 sentinel(s) (redis1, redis2)" in item["message"] and "majority of 2" in item["message"]
        assert "at least 3 hosts of group redis" in item["hint"]
        assert item["numbers"] == {"sentinels": 2, "needed": 3}

    def test_three_sentinels(self):
        assert found(sentinel_cluster(), "redis-sentinel-too-few-sentinels") == []


class TestRedisSentinelQuorumOverSentinels:
    def test_quorum_above_the_sentinels(self):
        [item] = found(sentinel_cluster(mastodon__redis_sentinel_quorum=4), "redis-sentinel-quorum-over-sentinels")
        assert "quorum 4, but only 3 sentinels (redis1, redis2, redis3)" in item["message"]
        assert "at most 3 (auto: a majority, 2)" in item["hint"]

    def test_auto_is_a_majority(self):
        report = plan.connection_budget(sentinel_cluster(sentinels=5))
        assert [entry["quorum"] for entry in report["redis"]["sentinel"]["sets"]] == [3]
        assert found(sentinel_cluster(sentinels=5), "redis-sentinel-quorum-over-sentinels") == []


class TestRedisSentinelSetWithoutReplica:
    def test_a_set_of_one(self):
        [item] = found(sentinel_cluster(members=("redis1",)), "redis-sentinel-set-without-replica")
        assert item["host"] == "redis1" and item["service"] == "redis persistent"
        assert "no replica to fail over to" in item["message"] and "sentinel_master: mastodon" in item["hint"]

    def test_two_members(self):
        assert found(sentinel_cluster(), "redis-sentinel-set-without-replica") == []


class TestRedisSentinelSetMembersShareHost:
    def test_two_members_on_one_host(self):
        [item] = found(sentinel_cluster(members=("redis1", "redis2", "redis2")),
                       "redis-sentinel-set-members-share-host")
        assert item["host"] == "redis2"
        assert "Redis set1 and set2 on redis2 are both in the set mastodon" in item["message"]

    def test_one_member_per_host(self):
        assert found(sentinel_cluster(), "redis-sentinel-set-members-share-host") == []


class TestRedisSentinelSetMixedPurposes:
    def test_persistent_and_sidekiq(self):
        [item] = found(sentinel_cluster(purposes={1: "sidekiq"}), "redis-sentinel-set-mixed-purposes")
        assert "persistent persistent on redis1, sidekiq set1 on redis2" in item["message"]

    def test_one_purpose(self):
        assert found(sentinel_cluster(), "redis-sentinel-set-mixed-purposes") == []


class TestRedisSentinelAddressNotIp:
    def test_host_names_are_refused(self):
        description = sentinel_cluster()
        del description["hosts"]["redis2"]["mastodon"]["address"]
        [item] = found(description, "redis-sentinel-address-not-ip")
        assert item["host"] == "redis2" and item["service"] == "redis set1"
        assert "known as 'redis2', not an IP address" in item["message"] and "mastodon_address" in item["hint"]

    def test_ip_addresses(self):
        assert found(sentinel_cluster(), "redis-sentinel-address-not-ip") == []


class TestRedisSentinelWithoutSet:
    def test_sentinels_monitoring_nothing(self):
        [item] = found(sentinel_cluster(members=()), "redis-sentinel-without-set")
        assert item["severity"] == "warning"
        assert "sentinels run on redis1, redis2, redis3" in item["message"]

    def test_with_a_set(self):
        assert found(sentinel_cluster(), "redis-sentinel-without-set") == []


PROXY = {"hosts__lb1": {"nginx": {}}, "mastodon__trusted_proxy_ip": "10.0.0.5"}


class TestNginxRlimitBelowTwiceWorkerConnections:
    def test_error(self):
        [item] = found(cluster(hosts__lb1={"nginx": {"worker_connections": 4096, "worker_rlimit_nofile": 5000}},
                               mastodon__trusted_proxy_ip="10.0.0.5"), "nginx-rlimit-below-twice-worker-connections")
        assert item["numbers"] == {"worker_rlimit_nofile": 5000, "worker_connections": 4096}
        assert "8192 or more" in item["hint"]

    def test_auto(self):
        assert found(cluster(**PROXY), "nginx-rlimit-below-twice-worker-connections") == []


class TestNginxLimitNofileBelowRlimit:
    def test_error(self):
        [item] = found(cluster(hosts__lb1={"nginx": {"worker_connections": 4096, "limit_nofile": 4096}},
                               mastodon__trusted_proxy_ip="10.0.0.5"), "nginx-limit-nofile-below-rlimit")
        assert item["numbers"] == {"limit_nofile": 4096, "worker_rlimit_nofile": 8192}

    def test_auto(self):
        assert found(cluster(**PROXY), "nginx-limit-nofile-below-rlimit") == []


class TestNginxProxyTimeoutBelowRequestTimeout:
    def test_error(self):
        [item] = found(cluster(hosts__lb1={"nginx": {"proxy_read_timeout": 60}}, mastodon__trusted_proxy_ip="10.0.0.5"),
                       "nginx-proxy-timeout-below-request-timeout")
        assert item["numbers"] == {"proxy_read_timeout": 60, "request_timeout": 120}

    def test_equal_is_fine(self):
        assert found(cluster(**PROXY), "nginx-proxy-timeout-below-request-timeout") == []


class TestTrustedProxyIpMissing:
    def test_error_for_puma_on_another_host(self):
        [item] = found(cluster(hosts__lb1={"nginx": {}}), "trusted-proxy-ip-missing")
        assert item["host"] == "web1" and "lb1" in item["message"]

    def test_set_in_the_inventory(self):
        assert found(cluster(**PROXY), "trusted-proxy-ip-missing") == []

    def test_nginx_on_the_same_host(self):
        assert found(cluster(hosts__web1__nginx={}), "trusted-proxy-ip-missing") == []


@pytest.mark.parametrize("rule_id", sorted(rules.RULES))
def test_rule_ids_are_stable_slugs(rule_id):
    assert rule_id == rule_id.lower() and " " not in rule_id


class TestMastodonVersionNewerThanModel:
    def test_a_newer_release_is_planned_with_a_warning(self):
        [item] = found(cluster(mastodon__version="4.7"), "mastodon-version-newer-than-model")
        assert item["severity"] == "warning" and item["numbers"] == {"version": "4.7", "newest": "4.6"}
        assert "counted as 4.6 counts them" in item["message"]
        [item] = found(cluster(mastodon__version="5.0.1"), "mastodon-version-newer-than-model")

    def test_the_newest_known_release_and_its_patch_releases_are_fine(self):
        assert found(cluster(mastodon__version="4.6"), "mastodon-version-newer-than-model") == []
        assert found(cluster(mastodon__version="4.6.3"), "mastodon-version-newer-than-model") == []


class TestInventoryVariableUnknown:
    def test_reports_what_reading_the_inventory_noticed(self):
        description = cluster(inventory={"unknown_variables": [
            {"variable": "nginx_vhosts", "origin": "group all", "hosts": ["db1", "web1", "worker1", "redis1"],
             "suggestion": "nginx_worker_connections"}]})
        [item] = found(description, "inventory-variable-unknown")
        assert item["severity"] == "warning" and item["service"] == "nginx_vhosts" and item["host"] is None
        assert "set in group all" in item["message"] and "4 host(s) have it (db1 .. redis1)" in item["message"]
        assert "mastodon_foreign_variables" in item["hint"]

    def test_nothing_noticed(self):
        assert found(cluster(), "inventory-variable-unknown") == []


class TestNginxUpstreamEmpty:
    def test_a_proxy_without_streaming_anywhere(self):
        description = cluster(hosts__lb1={"nginx": {}}, hosts__web1={"web": {}, "pgbouncer": {"enabled": False}},
                              mastodon__trusted_proxy_ip="10.0.0.5")
        [item] = found(description, "nginx-upstream-empty")
        assert (item["severity"], item["host"], item["service"]) == ("error", "lb1", "nginx")
        assert "no host in group streaming runs it" in item["message"]

    def test_a_proxy_with_both(self):
        assert found(cluster(hosts__lb1={"nginx": {}}, mastodon__trusted_proxy_ip="10.0.0.5"),
                     "nginx-upstream-empty") == []


def test_readme_rules_table_lists_exactly_the_rules():
    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Rules", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \| (error|warning)", table, re.M)
    assert sorted(rule_id for rule_id, _severity in listed) == sorted(rules.RULES)


class TestPostgresqlBelowMastodonFloor:
    def test_postgresql_13_for_mastodon_4_5(self):
        [item] = found(cluster(hosts__db1={"postgresql": {"ram": "16GB", "version": 13}}),
                       "postgresql-below-mastodon-floor")
        assert (item["severity"], item["host"], item["numbers"]) == ("error", "db1", {"version": 13, "minimum": 14})
        assert "Mastodon 4.5 dropped PostgreSQL 13" in item["message"] and "pg_upgradecluster 13 main" in item["hint"]

    def test_fine_before_4_5_and_on_both_releases(self):
        assert found(cluster(mastodon__version="4.4", hosts__db1={"postgresql": {"ram": "16GB", "version": 13}}),
                     "postgresql-below-mastodon-floor") == []
        for release in (12, 13):
            assert found(cluster(hosts__db1={"postgresql": {"ram": "16GB"}, "mastodon": {"debian_version": release}}),
                         "postgresql-below-mastodon-floor") == []


class TestRedisBelowMastodonFloor:
    def test_redis_6_2_for_sidekiq_8(self):
        [item] = found(cluster(hosts__redis1__redis__version="6.2"), "redis-below-mastodon-floor")
        assert (item["host"], item["numbers"]) == ("redis1", {"version": "6.2", "minimum": "7.0"})
        assert "Sidekiq 8" in item["message"]

    def test_redis_6_0_for_mastodon_4_4(self):
        [item] = found(cluster(mastodon__version="4.4", hosts__redis1__redis__version="6.0"),
                       "redis-below-mastodon-floor")
        assert item["numbers"] == {"version": "6.0", "minimum": "6.2"}

    def test_every_valkey_is_a_redis_7_2_to_mastodon(self):
        # Valkey 7.2 would be below a floor of 8.0 if its own version were compared; it speaks Redis 7.2.
        description = cluster(hosts__redis1__redis__server="valkey", hosts__redis1__redis__version="7.2")
        assert found(description, "redis-below-mastodon-floor") == []
        report = plan.connection_budget(cluster(hosts__redis1__redis__server="valkey"))
        assert {(item["server"], item["version"]) for item in report["redis"]["instances"]} == {("valkey", "8.1")}

    def test_debian_12_and_13_redis_are_fine(self):
        for release in (12, 13):
            assert found(cluster(hosts__redis1__mastodon={"debian_version": release}),
                         "redis-below-mastodon-floor") == []


# A host as Mastodon's official guide leaves it: the units of dist/, DB_POOL=25 and -c 25 for sidekiq, settings in
# .env.production (what the mastodon_units module reports).
GUIDE_ENV_PRODUCTION = {"DB_HOST": "/var/run/postgresql", "DB_PORT": "5432", "REDIS_HOST": "localhost",
                        "REDIS_PORT": "6379"}


def running(name, program, arguments, environment=None, **fields):
    return dict({"name": name, "program": program, "managed": False, "active": True, "enabled": True,
                 "path": "/etc/systemd/system/" + name, "arguments": arguments, "environment": environment or {}},
                **fields)


STOCK_SIDEKIQ = running("mastodon-sidekiq.service", "sidekiq",
                        ["/home/mastodon/.rbenv/shims/bundle", "exec", "sidekiq", "-c", "25"], {"DB_POOL": "25"})
STOCK_WEB = running("mastodon-web.service", "puma",
                    ["/home/mastodon/.rbenv/shims/bundle", "exec", "puma", "-C", "config/puma.rb"], {"PORT": "3000"})
STOCK_STREAMING = running("mastodon-streaming@4000.service", "streaming", ["/usr/bin/node", "./streaming"],
                          {"PORT": "4000"})


def adopting(worker_units=(STOCK_SIDEKIQ,), web_units=(STOCK_WEB, STOCK_STREAMING), **changes):
    """The base cluster, its app hosts found running the guide's units against a Redis the plan keeps as it is
    (redis9, outside the inventory) for base and Sidekiq data."""
    env = dict(GUIDE_ENV_PRODUCTION, REDIS_HOST="redis9")
    settings = dict({"hosts__worker1__mastodon": {"running_units": list(worker_units), "running_env_production": env},
                     "hosts__web1__mastodon": {"running_units": list(web_units), "running_env_production": env},
                     "mastodon__redis_settings": {"REDIS_URL": "redis://redis9:6379",
                                                  "CACHE_REDIS_URL": "redis://redis1:6380"}}, **changes)
    return cluster(**settings)


class TestMastodonUnitOutsidePlan:
    def test_a_foreign_sidekiq_unit_is_an_error_with_its_count(self):
        extra = running("sidekiq-pull.service", "sidekiq", ["bundle", "exec", "sidekiq", "-c", "10", "-q", "pull"],
                        {"DB_POOL": "10"}, enabled=False)
        [item] = found(adopting(worker_units=(STOCK_SIDEKIQ, extra)), "mastodon-unit-outside-plan")
        assert (item["severity"], item["host"], item["service"]) == ("error", "worker1", "sidekiq")
        assert "sidekiq-pull.service (/etc/systemd/system/sidekiq-pull.service) runs sidekiq" in item["message"]
        assert "pool 10: 10 connections" in item["message"] and "uncounted" in item["message"]
        assert "mastodon_replace_units" in item["hint"] and "systemctl disable --now sidekiq-pull.service" in item["hint"]
        assert item["numbers"] == {"connections": 10}

    def test_a_listed_unit_is_replaced(self):
        extra = running("sidekiq-pull.service", "sidekiq", ["bundle", "exec", "sidekiq", "-c", "10"],
                        {"DB_POOL": "10"})
        report = plan.connection_budget(adopting(worker_units=(STOCK_SIDEKIQ, extra),
                                                 hosts__worker1__mastodon__replace_units=["sidekiq-pull.service"]))
        assert [item for item in report["findings"] if item["rule"] == "mastodon-unit-outside-plan"] == []
        assert report["adoption"]["worker1"]["quiet_sidekiq"] == ["mastodon-sidekiq.service", "sidekiq-pull.service"]

    def test_a_stock_unit_with_nothing_planned_in_its_place(self):
        [item] = found(adopting(worker_units=(STOCK_SIDEKIQ, STOCK_WEB)), "mastodon-unit-outside-plan")
        assert (item["host"], item["service"]) == ("worker1", "web")
        assert "the plan runs no Puma on worker1" in item["message"]
        assert "2 workers: 10 connections" in item["message"]
        assert "put worker1 in group web" in item["hint"]

    def test_a_listed_puma_under_another_name_is_refused(self):
        puma = dict(STOCK_WEB, name="puma.service")
        [item] = found(adopting(web_units=(puma, STOCK_STREAMING), hosts__web1__mastodon__replace_units=["puma.service"]),
                       "mastodon-unit-outside-plan")
        assert item["host"] == "web1" and "takes over sidekiq units only" in item["message"]
        assert "systemctl disable --now puma.service" in item["hint"]

    def test_stopped_and_disabled_units_and_planned_ones_are_left_alone(self):
        ours = dict(STOCK_SIDEKIQ, name="mastodon-sidekiq-pull@1.service", managed=True)
        off = running("old-sidekiq.service", "sidekiq", ["bundle", "exec", "sidekiq"], active=False, enabled=False)
        report = plan.connection_budget(adopting(worker_units=(ours, off)))
        assert "worker1" not in report["adoption"]
        assert [item for item in report["findings"] if item["rule"] == "mastodon-unit-outside-plan"] == []


class TestChangeOverUsableCapacity:
    def test_the_running_units_count_beside_the_plan(self):
        report = plan.connection_budget(adopting())
        change = report["during_change"]
        # sidekiq -c 25 with DB_POOL 25; Puma 2 workers × pool 5 (Rails' default, MAX_THREADS 5); streaming 10.
        assert [(row["unit"], row["connections"]) for row in change["units"]] == [
            ("mastodon-web.service", 10), ("mastodon-streaming@4000.service", 10), ("mastodon-sidekiq.service", 25)]
        assert change["total"] == report["servers"]["primary"]["total"] + 45
        assert [item for item in report["findings"] if item["rule"] == "change-over-usable-capacity"] == []

    def test_over_usable_is_an_error_with_the_numbers(self):
        big = dict(STOCK_SIDEKIQ, arguments=["bundle", "exec", "sidekiq", "-c", "150"],
                   environment={"DB_POOL": "150"})
        [item] = found(adopting(worker_units=(big,)), "change-over-usable-capacity")
        planned = plan.connection_budget(adopting())["servers"]["primary"]["total"]
        assert (item["severity"], item["host"], item["service"]) == ("error", "db1", "postgresql primary")
        assert item["numbers"] == {"total": planned + 170, "planned": planned, "running_units": 170, "usable": 197}
        assert "mastodon-sidekiq.service on worker1 150" in item["message"]
        assert "raise postgresql_max_connections first" in item["hint"]


class TestRedisChangesUnderRunningUnits:
    def test_planned_units_on_another_redis_strand_the_jobs(self):
        # Derived settings: redis1's planned persistent instance, not the running units' redis9.
        moved = found(adopting(mastodon__redis_settings=None), "redis-changes-under-running-units")
        item = next(item for item in moved if item["host"] == "worker1" and item["numbers"]["configuration"] == "REDIS")
        assert item["severity"] == "error"
        assert "keeps home feeds and settings in Redis at redis9:6379" in item["message"]
        assert "the planned units would use redis1:6379 (REDIS_URL)" in item["message"]
        assert "REDIS_HOST: redis9, REDIS_PORT: '6379'" in item["hint"]
        assert any("the queued jobs" in item["message"] for item in moved)

    def test_a_planned_instance_where_the_running_redis_is(self):
        # The guide's Redis on the app host itself, which the plan also makes a Redis host.
        items = found(adopting(hosts__worker1__mastodon={"running_units": [STOCK_SIDEKIQ],
                                                         "running_env_production": GUIDE_ENV_PRODUCTION},
                               web_units=(),
                               hosts__worker1__redis={"instances": [
                                   {"name": "persistent", "purpose": "persistent", "port": 6379}]},
                               mastodon__redis_settings={"REDIS_URL": "redis://worker1:6379",
                                                         "CACHE_REDIS_URL": "redis://redis1:6380"}),
                      "redis-changes-under-running-units")
        item = next(item for item in items if item["host"] == "worker1")
        assert "at worker1:6379" in item["message"] and "Redis instance persistent" in item["message"]
        assert "would be lost" in item["message"]

    def test_the_same_redis_is_kept(self):
        assert found(adopting(), "redis-changes-under-running-units") == []


class TestEnvProductionEndpointOverridden:
    def test_the_exact_lines_are_named(self):
        items = found(adopting(), "env-production-endpoint-overridden")
        item = next(item for item in items if item["host"] == "worker1")
        assert item["severity"] == "warning"
        # DB_PORT=5432 is what the planned units (no pgbouncer in the base cluster) set too.
        assert item["numbers"]["lines"] == ["DB_HOST=/var/run/postgresql", "REDIS_HOST=redis9", "REDIS_PORT=6379"]
        assert "DB_HOST=db1" in item["message"] and "leaves .env.production as it is" in item["hint"]

    def test_no_adoption_no_warning(self):
        assert found(cluster(), "env-production-endpoint-overridden") == []


def test_the_reports_show_the_count_during_the_change():
    report = plan.connection_budget(adopting())
    text = "During the change: the running units mastodon-web.service on web1 (10), "
    assert text in plan.render_table(report) and text in plan.render_markdown(report)
    assert "During the change" not in plan.render_table(plan.connection_budget(cluster()))


def test_the_env_production_found_sizes_the_running_units_not_the_planned_ones():
    # DB_POOL=5 in the host's .env.production: the guide's sidekiq sets its own (25); the planned units set theirs.
    env = dict(GUIDE_ENV_PRODUCTION, REDIS_HOST="redis9", DB_POOL="5")
    plain = plan.connection_budget(adopting())
    found = plan.connection_budget(adopting(hosts__worker1__mastodon={
        "running_units": [dict(STOCK_SIDEKIQ, environment={})], "running_env_production": env}))
    assert found["adoption"]["worker1"]["replace"][0]["pool"] == 5
    assert [row["pool"] for row in found["processes"]] == [row["pool"] for row in plain["processes"]]


def local_media(**changes):
    """The base cluster with media on each host's disk."""
    description = cluster(**changes)
    for key in ("media", "s3_bucket", "s3_alias_host"):
        description["mastodon"].pop(key, None)
    return description


ONE_HOST = {"app1": {"web": {"concurrency": 2, "max_threads": 5}, "streaming": {"ports": [4000]},
                     "sidekiq": {"queues": [{"queue": queue, "concurrency": 5} for queue in QUEUES]},
                     "nginx": {}}}


def one_host(**mastodon):
    """Web, streaming, sidekiq and nginx on one app host, media local unless changed."""
    description = local_media()
    del description["hosts"]["web1"], description["hosts"]["worker1"]
    description["hosts"].update(ONE_HOST)
    description["mastodon"].update(mastodon)
    return description


class TestMediaLocalOnSeveralHosts:
    def test_web_and_sidekiq_on_two_hosts_is_an_error_naming_them(self):
        [item] = found(local_media(), "media-local-on-several-hosts")
        assert item["severity"] == "error"
        assert "Puma and Sidekiq write it on web1, worker1" in item["message"]
        assert "mastodon_media: s3" in item["hint"] and item["numbers"] == {"hosts": 2}

    def test_nginx_on_another_host_is_named_as_serving_its_own_disk(self):
        description = one_host()
        description["hosts"]["proxy1"] = {"nginx": {}}
        del description["hosts"]["app1"]["nginx"]
        [item] = found(dict(description, mastodon=dict(description["mastodon"], trusted_proxy_ip="10.0.0.5")),
                       "media-local-on-several-hosts")
        assert "write it on app1 (nginx serves it from its own disk on proxy1)" in item["message"]

    def test_a_streaming_only_host_does_not_count(self):
        description = one_host()
        description["hosts"]["stream2"] = {"streaming": {"ports": [4000]}}
        assert found(description, "media-local-on-several-hosts") == []

    def test_a_sidekiq_unit_with_no_instances_does_not_count(self):
        description = local_media()
        description["hosts"]["worker1"]["sidekiq"]["queues"] = [
            {"queue": queue, "concurrency": 5, "instances": 0} for queue in QUEUES]
        description["hosts"]["web1"]["sidekiq"] = {"queues": [{"queue": queue, "concurrency": 5}
                                                              for queue in QUEUES]}
        assert found(description, "media-local-on-several-hosts") == []

    def test_everything_on_one_host_keeps_it(self):
        assert found(one_host(), "media-local-on-several-hosts") == []
        assert plan.connection_budget(one_host())["errors"] == 0

    def test_the_refusal_comes_through_the_inventory_with_the_same_message(self):
        report = plan.connection_budget(local_media())
        assert report["errors"] >= 1 and "media-local-on-several-hosts" in plan.verdict(report)


class TestMediaOnNetworkFilesystem:
    def test_declared_nfs_is_an_error_with_the_reason(self):
        description = one_host()
        description["hosts"]["app1"]["mastodon"] = {"media_path_fs": "nfs4"}
        [item] = found(description, "media-on-network-filesystem")
        assert item["severity"] == "error" and item["host"] == "app1"
        assert "nfs4 (mastodon_media_path_fs says)" in item["message"]
        assert "Sidekiq and the database wait on each other" in item["message"]
        assert "object storage" in item["hint"]

    def test_found_mount_is_named(self):
        description = one_host(media_path="/srv/media")
        description["hosts"]["app1"]["mastodon"] = {"media_filesystem": {
            "path": "/srv/media", "type": "cifs", "mount": "/srv"}}
        [item] = found(description, "media-on-network-filesystem")
        assert "/srv/media is on cifs (the host mounts /srv there)" in item["message"]

    def test_a_local_disk_keeps_it(self):
        description = one_host()
        description["hosts"]["app1"]["mastodon"] = {"media_path_fs": "ext4", "media_filesystem": {
            "path": "/home/mastodon/live/public/system", "type": "xfs", "mount": "/"}}
        assert found(description, "media-on-network-filesystem") == []

    def test_object_storage_does_not_read_the_path(self):
        description = cluster()
        description["hosts"]["web1"]["mastodon"] = {"media_path_fs": "nfs"}
        assert found(description, "media-on-network-filesystem") == []


class TestMediaS3SettingIgnored:
    def test_s3_settings_with_local_media_are_an_error(self):
        [item] = found(one_host(s3_alias_host="files.example.com", s3_bucket="media"), "media-s3-setting-ignored")
        assert item["severity"] == "error"
        assert item["message"].startswith("mastodon_s3_alias_host, mastodon_s3_bucket: Mastodon ignores it")
        assert "S3_ENABLED=true" in item["message"] and "mastodon_media: s3" in item["hint"]

    def test_path_style_override_without_endpoint(self):
        [item] = found(cluster(mastodon__s3_override_path_style=True), "media-s3-setting-ignored")
        assert "mastodon_s3_override_path_style" in item["message"] and "S3_ENDPOINT" in item["message"]

    def test_kept_with_an_endpoint(self):
        description = cluster(mastodon__s3_override_path_style=True,
                              mastodon__s3_endpoint="https://s3.example.net")
        assert found(description, "media-s3-setting-ignored") == []


class TestMediaS3WithoutBucket:
    def test_s3_without_bucket_is_an_error(self):
        description = cluster()
        del description["mastodon"]["s3_bucket"]
        [item] = found(description, "media-s3-without-bucket")
        assert item["severity"] == "error" and "mastodon_s3_bucket" in item["hint"]

    def test_a_bucket_keeps_it(self):
        assert found(cluster(), "media-s3-without-bucket") == []


class TestMediaS3WithoutAliasHost:
    def test_a_warning(self):
        description = cluster()
        del description["mastodon"]["s3_alias_host"]
        [item] = found(description, "media-s3-without-alias-host")
        assert item["severity"] == "warning" and "mastodon_s3_alias_host" in item["hint"]

    def test_an_alias_host_keeps_it(self):
        assert found(cluster(), "media-s3-without-alias-host") == []


class TestFirewallClientWithoutAddress:
    def test_a_forced_firewall_names_each_host_known_by_name_and_what_it_reaches(self):
        items = found(cluster(mastodon__firewall=True), "firewall-client-without-address")
        assert [(item["severity"], item["host"]) for item in items] == [("error", "web1"), ("error", "worker1")]
        assert items[0]["message"].startswith(
            "mastodon_firewall is true, and this host connects to postgresql on db1:5432, redis on redis1:6379, "
            "redis on redis1:6380, but the plan knows it by name, not by IP address")
        assert items[0]["hint"].startswith("set mastodon_address to the IP address the other hosts see it at")

    def test_auto_leaves_the_firewall_off_without_a_finding(self):
        description = cluster()
        assert found(description, "firewall-client-without-address") == []
        assert found(cluster(mastodon__firewall=False), "firewall-client-without-address") == []

    def test_addresses_on_every_client_satisfy_it(self):
        description = cluster(mastodon__firewall=True)
        for index, host in enumerate(sorted(description["hosts"])):
            description["hosts"][host]["mastodon"] = {"address": "10.0.0.%d" % (10 + index)}
        assert found(description, "firewall-client-without-address") == []


# --- backups ---

def archiving(**section):
    return cluster(hosts__db1__pgbackrest=dict({"archive": True, "repo_path": "/srv/pgbackrest"}, **section))


class TestBackupArchiveWithoutRepository:
    def test_archive_without_a_repository_is_an_error_naming_the_fix(self):
        [item] = found(archiving(repo_path=None), "backup-archive-without-repository")
        assert item["severity"] == "error" and item["host"] == "db1" and item["service"] == "pgbackrest"
        assert "keeps each unarchived WAL segment in pg_wal" in item["message"]
        assert "set pgbackrest_repo_path" in item["hint"]

    def test_a_repository_or_no_archive_is_fine(self):
        assert found(archiving(), "backup-archive-without-repository") == []
        assert found(cluster(hosts__db1__pgbackrest={"archive": False}), "backup-archive-without-repository") == []


class TestBackupRetentionShorterThanFullInterval:
    def test_three_days_with_weekly_fulls_is_an_error_with_the_numbers(self):
        [item] = found(archiving(retention_days=3), "backup-retention-shorter-than-full-interval")
        assert item["severity"] == "error" and item["host"] == "db1"
        assert item["numbers"] == {"retention_days": 3, "full_interval_days": 7}
        assert "up to 10 days of backups and WAL, not the 3 asked for" in item["message"]
        assert "raise pgbackrest_retention_days to 7 or more" in item["hint"]

    def test_daily_fulls_allow_a_short_retention(self):
        assert found(archiving(retention_days=3, full_backups="daily"),
                     "backup-retention-shorter-than-full-interval") == []
        assert found(archiving(retention_days=7), "backup-retention-shorter-than-full-interval") == []


class TestBackupRepositoryBesideData:
    def test_a_repository_under_the_data_root_is_a_warning(self):
        [item] = found(archiving(repo_path="/var/lib/postgresql/backups"), "backup-repository-beside-data")
        assert item["severity"] == "warning" and item["host"] == "db1"
        assert "/var/lib/postgresql/backups is under /var/lib/postgresql" in item["message"]
        assert "another disk" in item["hint"]

    def test_another_path_is_fine(self):
        assert found(archiving(repo_path="/var/lib/postgresql-backups"), "backup-repository-beside-data") == []

    def test_a_bucket_is_on_no_local_disk(self):
        description = archiving(repo_path="/var/lib/postgresql/backups", repo_s3_bucket="mastodon-backups")
        description["mastodon"]["s3_endpoint"] = "https://s3.example.com"
        assert found(description, "backup-repository-beside-data") == []


class TestBackupBucketIsTheMediaBucket:
    def test_the_media_bucket_is_an_error_naming_a_bucket_of_its_own(self):
        description = archiving(repo_s3_bucket="mastodon-media")
        [item] = found(description, "backup-bucket-is-the-media-bucket")
        assert item["severity"] == "error" and item["host"] == "db1" and item["service"] == "pgbackrest"
        assert "pgbackrest_repo_s3_bucket is mastodon-media, Mastodon's media bucket" in item["message"]
        assert "create a bucket of its own" in item["hint"]

    def test_another_bucket_is_fine(self):
        assert found(archiving(repo_s3_bucket="mastodon-backups"), "backup-bucket-is-the-media-bucket") == []


class TestBackupRepositoryOnDatabaseHost:
    def test_a_repository_host_in_group_db_is_an_error(self):
        description = archiving(repo_host="db2")
        description["hosts"]["db2"] = {"postgresql": {"role": "replica", "ram": "16GB"}, "backup": {}}
        [item] = found(description, "backup-repository-on-database-host")
        assert item["severity"] == "error" and item["host"] == "db1" and item["service"] == "pgbackrest"
        assert "pgbackrest_repo_host is db2, which is also in group db" in item["message"]
        assert "name a host outside group db" in item["hint"]

    def test_a_host_outside_group_db_is_fine(self):
        description = archiving(repo_host="backup1")
        description["hosts"]["backup1"] = {"backup": {}}
        assert found(description, "backup-repository-on-database-host") == []


class TestBackupHostUnused:
    def test_a_backup_host_no_primary_names_is_a_warning(self):
        description = archiving()
        description["hosts"]["backup1"] = {"backup": {}}
        [item] = found(description, "backup-host-unused")
        assert item["severity"] == "warning" and item["host"] == "backup1"
        assert "no primary backs up to it" in item["message"]
        assert "set pgbackrest_repo_host: backup1" in item["hint"]

    def test_a_named_backup_host_is_fine(self):
        description = archiving(repo_host="backup1")
        description["hosts"]["backup1"] = {"backup": {}}
        assert found(description, "backup-host-unused") == []


class TestBackupRepositoryBesideDataOnARepositoryHost:
    def test_a_path_on_the_repository_host_is_not_beside_the_data(self):
        description = archiving(repo_host="backup1", repo_path="/var/lib/postgresql/backups")
        description["hosts"]["backup1"] = {"backup": {}}
        assert found(description, "backup-repository-beside-data") == []
