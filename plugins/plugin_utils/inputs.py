# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side input handling shared by the filters and the connection_plan action."""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.fediscale.mastodon.plugins.module_utils import inventory
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError
from ansible_collections.fediscale.mastodon.plugins.plugin_utils.role_options import ROLE_OPTIONS

try:
    import jmespath
    HAS_JMESPATH = True
except ImportError:
    HAS_JMESPATH = False


def plain(data):
    """Ansible's lazy and tagged containers as plain dicts and lists, for the model."""
    if isinstance(data, dict) or hasattr(data, "keys"):
        return {key: plain(data[key]) for key in data.keys()}
    if isinstance(data, (list, tuple)):
        return [plain(item) for item in data]
    if isinstance(data, str):
        return str(data)
    return data


def select(data, query):
    """The part of ``data`` a JMESPath ``query`` selects (all of it without a query)."""
    if query is None:
        return data
    if not HAS_JMESPATH:
        raise AnsibleError("the query option needs the jmespath Python library on the controller")
    try:
        selected = jmespath.search(query, data)
    except jmespath.exceptions.JMESPathError as error:
        raise PlanInputError("query %r" % query, "is not valid JMESPath: %s" % to_native(error))
    if selected is None:
        raise PlanInputError("query %r" % query, "selects nothing from the input")
    return selected


def role_variables():
    """Option names of the collection's roles (role_options.py, kept in step with their argument specs)."""
    return set(ROLE_OPTIONS)


# Variables whose usual value is a template over facts, and how to give them in a play without facts.
FACT_HINTS = {"mastodon_address": "set it to the host's address (e.g. 10.0.0.21) or a template over inventory "
                                  "variables such as {{ ansible_host }}"}


def _entity_variables(loader, sources, entity, cache):
    """Names an inventory host or group sets itself: in the inventory file and in host_vars/group_vars."""
    key = (type(entity).__name__, entity.name)
    if key not in cache:
        from ansible.vars.plugins import get_vars_from_inventory_sources
        names = set(entity.get_vars())
        # host_group_vars runs at the task stage by default, other vars plugins may run at either.
        for stage in ("inventory", "task"):
            names.update(get_vars_from_inventory_sources(loader, sources, [entity], stage))
        cache[key] = names
    return cache[key]


def _origins(hostvars, hosts):
    """Per host and relevant variable: ``host``, ``group NAME`` or ``all`` (see module_utils/inventory.py).

    Needs Ansible's HostVars (the ``hostvars`` of a play); for anything else
    the origins stay unknown and every variable counts as the host's own.
    """
    manager = getattr(hostvars, "_inventory", None)
    loader = getattr(hostvars, "_loader", None)
    if manager is None or loader is None:
        return {}
    sources = getattr(manager, "_sources", [])
    cache = {}
    result = {}
    for name, variables in hosts.items():
        host = manager.get_host(name)
        if host is None:
            continue
        own = _entity_variables(loader, sources, host, cache)
        groups = sorted((group for group in host.get_groups() if group.name != "all"),
                        key=lambda group: (-group.depth, group.name))
        places = {}
        for variable in variables:
            if variable in own:
                places[variable] = inventory.OWN
                continue
            group = next((group for group in groups
                          if variable in _entity_variables(loader, sources, group, cache)), None)
            places[variable] = "group %s" % group.name if group is not None else inventory.ALL
        result[name] = places
    return result


def _template_left(value):
    """The first string in ``value`` that still holds a Jinja expression, or None."""
    if isinstance(value, str):
        return value if "{{" in value or "{%" in value else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((found for found in (_template_left(item) for item in items) if found), None)


def inventory_description(hostvars, groups):
    """The cluster description of a play's inventory, read as the plan reads it.

    Only the variables the plan reads or judges are templated, one at a time,
    so that another role's variable (or a fact the plan play does not gather)
    never breaks the plan, and one that the plan needs but cannot resolve is
    named.
    """
    hosts = {}
    for host in hostvars:
        variables = hostvars[host]
        values = {}
        for name in variables:
            if not inventory.is_relevant(name):
                continue
            try:
                values[name] = plain(variables[name])
                # ansible-core before 2.19 leaves a template over an undefined variable as it is.
                unresolved = _template_left(values[name])
                if unresolved:
                    raise AnsibleError("%s stays a template: a variable in it is undefined" % unresolved)
            except AnsibleError as error:
                raise PlanInputError(
                    "host %s, variable %s" % (host, name),
                    "its template cannot be resolved where the plan runs: %s" % to_native(error).splitlines()[0],
                    FACT_HINTS.get(name, "the plan play gathers no facts: give a value, or a template over "
                                         "inventory variables only"))
        hosts[str(host)] = values
    return inventory.description_from_inventory(hosts, plain(groups), role_variables(), _origins(hostvars, hosts))
