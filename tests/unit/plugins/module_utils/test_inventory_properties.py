"""Inventories drawn from the whole schema: the plan answers with a report or one clear input error, never more.

Every input error, worded for the inventory as the plan playbook words it, names a host (or a group, ``all``
for the cluster's variables) and an inventory variable.
"""

import re

from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.inventory import (
    KNOWN_VARIABLES, description_from_inventory, inventory_wording,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import GROUPS, PlanInputError

HOST_NAMES = ["db1", "db2.example.org", "redis1", "web1", "web-2.example.org", "worker1", "proxy1", "bastion"]
QUEUES = ["default", "push", "ingress", "mailers", "pull", "scheduler", "fasp", "bogus"]
TYPOS = ["web_concurency", "WEB_CONCURRENCY", "DB_POOL", "postgres_max_connections", "mastadon_version", "web-port",
         "web_threads", "sidekiq_concurrency", "pgbouncer_pool_size", "redis_maxclients", "nginx_vhosts",
         "mastodon_domian", "Web_Port"]

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.integers(10 ** 15, 10 ** 30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["auto", "4.6", "4.10", "16GB", "1kB", "64kB", "9" * 400, "\u0663", "a\nb", " ", "0.0.0.0/0",
                     "10.0.0.5", "redis://h:\u00b2", "transaction", "statement", "noeviction"]),
    st.lists(st.integers(0, 70000), max_size=3), st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)
queue_entry = st.dictionaries(st.sampled_from(["queue", "queues", "instances", "concurrency", "db_pool", "extra"]),
                              st.one_of(st.sampled_from(QUEUES), st.integers(-1, 1200), junk), max_size=4)
redis_entry = st.dictionaries(
    st.sampled_from(["name", "purpose", "port", "maxmemory", "maxmemory_policy", "appendonly", "save",
                     "sentinel_master"]),
    st.one_of(st.sampled_from(["cache", "persistent", "sidekiq", "mastodon", "../x", "1GB", "", "allkeys-lru"]),
              st.integers(0, 70000), junk), max_size=5)
environment = st.dictionaries(
    st.sampled_from(["DB_POOL", "DB_HOST", "DATABASE_URL", "REDIS_URL", "REDIS_PORT", "PREPARED_STATEMENTS",
                     "STREAMING_CLUSTER_NUM", "REDIS_NAMESPACE", "1BAD", "MAX_THREADS"]),
    st.one_of(st.sampled_from(["10", "redis://h:6379", "redis://h:x", "abc", "false"]), junk), max_size=3)

SPECIAL = {
    "sidekiq_queues": st.one_of(st.lists(queue_entry, max_size=8), junk),
    "redis_instances": st.one_of(st.lists(redis_entry, max_size=3), junk),
    "streaming_ports": st.one_of(st.lists(st.integers(0, 70000), max_size=3), junk),
    "mastodon_environment": st.one_of(environment, junk),
    "mastodon_env_production": st.one_of(environment, junk),
    "mastodon_redis_settings": st.one_of(environment, junk),
    "mastodon_direct_connections": st.one_of(
        st.dictionaries(st.sampled_from(["migrations", "tootctl", "pghero", "bad name"]),
                        st.one_of(st.sampled_from(["auto", 0, 2, 6]), junk), max_size=3), junk),
}


def value_for(name):
    return SPECIAL.get(name, junk)


@st.composite
def inventories(draw):
    hosts = draw(st.lists(st.sampled_from(HOST_NAMES), min_size=1, max_size=6, unique=True))
    groups = {"all": list(hosts), "ungrouped": []}
    for group in GROUPS:
        groups[group] = [host for host in hosts if draw(st.booleans())]
    hostvars, origins = {}, {}
    shared = draw(st.dictionaries(st.sampled_from(KNOWN_VARIABLES + TYPOS), st.just(None), max_size=4))
    shared = {name: draw(value_for(name)) for name in shared}
    for host in hosts:
        own = draw(st.dictionaries(st.sampled_from(KNOWN_VARIABLES + TYPOS), st.just(None), max_size=6))
        variables = dict(shared)
        variables.update({name: draw(value_for(name)) for name in own})
        hostvars[host] = variables
        origins[host] = {name: "all" if name in shared and name not in own else
                         draw(st.sampled_from(["host", "group web", "group monitoring"])) for name in variables}
    return hostvars, groups, origins


BASE_GROUPS = {"db": ["db1"], "redis": ["redis1"], "web": ["web1"], "streaming": ["web1"], "sidekiq": ["worker1"],
               "proxy": ["proxy1"], "backup": []}
BASE_VARIABLES = {
    "db1": {"postgresql_ram": "16GB"},
    "redis1": {"redis_instances": [{"name": "persistent", "purpose": "persistent"},
                                   {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB"}]},
    "worker1": {"sidekiq_queues": [{"queue": queue} for queue in QUEUES[:6]]},
    "proxy1": {},
    "web1": {},
}
plausible = st.one_of(st.integers(0, 3000), st.sampled_from(["auto", "4.6", "4.7", "1.24", "8GB", "64kB", "10.0.0.5",
                                                             "transaction", "session", "nvme", "replica", True]))


@st.composite
def mutated_inventories(draw):
    """A valid cluster with a few variables changed, added or moved: the plan's deep paths."""
    groups = {group: list(hosts) for group, hosts in BASE_GROUPS.items()}
    hostvars = {host: dict(variables, mastodon_trusted_proxy_ip="10.0.0.5")
                for host, variables in BASE_VARIABLES.items()}
    origins = {host: {} for host in hostvars}
    for _change in range(draw(st.integers(0, 4))):
        host = draw(st.sampled_from(sorted(hostvars)))
        name = draw(st.sampled_from(KNOWN_VARIABLES + TYPOS))
        hostvars[host][name] = draw(st.one_of(plausible, value_for(name)))
        origins[host][name] = draw(st.sampled_from(["host", "group web", "all"]))
    for _added in range(draw(st.integers(0, 2))):
        host = draw(st.sampled_from(sorted(hostvars) + ["extra.example.org"]))
        hostvars.setdefault(host, {})
        origins.setdefault(host, {})
        groups[draw(st.sampled_from(GROUPS))].append(host)
    groups = {group: sorted(set(hosts)) for group, hosts in groups.items()}
    groups.update(all=sorted(hostvars), ungrouped=[])
    return hostvars, groups, origins


PLACE = re.compile(r"(host [^,\s]+|group [a-z_]+), variable [A-Za-z0-9_.\[\]-]+[:( ]")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(inventories(), mutated_inventories()))
def test_any_inventory_plans_or_fails_with_one_clear_line(inventory):
    hostvars, groups, origins = inventory
    try:
        report = plan.connection_budget(description_from_inventory(hostvars, groups, (), origins))
    except PlanInputError as error:
        message = str(inventory_wording(error))
        assert PLACE.match(message), message
        assert "\n" not in message and len(message) < 1200, message
        return
    assert report["errors"] == sum(1 for item in report["findings"] if item["severity"] == "error")
