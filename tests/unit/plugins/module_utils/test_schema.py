"""Bad input: one clear error naming the host and key, never a traceback from deep inside."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    PlanInputError, format_size_kb, parse_size_kb,
)

from ...clusters import cluster


def error_of(description):
    with pytest.raises(PlanInputError) as caught:
        plan.connection_budget(description)
    return str(caught.value)


@pytest.mark.parametrize("value, problem", [
    (-3, "must be at least 1, got -3"),
    (2.5, "expected a whole number, got 2.5"),
    ("ten", "expected a whole number, got 'ten'"),
    (True, "expected a whole number, got the boolean True"),
])
def test_bad_numbers_name_host_and_key(value, problem):
    message = error_of(cluster(hosts__web1__web={"concurrency": value}))
    assert message.startswith("hosts.web1.web.concurrency: ")
    assert problem in message


def test_numbers_from_ini_inventories_are_accepted():
    report = plan.connection_budget(cluster(hosts__web1__web={"concurrency": "3", "max_threads": "5"}))
    assert report["processes"][0]["processes"] == 3


def test_typo_in_a_key_suggests_the_right_one():
    message = error_of(cluster(hosts__web1__web={"concurency": 3}))
    assert message == "hosts.web1.web.concurency: unknown key (did you mean 'concurrency'?)"


def test_typo_in_a_sidekiq_entry():
    message = error_of(cluster(hosts__worker1__sidekiq={"queues": [{"queue": "pull", "concurency": 5}]}))
    assert message.startswith("hosts.worker1.sidekiq.queues[0].concurency: unknown key")


def test_unknown_section():
    assert "did you mean 'sidekiq'" in error_of(cluster(hosts__worker1__sidekick={}))


def test_missing_ram_is_required():
    message = error_of(cluster(hosts__db1={"postgresql": {"max_connections": 100}}))
    assert message.startswith("hosts.db1.postgresql.ram: is required but missing")


def test_ram_needs_a_unit():
    assert "a size needs a unit" in error_of(cluster(hosts__db1={"postgresql": {"ram": 16}}))


def test_no_primary():
    assert "has no PostgreSQL primary" in error_of(cluster(hosts__db1={"postgresql": {"role": "replica",
                                                                                      "ram": "1GB"}}))


def test_two_primaries():
    message = error_of(cluster(hosts__db2={"postgresql": {"ram": "1GB"}}))
    assert message.startswith("host db2, postgresql_role: db1 is already primary")


def test_sidekiq_entry_without_queue():
    message = error_of(cluster(hosts__worker2={"sidekiq": {"queues": [{"instances": 2}]}}))
    assert message.startswith("host worker2, sidekiq_queues[0]: names no queue")


def test_bad_env_value_names_the_variable():
    message = error_of(cluster(hosts__web1__mastodon={"env_production": {"DB_POOL": "lots"}}))
    assert "DB_POOL in .env.production" in message and "host web1" in message


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
