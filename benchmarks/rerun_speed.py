"""A site.yml run that changes nothing, against gathering facts on the same hosts.

Runs on the cluster ``make demo`` leaves up, through the scenario's own inventory and ansible.cfg (molecule's
ephemeral directory), with ansible-playbook directly (molecule's own start-up is not the collection's). Arms,
alternating inside each round so that all of them see the same machine:

- ``facts``: a play over every host that only gathers facts (``benchmarks/facts_only.yml``);
- ``site``: ``fediscale.mastodon.site`` on a converged cluster (nothing changes; the run fails otherwise);
- ``site --tags sidekiq``: the same, one tag.

Each arm runs ``--rounds`` times; the table has the medians and the ratios to ``facts``. ``--forks`` sets
Ansible's forks for every arm (its default is 5). ``--profile`` runs site.yml once more with
ansible.posix.profile_tasks and prints the slowest tasks.

    make demo
    .venv/bin/python benchmarks/rerun_speed.py [--rounds 5] [--forks 5] [--profile]
"""

import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
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


def run(arm: str, forks: int, extra_env=None) -> subprocess.CompletedProcess:
    directory = ephemeral()
    env = dict(os.environ, ANSIBLE_CONFIG=str(directory / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".rig"),
               ANSIBLE_FORKS=str(forks), ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="True",
               MOLECULE_EPHEMERAL_DIRECTORY=str(directory), **(extra_env or {}))
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(directory / "inventory")] + ARMS[arm],
                          env=env, capture_output=True, text=True, check=False)


def timed(arm: str, forks: int) -> float:
    started = time.monotonic()
    result = run(arm, forks)
    elapsed = time.monotonic() - started
    changed = [int(number) for number in re.findall(r"changed=(\d+)", result.stdout)]
    if result.returncode or any(changed):
        raise SystemExit("%s did not run clean (rc %d, changed %s):\n%s"
                         % (arm, result.returncode, changed, result.stdout[-3000:]))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forks", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    samples = {arm: [] for arm in ARMS}
    for number in range(args.rounds):
        for arm in ARMS:
            samples[arm].append(timed(arm, args.forks))
        latest = ", ".join("%s %.1f s" % (arm, values[-1]) for arm, values in samples.items())
        print("round %d: %s" % (number + 1, latest), file=sys.stderr)
    facts = statistics.median(samples["facts"])
    print("| arm | forks | median of %d | / facts |" % args.rounds)
    print("| --- | ---: | ---: | ---: |")
    for arm, values in samples.items():
        median = statistics.median(values)
        print("| %s | %d | %.1f s | %.1f |" % (arm, args.forks, median, median / facts))
    if args.profile:
        result = run("site", args.forks, {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
                                          "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "25"})
        print("\n".join(line for line in result.stdout.splitlines()[-30:] if " -- " in line or "=====" in line))


if __name__ == "__main__":
    main()
