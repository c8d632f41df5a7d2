# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: sidekiq_queues
short_description: Read Sidekiq's queues and processes from Mastodon's persistent Redis, and judge the latency
version_added: 0.1.0
description:
  - Reads what Sidekiq's own API reads from Redis, in Sidekiq's key layout, Sidekiq 6 to 8 (Mastodon 4.0 and
    later). Each queue's size (C(LLEN queue:NAME)) and latency (the age of its oldest job, the last element, from
    its C(enqueued_at), integer milliseconds in Sidekiq 8 and float seconds before); each process's queues and
    concurrency (C(processes) and its C(info)) and the jobs its threads are running now (its C(:work) hash).
  - With O(trend_seconds), reads the queues twice that many seconds apart and says whether each latency grows.
  - Returns findings. An error for a latency past Mastodon's 15-minute lock expiry (its jobs then fail with
    C(Mastodon::RaceConditionError) and retry), and for jobs in a queue no process listens to. A warning for a
    latency past O(latency_warning_seconds).
  - Changes nothing; runs where it can reach the Redis instance that holds Sidekiq's data (the persistent one, or
    a member of its sentinel set, since replicas answer the same reads). The C(fediscale.mastodon.advise) playbook
    uses it.
requirements:
  - redis-py (Debian's C(python3-redis)) on the host it runs on; the redis role installs it
options:
  login_host:
    description: Address of the instance.
    type: str
    default: 127.0.0.1
  login_port:
    description: Port of the instance.
    type: int
    default: 6379
  login_user:
    description: The ACL user to log in as (C(mastodon) on an instance of the redis role); none for the default user.
    type: str
  login_password:
    description: O(login_user)'s password.
    type: str
  login_unix_socket:
    description: The instance's Unix socket, on its own host; wins over O(login_host) and O(login_port).
    type: path
  login_tls_ca_file:
    description:
      - Reach the instance over TLS (an instance that takes only TLS), checking its certificate against this CA
        and its name against O(login_host).
    type: path
  queues:
    description: Queues to report even when Redis has never seen them (the plan's queues, for example).
    type: list
    elements: str
    default: []
  trend_seconds:
    description: Seconds between two readings of the queues; V(0) reads once and says nothing of a trend.
    type: float
    default: 0
  latency_warning_seconds:
    description: Latency above which a queue gets a warning.
    type: float
    default: 60
  latency_error_seconds:
    description: Latency above which a queue gets an error; Mastodon's lock expiry.
    type: float
    default: 900
  idle_pids:
    description:
      - Sidekiq processes, by PID, to wait for until they run no job (their C(busy) count is 0), for at most
        O(idle_wait_seconds); the sidekiq role waits so for a unit it has quieted before stopping it.
      - A process that has left Redis' C(processes) set runs nothing.
    type: list
    elements: int
    default: []
  idle_wait_seconds:
    description: How long to wait for O(idle_pids); the reading is returned either way (RV(idle)).
    type: float
    default: 0
extends_documentation_fragment:
  - fediscale.mastodon.live_check
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Read the queues on the persistent instance's host
  fediscale.mastodon.sidekiq_queues:
    login_port: 6379
    login_user: mastodon
    login_password: "{{ redis_password | fediscale.mastodon.redis_user_password(inventory_hostname ~ '/persistent', 'mastodon') }}"
    queues: "{{ plan_budget.units.values() | map(attribute='sidekiq') | flatten | map(attribute='queue') | list }}"
    trend_seconds: 5
  register: sidekiq
"""

RETURN = r"""
queues:
  description:
    - One entry per queue, by name. C(size) jobs and the C(latency) in seconds; the C(processes) that listen to it,
      their C(threads), and how many of those are C(busy) with its jobs now.
    - With O(trend_seconds) also C(latency_before), C(size_before) and C(growing) (the latency rose).
  returned: success
  type: list
  elements: dict
processes:
  description:
    - Sidekiq's live processes, each with C(identity), C(hostname), C(pid), C(queues), C(concurrency), C(busy) and
      C(quiet).
  returned: success
  type: list
  elements: dict
idle:
  description: With O(idle_pids), whether they ran no job at the last reading, and C(busy), how many they ran.
  returned: when O(idle_pids) is given
  type: dict
findings:
  description: Each with C(rule), C(severity), C(message), C(hint) and C(numbers).
  returned: success
  type: list
  elements: dict
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fediscale.mastodon.plugins.module_utils import redis_client
from ansible_collections.fediscale.mastodon.plugins.module_utils.live import (
    job_latency, sidekiq_queue_findings, sidekiq_queue_rows)


def _queues(conn, names):
    """Size and latency of each queue, in one round trip."""
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen("queue:" + name)
            pipe.lindex("queue:" + name, -1)
        replies = pipe.execute()
    now = time.time()
    sizes, latencies = {}, {}
    for name, size, oldest in zip(names, replies[::2], replies[1::2]):
        sizes[name] = size
        try:
            latencies[name] = job_latency(json.loads(oldest), now) if oldest else 0.0
        except ValueError:
            latencies[name] = 0.0
    return sizes, latencies


def _processes(conn):
    processes, work = [], []
    for identity in sorted(conn.smembers("processes")):
        info, busy, quiet = conn.hmget(identity, "info", "busy", "quiet")
        if not info:  # its heartbeat expired: the process is gone
            continue
        info = json.loads(info)
        processes.append({"identity": identity, "hostname": info.get("hostname"), "pid": info.get("pid"),
                          "queues": [name.split(",")[0] for name in info.get("queues", [])],
                          "concurrency": int(info.get("concurrency", 0)), "busy": int(busy or 0),
                          "quiet": quiet == "true"})
        for entry in conn.hvals(identity + ":work"):
            try:
                work.append(json.loads(entry))
            except ValueError:
                continue
    return processes, work


def main():
    module = AnsibleModule(
        argument_spec=dict(
            login_host=dict(type="str", default="127.0.0.1"),
            login_port=dict(type="int", default=6379),
            login_user=dict(type="str"),
            login_password=dict(type="str", no_log=True),
            queues=dict(type="list", elements="str", default=[]),
            trend_seconds=dict(type="float", default=0),
            latency_warning_seconds=dict(type="float", default=60),
            latency_error_seconds=dict(type="float", default=900),
            idle_pids=dict(type="list", elements="int", default=[]),
            idle_wait_seconds=dict(type="float", default=0),
            login_unix_socket=dict(type="path"),
            login_tls_ca_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    if redis_client.redis is None:
        module.fail_json(msg=missing_required_lib(redis_client.REQUIREMENT))
    params = module.params
    try:
        if params["login_unix_socket"]:
            conn = redis_client.connect_socket(params["login_unix_socket"], params["login_password"],
                                               params["login_user"])
        else:
            conn = redis_client.connect(params["login_host"], params["login_port"], params["login_password"],
                                        params["login_tls_ca_file"], params["login_user"])
        names = sorted(set(conn.smembers("queues")) | set(params["queues"]))
        before = _queues(conn, names) if params["trend_seconds"] > 0 else None
        if before:
            time.sleep(params["trend_seconds"])
        processes, work = _processes(conn)
        idle = None
        if params["idle_pids"]:
            deadline = time.monotonic() + params["idle_wait_seconds"]
            while True:
                busy = sum(process["busy"] for process in processes if process["pid"] in params["idle_pids"])
                if busy == 0 or time.monotonic() >= deadline:
                    break
                time.sleep(1)
                processes, work = _processes(conn)
            idle = {"idle": busy == 0, "busy": busy}
        names = sorted(set(names) | {name for process in processes for name in process["queues"]})
        sizes, latencies = _queues(conn, names)
    except redis_client.redis.RedisError as error:
        module.fail_json(msg="cannot read Sidekiq's data at %s:%s: %s"
                         % (params["login_host"], params["login_port"], error))
    rows = sidekiq_queue_rows(sizes, latencies, processes, work)
    if before:
        for row in rows:
            row.update(size_before=before[0].get(row["queue"], 0),
                       latency_before=round(before[1].get(row["queue"], 0.0), 3))
            row["growing"] = row["latency"] > row["latency_before"]
    module.exit_json(changed=False, queues=rows, processes=processes, idle=idle,
                     findings=sidekiq_queue_findings(rows, params["latency_warning_seconds"],
                                                     params["latency_error_seconds"]))


if __name__ == "__main__":
    main()
