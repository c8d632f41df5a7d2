"""The model alone at 1,000, 5,000 and 10,000 app hosts: is the plan linear in the hosts?

For each size, a cluster description (one database host, one Redis host, the rest app hosts with web,
streaming, five sidekiq queues and pgbouncer) is planned (``plan.connection_budget``: the report, every rule)
and rendered (the console table and the Markdown) in a fresh Python process, so that each run pays the same
imports. With ``--baseline REV`` the same runs are made, alternating, with the model of another git revision
(checked out in a temporary worktree), and the table gives both side by side.

    .venv/bin/python benchmarks/plan_scale.py [--runs 3] [--sizes 1000,5000,10000] [--baseline REV]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child process, with the collection to measure first on sys.path.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
size = int(sys.argv[2])
queues = ["default", "push", "ingress", "mailers", "pull"]
hosts = {
    "db1": {"postgresql": {"max_connections": 262143, "ram": "1TB", "acknowledge_max_connections_over_1000": True}},
    "redis1": {"redis": {"instances": [{"name": "persistent", "purpose": "persistent"},
                                       {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "8GB"}]}},
}
for index in range(size):
    entries = [{"queue": queue, "concurrency": 10} for queue in queues]
    if index == 0:
        entries.append({"queue": "scheduler", "concurrency": 5})
    hosts["app%05d" % index] = {"web": {"concurrency": 2, "max_threads": 5}, "streaming": {"ports": [4000]},
                                "sidekiq": {"queues": entries}}
description = {"mastodon": {"version": "4.5"}, "hosts": hosts}
start = time.perf_counter()
report = plan.connection_budget(description)
planned = time.perf_counter()
plan.render_table(report)
plan.render_markdown(report)
done = time.perf_counter()
print(json.dumps({"plan": planned - start, "render": done - planned, "total": done - start,
                  "primary": report["servers"]["primary"]["total"]}))
"""


def collection_root(path: Path) -> Path:
    """A directory holding ansible_collections/fediscale/mastodon -> path."""
    root = Path(tempfile.mkdtemp(prefix="plan-scale-"))
    (root / "ansible_collections" / "fediscale").mkdir(parents=True)
    (root / "ansible_collections" / "fediscale" / "mastodon").symlink_to(path)
    return root


def measure(root: Path, size: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), str(size)], capture_output=True, text=True,
                            check=False, env=dict(os.environ, PYTHONHASHSEED="0"))
    if result.returncode != 0:
        sys.exit("the plan of %d hosts failed:\n%s" % (size, result.stderr[-3000:]))
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--baseline", help="a git revision to measure side by side")
    args = parser.parse_args()
    models = {"this tree": collection_root(ROOT)}
    worktree = None
    if args.baseline:
        worktree = Path(tempfile.mkdtemp(prefix="plan-scale-baseline-")) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline],
                       check=True, capture_output=True)
        models = {args.baseline: collection_root(worktree), "this tree": models["this tree"]}
    rows = []
    try:
        for size in [int(size) for size in args.sizes.split(",")]:
            times = {name: [] for name in models}
            for _run in range(args.runs):  # alternate, so drift on a noisy machine hits all alike
                for name, root in models.items():
                    times[name].append(measure(root, size)["total"])
            medians = {name: statistics.median(values) for name, values in times.items()}
            rows.append((size, medians))
            print("%6d hosts: %s" % (size, ", ".join("%s %.2fs" % item for item in medians.items())), flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    names = list(models)
    first = rows[0][0]
    print()
    print("| hosts | " + " | ".join("%s (s)" % name for name in names) + " | "
          + " | ".join("%s: s per 1000 hosts" % name for name in names)
          + (" | %s / %s |" % (names[-1], names[0]) if len(names) > 1 else " |"))
    print("| ---: " * (1 + 2 * len(names) + (len(names) > 1)) + "|")
    for size, medians in rows:
        cells = ["%.2f" % medians[name] for name in names]
        cells += ["%.3f" % (medians[name] * 1000 / size) for name in names]
        if len(names) > 1:
            cells.append("%.2f" % (medians[names[-1]] / medians[names[0]]))
        print("| %d | %s |" % (size, " | ".join(cells)))
    print("\nLinear in the hosts means the seconds per 1000 hosts stay flat from %d hosts on." % first)


if __name__ == "__main__":
    main()
