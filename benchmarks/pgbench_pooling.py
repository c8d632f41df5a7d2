"""pgbench on the demo cluster: direct to PostgreSQL against through the collection's pgbouncer.

Runs on the cluster ``make demo`` leaves up. pgbench runs on an app host
(demo-web1, where Mastodon's processes would run) and connects either straight
to the primary on demo-db1 or to the host's own pgbouncer on 127.0.0.1:6432,
as Mastodon's processes do. Workloads: pgbench's read-only (``-S``) and its
default TPC-B-like mix, at 20, 200 and 800 clients; arms alternate inside each
round so both see the same machine.

Each pgbouncer configuration is one arm, measured beside a direct arm of the
same protocol: pool sizes (``--pool-size``), process counts (``--processes``;
several need pgbouncer 1.19+) and prepared statements (``--prepared``: off is
pgbench's simple protocol, what Mastodon sends behind transaction pooling; on
is ``-M prepared`` with the plan's opt-in ``pgbouncer_max_prepared_statements``,
pgbouncer 1.21+). Every sample also records where the CPU went: pgbench's own
(user + system), pgbouncer's (all its processes), PostgreSQL's (the database
container's cgroup), and how many server backends waited on a lock halfway.

Set-up, undone at the end (also on failure):

- ``max_connections`` on the primary is raised with ``ALTER SYSTEM`` so the
  direct arm can admit 800 clients (the plan's own value stays in the
  collection's ``conf.d`` file and is back after ``ALTER SYSTEM RESET``);
- ``site.yml --tags pgbouncer`` re-plans the app hosts' pgbouncers for each
  configuration with ``pgbouncer_max_client_conn`` high enough for 800 clients
  (the plan then raises ``LimitNOFILE`` to match); everything else stays as the
  plan chose, pool sizes included, unless ``--pool-size`` names one;
- pgbench's tables are created in Mastodon's database (the demo has no
  Mastodon data) and dropped afterwards;
- pgbench comes with Debian's ``postgresql-NN`` package, which the benchmark
  installs on the client host without creating a cluster there (it stays).

    make demo
    .venv/bin/python benchmarks/pgbench_pooling.py [--rounds 3] [--duration 20] [--pool-size auto,8]
        [--processes 1,2] [--prepared off,on]
"""

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCENARIO = ROOT / "molecule" / "cluster"
CLIENT_HOST = "demo-web1"
DB_HOST = "demo-db1"
WORKLOADS = {"read-only": ["-S"], "mixed": []}


def postgresql_version() -> str:
    """The PostgreSQL major version the site put on the database host (it follows the host's Debian release)."""
    return docker(DB_HOST, "ls /usr/lib/postgresql").stdout.split()[-1]


def cluster_vars() -> Dict[str, str]:
    group = yaml.safe_load((SCENARIO / "group_vars" / "all.yml").read_text())
    db = yaml.safe_load((SCENARIO / "host_vars" / (DB_HOST + ".yml")).read_text())
    return {"password": group["postgresql_mastodon_password"], "db_address": db["mastodon_address"],
            "database": "mastodon_production", "user": "mastodon"}


def docker(host: str, command: str, user: str = "root", check: bool = True,
           env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    args = ["docker", "exec", "-u", user]
    for key, value in (env or {}).items():
        args += ["-e", "%s=%s" % (key, value)]
    result = subprocess.run(args + [host, "sh", "-c", command], capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise SystemExit("%s: %s failed (%d):\n%s%s"
                         % (host, command, result.returncode, result.stdout, result.stderr))
    return result


def converge_pgbouncer(extra_vars: Dict[str, object]) -> None:
    """Re-run site.yml's pgbouncer part through the scenario's inventory."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".rig"), PATH="%s:%s" % (BIN, os.environ["PATH"]))
    args = [str(BIN / "molecule"), "converge", "-s", "cluster", "--", "--tags", "pgbouncer"]
    if extra_vars:
        args += ["-e", json.dumps(extra_vars)]
    print("converging pgbouncer with %s" % (extra_vars or "the plan's settings"), file=sys.stderr)
    result = subprocess.run(args, cwd=str(ROOT), env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit("molecule converge failed:\n%s%s" % (result.stdout[-4000:], result.stderr[-2000:]))


def pgbouncer_settings() -> Dict[str, str]:
    """The first process's settings (with one process its file is pgbouncer.ini)."""
    text = docker(CLIENT_HOST, "cat /etc/pgbouncer/pgbouncer-1.ini 2>/dev/null || cat /etc/pgbouncer/pgbouncer.ini").stdout
    return dict(re.findall(r"^(default_pool_size|max_client_conn|pool_mode|max_prepared_statements) = (\S+)",
                           text, re.M))


def pgbouncer_cpu_seconds() -> float:
    """CPU time of every pgbouncer process on the client host so far (they live through the runs)."""
    out = docker(CLIENT_HOST, "ps -C pgbouncer -o times=", check=False).stdout
    return float(sum(int(value) for value in out.split()))


# The database container's cgroup: cgroup v2 (its own root), or v1's cpuacct under the path /proc/1/cgroup names.
CONTAINER_CPU = r"""
if [ -f /sys/fs/cgroup/cpu.stat ]; then awk '/^usage_usec/ { print $2 / 1e6 }' /sys/fs/cgroup/cpu.stat
else path=$(sed -n 's/^[0-9]*:[^:]*cpuacct[^:]*://p' /proc/1/cgroup)
  awk '{ print $1 / 1e9 }' /sys/fs/cgroup/cpuacct$path/cpuacct.usage; fi
"""


def postgresql_cpu_seconds() -> float:
    """CPU time of the database container so far (its backends come and go; the cgroup keeps the sum)."""
    return float(docker(DB_HOST, CONTAINER_CPU).stdout)


def lock_waiters() -> int:
    out = docker(DB_HOST, "psql -XAtqc \"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'\"",
                 user="postgres", check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def set_max_connections(value: Optional[int]) -> None:
    statement = ("ALTER SYSTEM SET max_connections = %d" % value) if value else "ALTER SYSTEM RESET max_connections"
    docker(DB_HOST, "psql -qc '%s'" % statement, user="postgres")
    docker(DB_HOST, "systemctl restart postgresql@%s-main" % postgresql_version())


def pgbench(arm: str, workload: str, clients: int, duration: int, settings: Dict[str, str],
            protocol: str) -> Dict[str, float]:
    host, port = (settings["db_address"], 5432) if arm.startswith("direct") else ("127.0.0.1", 6432)
    # bash's time reports pgbench's own CPU; TIMEFORMAT keeps it to user and system seconds.
    command = "TIMEFORMAT='cpu %%U %%S'; time pgbench -n %s -M %s -c %d -j 2 -T %d -h %s -p %d -U %s %s" % (
        " ".join(WORKLOADS[workload]), protocol, clients, duration, host, port, settings["user"],
        settings["database"])
    bouncer_before, server_before = pgbouncer_cpu_seconds(), postgresql_cpu_seconds()
    waiting: List[int] = []
    probe = threading.Timer(duration / 2.0, lambda: waiting.append(lock_waiters()))
    probe.start()
    result = docker(CLIENT_HOST, "bash -c %s" % json.dumps(command), check=False,
                    env={"PGPASSWORD": settings["password"]})
    probe.join()
    bouncer_cpu = pgbouncer_cpu_seconds() - bouncer_before
    server_cpu = postgresql_cpu_seconds() - server_before
    output = result.stdout + result.stderr
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", output, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.M)
    aborted = len(re.findall(r"client \d+ aborted", output))
    cpu = re.search(r"^cpu ([\d.]+) ([\d.]+)$", output, re.M)
    return {"tps": float(tps.group(1)) if tps else 0.0, "failed": int(failed.group(1)) if failed else 0,
            "aborted": aborted, "exit": result.returncode,
            # Cores busy on average over the run.
            "pgbench_cores": (float(cpu.group(1)) + float(cpu.group(2))) / duration if cpu else 0.0,
            "pgbouncer_cores": 0.0 if arm.startswith("direct") else bouncer_cpu / duration,
            "postgresql_cores": server_cpu / duration, "lock_waiters": waiting[0] if waiting else 0}


def measure(rounds: int, duration: int, client_counts: List[int], settings: Dict[str, str],
            arms: List[str], protocol: str) -> Dict[tuple, List[Dict[str, float]]]:
    samples: Dict[tuple, List[Dict[str, float]]] = {}
    for round_index in range(rounds):
        for workload in WORKLOADS:
            for clients in client_counts:
                order = arms if round_index % 2 == 0 else list(reversed(arms))
                for arm in order:
                    sample = pgbench(arm, workload, clients, duration, settings, protocol)
                    samples.setdefault((arm, workload, clients), []).append(sample)
                    print("round %d %-9s %-36s %4d clients: %8.0f tps, %d failed, %d aborted; cores: pgbench %.2f, "
                          "pgbouncer %.2f, postgresql %.2f; %d lock waiters"
                          % (round_index + 1, workload, arm, clients, sample["tps"], sample["failed"],
                             sample["aborted"], sample["pgbench_cores"], sample["pgbouncer_cores"],
                             sample["postgresql_cores"], sample["lock_waiters"]), file=sys.stderr)
    return samples


def summarise(samples, client_counts: List[int], arms: List[str]) -> str:
    """One row per workload, client count and arm: medians, and the ratio to the best direct median."""
    def median(key, field):
        return statistics.median(sample[field] for sample in samples[key])

    best_direct = {workload: max(median(key, "tps") for key in samples
                                 if key[0].startswith("direct") and key[1] == workload)
                   for workload in WORKLOADS}
    lines = ["| workload | clients | arm | tps | / best direct | failed | pgbench cores | pgbouncer cores | "
             "PostgreSQL cores | lock waiters |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for workload in WORKLOADS:
        for clients in client_counts:
            for arm in arms:
                key = (arm, workload, clients)
                if key not in samples:
                    continue
                lines.append("| %s | %d | %s | %.0f | %.2f | %d | %.2f | %.2f | %.2f | %.0f |" % (
                    workload, clients, arm, median(key, "tps"), median(key, "tps") / best_direct[workload],
                    sum(sample["failed"] + sample["aborted"] for sample in samples[key]),
                    median(key, "pgbench_cores"), median(key, "pgbouncer_cores"), median(key, "postgresql_cores"),
                    median(key, "lock_waiters")))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=20, help="seconds per pgbench run")
    parser.add_argument("--clients", default="20,200,800")
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--max-connections", type=int, default=1000,
                        help="max_connections for the direct arm, above the largest client count")
    parser.add_argument("--pool-size", default="auto",
                        help="comma-separated pgbouncer_default_pool_size values, each its own arm")
    parser.add_argument("--processes", help="comma-separated pgbouncer_processes values; default 1,2 where "
                        "pgbouncer has [peers] (1.19+), else 1")
    parser.add_argument("--prepared", help="off, on or off,on: prepared statements; default off,on where pgbouncer "
                        "tracks them (1.21+), else off")
    args = parser.parse_args()
    installed = tuple(int(part) for part in re.search(
        r"PgBouncer (\d+)\.(\d+)", docker(CLIENT_HOST, "pgbouncer --version").stdout).groups())
    args.processes = args.processes or ("1,2" if installed >= (1, 19) else "1")
    args.prepared = args.prepared or ("off,on" if installed >= (1, 21) else "off")
    client_counts = [int(value) for value in args.clients.split(",")]
    settings = cluster_vars()
    env = {"PGPASSWORD": settings["password"]}
    connect = "-h %s -U %s %s" % (settings["db_address"], settings["user"], settings["database"])

    # Debian ships pgbench in the server package; install it without creating a cluster on the app host.
    version = postgresql_version()
    if docker(CLIENT_HOST, "test -x /usr/lib/postgresql/%s/bin/pgbench" % version, check=False).returncode:
        docker(CLIENT_HOST, "mkdir -p /etc/postgresql-common && "
               "sed -i '/^#* *create_main_cluster/d' /etc/postgresql-common/createcluster.conf 2>/dev/null; "
               "echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf && "
               "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-%s >/dev/null" % version)
    samples: Dict[tuple, List[Dict[str, float]]] = {}
    arms: List[str] = []
    try:
        set_max_connections(args.max_connections)
        docker(CLIENT_HOST, "pgbench -i -q -s %d %s" % (args.scale, connect), env=env)
        for prepared, processes, pool_size in itertools.product(
                args.prepared.split(","), args.processes.split(","), args.pool_size.split(",")):
            extra: Dict[str, object] = {"pgbouncer_max_client_conn": max(client_counts) + 200,
                                        "pgbouncer_processes": int(processes)}
            if pool_size != "auto":
                extra["pgbouncer_default_pool_size"] = int(pool_size)
            if prepared == "on":
                extra.update(pgbouncer_max_prepared_statements=200, pgbouncer_acknowledge_prepared_statements=True)
            converge_pgbouncer(extra)
            chosen = pgbouncer_settings()
            protocol = "prepared" if prepared == "on" else "simple"
            direct = "direct, %s" % protocol
            arm = "pgbouncer %s × pool %s%s, %s" % (processes, chosen["default_pool_size"],
                                                    " (plan)" if pool_size == "auto" else "", protocol)
            arms += [name for name in (direct, arm) if name not in arms]
            print("%s: %s" % (arm, chosen), file=sys.stderr)
            # A direct arm of the same protocol runs beside every pgbouncer arm, so each comparison is side by side.
            for key, values in measure(args.rounds, args.duration, client_counts, settings, [direct, arm],
                                       protocol).items():
                samples.setdefault(key, []).extend(values)
    finally:
        docker(CLIENT_HOST, "pgbench -i -I d %s" % connect, check=False, env=env)
        set_max_connections(None)
        converge_pgbouncer({})
    print(summarise(samples, client_counts, arms))


if __name__ == "__main__":
    main()
