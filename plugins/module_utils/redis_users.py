# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who may do what on a Redis instance: one ACL user per purpose, each with its own password on each instance.

Users (Redis ACL, in every instance's configuration file as ``user`` lines, with SHA-256 digests only):

- ``mastodon``: everything Puma, Sidekiq and streaming send, and none of the administrative commands they never
  send (``MASTODON_DENIED_COMMANDS``, denied by name, never by category: ``@dangerous`` holds ``INFO`` and ``KEYS``,
  which Sidekiq and Mastodon send, and ``@admin`` holds ``ROLE``, which redis-client sends in sentinel mode);
- ``fediscale-admin``: the collection's modules, over the instance's socket;
- ``fediscale-replica``: a replica's login to its master (``masteruser``);
- ``fediscale-sentinel``: the sentinels' login to the members (``sentinel auth-user``);
- ``default``: the login of a client that names no user. It has Mastodon's rights, never more, and takes
  ``redis_password``; the file has it ``off``, and the redis_live_settings module turns it off on a running
  instance once no client uses it any more (units that have not been restarted with their ``mastodon`` URL yet).

Passwords: each user's password on each instance (or replicated set, whose members share them) is derived from
the inventory's one secret (``redis_password``) with HMAC-SHA256 over the instance and the user, so a password
read on one app host opens neither another instance nor another user, and nothing needs storing.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

MASTODON_USER = "mastodon"
ADMIN_USER = "fediscale-admin"
REPLICATION_USER = "fediscale-replica"
SENTINEL_LINK_USER = "fediscale-sentinel"
DEFAULT_USER = "default"

# The commands Mastodon's user may not send, each one Mastodon 4.6 (app/, lib/, streaming/), Sidekiq 7 and their
# clients (redis-client, ioredis) never send, with what it would let a stolen password do.
MASTODON_DENIED_COMMANDS: Tuple[Tuple[str, str], ...] = (
    # tootctl cache clear is Rails.cache.clear under the "cache" namespace (lib/mastodon/redis_configuration.rb),
    # which deletes by SCAN and DEL; nothing else empties a database.
    ("flushall", "erase every database"),
    ("flushdb", "erase a database"),
    ("swapdb", "swap a database's data away"),
    ("migrate", "move keys to another server"),
    # Settings are the redis role's (the file and CONFIG SET with the admin user).
    ("config", "read the passwords (masterauth) and change any setting"),
    ("shutdown", "stop the instance"),
    ("debug", "crash or stall the instance"),
    ("module", "load code into the instance"),
    # Persistence runs on the instance's own schedule (save, appendfsync).
    ("save", "block the instance while it writes"),
    ("bgsave", "fork the instance at will"),
    ("bgrewriteaof", "fork the instance at will"),
    # Replication is the sentinels' and the collection's (redis_replication).
    ("replicaof", "make the instance copy another server's data"),
    ("slaveof", "make the instance copy another server's data"),
    ("failover", "hand the master's role away"),
    ("sync", "read the whole dataset as a replica"),
    ("psync", "read the whole dataset as a replica"),
    ("acl", "read and change users"),
    ("monitor", "read every other client's commands"),
    # Mastodon names its connections (CLIENT SETNAME, HELLO SETNAME) but never acts on others'.
    ("client|kill", "disconnect other clients"),
    ("client|pause", "stop every client"),
)

MASTODON_RULES: Tuple[str, ...] = ("~*", "&*", "+@all") + tuple("-" + name for name, _why in MASTODON_DENIED_COMMANDS)
ADMIN_RULES: Tuple[str, ...] = ("~*", "&*", "+@all")
# Redis's replication documentation (masteruser): what a replica sends its master.
REPLICATION_RULES: Tuple[str, ...] = ("+psync", "+replconf", "+ping")
# Redis Sentinel's documentation (ACL authentication), with REPLICAOF beside SLAVEOF for Valkey's sentinel.
SENTINEL_LINK_RULES: Tuple[str, ...] = ("&*", "+multi", "+exec", "+slaveof", "+replicaof", "+ping", "+subscribe",
                                        "+publish", "+config|rewrite", "+role", "+info", "+client|setname",
                                        "+client|kill", "+script|kill")

# Every user of an instance, with its rules; ``default`` last, so that the others exist before it is turned off.
INSTANCE_USERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    (ADMIN_USER, ADMIN_RULES),
    (MASTODON_USER, MASTODON_RULES),
    (REPLICATION_USER, REPLICATION_RULES),
    (SENTINEL_LINK_USER, SENTINEL_LINK_RULES),
    (DEFAULT_USER, MASTODON_RULES),
)


def set_scope(sentinel_master: str) -> str:
    """What the users' passwords of a replicated set are bound to: the set, whose members share them."""
    return "set:%s" % sentinel_master


def instance_scope(host: str, name: str, sentinel_master: Optional[str] = None) -> str:
    """What the users' passwords of an instance are bound to: its set, else its host and name."""
    return set_scope(sentinel_master) if sentinel_master else "%s/%s" % (host, name)


def user_password(secret: str, scope: str, user: str) -> str:
    """``user``'s password on the instance (or set) ``scope``, derived from the inventory's secret."""
    if not secret:
        raise ValueError("the Redis secret (redis_password) is empty")
    message = ("fediscale.mastodon redis %s %s" % (scope, user)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def digest(password: str) -> str:
    """How Redis stores a password (``#`` and the SHA-256 of it)."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def user_lines(secret: str, scope: str) -> List[str]:
    """The ``user`` lines of an instance's configuration file: digests only, ``default`` off."""
    lines = []
    for name, rules in INSTANCE_USERS:
        if name == DEFAULT_USER:
            state, password = "off", secret
        else:
            state, password = "on", user_password(secret, scope, name)
        lines.append(" ".join(["user", name, state, digest(password)] + list(rules)))
    return lines


def parse_user_line(line: str) -> Dict[str, Any]:
    """A ``user NAME on|off #DIGEST RULES...`` line as name, enabled, digest and rules."""
    words = line.split()
    if len(words) < 4 or words[0] != "user" or words[2] not in ("on", "off") or not words[3].startswith("#"):
        raise ValueError("not a user line the redis role writes: %r" % " ".join(words[:2]))
    return {"name": words[1], "enabled": words[2] == "on", "digest": words[3], "rules": words[4:]}


def acl_user_rules(rules: Sequence[str], digest_value: Optional[str], enabled: bool = True) -> List[str]:
    """The ``ACL SETUSER`` arguments that make a user exactly this: on (or off), one password (or none), these rules."""
    return ["reset", "on" if enabled else "off", digest_value or "nopass"] + list(rules)


def acl_user_differs(current: Optional[Mapping[str, Any]], rendered: Mapping[str, Any], digest_value: Optional[str],
                     enabled: bool = True) -> bool:
    """Whether a user (``ACL GETUSER``'s reply as a mapping; None for no such user) differs from the wanted one.

    ``rendered`` is the server's own ``ACL GETUSER`` reply for the wanted rules
    (set on a disabled scratch user): Redis 7.0 rewrites ``-@all +auth +ping …``
    into categories (``-@all +@fast …``) where 7.2 and Valkey keep it as given,
    so rules compare only in the server's rendering. ``digest_value`` is ``#``
    and the SHA-256 of the password, None for none.
    """
    if current is None:
        return True
    flags = [str(flag) for flag in current.get("flags") or []]
    if ("on" in flags) != enabled or ("nopass" in flags) != (digest_value is None):
        return True
    wanted_passwords = [] if digest_value is None else [digest_value.lstrip("#")]
    if sorted(str(item) for item in current.get("passwords") or []) != wanted_passwords:
        return True
    return any(_words(current.get(field)) != _words(rendered.get(field)) for field in ("commands", "keys", "channels"))


def _words(value: Any) -> List[str]:
    """An ACL field as words: Redis 7 reports keys and channels as one string, 6.2 as a list."""
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return str(value or "").split()


def parse_client_list(text: str) -> List[Dict[str, str]]:
    """``CLIENT LIST``'s reply as one mapping per client."""
    clients = []
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields:
            clients.append(fields)
    return clients


def default_user_clients(clients: Iterable[Mapping[str, str]], own_id: Optional[int] = None) -> List[str]:
    """The clients still logged in as the default user, as ``address (name)``: the units that have not moved to
    their own user yet. Replication links and sentinels are left out (they log in as their own users from their
    next connection), and so is the caller's connection."""
    found = []
    for client in clients:
        if client.get("user") != DEFAULT_USER or (own_id is not None and client.get("id") == str(own_id)):
            continue
        flags, name = client.get("flags", ""), client.get("name", "")
        if "S" in flags or "M" in flags or name.startswith("sentinel-"):
            continue
        found.append("%s (%s)" % (client.get("addr", "?"), name) if name else client.get("addr", "?"))
    return found
