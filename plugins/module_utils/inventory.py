# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build a cluster description from an Ansible inventory's groups and host variables.

A host brings a section for each of the collection's groups it is in (``db`` ->
``postgresql``, ``web`` -> ``web``, ...); the section's keys are its host
variables with the section prefix (``web_concurrency`` -> ``concurrency``).

Where a variable was set matters, because other roles share the inventory:
``origins`` says, per host and variable, ``host`` (its host_vars), ``group
NAME`` (a group's vars other than all) or ``all``. A variable the plan does not
know but that looks like one of its own is an error where it cannot belong to
anyone else, and a warning (``inventory-variable-unknown``) where it may.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    APP_SECTIONS, CLUSTER, GROUPS, HOST_SECTIONS, SIZING_VARIABLES, PlanInputError, string_list,
)

PREFIXES = tuple(sorted({section.prefix for section in HOST_SECTIONS.values()}))
CLUSTER_VARIABLES = {"mastodon_" + key: key for key in CLUSTER}
# Names other roles in the inventory read although they carry one of the plan's prefixes.
FOREIGN_VARIABLES = "mastodon_foreign_variables"
# Read by the collection's playbooks, not by the plan.
PLAYBOOK_VARIABLES = ("mastodon_plan_report_dir",)
KNOWN_VARIABLES = sorted(
    list(CLUSTER_VARIABLES) + [FOREIGN_VARIABLES] + list(PLAYBOOK_VARIABLES)
    + [section.prefix + key for section in HOST_SECTIONS.values() for key in section.fields]
)
KNOWN = frozenset(KNOWN_VARIABLES)
# Filled in by site.yml's plan play from the running server, never by the inventory.
SET_BY_THE_PLAY = {"postgresql_live_limits": "site.yml's plan play reads them from the running server "
                                             "(postgresql_limits_from: live)",
                   "mastodon_running_units": "site.yml's plan play reads them from the host's systemd",
                   "mastodon_running_env_production": "site.yml's plan play reads it from the host's .env.production",
                   "mastodon_media_filesystem": "site.yml's plan play reads it from the host's mounts (to declare the "
                                                "type yourself, set mastodon_media_path_fs)"}
# Mastodon's own sizing names, written as inventory variables: Mastodon never sees them there.
MASTODON_NAMES = dict(SIZING_VARIABLES, STREAMING_CLUSTER_NUM="streaming_ports (one instance per port)")
# Keys whose right name is not a near miss of the wrong one.
ALIASES = {"sidekiq_concurrency": "sidekiq_queues[].concurrency", "sidekiq_db_pool": "sidekiq_queues[].db_pool",
           "sidekiq_instances": "sidekiq_queues[].instances", "web_threads": "web_max_threads",
           "web_workers": "web_concurrency", "streaming_port": "streaming_ports",
           "redis_maxmemory": "redis_instances[].maxmemory", "pgbouncer_pool_size": "pgbouncer_default_pool_size"}
OWN = "host"
ALL = "all"


def _section_of(name: str) -> Optional[str]:
    """The host section a known variable belongs to (None for cluster-wide ones)."""
    if name in CLUSTER_VARIABLES or name == FOREIGN_VARIABLES or name in PLAYBOOK_VARIABLES:
        return None
    for section, spec in HOST_SECTIONS.items():
        if name.startswith(spec.prefix) and name[len(spec.prefix):] in spec.fields:
            return section
    raise KeyError(name)


def lookalike(name: str, known: Iterable[str] = ()) -> Optional[Tuple[str, str]]:
    """(family, suggestion) when ``name`` looks like one of the plan's variables but is not one.

    family is the prefix it belongs to (``mastodon_``, ``redis_``, ...): a
    near miss of a known name, one of Mastodon's environment names, or any
    name under one of the plan's prefixes.
    """
    if name in MASTODON_NAMES:
        return "mastodon_", "%s (Mastodon reads %s from its environment, not the inventory)" % (
            MASTODON_NAMES[name], name)
    known = set(KNOWN_VARIABLES) | set(known)
    normal = name.lower().replace("-", "_")
    if normal != name and normal in known:
        return _family(normal), normal
    if normal in ALIASES:
        return _family(normal), ALIASES[normal]
    head, tail = normal.split("_", 1) if "_" in normal else (normal, "")
    family = next((prefix for prefix in PREFIXES if normal.startswith(prefix)), None)
    if family is None:
        close = difflib.get_close_matches(head + "_", PREFIXES, n=1, cutoff=0.75)
        if not close or not tail:
            return None
        family = close[0]
        # A near-miss prefix is ours only when the rest is ours too (postgres_exporter_* is not).
        match = difflib.get_close_matches(family + tail, [item for item in known if item.startswith(family)],
                                          n=1, cutoff=0.8)
        return (family, match[0]) if match else None
    match = difflib.get_close_matches(normal, [item for item in known if item.startswith(family)], n=1, cutoff=0.6)
    if match:
        return family, match[0]
    return family, "one of %s" % ", ".join(sorted(item for item in KNOWN_VARIABLES if item.startswith(family)))


def _family(name: str) -> str:
    return next((prefix for prefix in PREFIXES if name.startswith(prefix)), "mastodon_")


def is_relevant(name: Any) -> bool:
    """Whether the plan reads or judges a variable: only these are templated by the plugins."""
    return isinstance(name, str) and _is_relevant_name(name)


@functools.lru_cache(maxsize=4096)
def _is_relevant_name(name: str) -> bool:
    # Every host repeats the same names (Ansible's own among them): judge each once.
    return name.startswith(PREFIXES) or name in MASTODON_NAMES or lookalike(name) is not None


def _groups_of_family(family: str) -> Tuple[str, ...]:
    """The inventory groups whose hosts the variables under ``family`` are meant for."""
    section = next(section for section, spec in HOST_SECTIONS.items() if spec.prefix == family)
    if section == "pgbouncer":
        return tuple(HOST_SECTIONS[name].group for name in APP_SECTIONS)
    return (HOST_SECTIONS[section].group,) if HOST_SECTIONS[section].group else GROUPS


def _origin_text(origin: str) -> str:
    if origin == OWN:
        return "its host_vars"
    if origin == ALL:
        return "group all"
    return origin


def description_from_inventory(hostvars: Mapping[str, Mapping[str, Any]], groups: Mapping[str, List[str]],
                               role_variables: Iterable[str] = (),
                               origins: Optional[Mapping[str, Mapping[str, str]]] = None) -> Dict[str, Any]:
    """The cluster description of every host in the collection's groups.

    ``hostvars`` need only hold the variables ``is_relevant`` picks.
    ``origins`` (host -> variable -> where set); a variable it does not
    place counts as the host's own, the strict reading.
    """
    role_variables = set(role_variables)
    members: Dict[str, List[str]] = {}
    for group in GROUPS:
        for host in groups.get(group, []) or []:
            members.setdefault(host, []).append(group)
    origins = origins or {}
    all_hosts = sorted(set(groups.get("all", []) or []) | set(hostvars))

    hosts: Dict[str, Dict[str, Any]] = {}
    cluster: Dict[str, Any] = {}
    cluster_source: Dict[str, str] = {}
    unknown: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for host in all_hosts:
        variables = hostvars.get(host, {})
        host_origins = origins.get(host, {})
        foreign = set(string_list(variables.get(FOREIGN_VARIABLES) or [], "host %s, variable %s"
                                  % (host, FOREIGN_VARIABLES), 10000))
        in_groups = members.get(host, [])
        wanted_sections = {"mastodon"} if in_groups else set()
        for section, spec in HOST_SECTIONS.items():
            if spec.group in in_groups:
                wanted_sections.add(section)
        if wanted_sections & set(APP_SECTIONS):
            wanted_sections.add("pgbouncer")
        sections: Dict[str, Dict[str, Any]] = {section: {} for section in wanted_sections}
        for name in sorted(name for name in variables if is_relevant(name)):
            origin = host_origins.get(name, OWN)
            where = "host %s, variable %s" % (host, name)
            if name in SET_BY_THE_PLAY:
                raise PlanInputError(where, "is not an inventory variable: %s" % SET_BY_THE_PLAY[name],
                                     "remove it")
            if name not in KNOWN:
                if name not in role_variables and name not in foreign:
                    _judge_unknown(host, name, origin, in_groups, role_variables, unknown)
                continue
            if name == FOREIGN_VARIABLES or name in PLAYBOOK_VARIABLES:
                continue
            section = _section_of(name)
            if not in_groups:
                if origin != ALL:
                    raise PlanInputError(where, "%s is in none of the groups %s, so the plan would drop it and "
                                         "this setting from %s" % (host, ", ".join(GROUPS), _origin_text(origin)),
                                         "add %s to the group of the services it runs, or remove %s"
                                         % (host, name))
                continue
            if section is None:
                value = variables[name]
                key = CLUSTER_VARIABLES[name]
                if key in cluster and cluster[key] != value:
                    raise PlanInputError(
                        where, "differs between hosts %s (%r) and %s (%r)" % (
                            cluster_source[key], cluster[key], host, value),
                        "it describes the whole cluster: set it once, in group_vars/all")
                cluster[key] = value
                cluster_source[key] = host
            elif section in sections:
                sections[section][name[len(HOST_SECTIONS[section].prefix):]] = variables[name]
            elif origin != ALL:
                wanted = _groups_of_family(HOST_SECTIONS[section].prefix)
                raise PlanInputError(where, "is read only on hosts in group %s, and %s is not (set in %s)"
                                     % (" or ".join(wanted), host, _origin_text(origin)),
                                     "move it to the host_vars or group_vars of the %s hosts, or add %s to %s"
                                     % (wanted[0], host, wanted[0]))
        if in_groups:
            hosts[host] = sections
    if not hosts:
        raise PlanInputError("group all, variable groups", "no host is in any of the groups %s" % ", ".join(GROUPS),
                             "see inventories/example for the expected layout")
    description: Dict[str, Any] = {"mastodon": cluster, "hosts": hosts}
    if unknown:
        description["inventory"] = {"unknown_variables": [unknown[key] for key in sorted(unknown)]}
    return description


def _judge_unknown(host: str, name: str, origin: str, in_groups: List[str], role_variables: Iterable[str],
                   unknown: Dict[Tuple[str, str], Dict[str, Any]]) -> None:
    """A variable the plan does not know: an error where only the plan can mean it, else a warning."""
    found = lookalike(name, role_variables)
    if found is None:
        return
    family, suggestion = found
    if in_groups:
        meant_here = family == "mastodon_" or (origin != ALL and set(in_groups) & set(_groups_of_family(family)))
        if meant_here:
            raise PlanInputError("host %s, variable %s" % (host, name),
                                 "unknown variable, set in %s" % _origin_text(origin),
                                 "did you mean %s? If another role reads it, list it in %s"
                                 % (suggestion, FOREIGN_VARIABLES))
    entry = unknown.setdefault((name, origin), {"variable": name, "origin": _origin_text(origin), "hosts": [],
                                                "suggestion": suggestion})
    entry["hosts"].append(host)


def inventory_wording(error: PlanInputError) -> PlanInputError:
    """The same error, naming the inventory variable rather than the description path.

    ``host web1, web.concurrency`` becomes ``host web1, variable web_concurrency``;
    ``mastodon.direct_connections`` becomes ``group all, variable mastodon_direct_connections``.
    """
    match = re.match(r"((?:host|group) [^,\s]+), ([a-z]+)\.([a-z_]+)(.*)$", error.where, re.S)
    if match and match.group(2) in HOST_SECTIONS:
        place, section, key, rest = match.groups()
        where = "%s, variable %s%s%s" % (place, HOST_SECTIONS[section].prefix, key, rest)
        return PlanInputError(where, error.problem, error.hint)
    match = re.match(r"mastodon\.([a-z_]+)(.*)$", error.where, re.S)
    if match:
        return PlanInputError("group all, variable mastodon_%s%s" % match.groups(), error.problem, error.hint)
    return error
