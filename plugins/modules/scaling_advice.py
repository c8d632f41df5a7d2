# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module runs on the controller only: the action plugin of the same name does the work.

DOCUMENTATION = r"""
module: scaling_advice
short_description: Advise how to scale sidekiq from live signals, within the connection budget
version_added: 0.1.0
description:
  - Combines the live readings of M(fediscale.mastodon.sidekiq_queues) and M(fediscale.mastodon.postgres_connections)
    with the plan made from the inventory, and answers in plain lines. It prints one line per queue (size,
    latency and its trend, processes, busy threads), one for the primary (client connections by state, the idle
    share, lock and C(WALWrite) waits; behind pgbouncer, none idle means its pools are full), then the verdict.
  - A queue whose latency is above O(latency_warning_seconds) gets more processes on the first host that runs it.
    They are at most as many as it has (read the latency again before adding more), and only as many as the plan,
    made again with them, keeps without an error and below the 90 % line.
  - When many of the database's active connections wait on locks or WAL writes, the verdict is that the database is
    the bottleneck and more processes will not help.
  - It never changes a host; RV(changes) and the C(inventory:) lines say what to set in C(sidekiq_queues). This is
    the last task of the C(fediscale.mastodon.advise) playbook.
options:
  queues:
    description: The C(queues) of a M(fediscale.mastodon.sidekiq_queues) result.
    type: list
    elements: dict
    required: true
  postgres:
    description: A M(fediscale.mastodon.postgres_connections) result for the primary; without it, no database verdict.
    type: dict
  latency_warning_seconds:
    description: Latency above which a queue is late.
    type: float
    default: 60
extends_documentation_fragment:
  - fediscale.mastodon.live_check
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Advise from the readings
  fediscale.mastodon.scaling_advice:
    queues: "{{ hostvars[groups['redis'][0]].sidekiq.queues }}"
    postgres: "{{ hostvars[groups['db'][0]].postgres }}"
    latency_warning_seconds: 30
"""

RETURN = r"""
advice:
  description: The lines printed, the verdict last but for the C(inventory:) lines.
  returned: success
  type: list
  elements: str
changes:
  description: Per late queue that may grow, C(host), C(queue), C(instances) (to set), C(concurrency), C(allowed).
  returned: success
  type: list
  elements: dict
"""
