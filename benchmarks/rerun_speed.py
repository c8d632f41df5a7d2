"""A site.yml run that changes nothing, against gathering facts on the same hosts.

Runs on the cluster ``make demo`` leaves up, through the scenario's own inventory and ansible.cfg (molecule's
ephemeral directory), with ansible-playbook directly (molecule's own start-up is not the collection's). Arms,
alternating inside each round so that all of them see the same machine:

- ``facts``: a play over every host that only gathers facts (``benchmarks/facts_only.yml``);
- ``site``: ``fediscale.mastodon.site`` on a converged cluster (nothing changes; the run fails otherwise);
- ``site --tags sidekiq``: the same, one tag;
- with ``--before REV``, both site arms again with the whole collection as it was at REV (a git worktree), so
  that a change to the roles or the playbook is measured side by side;
- with ``--mitogen``, both site arms again under mitogen's linear strategy (the operator's opt-in, README
  "Faster runs"), and ``facts`` under it too;
- with ``--mitogen --all-collections``, the mitogen site arms again with every collection of the venv's ansible
  package visible (Ansible scanning site-packages, as on a controller with that package installed); the other
  arms see only the collections ``tools/rig collection`` links into ``.rig``;
- with ``--preload``, the site arms again with the ``fediscale.mastodon.preload_jinja_plugins`` callback enabled
  (README "Faster runs"); no other arm enables a callback (the arms read the scenario's ansible.cfg without its
  ``callbacks_enabled``);
- with ``--skeleton``, beside the last whole-run site arm (under mitogen and the callback when asked), two
  playbooks with site.yml's structure and none of its work, made from the output of one run of site.yml: the same
  plays, tasks and hosts, and each host that ran a task calls ``ansible.builtin.ping`` ("skeleton, a ping per
  task": a task that contacts its host and does nothing there) or ``ansible.builtin.debug`` ("skeleton, no host
  contact"); a host that skipped it skips it, a task that one host of several answered runs once, a task no host
  answered (``meta``) is left out, an include is a ``debug`` on the hosts that included it, and a loop is one
  call: what a no-op run of this many tasks costs before any of them checks anything.

Each arm runs with each of ``--forks`` (Ansible's default is 5) for ``--rounds`` rounds; the table has the
medians and the ratios to ``facts`` at the same forks. ``--profile`` runs site.yml once more with
ansible.posix.profile_tasks and prints the slowest tasks.

    make demo
    .venv/bin/python benchmarks/rerun_speed.py [--rounds 3] [--forks 5,10] [--before REV] [--mitogen]
        [--all-collections] [--preload] [--skeleton] [--profile] [--only TEXT]
"""

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FACTS = [str(ROOT / "benchmarks" / "facts_only.yml")]
SITE = ["fediscale.mastodon.site"]
SIDEKIQ = ["fediscale.mastodon.site", "--tags", "sidekiq"]
PRELOAD = {"ANSIBLE_CALLBACKS_ENABLED": "fediscale.mastodon.preload_jinja_plugins"}


def ephemeral() -> Path:
    found = sorted(glob.glob(os.path.expanduser("~/.ansible/tmp/molecule.*.cluster")), key=os.path.getmtime)
    if not found or not Path(found[-1], "inventory").exists():
        raise SystemExit("no demo cluster: run make demo first")
    return Path(found[-1])


def config_without_callbacks(directory: Path) -> Path:
    """The scenario's ansible.cfg less callbacks_enabled: an arm enables a callback only by its environment."""
    plain = directory / "ansible-without-callbacks.cfg"
    lines = (directory / "ansible.cfg").read_text().splitlines(keepends=True)
    plain.write_text("".join(line for line in lines if not line.startswith("callbacks_enabled")))
    return plain


class Arm:
    """One way of running a playbook: the collection it loads, the inventory and the strategy."""

    def __init__(self, command, collections=None, inventory=None, environment=None):
        self.command = command
        self.collections = collections or ROOT / ".rig"
        self.inventory = inventory
        self.environment = environment or {}
        # What runs the playbook (worker_profile.py runs it under cProfile).
        self.executable = [str(BIN / "ansible-playbook")]

    def run(self, forks: int, extra_env=None) -> subprocess.CompletedProcess:
        directory = ephemeral()
        env = dict(os.environ, ANSIBLE_CONFIG=str(config_without_callbacks(directory)),
                   ANSIBLE_COLLECTIONS_PATH=str(self.collections), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
                   ANSIBLE_FORKS=str(forks), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_PIPELINING="True", MOLECULE_EPHEMERAL_DIRECTORY=str(directory),
                   # The scenario's group_vars keep the cluster's CA under the project directory.
                   MOLECULE_PROJECT_DIRECTORY=str(ROOT))
        env.update(self.environment, **(extra_env or {}))
        inventory = self.inventory or directory / "inventory"
        return subprocess.run(self.executable + ["-i", str(inventory)] + self.command,
                              env=env, capture_output=True, text=True, check=False)


def ran_clean(name: str, result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The run, if it succeeded and changed nothing; otherwise the benchmark stops with its output."""
    changed = [int(number) for number in re.findall(r"changed=(\d+)", result.stdout)]
    if result.returncode or any(changed):
        raise SystemExit("%s did not run clean (rc %d, changed %s):\n%s"
                         % (name, result.returncode, changed, result.stdout[-3000:]))
    return result


def timed(name: str, arm: Arm, forks: int) -> float:
    started = time.monotonic()
    result = arm.run(forks)
    elapsed = time.monotonic() - started
    ran_clean(name, result)
    return elapsed


def skeleton_of(output: str, module: str) -> list:
    """site.yml's plays, tasks and hosts read from the output of a run of it, each task ``module`` on the hosts
    that ran it (skipped by the others) and each include a ``debug`` on the hosts that included it. A task that
    only one host of the play answered runs once; one that no host answered is left out."""
    plays = []
    for line in output.splitlines():
        play = re.match(r"PLAY \[(.*)\] \*", line)
        task = re.match(r"TASK \[(.*)\] \*", line)
        result = re.match(r"(ok|changed|skipping): \[([^\]]+?)(?: -> [^\]]+)?\]", line)
        # A looped include names its item after the hosts: "... for web1, web2 => (item=...)".
        included = re.match(r"included: .* for (.*?)(?: => .*)?$", line)
        if play:
            plays.append({"name": play.group(1), "tasks": []})
        elif task and plays:
            plays[-1]["tasks"].append({"name": task.group(1), "ran": [], "included": [], "hosts": []})
        elif (result or included) and plays and plays[-1]["tasks"]:
            current = plays[-1]["tasks"][-1]
            if included:
                hosts = [host.strip() for host in included.group(1).split(",")]
                current["included"] += hosts
            else:
                hosts = [result.group(2)]
                if result.group(1) != "skipping":
                    current["ran"] += hosts
            current["hosts"] += [host for host in hosts if host not in current["hosts"]]
    skeleton = []
    for play in plays:
        hosts = sorted({host for task in play["tasks"] for host in task["hosts"]})
        if not hosts:
            continue
        tasks = []
        for task in play["tasks"]:
            # A task no host answered (a meta task) forks no worker.
            if not task["hosts"]:
                continue
            action, ran = ("ansible.builtin.debug", task["included"]) if task["included"] else (module, task["ran"])
            ran = sorted(set(ran))  # a loop or a looped include answers once per item
            step = {"name": task["name"], action: {"msg": "skeleton"} if action.endswith("debug") else {}}
            if len(task["hosts"]) == 1 < len(hosts):
                # One host of several answered (run_once, or an include on one host): one worker, not a skip each.
                step.update(run_once=True, when=bool(ran))
            else:
                step["when"] = "inventory_hostname in %s" % json.dumps(ran)
            tasks.append(step)
        skeleton.append({"name": play["name"], "hosts": ",".join(hosts), "gather_facts": False, "tasks": tasks})
    return skeleton


@contextlib.contextmanager
def skeletons(site: Arm, forks: int):
    """The two skeleton playbooks of ``--skeleton``, from one run of ``site`` (which must change nothing)."""
    directory = Path(tempfile.mkdtemp(prefix="rerun-skeleton-"))
    try:
        result = ran_clean("site.yml (for its skeleton)", site.run(forks))
        playbooks = {}
        for name, module in (("a ping per task", "ansible.builtin.ping"), ("no host contact", "ansible.builtin.debug")):
            path = directory / ("skeleton-%s.yml" % module.rsplit(".", 1)[-1])
            path.write_text(json.dumps(skeleton_of(result.stdout, module), indent=1))
            playbooks[name] = [str(path)]
        yield playbooks
    finally:
        shutil.rmtree(str(directory), ignore_errors=True)


@contextlib.contextmanager
def collection_at(revision: str):
    """The collection as it was at REVISION, on a collections path of its own."""
    directory = Path(tempfile.mkdtemp(prefix="rerun-before-"))
    tree = directory / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), revision], cwd=str(ROOT), check=True)
    try:
        (directory / "ansible_collections" / "fediscale").mkdir(parents=True)
        (directory / "ansible_collections" / "fediscale" / "mastodon").symlink_to(tree)
        # The same dependencies as today's arms (tools/rig collection links them).
        for namespace in (ROOT / ".rig" / "ansible_collections").iterdir():
            if namespace.name != "fediscale":
                (directory / "ansible_collections" / namespace.name).symlink_to(namespace)
        yield directory
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=str(ROOT), check=False)
        shutil.rmtree(str(directory), ignore_errors=True)


@contextlib.contextmanager
def mitogen_inventory():
    """The scenario's inventory with mitogen's own name for the docker connection, and its strategy's path."""
    import ansible_mitogen  # pylint: disable=import-outside-toplevel

    directory = Path(tempfile.mkdtemp(prefix="rerun-mitogen-"))
    try:
        shutil.copytree(str(ephemeral() / "inventory"), str(directory / "inventory"))
        hosts = directory / "inventory" / "ansible_inventory.yml"
        hosts.write_text(hosts.read_text().replace("ansible_connection: community.docker.docker",
                                                   "ansible_connection: docker"))
        strategy = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
        yield directory / "inventory", {"ANSIBLE_STRATEGY_PLUGINS": str(strategy),
                                        "ANSIBLE_STRATEGY": "mitogen_linear"}
    finally:
        shutil.rmtree(str(directory), ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forks", default="5,10")
    parser.add_argument("--before", help="a revision whose collection to measure beside today's")
    parser.add_argument("--mitogen", action="store_true", help="the site arms again under mitogen")
    parser.add_argument("--all-collections", action="store_true",
                        help="the mitogen site arms again with every collection of the venv's ansible package "
                             "visible, as on a controller with that package installed")
    parser.add_argument("--preload", action="store_true",
                        help="the site arms again with the preload_jinja_plugins callback enabled")
    parser.add_argument("--skeleton", action="store_true",
                        help="beside the last whole-run site arm, site.yml's plays, tasks and hosts with none of its work")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", help="run only the arms whose names contain this text (facts always runs)")
    args = parser.parse_args()
    arms = {"facts": Arm(FACTS), "site": Arm(SITE), "site --tags sidekiq": Arm(SIDEKIQ)}
    with contextlib.ExitStack() as stack:
        if args.before:
            before = stack.enter_context(collection_at(args.before))
            arms["site at %s" % args.before] = Arm(SITE, collections=before)
            arms["site --tags sidekiq at %s" % args.before] = Arm(SIDEKIQ, collections=before)
        if args.mitogen:
            inventory, environment = stack.enter_context(mitogen_inventory())
            for name, command in (("facts", FACTS), ("site", SITE), ("site --tags sidekiq", SIDEKIQ)):
                arms["%s, mitogen" % name] = Arm(command, inventory=inventory, environment=environment)
            if args.before:
                arms["site at %s, mitogen" % args.before] = Arm(
                    SITE, collections=before, inventory=inventory, environment=environment)
                arms["site --tags sidekiq at %s, mitogen" % args.before] = Arm(
                    SIDEKIQ, collections=before, inventory=inventory, environment=environment)
            if args.all_collections:
                every = dict(environment, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="true")
                for name, command in (("site", SITE), ("site --tags sidekiq", SIDEKIQ)):
                    arms["%s, mitogen, every collection" % name] = Arm(command, inventory=inventory,
                                                                       environment=every)
        if args.preload:
            for name, arm in list(arms.items()):
                if name.startswith("site") and " at " not in name:
                    arms["%s, preload" % name] = Arm(arm.command, collections=arm.collections,
                                                     inventory=arm.inventory,
                                                     environment=dict(arm.environment, **PRELOAD))
        if args.only:
            arms = {name: arm for name, arm in arms.items() if args.only in name or name == "facts"}
        forks_list = [int(value) for value in args.forks.split(",")]
        whole = [name for name in arms if name.startswith("site") and "--tags" not in name and " at " not in name]
        if args.skeleton and whole:
            # The last whole-run arm is the fastest way asked for (mitogen, then the callback).
            site = arms[whole[-1]]
            for kind, command in stack.enter_context(skeletons(site, forks_list[-1])).items():
                arms[whole[-1].replace("site", "skeleton, %s" % kind, 1)] = Arm(
                    command, collections=site.collections, inventory=site.inventory, environment=site.environment)
        samples = {(name, forks): [] for name in arms for forks in forks_list}
        for number in range(args.rounds):
            for (name, forks), values in samples.items():
                values.append(timed(name, arms[name], forks))
            latest = ", ".join("%s/%d %.1f s" % (name, forks, values[-1]) for (name, forks), values in samples.items())
            print("round %d: %s" % (number + 1, latest), file=sys.stderr)
    print("| arm | forks | median of %d | / facts |" % args.rounds)
    print("| --- | ---: | ---: | ---: |")
    for (name, forks), values in samples.items():
        facts = statistics.median(samples[("facts", forks)])
        median = statistics.median(values)
        print("| %s | %d | %.1f s | %.1f |" % (name, forks, median, median / facts))
    if args.profile:
        result = arms["site"].run(forks_list[-1], {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
                                                   "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "25"})
        # profile_tasks ends the run with "role : task ------ 1.23s" lines, slowest first.
        print("\n".join(line for line in result.stdout.splitlines() if re.search(r"-{3,} +[0-9.]+s$", line)))


if __name__ == "__main__":
    main()
