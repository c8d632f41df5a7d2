# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build a cluster description from an Ansible inventory's groups and host variables.

A host brings a section for each of the collection's groups it is in (``db`` ->
``postgresql``, ``web`` -> ``web``, ...); the section's keys are its host
variables with the section prefix (``web_concurrency`` -> ``concurrency``).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Dict, Iterable, List, Mapping

from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    APP_SECTIONS, CLUSTER, GROUPS, HOST_SECTIONS, PlanInputError,
)

PREFIXES = tuple(sorted({section.prefix for section in HOST_SECTIONS.values()}))
CLUSTER_VARIABLES = {"mastodon_" + key: key for key in CLUSTER}
KNOWN_VARIABLES = sorted(
    list(CLUSTER_VARIABLES)
    + [section.prefix + key for section in HOST_SECTIONS.values() for key in section.fields]
)


def _check_typos(host: str, variables: Iterable[str], role_variables: Iterable[str] = ()) -> None:
    """A prefixed variable nobody knows but that nearly matches one the plan reads is a typo.

    ``role_variables`` are the collection's role options (their argument
    specs), which the plan does not read; variables that match nothing
    closely may belong to other roles and are left alone.
    """
    known = set(KNOWN_VARIABLES) | set(role_variables)
    for name in variables:
        if name.startswith(PREFIXES) and name not in known:
            close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1, cutoff=0.85)
            if close:
                raise PlanInputError("host %s, variable %s" % (host, name), "unknown variable",
                                     "did you mean %s?" % close[0])


def description_from_inventory(hostvars: Mapping[str, Mapping[str, Any]], groups: Mapping[str, List[str]],
                               role_variables: Iterable[str] = ()) -> Dict[str, Any]:
    """The cluster description of every host in the collection's groups."""
    members: Dict[str, List[str]] = {}
    for group in GROUPS:
        for host in groups.get(group, []) or []:
            members.setdefault(host, []).append(group)
    for host in groups.get("ungrouped", []) or []:
        raise PlanInputError("host %s" % host, "is in none of the groups %s" % ", ".join(GROUPS),
                             "add it to the group of the services it runs, or remove it from the inventory")
    if not members:
        raise PlanInputError("inventory", "has no host in any of the groups %s" % ", ".join(GROUPS),
                             "see inventories/example for the expected layout")

    hosts: Dict[str, Dict[str, Any]] = {}
    cluster: Dict[str, Any] = {}
    cluster_source: Dict[str, str] = {}
    for host in sorted(members):
        variables = hostvars[host]
        names = [name for name in variables if isinstance(name, str) and name.startswith(PREFIXES)]
        _check_typos(host, names, role_variables)
        wanted_sections = {"mastodon"}
        for section, spec in HOST_SECTIONS.items():
            if spec.group in members[host]:
                wanted_sections.add(section)
        if wanted_sections & set(APP_SECTIONS):
            wanted_sections.add("pgbouncer")
        sections: Dict[str, Dict[str, Any]] = {section: {} for section in wanted_sections}
        for name in names:
            if name in CLUSTER_VARIABLES:
                key = CLUSTER_VARIABLES[name]
                value = variables[name]
                if key in cluster and cluster[key] != value:
                    raise PlanInputError(
                        "variable %s" % name,
                        "differs between hosts %s (%r) and %s (%r)" % (cluster_source[key], cluster[key],
                                                                       host, value),
                        "it describes the whole cluster: set it once, in group_vars/all")
                cluster[key] = value
                cluster_source[key] = host
                continue
            for section in wanted_sections:
                prefix = HOST_SECTIONS[section].prefix
                if name.startswith(prefix) and name[len(prefix):] in HOST_SECTIONS[section].fields:
                    sections[section][name[len(prefix):]] = variables[name]
        hosts[host] = sections
    return {"mastodon": cluster, "hosts": hosts}


def inventory_wording(error: PlanInputError) -> PlanInputError:
    """The same error, naming the inventory variable rather than the description path.

    ``hosts.web1.web.concurrency`` becomes ``host web1, variable web_concurrency``;
    ``mastodon.direct_connections`` becomes ``variable mastodon_direct_connections``.
    """
    match = re.match(r"hosts\.([^.]+)\.([a-z]+)\.([a-z_]+)(.*)$", error.where)
    if match and match.group(2) in HOST_SECTIONS:
        host, section, key, rest = match.groups()
        where = "host %s, variable %s%s%s" % (host, HOST_SECTIONS[section].prefix, key, rest)
        return PlanInputError(where, error.problem, error.hint)
    match = re.match(r"mastodon\.([a-z_]+)(.*)$", error.where)
    if match:
        return PlanInputError("variable mastodon_%s%s" % match.groups(), error.problem, error.hint)
    return error
