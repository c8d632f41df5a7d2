# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: redis_live_settings
short_description: Bring a running Redis instance to its configuration file without a restart where Redis allows it
version_added: 0.1.0
description:
  - Reads the instance's configuration (O(content), or the file O(path)), asks the running server for each
    setting (C(CONFIG GET)) and sets the ones that differ with C(CONFIG SET), so a change of C(maxmemory),
    C(maxmemory-policy), C(appendfsync), C(save) and the like keeps the process, its clients and its data.
  - Settings Redis reads only at start (C(unixsocket), C(dir), C(logfile), C(appendfilename), ...) are reported in
    RV(restart_for) and the instance is prepared for the restart the caller then does. A master of a set under
    Redis Sentinel (O(master_name)) is first failed over with C(SENTINEL FAILOVER), and the module waits until it
    replicates the new master, so that no write goes to an instance about to stop; an instance with an append-only
    file rewrites it (C(BGREWRITEAOF)) and the module waits for the rewrite to finish, so that the restart loads a
    compact file.
  - The file's C(user) lines (P(fediscale.mastodon.redis_user_lines#filter)) are compared with C(ACL GETUSER), as
    the server renders the rules (set on a disabled scratch user, C(fediscale-probe), removed at once, in check
    mode too), and corrected with C(ACL SETUSER), so an instance keeps running while its users change.
  - The default user is the one exception to the file. While clients other than replication links and sentinels
    are logged in as it (units not yet restarted with their own user in their URL), it stays on, with the file's
    rights and password, and RV(default_user_clients) lists them; the first run after they have gone turns it off.
  - The module logs in as O(login_user). An instance set up before the users (with C(requirepass) alone) is
    logged in to once as its default user with O(legacy_password), and given them.
  - A password the running server refuses either way means that the secret changed. Only a restart applies it,
    and the module prepares nothing, since it cannot talk to the server.
  - The settings that differ are set in one C(CONFIG SET), which Redis applies all or none; if it refuses them
    together, each is tried alone, and one it still refuses is left to the restart.
  - The configuration file stays the only record of the settings; the module never sends C(CONFIG REWRITE).
requirements:
  - redis-py (Debian's C(python3-redis)) on the host it runs on
options:
  content:
    description:
      - The configuration the instance must run with, as its file holds it, or will hold it. In check mode the
        file is not written yet, so a caller passes what it would write.
      - Holds C(masterauth); never logged.
    type: str
  path:
    description: The instance's configuration file, when O(content) is not given.
    type: path
  login_unix_socket:
    description: The instance's Unix socket. Unlike its port, the socket is the same before and after a change.
    type: path
    required: true
  login_user:
    description: The ACL user to log in as, one that may do everything (the file's C(fediscale-admin)).
    type: str
    default: fediscale-admin
  login_password:
    description: O(login_user)'s password (P(fediscale.mastodon.redis_user_password#filter)).
    type: str
    required: true
  legacy_password:
    description: The C(requirepass) of an instance set up before the users (the inventory's C(redis_password)).
    type: str
  master_name:
    description: The name the sentinels monitor the instance's set by, when it is a member of one.
    type: str
  sentinels:
    description: Every sentinel of that set, as C(host:port); the first that answers performs the failover.
    type: list
    elements: str
    default: []
  sentinel_password:
    description: Password of the sentinels' C(fediscale-admin) user, which may ask for a failover.
    type: str
  reload_tls:
    description:
      - Make an instance with TLS read its certificate files again (setting C(tls-cert-file) re-reads all of
        them), as after a renewal; an instance without TLS is left alone.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for a failover or an AOF rewrite before failing.
    type: int
    default: 300
attributes:
  check_mode:
    description: Reports what it would set and whether a restart is due, and changes nothing.
    support: full
  diff_mode:
    description: The differing settings before and after; secret ones are masked.
    support: full
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Apply the persistent instance's settings live
  fediscale.mastodon.redis_live_settings:
    content: "{{ lookup('ansible.builtin.template', 'redis.conf.j2') }}"
    login_unix_socket: /run/redis-persistent/redis-server.sock
    login_password: "{{ redis_password }}"
  register: live

- name: Restart it only for settings Redis reads at start
  ansible.builtin.systemd_service:
    name: redis-server@persistent.service
    state: restarted
  when: live.restart
"""

RETURN = r"""
applied:
  description: Settings set with C(CONFIG SET) (or, in check mode, that would be).
  returned: success
  type: list
  elements: str
restart_for:
  description: Settings that only a restart applies.
  returned: success
  type: list
  elements: str
restart:
  description: Whether the instance must be restarted; it is ready for it.
  returned: success
  type: bool
failed_over:
  description: Whether the instance was a master under Sentinel and handed that role to a replica first.
  returned: success
  type: bool
rewrote_aof:
  description: Whether the append-only file was rewritten before the restart.
  returned: success
  type: bool
reloaded_tls:
  description: Whether the instance read its certificate files again.
  returned: success
  type: bool
users:
  description: The ACL users created or corrected (or, in check mode, that would be).
  returned: success
  type: list
  elements: str
default_user_clients:
  description: The clients (C(address (name))) still logged in as the default user, which therefore stays on.
  returned: success
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_client import (
    REQUIREMENT, acl_user, connect, connect_socket, redis, rendered,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import (
    DEFAULT_USER, acl_user_differs, acl_user_rules, default_user_clients, parse_client_list, parse_user_line,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_settings import (
    aof_rewrite_state, parse_configuration, settings_that_differ, shown, split_by_restart,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.sentinel import (
    SENTINEL_ADMIN_USER, SENTINEL_PORT, parse_address,
)

POLL_SECONDS = 0.5


def where(module):
    """The instance, for messages: its socket (the one name it keeps whatever its settings)."""
    return "Redis at %s" % module.params["login_unix_socket"]


def wait_until(module, what, done):
    deadline = time.monotonic() + module.params["timeout"]
    while not done():
        if time.monotonic() > deadline:
            module.fail_json(msg="%s: %s did not happen within %d s; nothing was restarted."
                             % (where(module), what, module.params["timeout"]))
        time.sleep(POLL_SECONDS)


def fail_over(module, client):
    """Hand a master's role to a replica through the sentinels, and wait until this instance follows it."""
    params = module.params
    if client.execute_command("ROLE")[0] != "master":
        return False
    if not client.info("replication").get("connected_slaves"):
        module.fail_json(msg="%s: this instance is the master of set %s and has no connected replica to hand that "
                             "role to before the restart. Start a replica, or restart it yourself when a short "
                             "outage is acceptable; nothing was restarted." % (where(module), params["master_name"]))
    errors = []
    for sentinel in params["sentinels"]:
        try:
            connect(*parse_address(sentinel, SENTINEL_PORT), password=params["sentinel_password"],
                    username=SENTINEL_ADMIN_USER if params["sentinel_password"] else None).execute_command("SENTINEL", "FAILOVER", params["master_name"])
            break
        except redis.RedisError as error:
            errors.append("%s: %s" % (sentinel, error))
    else:
        module.fail_json(msg="%s: no sentinel of set %s performed a failover (%s); nothing was restarted."
                         % (where(module), params["master_name"], "; ".join(errors)))
    # Then it replicates the new master, before its append-only file is rewritten.
    wait_until(module, "the failover of set %s" % params["master_name"],
               lambda: client.execute_command("ROLE")[0::3] == ["slave", "connected"])
    return True


def rewrite_aof(module, client):
    """Rewrite the append-only file, if the instance keeps one, and wait for the rewrite to end."""
    if client.config_get("appendonly").get("appendonly") != "yes":
        return False
    try:
        client.execute_command("BGREWRITEAOF")
    except redis.ResponseError as error:
        if "already in progress" not in str(error):
            raise
    wait_until(module, "the rewrite of the append-only file",
               lambda: aof_rewrite_state(client.info("persistence")) != "running")
    if aof_rewrite_state(client.info("persistence")) == "failed":
        module.fail_json(msg="%s: the append-only file rewrite failed (see the instance's log); nothing was "
                             "restarted." % where(module))
    return True


def apply_live(client, settings):
    """CONFIG SET the settings at once (Redis applies all or none), else one by one: (applied, refused)."""
    try:
        client.execute_command("CONFIG", "SET", *[part for pair in sorted(settings.items()) for part in pair])
        return sorted(settings), []
    except redis.ResponseError:
        pass
    applied, refused = [], []
    for name in sorted(settings):
        try:
            client.config_set(name, settings[name])
            applied.append(name)
        except redis.ResponseError:
            # A setting this server reads only at start, or one that needs another first.
            refused.append(name)
    return applied, refused


def log_in(module):
    """A client logged in as ``login_user``, or as the default user of an instance that has no users yet (then
    ``legacy`` is true); None when the server takes neither password."""
    params = module.params
    for user, password in ((params["login_user"], params["login_password"]), (None, params["legacy_password"])):
        if user is None and not password:
            continue
        client = connect_socket(params["login_unix_socket"], password, user)
        try:
            client.ping()
            return client, user is None
        except (redis.AuthenticationError, redis.ResponseError):
            # Debian 12's redis-py (4.3) raises a plain ResponseError for WRONGPASS.
            continue
    return None, False


def users_to_change(client, wanted):
    """``(changes, default user's clients)``: each user that differs, as ``(name, ACL SETUSER arguments)``."""
    changes, kept_for = [], []
    own_id = client.client_id()
    for user in wanted:
        enabled = user["enabled"]
        current = acl_user(client, user["name"])
        if user["name"] == DEFAULT_USER and not enabled and current and "on" in (current.get("flags") or []):
            kept_for = default_user_clients(parse_client_list(client.execute_command("CLIENT", "LIST")), own_id)
            enabled = bool(kept_for)
        if acl_user_differs(current, rendered(client, user["rules"]), user["digest"], enabled):
            changes.append((user["name"], acl_user_rules(user["rules"], user["digest"], enabled)))
    return changes, kept_for


def main():
    module = AnsibleModule(
        argument_spec=dict(
            content=dict(type="str", no_log=True),
            path=dict(type="path"),
            login_unix_socket=dict(type="path", required=True),
            login_user=dict(type="str", default="fediscale-admin"),
            login_password=dict(type="str", required=True, no_log=True),
            legacy_password=dict(type="str", no_log=True),
            master_name=dict(type="str"),
            sentinels=dict(type="list", elements="str", default=[]),
            sentinel_password=dict(type="str", no_log=True),
            reload_tls=dict(type="bool", default=False),
            timeout=dict(type="int", default=300),
        ),
        required_by={"master_name": "sentinels"},
        required_one_of=[("content", "path")],
        mutually_exclusive=[("content", "path")],
        supports_check_mode=True,
    )
    if redis is None:
        module.fail_json(msg=missing_required_lib(REQUIREMENT))
    params = module.params
    try:
        if params["content"] is None:
            with open(params["path"], encoding="utf-8") as handle:
                params["content"] = handle.read()
        wanted = parse_configuration(params["content"])
        wanted_users = [parse_user_line(line.strip()) for line in params["content"].splitlines()
                        if line.strip().startswith("user ")]
    except (OSError, ValueError) as error:
        module.fail_json(msg="%s: cannot read the configuration: %s" % (where(module), error))
    result = dict(changed=False, applied=[], restart_for=[], restart=False, failed_over=False, rewrote_aof=False,
                  reloaded_tls=False, users=[], default_user_clients=[])
    client, legacy = log_in(module)
    if client is None:
        result.update(changed=True, restart_for=["users"], restart=True)
        module.exit_json(**result)
    try:
        running = {}
        for name in wanted:
            running.update(client.config_get(name))
        live, restart_for = split_by_restart(settings_that_differ(wanted, running))
        if module._diff:
            result["diff"] = dict(before=shown(running, live + restart_for), after=shown(wanted, live + restart_for))
        if live and module.check_mode:
            result["applied"] = live
        elif live:
            result["applied"], refused = apply_live(client, {name: wanted[name] for name in live})
            restart_for.extend(refused)
        user_changes, result["default_user_clients"] = users_to_change(client, wanted_users)
        result["users"] = [name for name, _arguments in user_changes]
        if module._diff and user_changes:
            result["diff"]["before"] += "".join("user %s (as it was)\n" % name for name in result["users"])
            result["diff"]["after"] += "".join("user %s (as the file says)\n" % name for name in result["users"])
        if not module.check_mode:
            for name, arguments in user_changes:
                client.execute_command("ACL", "SETUSER", name, *arguments)
            if legacy and user_changes:
                # The default user now has Mastodon's rights only; what follows (a failover, an AOF rewrite) needs
                # the admin, which exists now.
                client = connect_socket(params["login_unix_socket"], params["login_password"], params["login_user"])
        result.update(restart_for=sorted(restart_for), restart=bool(restart_for))
        if params["reload_tls"] and not restart_for and running.get("tls-port", "0") != "0":
            if not module.check_mode:
                client.execute_command("CONFIG", "SET", "tls-cert-file", wanted["tls-cert-file"])
            result["reloaded_tls"] = True
        if restart_for and not module.check_mode:
            if params["master_name"]:
                result["failed_over"] = fail_over(module, client)
            result["rewrote_aof"] = rewrite_aof(module, client)
    except redis.RedisError as error:
        module.fail_json(msg="%s: %s" % (where(module), error), **result)
    result["changed"] = bool(result["applied"] or result["restart"] or result["reloaded_tls"] or result["users"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
