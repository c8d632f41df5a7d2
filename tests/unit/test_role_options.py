"""plugin_utils/role_options.py lists exactly the options of the roles' argument specs."""

from pathlib import Path

import yaml

from ansible_collections.fediscale.mastodon.plugins.plugin_utils.role_options import ROLE_OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def test_role_options_are_the_argument_specs_options():
    names = set()
    for path in ROOT.glob("roles/*/meta/argument_specs.yml"):
        for entry in (yaml.safe_load(path.read_text(encoding="utf-8"))["argument_specs"] or {}).values():
            names.update((entry.get("options") or {}).keys())
    listed = "".join('    "%s",\n' % name for name in sorted(names))
    assert set(ROLE_OPTIONS) == names, "plugins/plugin_utils/role_options.py should list:\n" + listed
