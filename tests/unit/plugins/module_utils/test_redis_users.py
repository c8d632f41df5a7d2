"""Redis ACL users of an instance: their rules, passwords and how a running server is compared with them."""

import hashlib

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import (
    ADMIN_USER, DEFAULT_USER, INSTANCE_USERS, MASTODON_DENIED_COMMANDS, MASTODON_RULES, MASTODON_USER,
    REPLICATION_USER, SENTINEL_LINK_USER, acl_user_differs, acl_user_rules, default_user_clients, digest,
    instance_scope, parse_client_list, parse_user_line, set_scope, user_lines, user_password,
)

DIGEST = hashlib.sha256(b"secret").hexdigest()
ASK = {"flags": ["on", "sanitize-payload"], "passwords": [DIGEST], "keys": "", "channels": "&+switch-master",
       "commands": "-@all +auth +hello +ping"}


def test_a_user_is_set_from_scratch_with_the_password_digest():
    assert acl_user_rules(["-@all", "+ping"], digest("secret")) == ["reset", "on", "#" + DIGEST, "-@all", "+ping"]
    assert acl_user_rules(["-@all"], None) == ["reset", "on", "nopass", "-@all"]


def test_a_user_differs_by_state_password_or_the_rules_as_the_server_renders_them():
    rendered = {"flags": ["off"], "passwords": [], "keys": "", "channels": "&+switch-master",
                "commands": "-@all +auth +hello +ping"}
    assert not acl_user_differs(ASK, rendered, digest("secret"))
    assert acl_user_differs(None, rendered, digest("secret"))
    assert acl_user_differs(dict(ASK, flags=["off"]), rendered, digest("secret"))
    assert acl_user_differs(ASK, rendered, digest("another"))
    assert acl_user_differs(ASK, rendered, None)
    assert acl_user_differs(dict(ASK, commands="+@all"), rendered, digest("secret"))
    assert acl_user_differs(dict(ASK, channels="&*"), rendered, digest("secret"))
    # Redis 7.0 renders the same rules as categories; only the server's own rendering compares.
    compacted = dict(rendered, commands="-@all +@fast +subscribe")
    assert not acl_user_differs(dict(ASK, commands="-@all +@fast +subscribe"), compacted, digest("secret"))
    # Redis 6.2 reports keys and channels as lists.
    assert not acl_user_differs(dict(ASK, channels=["&+switch-master"]), rendered, digest("secret"))
    nopass = dict(ASK, flags=["on", "nopass"], passwords=[])
    assert not acl_user_differs(nopass, rendered, None)


def test_a_disabled_user_is_set_off():
    assert acl_user_rules(["+@all"], digest("secret"), enabled=False)[:2] == ["reset", "off"]
    rendered = {"flags": ["off"], "passwords": [], "keys": "~*", "channels": "&*", "commands": "+@all"}
    on = {"flags": ["on"], "passwords": [DIGEST], "keys": "~*", "channels": "&*", "commands": "+@all"}
    assert acl_user_differs(on, rendered, digest("secret"), enabled=False)
    assert not acl_user_differs(dict(on, flags=["off"]), rendered, digest("secret"), enabled=False)


def test_passwords_differ_by_instance_and_user_and_follow_the_secret():
    scopes = [instance_scope("redis1", "cache"), instance_scope("redis2", "cache"), set_scope("persistent")]
    passwords = {user_password("s3cret", scope, user) for scope in scopes for user, _rules in INSTANCE_USERS}
    assert len(passwords) == len(scopes) * len(INSTANCE_USERS)
    assert user_password("s3cret", scopes[0], MASTODON_USER) == user_password("s3cret", scopes[0], MASTODON_USER)
    assert user_password("other", scopes[0], MASTODON_USER) != user_password("s3cret", scopes[0], MASTODON_USER)
    # The members of a set share their users: the scope is the set, whatever the host.
    assert instance_scope("redis1", "persistent", "mastodon") == instance_scope("redis2", "other", "mastodon")
    with pytest.raises(ValueError, match="redis_password"):
        user_password("", scopes[0], MASTODON_USER)


def test_the_file_holds_digests_only_and_the_default_user_off_with_mastodons_rights():
    lines = user_lines("s3cret", "redis1/persistent")
    users = {parse_user_line(line)["name"]: parse_user_line(line) for line in lines}
    assert list(users) == [name for name, _rules in INSTANCE_USERS] and list(users)[-1] == DEFAULT_USER
    for name, user in users.items():
        password = "s3cret" if name == DEFAULT_USER else user_password("s3cret", "redis1/persistent", name)
        assert user["digest"] == "#" + hashlib.sha256(password.encode()).hexdigest()
        assert user["enabled"] == (name != DEFAULT_USER)
    text = "\n".join(lines)
    assert "s3cret" not in text and user_password("s3cret", "redis1/persistent", MASTODON_USER) not in text
    assert users[DEFAULT_USER]["rules"] == list(MASTODON_RULES) == users[MASTODON_USER]["rules"]
    assert users[ADMIN_USER]["rules"] == ["~*", "&*", "+@all"]
    assert users[REPLICATION_USER]["rules"] == ["+psync", "+replconf", "+ping"]
    assert "+slaveof" in users[SENTINEL_LINK_USER]["rules"] and "+config|rewrite" in users[SENTINEL_LINK_USER]["rules"]
    with pytest.raises(ValueError, match="not a user line"):
        parse_user_line("requirepass secret")


def test_mastodons_user_is_denied_administration_by_name_never_by_category():
    denied = [name for name, _why in MASTODON_DENIED_COMMANDS]
    for command in ("flushall", "flushdb", "config", "shutdown", "replicaof", "slaveof", "acl", "monitor", "debug",
                    "module", "client|kill"):
        assert "-" + command in MASTODON_RULES and command in denied
    # What Mastodon, Sidekiq and their clients send stays allowed: INFO (Sidekiq at boot, the admin dashboard),
    # KEYS (app/lib/delivery_failure_tracker.rb), ROLE (redis-client in sentinel mode), CLIENT SETNAME, SCAN,
    # EVALSHA, UNLINK, pub/sub.
    for needed in ("info", "keys", "role", "client|setname", "client", "scan", "evalsha", "unlink", "subscribe"):
        assert needed not in denied
    assert not [rule for rule in MASTODON_RULES if rule.startswith("-@")]


def test_clients_of_the_default_user_are_those_not_moved_yet():
    clients = parse_client_list(
        "id=3 addr=10.0.0.13:4242 name= flags=N user=default cmd=brpop\n"
        "id=4 addr=10.0.0.14:4343 name=sidekiq flags=N user=mastodon cmd=brpop\n"
        "id=5 addr=10.0.0.12:6379 name= flags=S user=default cmd=replconf\n"
        "id=6 addr=10.0.0.21:5151 name=sentinel-1a2b-cmd flags=N user=default cmd=ping\n"
        "id=7 addr=/run/redis.sock name= flags=N user=default cmd=client|list\n"
        "id=8 addr=10.0.0.15:4444 name=web flags=N user=default cmd=get\n")
    assert default_user_clients(clients, own_id=7) == ["10.0.0.13:4242", "10.0.0.15:4444 (web)"]
    assert default_user_clients(clients[1:3]) == []
