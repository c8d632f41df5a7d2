# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the connection budget model; documentation in the <filter>.yml files beside this one."""

from __future__ import annotations

from functools import wraps

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.fediscale.mastodon.plugins.module_utils import inventory, pgtune, plan, redis_plan, sizing
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    AUTO, POSTGRESQL, REDIS, PlanInputError, parse_int, parse_size_kb,
)
from ansible_collections.fediscale.mastodon.plugins.plugin_utils.inputs import inventory_description, plain, select


def _model_errors(function):
    @wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except PlanInputError as error:
            raise AnsibleFilterError("fediscale.mastodon.%s: %s" % (function.__name__, to_native(error)))
    return wrapper


def _report(data, query=None):
    data = select(plain(data), query)
    if isinstance(data, dict) and "findings" in data and "servers" in data:
        return data
    return plan.connection_budget(data)


@_model_errors
def connection_budget(description, query=None):
    return plan.connection_budget(select(plain(description), query))


@_model_errors
def cluster_from_inventory(hostvars, groups):
    return plain(inventory_description(hostvars, groups))


@_model_errors
def redis_sentinel_plan(hostvars, groups):
    try:
        return plain(redis_plan.redis_sentinel_of(inventory_description(hostvars, groups)))
    except PlanInputError as error:
        raise inventory.inventory_wording(error)


@_model_errors
def budget_findings(data, severity=None, query=None):
    if severity not in (None, "error", "warning"):
        raise AnsibleFilterError("budget_findings: severity must be error or warning, got %r" % (severity,))
    return [item for item in _report(data, query)["findings"] if severity is None or item["severity"] == severity]


@_model_errors
def budget_table(data, query=None):
    return plan.render_table(_report(data, query))


@_model_errors
def budget_markdown(data, query=None):
    return plan.render_markdown(_report(data, query))


@_model_errors
def sidekiq_units(data, query=None):
    return plan.sidekiq_units(_report(data, query))


@_model_errors
def pgbouncer_sizing(local_clients, server_share=None, processes=1, databases=1, users=1, reserve_pool_size=0,
                     default_pool_size=AUTO, max_client_conn=AUTO, limit_nofile=AUTO, max_db_connections=0):
    return sizing.pgbouncer_sizing(
        parse_int(local_clients, "local_clients"),
        None if server_share is None else parse_int(server_share, "server_share"),
        parse_int(processes, "processes", 1), parse_int(databases, "databases", 1), parse_int(users, "users", 1),
        parse_int(reserve_pool_size, "reserve_pool_size"),
        default_pool_size if default_pool_size == AUTO else parse_int(default_pool_size, "default_pool_size", 1),
        max_client_conn if max_client_conn == AUTO else parse_int(max_client_conn, "max_client_conn", 1),
        limit_nofile if limit_nofile == AUTO else parse_int(limit_nofile, "limit_nofile", 1),
        parse_int(max_db_connections, "max_db_connections"))


@_model_errors
def postgresql_tuning(ram, cpus=None, connections=None, disk_type="ssd", database_size="mid_ram", version=15):
    return pgtune.postgresql_tuning(
        parse_size_kb(ram, "ram", None),
        None if cpus is None else parse_int(cpus, "cpus", 1),
        None if connections is None else parse_int(connections, "connections", 1),
        POSTGRESQL["disk_type"].parse(disk_type, "disk_type"),
        POSTGRESQL["database_size"].parse(database_size, "database_size"),
        parse_int(version, "version", 10))


@_model_errors
def redis_instance_settings(instances):
    items = REDIS["instances"].parse(plain(instances), "redis_instances")
    return redis_plan.redis_instance_settings(items, "redis_instances")


class FilterModule:
    def filters(self):
        return {
            "connection_budget": connection_budget,
            "cluster_from_inventory": cluster_from_inventory,
            "redis_sentinel_plan": redis_sentinel_plan,
            "budget_findings": budget_findings,
            "budget_table": budget_table,
            "budget_markdown": budget_markdown,
            "sidekiq_units": sidekiq_units,
            "pgbouncer_sizing": pgbouncer_sizing,
            "postgresql_tuning": postgresql_tuning,
            "redis_instance_settings": redis_instance_settings,
        }
