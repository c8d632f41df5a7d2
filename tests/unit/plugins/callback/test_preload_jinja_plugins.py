"""The callback loads ansible-core's Jinja filters and tests in the process that forks the workers."""

import subprocess
import sys

from ....conftest import COLLECTIONS_ROOT

# A fresh interpreter as ansible-playbook's main process: the callback's playbook start (or not), then a fork,
# as Ansible forks a worker, whose first lookup of a filter and a test reports how many modules it had to load.
# Printed: those modules, and the names preload() answers for (cheap once the callback has run).
MAIN_PROCESS = """
import os, sys
from ansible.plugins.loader import filter_loader, init_plugin_loader, test_loader
init_plugin_loader([sys.argv[1]])
from ansible_collections.fediscale.mastodon.plugins.callback import preload_jinja_plugins
if sys.argv[2] == "preload":
    preload_jinja_plugins.CallbackModule().v2_playbook_on_start(None)
reading, writing = os.pipe()
if os.fork() == 0:
    before = set(sys.modules)
    assert filter_loader.get("ansible.builtin.bool") is not None
    assert test_loader.get("ansible.builtin.changed") is not None
    os.write(writing, str(len(set(sys.modules) - before)).encode())
    os._exit(0)
os.wait()
print(os.read(reading, 100).decode(), preload_jinja_plugins.preload() if sys.argv[2] == "preload" else 0)
"""


def main_process(way: str):
    result = subprocess.run([sys.executable, "-c", MAIN_PROCESS, str(COLLECTIONS_ROOT), way],
                            capture_output=True, text=True, check=True)
    loaded_by_the_worker, names = result.stdout.split()
    return int(loaded_by_the_worker), int(names)


def test_without_the_callback_a_worker_loads_the_plugins_itself():
    assert main_process("none")[0] > 5


def test_with_the_callback_a_worker_inherits_them():
    loaded_by_the_worker, names = main_process("preload")
    assert loaded_by_the_worker == 0
    # bool, default, changed, defined... each under its short and its ansible.builtin name.
    assert names > 100
