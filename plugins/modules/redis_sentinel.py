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
    its initial master when none does, then its C(down-after-milliseconds), C(auth-user) and C(auth-pass).
  - A monitored set keeps the master the sentinels found; only C(quorum) and C(down-after-milliseconds) are
    corrected. With O(purge), sets not listed are removed (C(SENTINEL REMOVE)).
  - The sentinels log in to a set's members as their C(fediscale-sentinel) user (C(auth-user)), with that set's
    password, derived from O(auth_secret) as P(fediscale.mastodon.redis_user_password#filter) derives it. C(auth-user)
    and C(auth-pass) cannot be read back, so they are sent on every run; sending them alone does not count as a
    change.
  - Nobody reconfigures the sentinel without a password. It keeps three ACL users. C(fediscale-admin) may do
    everything; the module logs in as that user, and the sentinels log in to each other with it (C(sentinel-user),
    C(sentinel-pass)). C(mastodon) (Mastodon's C(REDIS_SENTINEL_USERNAME)) and the default user, for clients
    without credentials, may only ask which master serves a set, the other sentinels and the replicas, and
    subscribe to C(+switch-master). C(MONITOR), C(REMOVE), C(SET), C(FAILOVER), C(CONFIG), C(ACL) and C(SHUTDOWN)
    are refused to them.
  - A sentinel that still lets the default user do everything (set up before these users) is logged in to as the
    default user once, and given the users.
  - Redis 7.0 reports a user's rules in its own shorthand, so the module compares them as the server renders them,
    by setting them on a disabled scratch user (C(fediscale-probe)) that it removes at once, in check mode too.
  - It refuses, changing nothing, a set whose master (the one this sentinel monitors, or for a new set the one the
    other sentinels name) is not one of the set's planned O(monitors[].members).
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
      members:
        description: The planned members of the set, as C(host:port); a master outside them is refused.
        type: list
        elements: str
        required: true
  admin_password:
    description: Password of the C(fediscale-admin) user.
    type: str
    required: true
  mastodon_password:
    description: Password of the C(mastodon) user, the one Mastodon's C(REDIS_SENTINEL_PASSWORD) gives.
    type: str
    required: true
  auth_secret:
    description:
      - The inventory's Redis secret (C(redis_password)) that every member's users' passwords derive from; each
        set's C(auth-pass) is its C(fediscale-sentinel) user's password on that set.
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
        members: [10.0.0.11:6379, 10.0.0.12:6379, 10.0.0.13:6379]
    admin_password: "{{ redis_sentinel_admin_password }}"
    mastodon_password: "{{ redis_sentinel_mastodon_password }}"
    auth_secret: "{{ redis_password }}"
    sentinels: [10.0.0.11:26379, 10.0.0.12:26379, 10.0.0.13:26379]
"""

RETURN = r"""
commands:
  description: The C(SENTINEL) commands sent (or, in check mode, that would be sent), C(auth-user) and C(auth-pass) left out.
  returned: success
  type: list
  elements: str
users:
  description: The ACL users created or corrected (or, in check mode, that would be).
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
    REQUIREMENT, acl_user, ask_sentinel, connect, redis, rendered,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import (
    SENTINEL_LINK_USER, acl_user_differs, acl_user_rules, digest, set_scope, user_password,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sentinel import (
    REDIS_PORT, SENTINEL_ADMIN_RULES, SENTINEL_ADMIN_USER, SENTINEL_ASK_RULES, SENTINEL_MASTODON_USER, SENTINEL_PORT,
    ask_sentinels, current_master, flat_pairs, format_address, parse_address,
    sentinel_changes, unplanned_master, unplanned_master_recovery,
)


def masters(client):
    return {entry["name"]: entry for entry in (flat_pairs(item) for item in client.execute_command("SENTINEL", "MASTERS"))}


def log_in(module):
    """A client logged in as the admin user, or as the default user of a sentinel that has no users yet."""
    params = module.params
    client = connect(params["login_host"], params["login_port"], params["admin_password"],
                     username=SENTINEL_ADMIN_USER)
    try:
        client.ping()
        return client, False
    except (redis.AuthenticationError, redis.ResponseError):
        # Debian 12's redis-py (4.3) raises a plain ResponseError for WRONGPASS.
        pass
    client = connect(params["login_host"], params["login_port"])
    try:
        client.execute_command("ACL", "WHOAMI")
        return client, True
    except redis.RedisError as error:
        module.fail_json(msg="Sentinel %s: the user %s does not take redis_sentinel_admin_password, and the default "
                             "user may not manage the sentinel (%s). Set redis_sentinel_admin_password to the "
                             "password this sentinel has; nothing was changed."
                         % (format_address((params["login_host"], params["login_port"])), SENTINEL_ADMIN_USER, error))


def refuse_unplanned_masters(module, monitored, wanted, answers):
    """Fail, before anything changed, when a set's master is not one of its planned members."""
    params = module.params
    for entry in wanted:
        current = monitored.get(entry["name"])
        if current is not None:
            master, source = (current["ip"], int(current["port"])), "the master this sentinel monitors"
        else:
            master, named_by = current_master(answers.get(entry["name"], []), tuple(entry["initial_master"]))
            source = "the master the other sentinels name"
            if named_by == "plan":
                continue
        reason = unplanned_master(master, entry["members"])
        if reason:
            module.fail_json(msg="Sentinel %s, set %s: %s: %s. %s"
                             % (format_address((params["login_host"], params["login_port"])), entry["name"],
                                source, reason, unplanned_master_recovery(entry["name"])))


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
                members=dict(type="list", elements="str", required=True),
            )),
            admin_password=dict(type="str", required=True, no_log=True),
            mastodon_password=dict(type="str", required=True, no_log=True),
            auth_secret=dict(type="str", required=True, no_log=True),
            sentinels=dict(type="list", elements="str", default=[]),
            purge=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if redis is None:
        module.fail_json(msg=missing_required_lib(REQUIREMENT))
    params = module.params
    wanted = [dict(entry, initial_master=parse_address(entry["initial_master"], REDIS_PORT),
                   members=[parse_address(member, REDIS_PORT) for member in entry["members"]])
              for entry in params["monitors"]]
    # The admin user first: a sentinel without users is managed as the default user until it exists.
    users = [(SENTINEL_ADMIN_USER, SENTINEL_ADMIN_RULES, params["admin_password"]),
             (SENTINEL_MASTODON_USER, SENTINEL_ASK_RULES, params["mastodon_password"]),
             ("default", SENTINEL_ASK_RULES, None)]
    sentinel_login = {"sentinel-user": SENTINEL_ADMIN_USER, "sentinel-pass": params["admin_password"]}
    client, as_default = log_in(module)
    try:
        monitored = masters(client)
        new = [entry["name"] for entry in wanted if entry["name"] not in monitored]
        # This sentinel does not know the new sets, so its own (empty) answer counts for nothing.
        answers = ask_sentinels(ask_sentinel, params["sentinels"], new)[0] if new else {}
        refuse_unplanned_masters(module, monitored, wanted, answers)
        commands = sentinel_changes(monitored, wanted, answers, params["purge"])
        changed_users = [(name, rules, password) for name, rules, password in users
                         if acl_user_differs(acl_user(client, name), rendered(client, rules), password and digest(password))]
        changed_login = [key for key, value in sentinel_login.items()
                         if flat_pairs(client.execute_command("SENTINEL", "CONFIG", "GET", key)).get(key) != value]
        if not module.check_mode:
            for name, rules, password in changed_users:
                client.execute_command("ACL", "SETUSER", name, *acl_user_rules(rules, password and digest(password)))
                if as_default and name == SENTINEL_ADMIN_USER:
                    client.execute_command("AUTH", SENTINEL_ADMIN_USER, params["admin_password"])
            for key in changed_login:
                client.execute_command("SENTINEL", "CONFIG", "SET", key, sentinel_login[key])
            for command in commands:
                client.execute_command("SENTINEL", *command)
            for entry in wanted:
                client.execute_command("SENTINEL", "SET", entry["name"], "auth-user", SENTINEL_LINK_USER,
                                       "auth-pass", user_password(params["auth_secret"], set_scope(entry["name"]),
                                                                  SENTINEL_LINK_USER))
            if changed_users:
                # ACL SETUSER alone is not written to the file; a restart would forget it.
                client.execute_command("SENTINEL", "FLUSHCONFIG")
            monitored = masters(client)
    except redis.RedisError as error:
        module.fail_json(msg="Sentinel %s: %s" % (format_address((params["login_host"], params["login_port"])), error))
    report = {name: {"master": format_address((entry["ip"], int(entry["port"]))), "quorum": int(entry["quorum"]),
                     "down_after_ms": int(entry["down-after-milliseconds"]), "flags": entry["flags"],
                     "replicas": int(entry["num-slaves"]), "other_sentinels": int(entry["num-other-sentinels"])}
              for name, entry in monitored.items()}
    module.exit_json(changed=bool(commands or changed_users or changed_login),
                     commands=[" ".join(str(part) for part in command) for command in commands]
                     + ["CONFIG SET %s" % key for key in changed_login],
                     users=[name for name, _rules, _password in changed_users], masters=report)


if __name__ == "__main__":
    main()
