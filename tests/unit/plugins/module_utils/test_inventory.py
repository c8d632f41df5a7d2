"""From groups and host variables to a cluster description, and what the inventory must not carry."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.inventory import (
    description_from_inventory, inventory_wording, is_relevant, lookalike,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError

GROUPS = {"all": ["db1", "app1"], "ungrouped": [], "db": ["db1"], "web": ["app1"], "sidekiq": ["app1"]}


def error_of(hostvars, groups=None, origins=None, role_variables=()):
    with pytest.raises(PlanInputError) as caught:
        description_from_inventory(hostvars, groups or GROUPS, role_variables, origins)
    return str(caught.value)


def test_sections_follow_groups_and_prefixes():
    hostvars = {
        "db1": {"postgresql_ram": "8GB", "mastodon_version": "4.5", "ansible_host": "10.0.0.1"},
        "app1": {"web_concurrency": 3, "sidekiq_queues": [{"queue": "pull"}], "mastodon_version": "4.5",
                 "pgbouncer_enabled": False, "redis_password": "read by the redis role"},
    }
    description = description_from_inventory(hostvars, GROUPS, role_variables=["redis_password"])
    assert description["mastodon"] == {"version": "4.5"}
    assert description["hosts"]["db1"] == {"mastodon": {}, "postgresql": {"ram": "8GB"}, "pgbackrest": {}}
    assert description["hosts"]["app1"] == {
        "mastodon": {}, "web": {"concurrency": 3}, "sidekiq": {"queues": [{"queue": "pull"}]},
        "pgbouncer": {"enabled": False}}
    assert "inventory" not in description


def test_a_host_outside_the_groups_with_the_plans_variables_is_an_error():
    groups = dict(GROUPS, all=GROUPS["all"] + ["stray"], ungrouped=["stray"])
    message = error_of({"db1": {}, "app1": {}, "stray": {"web_concurrency": 4}}, groups,
                       {"stray": {"web_concurrency": "group monitoring"}})
    assert message.startswith("host stray, variable web_concurrency: stray is in none of the groups db, redis, web, "
                              "streaming, sidekiq, proxy, backup, so the plan would drop it and this setting from group "
                              "monitoring")


def test_a_bastion_is_left_alone_and_what_it_inherits_is_not_its_own():
    groups = dict(GROUPS, all=GROUPS["all"] + ["bastion1"], ungrouped=["bastion1"])
    hostvars = {"db1": {"postgresql_ram": "8GB", "pgbouncer_version": "1.24"}, "app1": {"pgbouncer_version": "1.24"},
                "bastion1": {"pgbouncer_version": "1.24", "nginx_vhosts": []}}
    origins = {host: {"pgbouncer_version": "all", "nginx_vhosts": "all"} for host in hostvars}
    description = description_from_inventory(hostvars, groups, origins=origins)
    assert sorted(description["hosts"]) == ["app1", "db1"]
    assert description["hosts"]["app1"]["pgbouncer"] == {"version": "1.24"}
    [entry] = description["inventory"]["unknown_variables"]
    assert entry == {"variable": "nginx_vhosts", "origin": "group all", "hosts": ["bastion1"],
                     "suggestion": entry["suggestion"]}


def test_a_section_variable_on_a_host_outside_its_group():
    message = error_of({"db1": {}, "app1": {"postgresql_max_connections": 500}})
    assert message == ("host app1, variable postgresql_max_connections: is read only on hosts in group db, and app1 "
                       "is not (set in its host_vars) (move it to the host_vars or group_vars of the db hosts, or "
                       "add app1 to db)")
    # Inherited from all it is another host's setting, and nobody's mistake.
    description_from_inventory({"db1": {"postgresql_ram": "8GB"}, "app1": {"postgresql_max_connections": 500}},
                               GROUPS, origins={"app1": {"postgresql_max_connections": "all"}})


@pytest.mark.parametrize("name, suggestion", [
    ("web_concurency", "web_concurrency"),
    ("WEB_CONCURRENCY", "web_concurrency (Mastodon reads WEB_CONCURRENCY from its environment"),
    ("DB_POOL", "web_db_pool, streaming_db_pool or sidekiq_queues[].db_pool"),
    ("postgres_max_connections", "postgresql_max_connections"),
    ("mastadon_version", "mastodon_version"),
    ("web-port", "web_port"),
    ("Web_Port", "web_port"),
    ("web_threads", "web_max_threads"),
    ("sidekiq_concurrency", "sidekiq_queues[].concurrency"),
    ("pgbouncer_pool_size", "pgbouncer_default_pool_size"),
    ("mastodon_domian", "mastodon_"),
])
def test_typos_that_used_to_pass_are_errors_with_did_you_mean(name, suggestion):
    groups = dict(GROUPS, db=["db1", "app1"])
    message = error_of({"db1": {}, "app1": {name: 1}}, groups)
    assert message.startswith("host app1, variable %s: unknown variable, set in its host_vars (did you mean %s"
                              % (name, suggestion)), message


def test_role_prefix_typo_from_all_is_a_warning_but_mastodon_typo_is_not():
    origins = {host: {"redis_maxclient": "all", "mastadon_version": "all"} for host in ("db1", "app1")}
    description = description_from_inventory({"db1": {"redis_maxclient": 1}, "app1": {"redis_maxclient": 1}},
                                             GROUPS, origins=origins)
    [entry] = description["inventory"]["unknown_variables"]
    assert (entry["variable"], entry["origin"], entry["hosts"]) == ("redis_maxclient", "group all", ["app1", "db1"])
    assert "mastadon_version: unknown variable, set in group all" in error_of(
        {"db1": {"mastadon_version": "4.6"}, "app1": {"mastadon_version": "4.6"}}, origins=origins)


def test_role_prefix_on_a_host_of_another_group_is_a_warning():
    # redis_* on a web host: another role's, not a typo of the plan's (the plan reads it on redis hosts only).
    description = description_from_inventory({"db1": {}, "app1": {"redis_tls_port": 6390}}, GROUPS)
    assert description["inventory"]["unknown_variables"][0]["variable"] == "redis_tls_port"


def test_foreign_variables_are_declared_once():
    groups = dict(GROUPS, redis=["db1"])
    hostvars = {"db1": {"redis_maxclients": 1, "mastodon_foreign_variables": ["redis_maxclients"]}, "app1": {}}
    assert "did you mean" in error_of({"db1": {"redis_maxclients": 1}, "app1": {}}, groups)
    description_from_inventory(hostvars, groups)


def test_other_roles_variables_are_not_relevant():
    assert not is_relevant("postgres_exporter_web_listen_address")
    assert lookalike("postgres_exporter_web_listen_address") is None
    assert not is_relevant("ansible_host") and not is_relevant("webhook_url")
    assert is_relevant("WEB_CONCURRENCY") and is_relevant("mastadon_version")


def test_role_options_are_not_typos():
    # redis_instance (no s) is a typo of the plan's redis_instances unless a role declares it.
    groups = dict(GROUPS, redis=["app1"])
    hostvars = {"db1": {}, "app1": {"redis_instance": []}}
    assert "did you mean redis_instances" in error_of(hostvars, groups)
    description_from_inventory(hostvars, groups, role_variables=["redis_instance"])


def test_live_limits_come_from_the_server_not_the_inventory():
    message = error_of({"db1": {"postgresql_live_limits": {"max_connections": 9000}}, "app1": {}})
    assert message.startswith("host db1, variable postgresql_live_limits: is not an inventory variable: site.yml's "
                              "plan play reads them from the running server")


def test_cluster_variable_must_agree():
    message = error_of({"db1": {"mastodon_version": "4.4"}, "app1": {"mastodon_version": "4.5"}})
    assert "differs between hosts app1 ('4.5') and db1 ('4.4')" in message


def test_empty_inventory():
    assert error_of({}, {"all": [], "ungrouped": []}).startswith(
        "group all, variable groups: no host is in any of the groups")


def test_unknown_variables_reach_the_report_as_warnings():
    description = description_from_inventory(
        {"db1": {"postgresql_ram": "8GB", "nginx_vhosts": []},
         "app1": {"sidekiq_queues": [{"queue": queue} for queue in
                                     ("default", "push", "ingress", "mailers", "pull", "scheduler")]}},
        dict(GROUPS, redis=["db1"]), origins={"db1": {"nginx_vhosts": "all"}})
    description["hosts"]["db1"]["redis"] = {"instances": [
        {"name": "persistent", "purpose": "persistent"}, {"name": "cache", "purpose": "cache", "port": 6380,
                                                          "maxmemory": "1GB"}]}
    report = plan.connection_budget(description)
    assert [item["rule"] for item in report["findings"]] == ["inventory-variable-unknown"]


@pytest.mark.parametrize("where, wording", [
    ("host web1, web.concurrency", "host web1, variable web_concurrency"),
    ("host db1.example.org, postgresql.ram", "host db1.example.org, variable postgresql_ram"),
    ("host worker1, sidekiq.queues[0].concurrency", "host worker1, variable sidekiq_queues[0].concurrency"),
    ("host web1, mastodon.environment.DB_POOL", "host web1, variable mastodon_environment.DB_POOL"),
    ("group db, postgresql.role", "group db, variable postgresql_role"),
    ("mastodon.direct_connections.migrations", "group all, variable mastodon_direct_connections.migrations"),
])
def test_errors_name_inventory_variables(where, wording):
    error = inventory_wording(PlanInputError(where, "must be from 1 to 512, got -3", "a hint"))
    assert str(error) == "%s: must be from 1 to 512, got -3 (a hint)" % wording


def test_a_role_option_the_plan_reads_too_reaches_the_plan():
    # redis_server picks the redis role's packages and the plan's Valkey versions alike.
    groups = dict(GROUPS, redis=["db1"])
    hostvars = {"db1": {"redis_server": "valkey", "redis_instances": [{"name": "cache", "purpose": "cache"}]},
                "app1": {}}
    description = description_from_inventory(hostvars, groups, role_variables=["redis_server", "redis_instances"])
    assert description["hosts"]["db1"]["redis"]["server"] == "valkey"


def test_the_media_file_system_is_read_by_the_play_not_the_inventory():
    with pytest.raises(PlanInputError, match="mastodon_media_filesystem: is not an inventory variable: site.yml's "
                                             "plan play reads it from the host's mounts"):
        description_from_inventory({"web1": {"mastodon_media_filesystem": {"type": "nfs"}}},
                                   {"all": ["web1"], "web": ["web1"]})
