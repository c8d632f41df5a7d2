"""plugins/module_utils/backups.py: what the primary archives and backs up, and what the budget counts for it."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import backups, model
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError

from ...clusters import cluster


def archiving(**section):
    return cluster(hosts__db1__pgbackrest=dict({"archive": True, "repo_path": "/srv/pgbackrest"}, **section))


def error_of(description):
    with pytest.raises(PlanInputError) as caught:
        model.compute(description)
    return str(caught.value)


def test_no_archive_no_backups_and_nothing_counted():
    report = model.compute(cluster())
    assert report["backups"] == {"db1": None}
    assert "pgbackrest" not in report["direct_connections"]
    assert "archive_mode" not in report["postgresql"]["db1"]["settings"]


def test_the_primary_archives_into_its_stanza_with_weekly_fulls():
    report = model.compute(archiving())
    plan = report["backups"]["db1"]
    assert plan["stanza"] == "mastodon" and plan["repo_path"] == "/srv/pgbackrest"
    assert plan["calendars"] == {"full": "Sun *-*-* 01:00:00", "diff": "Mon..Sat *-*-* 01:00:00"}
    assert plan["data_directory"] == "/var/lib/postgresql/17/main"
    assert report["postgresql"]["db1"]["backup"] == plan
    settings = report["postgresql"]["db1"]["settings"]
    assert (settings["archive_mode"], settings["archive_command"], settings["archive_timeout"]) == (
        "on", "pgbackrest --stanza=mastodon archive-push %p", 300)


def test_daily_fulls_have_no_differential_timer():
    assert model.compute(archiving(full_backups="daily"))["backups"]["db1"]["calendars"] == {
        "full": "*-*-* 01:00:00"}


def test_a_backup_and_a_check_are_counted_on_the_primary():
    before = model.compute(cluster())["servers"]["primary"]["total"]
    report = model.compute(archiving())
    assert report["direct_connections"]["pgbackrest"] == backups.PGBACKREST_CONNECTIONS == 2
    assert report["servers"]["primary"]["total"] == before + 2


def test_pgbackrest_in_the_direct_connections_is_refused_when_the_plan_counts_it():
    message = error_of(dict(archiving(), mastodon=dict(cluster()["mastodon"],
                                                       direct_connections={"pgbackrest": 1})))
    assert message.startswith("mastodon.direct_connections.pgbackrest: is counted by the plan")
    assert "remove pgbackrest from mastodon_direct_connections" in message


def test_the_replica_archiving_is_refused():
    description = cluster(hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"},
                                      "pgbackrest": {"archive": True, "repo_path": "/srv/pgbackrest"}})
    message = error_of(description)
    assert message.startswith("host db2, pgbackrest.archive: is on for the replica")
    assert "set pgbackrest_archive: true on the primary (db1)" in message


def test_a_server_with_live_limits_is_refused():
    message = error_of(dict(archiving(), hosts=dict(archiving()["hosts"], db1={
        "postgresql": {"ram": "16GB", "limits_from": "live"},
        "pgbackrest": {"archive": True, "repo_path": "/srv/pgbackrest"}})))
    assert "postgresql_limits_from: live" in message


def test_backup_settings_without_a_database_are_refused():
    message = error_of(cluster(hosts__web1__pgbackrest={"archive": True}))
    assert message.startswith("host web1, pgbackrest: describes a database host's backups")


@pytest.mark.parametrize("key, value, expected", [
    ("retention_days", 0, "must be from 1 to 3650"),
    ("full_backups", "hourly", "hourly"),
    ("repo_path", "backups", "backups"),
    ("archive_timeout", 10, "must be from 60 to 86400"),
])
def test_bad_values_name_the_variable(key, value, expected):
    message = error_of(archiving(**{key: value}))
    assert message.startswith("host db1, pgbackrest.%s:" % key) and expected in message


def to_repository_host(**section):
    """db1 backs up to backup1, a repository host in group backup."""
    description = archiving(repo_host="backup1", **section)
    description["hosts"]["backup1"] = {"mastodon": {"address": "10.0.0.9"}, "backup": {}}
    description["hosts"]["db1"]["mastodon"] = {"address": "10.0.0.2"}
    return description


def test_a_repository_host_keeps_the_repository_and_runs_the_backups():
    report = model.compute(to_repository_host())
    plan = report["backups"]["db1"]
    assert (plan["repo_host"], plan["repo_host_address"], plan["backup_host"], plan["tls_port"]) == (
        "backup1", "10.0.0.9", "backup1", 8432)
    repository = report["backup_repositories"]["backup1"]
    assert (repository["primary"], repository["address"], repository["repo_path"]) == (
        "db1", "10.0.0.2", "/srv/pgbackrest")
    assert repository["calendars"] == plan["calendars"]
    # The backup still holds its connection on the primary, through pgBackRest's server there.
    assert report["direct_connections"]["pgbackrest"] == backups.PGBACKREST_CONNECTIONS
    assert report["postgresql"]["db1"]["settings"]["archive_command"] == "pgbackrest --stanza=mastodon archive-push %p"


def test_without_a_repository_host_the_primary_runs_its_own_backups():
    report = model.compute(archiving())
    assert report["backups"]["db1"]["repo_host"] is None and report["backups"]["db1"]["backup_host"] == "db1"
    assert report["backup_repositories"] == {}


def test_each_end_of_pgbackrests_tls_admits_only_the_other():
    listeners = model.compute(to_repository_host())["firewall"]["hosts"]
    assert [item for item in listeners["backup1"] if item["service"] == "pgbackrest"] == [
        {"service": "pgbackrest", "port": 8432, "clients": ["db1"], "addresses": ["10.0.0.2"], "admin_addresses": []}]
    [on_primary] = [item for item in listeners["db1"] if item["service"] == "pgbackrest"]
    assert (on_primary["clients"], on_primary["addresses"]) == (["backup1"], ["10.0.0.9"])


def test_both_ends_get_certificates_and_the_ca():
    encryption = model.compute(to_repository_host())["tls"]
    assert encryption["certificates"]["backup1"]["subject_alt_names"] == ["IP:10.0.0.9", "DNS:backup1"]
    assert "db1" in encryption["certificates"]
    assert {"backup1", "db1"} <= set(encryption["ca_hosts"])


def test_a_repository_host_outside_the_plan_is_refused_with_the_plans_hosts():
    description = archiving(repo_host="backup9")
    message = error_of(description)
    assert message.startswith("host db1, pgbackrest.repo_host: names backup9, which is in none of the plan's groups")
    assert "add backup9 to group backup" in message and "db1, redis1, web1, worker1" in message


def test_a_repository_host_outside_group_backup_is_refused():
    message = error_of(archiving(repo_host="worker1"))
    assert message.startswith("host db1, pgbackrest.repo_host: names worker1, which is not in group backup")
    assert message.endswith("(add worker1 to group backup)")


def from_standby(**section):
    """to_repository_host, with db2 as the replica the backups copy from."""
    description = to_repository_host(backup_from_standby=True, **section)
    description["hosts"]["db2"] = {"mastodon": {"address": "10.0.0.3"},
                                   "postgresql": {"role": "replica", "ram": "16GB", "max_connections": 200}}
    return description


def test_a_backup_from_the_standby_copies_from_the_replica_through_its_server():
    report = model.compute(from_standby())
    standby = report["backups"]["db1"]["standby"]
    assert standby == {"host": "db2", "address": "10.0.0.3", "port": 5432,
                       "data_directory": "/var/lib/postgresql/17/main"}
    assert report["backup_repositories"]["backup1"]["standby"] == standby
    server = report["backup_standbys"]["db2"]
    assert (server["address"], server["repo_host"], server["primary"], server["settings"]) == (
        "10.0.0.3", "backup1", "db1", {})
    assert report["postgresql"]["db2"]["backup_standby"] == server and report["postgresql"]["db2"]["backup"] is None
    # The replica archives nothing: its settings have no archive_command.
    assert "archive_command" not in report["postgresql"]["db2"]["settings"]


def test_a_backup_from_the_standby_is_counted_on_both_servers():
    before = model.compute(to_repository_host())
    report = model.compute(from_standby())
    assert report["servers"]["primary"]["total"] == before["servers"]["primary"]["total"]
    assert [source for source in report["servers"]["replica"]["sources"] if source["host"] == "pgbackrest"] == [
        {"host": "pgbackrest", "via": "direct connection", "connections": backups.PGBACKREST_CONNECTIONS}]
    without = model.compute(dict(from_standby(), hosts=dict(from_standby()["hosts"], db1=dict(
        from_standby()["hosts"]["db1"], pgbackrest=dict(from_standby()["hosts"]["db1"]["pgbackrest"],
                                                        backup_from_standby=False)))))
    assert report["servers"]["replica"]["total"] == without["servers"]["replica"]["total"] + 2


def test_the_replicas_server_admits_the_repository_host_only():
    report = model.compute(from_standby())
    [on_replica] = [item for item in report["firewall"]["hosts"]["db2"] if item["service"] == "pgbackrest"]
    assert (on_replica["clients"], on_replica["addresses"]) == (["backup1"], ["10.0.0.9"])
    assert "db2" in report["tls"]["certificates"]


def test_a_backup_from_the_standby_without_a_replica_is_refused():
    description = to_repository_host(backup_from_standby=True)
    message = error_of(description)
    assert message.startswith("host db1, pgbackrest.backup_from_standby: is on, and the plan has no replica")
    assert "add the replica (postgresql_role: replica in group db)" in message


def test_a_backup_from_the_standby_without_a_repository_host_is_refused():
    description = from_standby()
    description["hosts"]["db1"]["pgbackrest"]["repo_host"] = None
    message = error_of(description)
    assert message.startswith("host db1, pgbackrest.backup_from_standby: is on without pgbackrest_repo_host")
    assert "set pgbackrest_repo_host to a host in group backup" in message


def to_bucket(mastodon=None, **section):
    """db1 keeps its repository in bucket mastodon-backups, on the media's storage."""
    description = cluster(hosts__db1__pgbackrest=dict({"archive": True, "repo_s3_bucket": "mastodon-backups"},
                                                      **section))
    description["mastodon"].update(mastodon or {"s3_endpoint": "https://10.0.0.7:7480", "s3_region": "eu-1"})
    return description


def test_a_bucket_on_the_medias_storage_keeps_the_repository_the_primary_backs_up_to():
    report = model.compute(to_bucket())
    plan = report["backups"]["db1"]
    assert plan["repo_type"] == "s3" and plan["repo_path"] == backups.S3_DEFAULT_PATH == "/pgbackrest"
    assert plan["s3"] == {"bucket": "mastodon-backups", "endpoint": "10.0.0.7", "port": 7480, "region": "eu-1",
                          "uri_style": "path", "address": "10.0.0.7"}
    # The primary runs its backups; the budget counts them there, as with a repository on its own disk.
    assert plan["backup_host"] == "db1" and plan["repo_host"] is None
    assert report["direct_connections"]["pgbackrest"] == 2
    assert report["backup_repositories"] == {}


def test_the_bucket_takes_the_path_given_and_the_medias_url_style():
    plan = model.compute(to_bucket(repo_path="/db1"))["backups"]["db1"]
    assert plan["repo_path"] == "/db1"
    plan = model.compute(to_bucket(mastodon={"s3_endpoint": "https://s3.example.com",
                                             "s3_override_path_style": True}))["backups"]["db1"]
    assert (plan["s3"]["endpoint"], plan["s3"]["port"], plan["s3"]["uri_style"]) == ("s3.example.com", 443, "host")
    # A named endpoint: the backup units cannot be limited to it by address.
    assert plan["s3"]["address"] is None and plan["s3"]["region"] == "us-east-1"
    plan = model.compute(to_bucket(mastodon={"s3_region": "eu-west-1"}))["backups"]["db1"]
    assert (plan["s3"]["endpoint"], plan["s3"]["uri_style"]) == ("s3-eu-west-1.amazonaws.com", "host")


def test_a_posix_repository_has_no_bucket():
    plan = model.compute(archiving())["backups"]["db1"]
    assert plan["repo_type"] == "posix" and plan["s3"] is None


def test_a_bucket_without_the_medias_s3_storage_is_refused():
    message = error_of(to_bucket(mastodon={"media": "local", "s3_bucket": None, "s3_alias_host": None}))
    assert message.startswith("host db1, pgbackrest.repo_s3_bucket: is set, and the media settings give no S3 "
                              "storage (mastodon_media is local)")
    assert "set mastodon_media: s3 with its mastodon_s3_* settings" in message


def test_a_bucket_over_plain_http_is_refused():
    message = error_of(to_bucket(mastodon={"s3_endpoint": "http://10.0.0.7:7480"}))
    assert "reached over http: pgBackRest speaks to S3 only over TLS" in message
    assert "mastodon_s3_endpoint https://" in message


def test_a_bucket_and_a_repository_host_at_once_are_refused():
    description = to_bucket(repo_host="backup1")
    description["hosts"]["backup1"] = {"backup": {}}
    message = error_of(description)
    assert message.startswith("host db1, pgbackrest.repo_s3_bucket: and pgbackrest_repo_host are both set")
    assert "unset one of them" in message
