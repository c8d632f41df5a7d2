# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: redis_replication
short_description: Make a Redis instance replicate the master its sentinels name
version_added: 0.1.0
description:
  - For one member of a replicated set that Redis Sentinel monitors. Asks every sentinel in O(sentinels) for the
    master of O(master_name) (C(SENTINEL GET-MASTER-ADDR-BY-NAME)) and follows the address most of them give.
    While none names one, the set is new and O(initial_master) is its master.
  - Sends C(REPLICAOF) only when the instance follows another master or none; the master the sentinels named is
    left alone, so the module never undoes a failover. Only a new set's initial master gets C(REPLICAOF NO ONE).
  - It refuses, changing nothing, a master that is not one of O(members), because an instance that followed an
    address someone else gave the sentinels would send that server the set's password and take its data.
  - Replication is runtime state here, never written to the instance's configuration file. A restarted replica
    comes back as a master until the sentinels (or this module) point it at the current one.
requirements:
  - redis-py (Debian's C(python3-redis)) on the host it runs on
options:
  login_host:
    description: Address the module reaches the instance at.
    type: str
    default: 127.0.0.1
  login_port:
    description: Port of the instance.
    type: int
    required: true
  login_user:
    description: The ACL user to log in as, one that may send C(ROLE) and C(REPLICAOF).
    type: str
    default: fediscale-admin
  login_password:
    description: O(login_user)'s password (P(fediscale.mastodon.redis_user_password#filter)).
    type: str
    required: true
  address:
    description: The instance's address as the sentinels and the other members know it.
    type: str
    required: true
  master_name:
    description: The name the sentinels monitor the set by.
    type: str
    required: true
  sentinels:
    description: Every sentinel, as C(host:port). Unreachable ones are skipped.
    type: list
    elements: str
    required: true
  initial_master:
    description: The master of a set no sentinel knows yet, as C(host:port).
    type: str
    required: true
  members:
    description: The set's planned members, as C(host:port). Default, O(initial_master) and this instance only.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Reports the C(REPLICAOF) it would send.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Follow the set's current master
  fediscale.mastodon.redis_replication:
    login_port: 6379
    login_password: "{{ redis_password | fediscale.mastodon.redis_user_password('set:mastodon', 'fediscale-admin') }}"
    address: 10.0.0.12
    master_name: mastodon
    sentinels: [10.0.0.11:26379, 10.0.0.12:26379, 10.0.0.13:26379]
    initial_master: 10.0.0.11:6379
    members: [10.0.0.11:6379, 10.0.0.12:6379, 10.0.0.13:6379]
"""

RETURN = r"""
master:
  description: The master the instance follows (or is), as C(host:port).
  returned: success
  type: str
named_by:
  description: C(sentinels) when they named the master, C(plan) for a set they do not know yet.
  returned: success
  type: str
role:
  description: The instance's role before the module ran, C(master) or C(slave).
  returned: success
  type: str
replicaof:
  description: The C(REPLICAOF) arguments sent (or, in check mode, that would be sent); null when none.
  returned: success
  type: str
unreachable_sentinels:
  description: Sentinels that did not answer.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_client import (
    REQUIREMENT, ask_sentinel, connect, redis,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sentinel import (
    REDIS_PORT, ask_sentinels, current_master, format_address, parse_address, replication_change, unplanned_master,
    unplanned_master_recovery,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            login_host=dict(type="str", default="127.0.0.1"),
            login_port=dict(type="int", required=True),
            login_user=dict(type="str", default="fediscale-admin"),
            login_password=dict(type="str", required=True, no_log=True),
            address=dict(type="str", required=True),
            master_name=dict(type="str", required=True),
            sentinels=dict(type="list", elements="str", required=True),
            initial_master=dict(type="str", required=True),
            members=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    if redis is None:
        module.fail_json(msg=missing_required_lib(REQUIREMENT))
    params = module.params
    answers, unreachable = ask_sentinels(ask_sentinel, params["sentinels"], [params["master_name"]])
    master, named_by = current_master(answers[params["master_name"]], parse_address(params["initial_master"], REDIS_PORT))
    own = (params["address"], params["login_port"])
    members = [parse_address(member, REDIS_PORT) for member in params["members"]] or [
        parse_address(params["initial_master"], REDIS_PORT), own]
    reason = unplanned_master(master, members)
    if reason:
        module.fail_json(msg="Redis %s, set %s: the master the sentinels name: %s. %s"
                         % (format_address(own), params["master_name"], reason,
                            unplanned_master_recovery(params["master_name"])))
    client = connect(params["login_host"], params["login_port"], params["login_password"],
                     username=params["login_user"])
    try:
        reply = client.execute_command("ROLE")
        role = {"role": reply[0]}
        if reply[0] == "slave":
            role["master"] = (reply[1], int(reply[2]))
        change = replication_change(own, role, master, named_by)
        if change and not module.check_mode:
            client.execute_command("REPLICAOF", *change.split())
    except redis.RedisError as error:
        module.fail_json(msg="Redis %s (%s:%s), set %s: %s" % (format_address(own), params["login_host"],
                                                               params["login_port"], params["master_name"], error))
    module.exit_json(changed=change is not None, master=format_address(master), named_by=named_by,
                     role=role["role"], replicaof=change, unreachable_sentinels=unreachable)


if __name__ == "__main__":
    main()
