"""Every role documents each of its defaults in meta/argument_specs.yml, with the same default."""

from pathlib import Path

import pytest
import yaml

from ansible_collections.fediscale.mastodon.plugins.plugin_utils.inputs import role_variables

ROLES = sorted(path for path in (Path(__file__).resolve().parents[2] / "roles").iterdir() if path.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_defaults_mirror_argument_specs(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    # Defaults serve every entry point (main, and tasks_from ones such as the pgbackrest role's restore).
    options = {}
    for entry in yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"].values():
        options.update(entry.get("options") or {})
    assert set(defaults) <= set(options), "defaults without argument spec"
    for name, spec in options.items():
        assert name.startswith(role.name + "_"), "%s is not prefixed with the role name" % name
        if spec.get("required"):
            assert name not in defaults
        else:
            assert name in defaults, "%s has no default in defaults/main.yml" % name
            assert spec.get("default") == defaults[name], name


def test_role_options_are_known_to_the_plan():
    assert {"redis_password", "redis_bind_addresses", "redis_instances"} <= role_variables()
