"""From groups and host variables to a cluster description."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils.inventory import (
    description_from_inventory, inventory_wording,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError

GROUPS = {"all": ["db1", "app1"], "ungrouped": [], "db": ["db1"], "web": ["app1"], "sidekiq": ["app1"]}


def test_sections_follow_groups_and_prefixes():
    hostvars = {
        "db1": {"postgresql_ram": "8GB", "mastodon_version": "4.5", "ansible_host": "10.0.0.1"},
        "app1": {"web_concurrency": 3, "sidekiq_queues": [{"queue": "pull"}], "mastodon_version": "4.5",
                 "pgbouncer_enabled": False, "redis_password": "not read"},
    }
    description = description_from_inventory(hostvars, GROUPS)
    assert description["mastodon"] == {"version": "4.5"}
    assert description["hosts"]["db1"] == {"mastodon": {}, "postgresql": {"ram": "8GB"}}
    assert description["hosts"]["app1"] == {
        "mastodon": {}, "web": {"concurrency": 3}, "sidekiq": {"queues": [{"queue": "pull"}]},
        "pgbouncer": {"enabled": False}}


def test_host_in_no_group_is_an_error():
    groups = dict(GROUPS, ungrouped=["stray"])
    with pytest.raises(PlanInputError) as caught:
        description_from_inventory({"db1": {}, "app1": {}, "stray": {}}, groups)
    assert str(caught.value).startswith("host stray: is in none of the groups db, redis, web")


def test_typo_in_a_variable_names_host_and_suggestion():
    with pytest.raises(PlanInputError) as caught:
        description_from_inventory({"db1": {}, "app1": {"web_concurency": 3}}, GROUPS)
    assert str(caught.value) == ("host app1, variable web_concurency: unknown variable "
                                 "(did you mean web_concurrency?)")


def test_cluster_variable_must_agree():
    with pytest.raises(PlanInputError) as caught:
        description_from_inventory({"db1": {"mastodon_version": "4.4"}, "app1": {"mastodon_version": "4.5"}},
                                   GROUPS)
    assert "differs between hosts app1 ('4.5') and db1 ('4.4')" in str(caught.value)


def test_empty_inventory():
    with pytest.raises(PlanInputError, match="has no host in any of the groups"):
        description_from_inventory({}, {"all": [], "ungrouped": []})


@pytest.mark.parametrize("where, wording", [
    ("hosts.web1.web.concurrency", "host web1, variable web_concurrency"),
    ("hosts.worker1.sidekiq.queues[0].concurrency", "host worker1, variable sidekiq_queues[0].concurrency"),
    ("mastodon.direct_connections.migrations", "variable mastodon_direct_connections.migrations"),
    ("host web1, web: DB_POOL in the unit", "host web1, web: DB_POOL in the unit"),
])
def test_errors_name_inventory_variables(where, wording):
    error = inventory_wording(PlanInputError(where, "must be at least 1, got -3", "a hint"))
    assert str(error) == "%s: must be at least 1, got -3 (a hint)" % wording


def test_role_options_are_not_typos():
    # redis_instance (no s) is a typo of the plan's redis_instances unless a role declares it.
    hostvars = {"db1": {}, "app1": {"redis_instance": []}}
    with pytest.raises(PlanInputError, match="did you mean redis_instances"):
        description_from_inventory(hostvars, GROUPS)
    description_from_inventory(hostvars, GROUPS, role_variables=["redis_instance"])
