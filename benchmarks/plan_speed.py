"""How much the plan costs over Ansible's own start-up, at 10, 100 and 1000 hosts.

For each size, generates an inventory (one database host, one Redis host, the
rest app hosts with web, streaming, sidekiq and pgbouncer), then runs, in
alternation, ``plan.yml``, two empty playbooks over the same inventory (one
on localhost like the plan: Ansible loading the inventory, nothing else; one
on all hosts) and a one-task playbook that reads one variable of every host
(the floor of anything that reads the inventory's variables). Reports medians
and the ratios, measured side by side in one run.

    .venv/bin/python benchmarks/plan_speed.py [--runs 5] [--sizes 10,100,1000]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
QUEUES = ["default", "push", "ingress", "mailers", "pull"]


def write_inventory(directory: Path, size: int) -> None:
    apps = ["app%04d" % index for index in range(size - 2)]
    groups = {
        "db": {"hosts": {"db1": None}},
        "redis": {"hosts": {"redis1": None}},
        "web": {"hosts": {name: None for name in apps}},
        "streaming": {"hosts": {name: None for name in apps}},
        "sidekiq": {"hosts": {name: None for name in apps}},
    }
    (directory / "host_vars").mkdir(parents=True)
    (directory / "group_vars").mkdir()
    (directory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": groups}}))
    (directory / "group_vars" / "all.yml").write_text(yaml.safe_dump({"mastodon_version": "4.5"}))
    (directory / "group_vars" / "web.yml").write_text(yaml.safe_dump({"web_concurrency": 2, "web_max_threads": 5}))
    (directory / "group_vars" / "sidekiq.yml").write_text(yaml.safe_dump({"sidekiq_queues": [
        {"queue": queue, "concurrency": 10} for queue in QUEUES]}))
    (directory / "host_vars" / "db1.yml").write_text(yaml.safe_dump({
        "postgresql_max_connections": max(200, 4 * size), "postgresql_ram": "256GB",
        "postgresql_acknowledge_max_connections_over_1000": True}))
    (directory / "host_vars" / "redis1.yml").write_text(yaml.safe_dump({"redis_instances": [
        {"name": "persistent", "purpose": "persistent", "port": 6379},
        {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "8GB"}]}))
    (directory / "host_vars" / (apps[0] + ".yml")).write_text(yaml.safe_dump({"sidekiq_queues": [
        {"queue": queue, "concurrency": 10} for queue in QUEUES + ["scheduler"]]}))


def run(playbook: str, inventory: Path, workdir: Path) -> float:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".rig"))
    start = time.perf_counter()
    result = subprocess.run([PLAYBOOK, playbook, "-i", str(inventory)], cwd=str(workdir), env=env,
                            capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit("%s failed:\n%s%s" % (playbook, result.stdout[-3000:], result.stderr[-3000:]))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        (workdir / "empty_localhost.yml").write_text(
            "- name: Empty\n  hosts: localhost\n  gather_facts: false\n  tasks: []\n")
        (workdir / "empty_all.yml").write_text("- name: Empty\n  hosts: all\n  gather_facts: false\n  tasks: []\n")
        # The floor of any plan that reads the inventory: Ansible computing every host's variables.
        (workdir / "read_hostvars.yml").write_text(
            "- name: Read every host's variables\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
            "    - name: Count\n      ansible.builtin.debug:\n"
            "        msg: \"{{ groups.all | map('extract', hostvars, 'mastodon_version') | list | length }}\"\n")
        for size in [int(size) for size in args.sizes.split(",")]:
            inventory = workdir / ("inventory%d" % size)
            write_inventory(inventory, size)
            times = {"plan": [], "empty_localhost": [], "empty_all": [], "read_hostvars": []}
            for _run in range(args.runs):  # alternate, so drift on a noisy machine hits all alike
                times["plan"].append(run("fediscale.mastodon.plan", inventory, workdir))
                times["empty_localhost"].append(run(str(workdir / "empty_localhost.yml"), inventory, workdir))
                times["empty_all"].append(run(str(workdir / "empty_all.yml"), inventory, workdir))
                times["read_hostvars"].append(run(str(workdir / "read_hostvars.yml"), inventory, workdir))
            medians = {name: statistics.median(values) for name, values in times.items()}
            rows.append((size, medians))
            print("%5d hosts: %s" % (size, ", ".join("%s %.2fs" % item for item in medians.items())), flush=True)
    print()
    print("| hosts | plan.yml | empty, localhost | empty, all hosts | read every host's vars "
          "| plan / empty (localhost) | plan / empty (all) | plan / read vars |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, medians in rows:
        print("| %d | %.2f s | %.2f s | %.2f s | %.2f s | %.2f | %.2f | %.2f |" % (
            size, medians["plan"], medians["empty_localhost"], medians["empty_all"], medians["read_hostvars"],
            medians["plan"] / medians["empty_localhost"], medians["plan"] / medians["empty_all"],
            medians["plan"] / medians["read_hostvars"]))


if __name__ == "__main__":
    main()
