"""README's inventory variables against schema.py: every plan variable documented with its real default, and no
documented variable the code lacks."""

import re
from pathlib import Path

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import inventory
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    AUTO, CLUSTER, HOST_SECTIONS, MISSING, format_size_kb)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("### Inventory layout", 1)[1].split("\n### How connections are counted", 1)[0]
NAME = re.compile(r"`((?:%s)[a-z0-9_]+)`" % "|".join(re.escape(prefix) for prefix in inventory.PREFIXES))
# Not for the inventory: filled in by site.yml's plan play.
UNDOCUMENTED = set(inventory.SET_BY_THE_PLAY)
# Lists of records, documented by their fields (each with its default); empty by default.
LISTS = {"redis_instances", "sidekiq_queues"}
# Not variables: wrong names README shows as examples of what the plan refuses, and a database name.
NOT_VARIABLES = {"web_concurency", "postgres_max_connections", "mastodon_production"}


def role_options():
    """Options of the roles' argument specs: README shows some beside the plan's (redis_bind_addresses)."""
    names = set()
    for spec in ROOT.glob("roles/*/meta/argument_specs.yml"):
        names.update(re.findall(r"^      ([a-z][a-z0-9_]+):$", spec.read_text(encoding="utf-8"), re.M))
    return names


def variables():
    """Every plan variable with its schema default."""
    found = {"mastodon_" + key: field.default for key, field in CLUSTER.items()}
    for section in HOST_SECTIONS.values():
        found.update({section.prefix + key: field.default for key, field in section.fields.items()})
    return found


# Sizes in kB in schema.py, written as PostgreSQL and nginx write them in README.
SIZES = {"nginx_media_cache_max_size"}


def shown(default, name=""):
    if name in SIZES:
        return format_size_kb(default)
    if default is AUTO:
        return "auto"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, dict)) and not default:
        return "[]" if isinstance(default, list) else "{}"
    return str(default)


def documented_default(name):
    """The backticked values in README's row or parenthesis for ``name``."""
    row = re.search(r"^\| `%s` \| ([^|]*) \|" % re.escape(name), SECTION, re.M)
    if row:
        text = row.group(1)
    else:
        prose = re.search(r"`%s`\s+\(((?:[^()]|\([^()]*\))*)\)" % re.escape(name), SECTION)
        text = prose.group(1) if prose else ""
    return [value.strip('"') for value in re.findall(r"`([^`]*)`", text)], text


def test_every_plan_variable_is_documented():
    documented = set(NAME.findall(SECTION))
    missing = sorted(set(variables()) - UNDOCUMENTED - documented)
    assert missing == [], "README's Inventory layout does not document %s" % missing


def test_no_documented_variable_the_code_lacks():
    known = set(inventory.KNOWN_VARIABLES) | role_options() | NOT_VARIABLES
    assert sorted(set(NAME.findall(SECTION)) - known) == []


@pytest.mark.parametrize("name", sorted(name for name, default in variables().items()
                                        if default not in (None, MISSING) and name not in UNDOCUMENTED | LISTS))
def test_each_documented_default_is_the_schemas(name):
    values, text = documented_default(name)
    assert shown(variables()[name], name) in values, "%s: README says %r, schema.py has %r" % (
        name, text, variables()[name])


@pytest.mark.parametrize("name", sorted(name for name, default in variables().items() if default is MISSING))
def test_required_variables_say_so(name):
    assert "**required**" in documented_default(name)[1], name
