# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side input handling shared by the filters and the connection_plan action."""

from __future__ import annotations

import glob
import os

import yaml

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError

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
    """Option names of the collection's roles, from their meta/argument_specs.yml."""
    names = set()
    roles = os.path.join(os.path.dirname(__file__), "..", "..", "roles")
    for path in glob.glob(os.path.join(roles, "*", "meta", "argument_specs.yml")):
        with open(path, encoding="utf-8") as stream:
            specs = yaml.safe_load(stream) or {}
        for entry in (specs.get("argument_specs") or {}).values():
            names.update((entry.get("options") or {}).keys())
    return names
