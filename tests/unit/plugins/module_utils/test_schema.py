"""Bad input: one clear error naming the host and key, never a traceback from deep inside."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    PlanInputError, format_size_kb, parse_size_kb,
)

from ...clusters import QUEUES, cluster


def error_of(description):
    with pytest.raises(PlanInputError) as caught:
        plan.connection_budget(description)
    return str(caught.value)


@pytest.mark.parametrize("value, problem", [
    (-3, "must be from 1 to 512, got -3"),
    (2.5, "expected a whole number from 1 to 512, got 2.5"),
    ("ten", "expected a whole number from 1 to 512, got 'ten'"),
    (True, "expected a whole number, got the boolean True"),
])
def test_bad_numbers_name_host_and_key(value, problem):
    message = error_of(cluster(hosts__web1__web={"concurrency": value}))
    assert message.startswith("host web1, web.concurrency: ")
    assert problem in message


def test_numbers_from_ini_inventories_are_accepted():
    report = plan.connection_budget(cluster(hosts__web1__web={"concurrency": "3", "max_threads": "5"}))
    assert report["processes"][0]["processes"] == 3


def test_typo_in_a_key_suggests_the_right_one():
    message = error_of(cluster(hosts__web1__web={"concurency": 3}))
    assert message == "host web1, web.concurency: unknown key (did you mean 'concurrency'?)"


def test_typo_in_a_sidekiq_entry():
    message = error_of(cluster(hosts__worker1__sidekiq={"queues": [{"queue": "pull", "concurency": 5}]}))
    assert message.startswith("host worker1, sidekiq.queues[0].concurency: unknown key")


def test_unknown_section():
    assert "did you mean 'sidekiq'" in error_of(cluster(hosts__worker1__sidekick={}))


def test_missing_ram_is_required():
    message = error_of(cluster(hosts__db1={"postgresql": {"max_connections": 100}}))
    assert message.startswith("host db1, postgresql.ram: is required but missing")


def test_ram_needs_a_unit():
    assert "a size needs a unit" in error_of(cluster(hosts__db1={"postgresql": {"ram": 16}}))


def test_no_primary():
    assert "group db, postgresql.role: no host is the PostgreSQL primary" in error_of(cluster(hosts__db1={"postgresql": {"role": "replica",
                                                                                      "ram": "1GB"}}))


def test_two_primaries():
    message = error_of(cluster(hosts__db2={"postgresql": {"ram": "1GB"}}))
    assert message.startswith("host db2, postgresql.role: db1 is already primary")


def test_sidekiq_entry_without_queue():
    message = error_of(cluster(hosts__worker2={"sidekiq": {"queues": [{"instances": 2}]}}))
    assert message.startswith("host worker2, sidekiq.queues[0]: names no queue")


def test_bad_env_value_names_the_variable():
    message = error_of(cluster(hosts__web1__mastodon={"env_production": {"DB_POOL": "lots"}}))
    assert message.startswith("host web1, mastodon.env_production.DB_POOL: expected a whole number")


def test_not_a_mapping():
    assert "expected a mapping" in error_of(["db1"])


def test_duplicate_streaming_port():
    assert "lists a port twice" in error_of(cluster(hosts__web1__streaming={"ports": [4000, 4000]}))


@pytest.mark.parametrize("text, kb", [("4MB", 4096), ("16GB", 16777216), ("64kB", 64), (4096, 4096)])
def test_sizes(text, kb):
    assert parse_size_kb(text, "x") == kb


@pytest.mark.parametrize("kb, text", [(4096, "4MB"), (20164, "20164kB"), (4194304, "4GB"), (1048576 * 1024, "1TB")])
def test_size_format(kb, text):
    assert format_size_kb(kb) == text


def test_trusted_proxy_ip_must_be_addresses():
    message = error_of(cluster(mastodon__trusted_proxy_ip="10.0.0.5, proxy1"))
    assert message.startswith("mastodon.trusted_proxy_ip: 'proxy1' is not an IP address or network")
    report = plan.connection_budget(cluster(mastodon__trusted_proxy_ip="10.0.0.5, 192.168.0.0/24"))
    assert report["environment"]["web1"]["units"]["TRUSTED_PROXY_IP"] == "10.0.0.5, 192.168.0.0/24"


# --- every class of bad input: one line naming the place, never a Python exception ---

@pytest.mark.parametrize("settings, where, problem", [
    ({"REDIS_PORT": "abc"}, "mastodon.redis_settings.REDIS_PORT", "expected a whole number from 1 to 65535"),
    ({"REDIS_URL": "redis://h:\u00b2"}, "mastodon.redis_settings.REDIS_URL (its port)", "got '\u00b2'"),
    ({"CACHE_REDIS_URL": "redis://h:99999"}, "mastodon.redis_settings.CACHE_REDIS_URL (its port)",
     "must be from 1 to 65535"),
    ({"REDIS_URL": "http://h"}, "mastodon.redis_settings.REDIS_URL", "is not a redis://, rediss:// or unix:// URL"),
    ({"REDIS_URL": "redis:///0"}, "mastodon.redis_settings.REDIS_URL", "names no host"),
    ({"SIDEKIQ_REDIS_DB": "x"}, "mastodon.redis_settings.SIDEKIQ_REDIS_DB", "expected a whole number"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379,bad host"}, "mastodon.redis_settings.REDIS_SENTINELS",
     "neither an IP address nor a DNS name"),
])
def test_redis_settings_are_checked_as_mastodon_parses_them(settings, where, problem):
    message = error_of(cluster(mastodon__redis_settings=settings))
    assert message.startswith(where + ": ") and problem in message


@pytest.mark.parametrize("value", ["9" * 5000, 10 ** 400, float("inf"), float("nan"), "1e400", "\u0663"])
def test_huge_and_odd_numbers_are_refused_with_the_range(value):
    message = error_of(cluster(hosts__web1__web={"concurrency": value}))
    assert message.startswith("host web1, web.concurrency: ") and "1 to 512" in message
    assert len(message) < 200


@pytest.mark.parametrize("changes, where, fragment", [
    ({"hosts__worker1__sidekiq": {"queues": [{"queue": "pull", "instances": 100000000}]}},
     "host worker1, sidekiq.queues[0].instances", "must be from 0 to 1000"),
    ({"hosts__worker1__sidekiq": {"queues": [{"queue": "pull", "concurrency": 5000}]}},
     "host worker1, sidekiq.queues[0].concurrency", "must be from 1 to 1000"),
    ({"hosts__db1__postgresql": {"ram": "16GB", "cpus": 100000}}, "host db1, postgresql.cpus", "1 to 4096"),
    ({"hosts__db1__postgresql": {"ram": "999999TB"}}, "host db1, postgresql.ram", "must be from 128MB to 64TB"),
    ({"hosts__redis1__redis": {"instances": [{"name": "cache", "purpose": "cache", "maxmemory": "99999TB"}]}},
     "host redis1, redis.instances[0].maxmemory", "must be from 1MB to 64TB"),
    ({"hosts__web1__mastodon": {"nofile_hard_limit": 2 ** 40}}, "host web1, mastodon.nofile_hard_limit",
     "1 to 1073741816"),
    ({"mastodon__request_timeout": 10 ** 9}, "mastodon.request_timeout", "1 to 3600"),
])
def test_every_number_has_a_range(changes, where, fragment):
    message = error_of(cluster(**changes))
    assert message.startswith(where + ": ") and fragment in message


@pytest.mark.parametrize("field, value", [("version", 4.1), ("version", 4), ("version", "4.x")])
def test_versions_must_be_quoted_strings(field, value):
    message = error_of(cluster(**{"mastodon__" + field: value}))
    assert message.startswith("mastodon.version: ")
    if isinstance(value, float):
        assert "YAML reads 4.10 as 4.1" in message and "quote it: '4.1'" in message


def test_pgbouncer_version_float_is_refused():
    message = error_of(cluster(hosts__worker1__pgbouncer={"version": 1.20}))
    assert message.startswith("host worker1, pgbouncer.version: the version is the number 1.2")


def test_mastodon_before_4_2_is_refused():
    message = error_of(cluster(mastodon__version="4.1"))
    assert message.startswith("mastodon.version: Mastodon 4.1 is older than 4.2")


def test_dotted_host_names_stay_whole():
    description = cluster()
    description["hosts"]["db1.example.org"] = description["hosts"].pop("db1")
    description["hosts"]["db1.example.org"]["postgresql"]["ram"] = "lots"
    assert error_of(description).startswith("host db1.example.org, postgresql.ram: ")


@pytest.mark.parametrize("environment, fragment", [
    ({"DB_POOL": "10"}, "remove it and set web_db_pool"),
    ({"WEB_CONCURRENCY": "4"}, "remove it and set web_concurrency"),
    ({"REDIS_URL": "redis://h:x"}, "(its port)"),
    ({"NAME": "a\nb"}, "a control character"),
])
def test_errors_in_mastodon_environment_name_it(environment, fragment):
    message = error_of(cluster(hosts__web1__mastodon={"environment": environment}))
    assert message.startswith("host web1, mastodon.environment.") and fragment in message


@pytest.mark.parametrize("key, name", [("environment", "DB_HOST"), ("environment", "DATABASE_URL"),
                                       ("env_production", "DATABASE_URL"), ("environment", "REPLICA_DB_PORT")])
def test_settings_that_bypass_the_planned_pgbouncer(key, name):
    message = error_of(cluster(hosts__worker1__pgbouncer={}, hosts__worker1__mastodon={key: {name: "10.0.0.9"}}))
    assert message.startswith("host worker1, mastodon.%s.%s: sends the Mastodon processes on worker1 around "
                              "the planned pgbouncer" % (key, name))


def test_db_host_without_pgbouncer_is_the_admins_choice():
    report = plan.connection_budget(cluster(hosts__worker1__mastodon={"environment": {"DB_HOST": "10.0.0.9"}}))
    assert report["environment"]["worker1"]["units"]["DB_HOST"] == "10.0.0.9"


def test_duplicate_queue_on_one_host():
    message = error_of(cluster(hosts__worker1__sidekiq={"queues": [
        {"queue": queue} for queue in QUEUES] + [{"queue": "pull", "instances": 2}]}))
    assert message.startswith("host worker1, sidekiq.queues[6].queue: queue pull is already sidekiq_queues[4]")


@pytest.mark.parametrize("changes, where, fragment", [
    ({"hosts__web1__web": {"port": 4000}}, "host web1, streaming.ports[0]", "port 4000 is also web_port's"),
    ({"hosts__web1__pgbouncer": {}, "hosts__web1__web": {"port": 6432}}, "host web1, web.port",
     "port 6432 is also pgbouncer's"),
    ({"hosts__redis1__redis": {"sentinel": True, "sentinel_port": 6380, "instances": [
        {"name": "cache", "purpose": "cache", "port": 6380}]}}, "host redis1, redis.sentinel_port",
     "is also redis_instances[0]'s"),
    ({"hosts__db1__redis": {"instances": [{"name": "p", "purpose": "persistent", "port": 5432}]}},
     "host db1, redis.instances[0].port", "port 5432 is also PostgreSQL's"),
    ({"hosts__web1__nginx": {}, "hosts__web1__web": {"port": 80}}, "host web1, web.port", "is also nginx's"),
])
def test_two_services_on_one_port(changes, where, fragment):
    message = error_of(cluster(**changes))
    assert message.startswith(where + ": ") and fragment in message


@pytest.mark.parametrize("changes, where, fragment", [
    ({"hosts__worker1__pgbouncer": {"pool_mode": "statement"}}, "host worker1, pgbouncer.pool_mode",
     "statement pooling refuses"),
    ({"hosts__db1__postgresql": {"ram": "16GB", "work_mem": "32kB"}}, "host db1, postgresql.work_mem",
     "must be from 64kB"),
    ({"hosts__db1__postgresql": {"ram": "128MB", "max_connections": 5000}}, "host db1, postgresql.ram",
     "too small for max_connections 5000"),
    ({"hosts__db1__postgresql": {"ram": "16GB", "max_connections": 3}}, "host db1, postgresql.superuser_reserved_connections",
     "PostgreSQL refuses to start"),
    ({"hosts__redis1__redis": {"instances": [{"name": "cache", "purpose": "cache", "maxmemory_policy": "lru"}]}},
     "host redis1, redis.instances[0].maxmemory_policy", "expected one of noeviction, allkeys-lru"),
    ({"hosts__redis1__redis": {"instances": [{"name": "../etc", "purpose": "cache"}]}},
     "host redis1, redis.instances[0].name", "is not a valid Redis instance name"),
    ({"hosts__redis1__redis": {"instances": [{"name": "c", "purpose": "cache", "save": "soon"}]}},
     "host redis1, redis.instances[0].save", "pairs of seconds and changes"),
    ({"mastodon__db_name": "   "}, "mastodon.db_name", "expected a non-empty string"),
    ({"mastodon__db_user": "mast odon"}, "mastodon.db_user", "white space"),
    ({"hosts__web1__mastodon": {"address": "10.0.0.1\n"}}, "host web1, mastodon.address", "control character"),
    ({"hosts__web1__mastodon": {"address": "web 1"}}, "host web1, mastodon.address", "neither an IP address"),
    ({"mastodon__trusted_proxy_ip": "0.0.0.0/0"}, "mastodon.trusted_proxy_ip", "trusts every address"),
    ({"mastodon__trusted_proxy_ip": "10.0.0.5, ::/0"}, "mastodon.trusted_proxy_ip", "trusts every address"),
    ({"mastodon__direct_connections": {"tootctl": 1}}, "mastodon.direct_connections.tootctl",
     "tootctl opens --concurrency + 1 connections: 6 at mastodon_tootctl_concurrency 5"),
    ({"mastodon__direct_connections": {"migrations": 1}}, "mastodon.direct_connections.migrations",
     "rails db:migrate holds 2 connections"),
    ({"mastodon__direct_connections": {"pghero": "auto"}}, "mastodon.direct_connections.pghero",
     "auto is known only for migrations and tootctl"),
])
def test_accepted_before_but_broken_at_deploy_time(changes, where, fragment):
    message = error_of(cluster(**changes))
    assert message.startswith(where + ": ") and fragment in message, message


@pytest.mark.parametrize("value, fragment", [(11, "Debian 11 is not a release the collection supports"),
                                             ("trixie", "expected a whole number")])
def test_debian_release_is_12_or_13(value, fragment):
    message = error_of(cluster(hosts__web1__mastodon={"debian_version": value}))
    assert message.startswith("host web1, mastodon.debian_version: ") and fragment in message


def test_valkey_on_a_release_without_it_names_the_ways_out():
    message = error_of(cluster(hosts__redis1__redis__server="valkey", hosts__redis1__mastodon={"debian_version": 12}))
    assert message.startswith("host redis1, redis.server: Debian 12 ships no valkey package")
    assert "redis_server: redis" in message and "Debian 13 (it ships valkey 8.1)" in message
    assert "redis_version" in message


def test_valkey_from_elsewhere_on_debian_12_takes_the_given_version():
    report = plan.connection_budget(cluster(hosts__redis1__redis={"server": "valkey", "version": "8.0", "instances": [
        {"name": "persistent", "purpose": "persistent", "port": 6379}]}, hosts__redis1__mastodon={"debian_version": 12}))
    assert {item["version"] for item in report["redis"]["instances"]} == {"8.0"}


@pytest.mark.parametrize("value", ["keydb", "Valkey", ""])
def test_redis_server_is_redis_or_valkey(value):
    message = error_of(cluster(hosts__redis1__redis__server=value))
    assert message.startswith("host redis1, redis.server: "), message


def test_yjit_is_a_boolean_or_auto():
    message = error_of(cluster(mastodon__yjit="sometimes"))
    assert message.startswith("mastodon.yjit: expected true or false") and "sometimes" in message


@pytest.mark.parametrize("changes, message", [
    ({"mastodon__media": "nfs"}, "mastodon.media: expected one of local, s3, got 'nfs'"),
    ({"mastodon__media_path": "public/system"},
     "mastodon.media_path: 'public/system' is not an absolute path without spaces or .."),
    ({"mastodon__s3_endpoint": "s3.example.net"}, "mastodon.s3_endpoint: 's3.example.net' is not an http:// or "
                                                  "https:// URL of a host, with no path"),
    ({"mastodon__s3_endpoint": "https://s3.example.net/bucket"}, "with no path"),
    ({"mastodon__s3_alias_host": "https://files.example.com"}, "mastodon.s3_alias_host: 'https://files.example.com' "
                                                               "is not a host name with an optional port and path "
                                                               "(write it like files.example.com, without a scheme)"),
    ({"mastodon__s3_permission": "public"}, "mastodon.s3_permission: expected one of private, public-read"),
    ({"hosts__web1__mastodon": {"environment": {"S3_BUCKET": "other"}}},
     "host web1, mastodon.environment.S3_BUCKET: is a media setting the plan writes itself from mastodon_media and "
     "mastodon_s3_*, and checks (remove it and set mastodon_s3_bucket)"),
    ({"hosts__web1__mastodon": {"environment": {"S3_ENABLED": "false"}}}, "remove it and set mastodon_media)"),
    ({"hosts__proxy1": {"nginx": {"media_resolver": "dns.example.net"}}},
     "host proxy1, nginx.media_resolver: 'dns.example.net' is not an IP address"),
    ({"hosts__proxy1": {"nginx": {"media_cache_max_size": 100}}}, "a size needs a unit, got 100"),
])
def test_bad_media_settings_name_the_setting_and_the_fix(changes, message):
    assert message in error_of(cluster(**changes))


def test_an_empty_s3_permission_is_a_bucket_without_acls():
    report = plan.connection_budget(cluster(mastodon__s3_permission=""))
    assert report["environment"]["web1"]["units"]["S3_PERMISSION"] == ""
