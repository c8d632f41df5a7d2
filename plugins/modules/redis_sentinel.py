# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: redis_sentinel
short_description: Make a running Redis Sentinel monitor exactly the planned sets
version_added: 0.1.0
description:
  - Works at runtime, over the sentinel's own commands, because Sentinel owns its configuration file (it rewrites
    it on every change of topology).
  - A set the sentinel does not monitor yet gets C(SENTINEL MONITOR) at the master the other sentinels name, or at
    its initial master when none does, then its C(down-after-milliseconds) and C(auth-pass).
  - A monitored set keeps the master the sentinels found; only C(quorum) and C(down-after-milliseconds) are
    corrected. With O(purge), sets not listed are removed (C(SENTINEL REMOVE)).
  - C(auth-pass) cannot be read back, so it is sent on every run; sending it alone does not count as a change.
requirements:
  - redis-py (Debian's C(python3-redis)) on the host it runs on
options:
  login_host:
    description: Address of this sentinel.
    type: str
    default: 127.0.0.1
  login_port:
    description: Port of this sentinel.
    type: int
    default: 26379
  monitors:
    description: The sets to monitor.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Master name of the set.
        type: str
        required: true
      initial_master:
        description: Master of a new set, as C(host:port).
        type: str
        required: true
      quorum:
        description: Sentinels that must agree the master is down.
        type: int
        required: true
      down_after_ms:
        description: Milliseconds without a valid reply before a sentinel thinks the master down.
        type: int
        required: true
  auth_pass:
    description: The members' C(requirepass), for every set.
    type: str
    required: true
  sentinels:
    description: Every sentinel (this one included), as C(host:port); asked for the master of a set this one lacks.
    type: list
    elements: str
    default: []
  purge:
    description: Remove monitored sets that O(monitors) does not list.
    type: bool
    default: true
attributes:
  check_mode:
    description: Reports the commands it would send.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Monitor Mastodon's persistent Redis
  fediscale.mastodon.redis_sentinel:
    monitors:
      - name: mastodon
        initial_master: 10.0.0.11:6379
        quorum: 2
        down_after_ms: 30000
    auth_pass: "{{ redis_password }}"
    sentinels: [10.0.0.11:26379, 10.0.0.12:26379, 10.0.0.13:26379]
"""

RETURN = r"""
commands:
  description: The C(SENTINEL) commands sent (or, in check mode, that would be sent), C(auth-pass) left out.
  returned: success
  type: list
  elements: str
masters:
  description: Per monitored set after the run, C(master) (C(host:port)), C(quorum), C(down_after_ms), C(flags),
    C(replicas) and C(other_sentinels).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_client import (
    REQUIREMENT, ask_sentinel, connect, redis,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sentinel import (
    REDIS_PORT, SENTINEL_PORT, ask_sentinels, flat_pairs, format_address, parse_address, sentinel_changes,
)


def masters(client):
    return {entry["name"]: entry for entry in (flat_pairs(item) for item in client.execute_command("SENTINEL", "MASTERS"))}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            login_host=dict(type="str", default="127.0.0.1"),
            login_port=dict(type="int", default=SENTINEL_PORT),
            monitors=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                initial_master=dict(type="str", required=True),
                quorum=dict(type="int", required=True),
                down_after_ms=dict(type="int", required=True),
            )),
            auth_pass=dict(type="str", required=True, no_log=True),
            sentinels=dict(type="list", elements="str", default=[]),
            purge=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if redis is None:
        module.fail_json(msg=missing_required_lib(REQUIREMENT))
    params = module.params
    wanted = [dict(entry, initial_master=parse_address(entry["initial_master"], REDIS_PORT))
              for entry in params["monitors"]]
    client = connect(params["login_host"], params["login_port"])
    try:
        monitored = masters(client)
        new = [entry["name"] for entry in wanted if entry["name"] not in monitored]
        # This sentinel does not know the new sets, so its own (empty) answer counts for nothing.
        answers = ask_sentinels(ask_sentinel, params["sentinels"], new)[0] if new else {}
        commands = sentinel_changes(monitored, wanted, answers, params["purge"])
        if not module.check_mode:
            for command in commands:
                client.execute_command("SENTINEL", *command)
            for entry in wanted:
                client.execute_command("SENTINEL", "SET", entry["name"], "auth-pass", params["auth_pass"])
            monitored = masters(client)
    except redis.RedisError as error:
        module.fail_json(msg="Sentinel %s: %s" % (format_address((params["login_host"], params["login_port"])), error))
    report = {name: {"master": format_address((entry["ip"], int(entry["port"]))), "quorum": int(entry["quorum"]),
                     "down_after_ms": int(entry["down-after-milliseconds"]), "flags": entry["flags"],
                     "replicas": int(entry["num-slaves"]), "other_sentinels": int(entry["num-other-sentinels"])}
              for name, entry in monitored.items()}
    module.exit_json(changed=bool(commands), commands=[" ".join(str(part) for part in command) for command in commands],
                     masters=report)


if __name__ == "__main__":
    main()
