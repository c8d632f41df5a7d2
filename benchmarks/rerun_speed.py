"""A site.yml run that changes nothing, against gathering facts on the same hosts.

Runs on the cluster ``make demo`` leaves up, through the scenario's own inventory and ansible.cfg (molecule's
ephemeral directory), with ansible-playbook directly (molecule's own start-up is not the collection's). Arms,
alternating inside each round so that all of them see the same machine:

- ``facts``: a play over every host that only gathers facts (``benchmarks/facts_only.yml``);
- ``site``: ``fediscale.mastodon.site`` on a converged cluster (nothing changes; the run fails otherwise);
- ``site --tags sidekiq``: the same, one tag;
- with ``--before REV``, both site arms again with ``playbooks/site.yml`` as it was at REV (the roles are
  today's), so that a change to the playbook is measured side by side.

Each arm runs with each of ``--forks`` (Ansible's default is 5) for ``--rounds`` rounds; the table has the
medians and the ratios to ``facts`` at the same forks. ``--profile`` runs site.yml once more with
ansible.posix.profile_tasks and prints the slowest tasks.

    make demo
    .venv/bin/python benchmarks/rerun_speed.py [--rounds 3] [--forks 5,10] [--before REV] [--profile]
"""

import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARMS = {
    "facts": [str(ROOT / "benchmarks" / "facts_only.yml")],
    "site": ["fediscale.mastodon.site"],
    "site --tags sidekiq": ["fediscale.mastodon.site", "--tags", "sidekiq"],
}


def ephemeral() -> Path:
    found = sorted(glob.glob(os.path.expanduser("~/.ansible/tmp/molecule.*.cluster")), key=os.path.getmtime)
    if not found or not Path(found[-1], "inventory").exists():
        raise SystemExit("no demo cluster: run make demo first")
    return Path(found[-1])


def run(command, forks: int, extra_env=None) -> subprocess.CompletedProcess:
    directory = ephemeral()
    env = dict(os.environ, ANSIBLE_CONFIG=str(directory / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".rig"),
               ANSIBLE_FORKS=str(forks), ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="True",
               MOLECULE_EPHEMERAL_DIRECTORY=str(directory), **(extra_env or {}))
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(directory / "inventory")] + command,
                          env=env, capture_output=True, text=True, check=False)


def timed(name: str, command, forks: int) -> float:
    started = time.monotonic()
    result = run(command, forks)
    elapsed = time.monotonic() - started
    changed = [int(number) for number in re.findall(r"changed=(\d+)", result.stdout)]
    if result.returncode or any(changed):
        raise SystemExit("%s did not run clean (rc %d, changed %s):\n%s"
                         % (name, result.returncode, changed, result.stdout[-3000:]))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forks", default="5,10")
    parser.add_argument("--before", help="a revision whose playbooks/site.yml to measure beside today's")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    arms = dict(ARMS)
    if args.before:
        old = tempfile.NamedTemporaryFile("w", prefix="site-before-", suffix=".yml", delete=False)
        old.write(subprocess.run(["git", "show", "%s:playbooks/site.yml" % args.before], cwd=str(ROOT),
                                 capture_output=True, text=True, check=True).stdout)
        old.close()
        arms["site (%s)" % args.before] = [old.name]
        arms["site --tags sidekiq (%s)" % args.before] = [old.name, "--tags", "sidekiq"]
    forks_list = [int(value) for value in args.forks.split(",")]
    samples = {(name, forks): [] for name in arms for forks in forks_list}
    try:
        for number in range(args.rounds):
            for (name, forks), values in samples.items():
                values.append(timed(name, arms[name], forks))
            latest = ", ".join("%s/%d %.1f s" % (name, forks, values[-1]) for (name, forks), values in samples.items())
            print("round %d: %s" % (number + 1, latest), file=sys.stderr)
    finally:
        if args.before:
            os.unlink(old.name)
    print("| arm | forks | median of %d | / facts |" % args.rounds)
    print("| --- | ---: | ---: | ---: |")
    for (name, forks), values in samples.items():
        facts = statistics.median(samples[("facts", forks)])
        median = statistics.median(values)
        print("| %s | %d | %.1f s | %.1f |" % (name, forks, median, median / facts))
    if args.profile:
        result = run(ARMS["site"], forks_list[-1], {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
                                                    "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "25"})
        # profile_tasks ends the run with "role : task ------ 1.23s" lines, slowest first.
        print("\n".join(line for line in result.stdout.splitlines() if re.search(r"-{3,} +[0-9.]+s$", line)))


if __name__ == "__main__":
    main()
