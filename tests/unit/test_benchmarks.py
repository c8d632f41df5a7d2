"""The benchmarks' own logic that decides what they measure."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "rerun_speed", Path(__file__).resolve().parents[2] / "benchmarks" / "rerun_speed.py")
rerun_speed = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(rerun_speed)

OUTPUT = """
PLAY [Plan the Mastodon connection budget] *************************************

TASK [fediscale.mastodon.plan : Make the plan, unless an earlier play did] ****
included: /collection/roles/plan/tasks/plan.yml for db1, web1

TASK [fediscale.mastodon.plan : Compute the budget (once, on the controller)] ***
ok: [db1]

PLAY [Connection pooler (pgbouncer)] *******************************************

TASK [fediscale.mastodon.pgbouncer : Read the SCRAM secret from the primary] ***
ok: [web1 -> db1]

TASK [fediscale.mastodon.pgbouncer : Check each process] ***********************
included: /collection/roles/pgbouncer/tasks/process.yml for web1, web2 => (item=pgbouncer-1)
included: /collection/roles/pgbouncer/tasks/process.yml for web1, web2 => (item=pgbouncer-2)

TASK [fediscale.mastodon.pgbouncer : Write each process's configuration] *******
ok: [web1] => (item=pgbouncer-1)
skipping: [web2] => (item=pgbouncer-1)
ok: [web1] => (item=pgbouncer-2)
skipping: [web2]

TASK [fediscale.mastodon.pgbouncer : Restart for files not read yet] ***********
skipping: [web1]
skipping: [web2]

TASK [fediscale.mastodon.pgbouncer : Let systemd read the unit] ****************

TASK [fediscale.mastodon.pgbouncer : Reload for a new CA] **********************
skipping: [web2]

PLAY RECAP *********************************************************************
db1                        : ok=2    changed=0    unreachable=0    failed=0    skipped=0
"""


def test_the_skeleton_keeps_each_plays_tasks_and_the_hosts_that_ran_them():
    skeleton = rerun_speed.skeleton_of(OUTPUT, "ansible.builtin.ping")
    assert [(play["name"], play["hosts"]) for play in skeleton] == [
        ("Plan the Mastodon connection budget", "db1,web1"), ("Connection pooler (pgbouncer)", "web1,web2")]
    # A task that one host of several answered runs once.
    assert skeleton[0]["tasks"] == [
        {"name": "fediscale.mastodon.plan : Make the plan, unless an earlier play did",
         "ansible.builtin.debug": {"msg": "skeleton"}, "when": 'inventory_hostname in ["db1", "web1"]'},
        {"name": "fediscale.mastodon.plan : Compute the budget (once, on the controller)",
         "ansible.builtin.ping": {}, "run_once": True, "when": True}]
    # A delegated task counts for the host it ran for; a loop is one call; a host that skipped skips; a task no
    # host answered (a meta task) is left out.
    assert [(task.get("run_once", False), task["when"]) for task in skeleton[1]["tasks"]] == [
        (True, True), (False, 'inventory_hostname in ["web1", "web2"]'), (False, 'inventory_hostname in ["web1"]'),
        (False, "inventory_hostname in []"), (True, False)]


def test_the_skeleton_without_host_contact_debugs_instead():
    skeleton = rerun_speed.skeleton_of(OUTPUT, "ansible.builtin.debug")
    actions = [next(key for key in task if key.startswith("ansible.")) for play in skeleton for task in play["tasks"]]
    assert actions == ["ansible.builtin.debug"] * 7
