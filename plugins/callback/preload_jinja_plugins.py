# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load Ansible's own Jinja filters and tests once, in the controller's main process, before any worker forks."""

from __future__ import annotations

DOCUMENTATION = r"""
name: preload_jinja_plugins
type: aggregate
short_description: Load Ansible's Jinja filters and tests once per run instead of once per task and host
description:
  - Ansible forks a worker process for every host of every task. A worker whose conditions or arguments name a
    Jinja filter or test (C(bool), C(default), C(is defined), ...) loads every filter and test plugin of
    ansible-core first, from their files, and throws them away when it exits.
  - This callback loads them in the main process when the playbook starts, so every worker inherits them with
    the fork. It writes no output and changes nothing a task does.
  - In a C(site.yml) run that changes nothing on the six-host demo cluster, the workers' share of loading these
    plugins falls from about 13 % of their time to none (C(benchmarks/worker_profile.py), C(benchmarks/README.md)).
  - An opt-in, as mitogen is; enable it in C(ansible.cfg) with C(callbacks_enabled).
version_added: 0.1.0
requirements:
  - enabled in C(callbacks_enabled) (C([defaults]) in C(ansible.cfg)) or C(ANSIBLE_CALLBACKS_ENABLED)
notes:
  - Collections' own filters and tests are still loaded by each worker that uses them.
"""

EXAMPLES = r"""
# ansible.cfg
# [defaults]
# callbacks_enabled = fediscale.mastodon.preload_jinja_plugins
"""

from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import filter_loader, test_loader


def preload() -> int:
    """Load every Jinja filter and test that ansible-core itself ships; return how many names they answer to."""
    return sum(len(list(loader.all())) for loader in (filter_loader, test_loader))


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fediscale.mastodon.preload_jinja_plugins"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        preload()
