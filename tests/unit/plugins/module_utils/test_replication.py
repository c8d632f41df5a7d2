"""Streaming replication: what the plan gives each side, and when a replica's data directory may be replaced."""


import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan, replication

from ...clusters import cluster

PRIMARY_ID = "7312345678901234567"


def with_replica(**primary):
    description = cluster(hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"},
                                      "mastodon": {"address": "10.0.0.12"}},
                          hosts__db1={"postgresql": dict({"ram": "16GB", "max_slot_wal_keep_size": "50GB",
                                                          "wal_disk_free": "200GB"}, **primary),
                                      "mastodon": {"address": "10.0.0.11"}})
    return plan.connection_budget(description)


def test_the_primary_admits_the_replica_for_replication_only_from_its_address_over_tls():
    report = with_replica()
    streams = report["postgresql"]["db1"]["replication"]
    assert (streams["user"], streams["slot"], streams["replica"]) == ("fediscale_replication", "db2", "db2")
    assert streams["hba"] == {"type": "hostssl", "address": "10.0.0.12/32"}
    [primary] = report["firewall"]["hosts"]["db1"]
    [replica] = report["firewall"]["hosts"]["db2"]
    assert (primary["port"], primary["clients"]) == (5432, ["db2", "web1", "worker1"])
    assert replica["clients"] == ["web1", "worker1"]


def test_the_replica_follows_the_primary_through_its_slot_with_a_password_file():
    settings = with_replica()["postgresql"]["db2"]["settings"]
    assert settings["primary_slot_name"] == "db2"
    assert settings["primary_conninfo"] == (
        "host=10.0.0.11 port=5432 user=fediscale_replication passfile=/etc/postgresql/17/main/replication.pgpass "
        "application_name=db2 sslmode=verify-full sslrootcert=/etc/ssl/fediscale-mastodon/ca.crt")
    assert (settings["hot_standby"], settings["hot_standby_feedback"]) == ("on", "on")
    assert "primary_conninfo" not in with_replica()["postgresql"]["db1"]["settings"]


def test_the_replica_copies_beside_its_data_directory():
    streams = with_replica()["postgresql"]["db2"]["replication"]
    assert (streams["data_directory"], streams["copy_directory"]) == (
        "/var/lib/postgresql/17/main", "/var/lib/postgresql/17/main.fediscale-copy")
    assert (streams["primary"], streams["max_lag_seconds"]) == ("db1", 30)


def test_no_replica_no_replication():
    report = plan.connection_budget(cluster())
    assert report["postgresql"]["db1"]["replication"] is None


@pytest.mark.parametrize("host, slot", [("db2", "db2"), ("DB-2.example.org", "db_2_example_org"), ("x" * 70, "x" * 63)])
def test_slot_names_are_what_postgresql_allows(host, slot):
    assert replication.slot_name(host) == slot


CONTROLDATA = """pg_control version number:            1700
Catalog version number:               202406281
Database system identifier:           7312345678901234567
Database cluster state:               in archive recovery
pg_control last modified:             Tue 01 Dec 2026 02:00:00 AM UTC
"""


def test_pg_controldata_gives_the_identifier_and_state():
    assert replication.parse_controldata(CONTROLDATA) == {"system_identifier": PRIMARY_ID,
                                                          "state": "in archive recovery"}
    assert replication.controldata_in_recovery("shut down in recovery")
    assert not replication.controldata_in_recovery("in production")


def test_only_directories_from_oid_16384_are_databases_besides_postgres_and_the_templates():
    assert replication.user_database_directories(["1", "4", "5", "16384", "pgsql_tmp", "24601"]) == [
        "base/16384", "base/24601"]


def found(**changes):
    return dict({"version": 17, "data_directory": "/var/lib/postgresql/17/main", "in_recovery": False,
                 "system_identifier": "7000000000000000001", "databases": []}, **changes)


def decide(found_here, system_identifier=PRIMARY_ID, slot_status="reserved"):
    return replication.standby_decision("db2", found_here, "db1", {"system_identifier": system_identifier,
                                                                   "slot_status": slot_status})


class TestStandbyDecision:
    def test_debians_empty_cluster_is_replaced(self):
        decision = decide(found(), slot_status=None)
        assert decision["action"] == "copy"
        assert decision["message"] == ("host db2, postgresql replica: /var/lib/postgresql/17/main is an empty "
                                       "cluster (no database but postgres and the templates): it is replaced by a "
                                       "copy of db1.")

    def test_a_primary_holding_a_database_is_never_replaced(self):
        decision = decide(found(databases=["base/16390"]))
        assert decision["action"] == "refuse"
        assert decision["message"] == (
            "host db2, postgresql replica: /var/lib/postgresql/17/main is a primary (not in recovery) holding 1 "
            "database besides postgres and the templates (base/16390); the role copies db1 only over an empty "
            "cluster and never over data. Nothing was changed. Keep that data elsewhere first, then: if it is not "
            "needed, remove it as root (pg_dropcluster --stop 17 main; pg_createcluster 17 main) and run again; "
            "if it is, take db2 out of group db.")

    def test_a_standby_of_another_primary_is_never_replaced(self):
        decision = decide(found(in_recovery=True))
        assert decision["action"] == "refuse"
        assert ("is a standby of another primary (system identifier 7000000000000000001; db1's is "
                "7312345678901234567), and the role never replaces one. Nothing was changed.") in decision["message"]

    def test_a_standby_when_the_primary_has_no_cluster_yet_is_another_primarys(self):
        decision = decide(found(in_recovery=True), system_identifier=None)
        assert decision["action"] == "refuse" and "db1's is none: it has no cluster yet" in decision["message"]

    def test_a_standby_of_this_primary_with_its_slot_is_kept(self):
        for status in ("reserved", "extended", "unreserved"):
            assert decide(found(in_recovery=True, system_identifier=PRIMARY_ID), slot_status=status)["action"] == "keep"

    def test_a_standby_whose_slot_was_invalidated_is_copied_again_and_says_why(self):
        decision = decide(found(in_recovery=True, system_identifier=PRIMARY_ID), slot_status="lost")
        assert decision["action"] == "copy again"
        assert "its slot db2 on db1 was invalidated (wal_status lost" in decision["message"]
        assert "max_slot_wal_keep_size" in decision["message"]

    def test_a_standby_whose_slot_is_gone_is_copied_again(self):
        decision = decide(found(in_recovery=True, system_identifier=PRIMARY_ID), slot_status=None)
        assert decision["action"] == "copy again" and "its slot db2 is gone from db1" in decision["message"]

    def test_a_standby_holding_databases_of_this_primary_is_judged_as_a_standby(self):
        standby = found(in_recovery=True, system_identifier=PRIMARY_ID, databases=["base/16390"])
        assert decide(standby)["action"] == "keep"

    def test_a_standby_beside_an_unfinished_copy_is_copied_again(self):
        """A run killed after the copy started may have left a new slot that no longer serves the old standby."""
        decision = decide(found(in_recovery=True, system_identifier=PRIMARY_ID, copy_unfinished=True))
        assert decision["action"] == "copy again"
        assert decision["message"] == ("host db2, postgresql replica: a copy of db1 that an earlier run started did "
                                       "not finish (/var/lib/postgresql/17/main.fediscale-copy is still there): it "
                                       "is made again.")
