"""Where a no-op site.yml spends its time on the controller: the main process and each forked worker.

Ansible forks a worker for every host of every task, skipped or not; the worker evaluates the task's conditions,
templates its arguments, runs its action and, for a module, waits for the host. This runs ``site.yml`` once on the
cluster ``make demo`` leaves up (the scenario's inventory and ansible.cfg, mitogen's linear strategy, 10 forks,
as ``rerun_speed.py --mitogen``), with ``cProfile`` in the main process and in every worker, and prints the
share of each kind of work. cProfile slows Python code more than waiting, so the shares are of the profiled
run, to compare kinds of work with one another, not seconds of a real run (``rerun_speed.py`` measures those).

The run enables no callback (as ``rerun_speed.py``'s arms); ``--preload`` enables
``fediscale.mastodon.preload_jinja_plugins``, whose effect the workers' share of loading Jinja plugins shows.

    make demo
    .venv/bin/python benchmarks/worker_profile.py [--forks 10] [--tags sidekiq] [--top 25] [--preload]
"""

import argparse
import glob
import os
import pstats
import sys
import tempfile
from pathlib import Path

from rerun_speed import PRELOAD, SITE, Arm, mitogen_inventory, timed

# Runs ansible-playbook with each worker's _run under cProfile, one stats file per worker (argv[1] is the
# directory); the main process is profiled by ``python -m cProfile`` around this.
LAUNCHER = '''
import cProfile, os, sys
from ansible.executor.process import worker
directory = sys.argv.pop(1)
original = worker.WorkerProcess._run
def _run(self):
    profile = cProfile.Profile()
    profile.enable()
    try:
        return original(self)
    finally:
        profile.disable()
        profile.dump_stats(os.path.join(directory, "worker-%d.pstats" % os.getpid()))
worker.WorkerProcess._run = _run
sys.argv[0] = "ansible-playbook"
from ansible.cli.playbook import main
sys.exit(main())
'''

# (label, file name ending, function name): the cumulative time of these functions, each the outermost call of
# its kind (Jinja's compile also looks up every filter and test a template names, which loads Ansible's
# plugins: that share is inside the compile share).
WORKER_KINDS = (
    ("the whole worker", "ansible/executor/process/worker.py", "_run"),
    ("compiling Jinja templates and conditions", "jinja2/environment.py", "compile"),
    ("  of which loading Ansible's own Jinja plugins", "ansible/plugins/loader.py",
     "_ensure_non_collection_wrappers"),
    ("rendering the template module's files", "ansible/plugins/action/template.py", "run"),
    ("waiting for the host (mitogen)", "mitogen/core.py", "_get_sleep"),
)
MAIN_KINDS = (
    ("the whole run", "ansible/executor/playbook_executor.py", "run"),
    ("waiting for the workers", "ansible/plugins/strategy/__init__.py", "_wait_on_pending_results"),
    ("forking the workers", "multiprocessing/process.py", "start"),
    ("computing each host's variables", "ansible/vars/manager.py", "get_vars"),
)


def calls_and_seconds(stats: pstats.Stats, ending: str, function: str):
    """The calls and cumulative time of the matching functions (recursive calls counted once, as pstats does)."""
    found = [entry for (path, _line, name), entry in stats.stats.items()  # pylint: disable=no-member
             if path.endswith(ending) and name == function]
    return sum(entry[1] for entry in found), sum(entry[3] for entry in found)


def table(title: str, stats: pstats.Stats, kinds) -> None:
    whole = calls_and_seconds(stats, kinds[0][1], kinds[0][2])[1]
    print("| %s | calls | profiled seconds | share |" % title)
    print("| --- | ---: | ---: | ---: |")
    for label, ending, function in kinds:
        number, seconds = calls_and_seconds(stats, ending, function)
        print("| %s | %d | %.1f | %.0f %% |" % (label, number, seconds, 100 * seconds / whole if whole else 0))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--tags", help="limit the run to these tags, as ansible-playbook --tags")
    parser.add_argument("--top", type=int, default=0, help="also print the workers' N costliest functions")
    parser.add_argument("--preload", action="store_true",
                        help="enable the fediscale.mastodon.preload_jinja_plugins callback")
    args = parser.parse_args()
    command = SITE + (["--tags", args.tags] if args.tags else [])
    with tempfile.TemporaryDirectory(prefix="worker-profile-") as directory, mitogen_inventory() as found:
        inventory, environment = found
        launcher = Path(directory, "launcher.py")
        launcher.write_text(LAUNCHER)
        arm = Arm(command, inventory=inventory, environment=dict(environment, **(PRELOAD if args.preload else {})))
        main_stats = Path(directory, "main.pstats")
        arm.executable = [sys.executable, "-m", "cProfile", "-o", str(main_stats), str(launcher), directory]
        timed("site.yml under cProfile", arm, args.forks)
        # A worker killed at the end of the run may leave its file unwritten.
        workers = []
        for path in sorted(glob.glob(os.path.join(directory, "worker-*.pstats"))):
            try:
                workers.append(pstats.Stats(path))
            except (EOFError, ValueError, TypeError):
                continue
        if not workers:
            raise SystemExit("no worker wrote its profile")
        merged = workers[0]
        for stats in workers[1:]:
            merged.add(stats)
        table("main process", pstats.Stats(str(main_stats)), MAIN_KINDS)
        table("%d workers" % len(workers), merged, WORKER_KINDS)
        if args.top:
            merged.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
