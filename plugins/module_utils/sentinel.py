# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is master of a replicated Redis set, and what to change so an instance or a sentinel agrees.

Pure functions over plain data; the modules redis_replication and
redis_sentinel read the live answers and call these. Once the sentinels
monitor a set they decide its master: these functions fall back to the
plan's initial master only while no sentinel names one (a new set).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import ADMIN_USER, MASTODON_USER

Address = Tuple[str, int]

SENTINEL_PORT = 26379
REDIS_PORT = 6379

# Who may do what on a sentinel (Redis ACL users; Sentinel has them since Redis 6.2).
# The collection's user, and the one the sentinels log in to each other with (sentinel-user): everything. The
# same names as the instances' users (module_utils/redis_users.py).
SENTINEL_ADMIN_USER = ADMIN_USER
# Mastodon's user (REDIS_SENTINEL_USERNAME), and the default user for clients without credentials: ask only.
SENTINEL_MASTODON_USER = MASTODON_USER
# What a client that follows a master sends a sentinel, and nothing that changes one:
# - redis-client (Ruby, lib/mastodon/redis_configuration.rb's sentinel options): HELLO with AUTH,
#   SENTINEL GET-MASTER-ADDR-BY-NAME, SENTINELS to refresh its list, REPLICAS (SLAVES before Redis 5) for a replica;
# - ioredis (streaming/redis.js): AUTH, SENTINEL GET-MASTER-ADDR-BY-NAME, SENTINELS, and the +switch-master
#   subscription when it watches for failovers;
# - health checks: PING, ROLE.
# Never MONITOR, REMOVE, SET, RESET, FAILOVER, CONFIG, ACL, DEBUG or SHUTDOWN: a client that could would hand the
# set's clients, and their password, to any master it names.
SENTINEL_ASK_RULES = ("resetchannels", "&+switch-master", "-@all", "+auth", "+hello", "+ping", "+role",
                      "+sentinel|get-master-addr-by-name", "+sentinel|sentinels", "+sentinel|replicas",
                      "+sentinel|slaves", "+subscribe", "+unsubscribe")
SENTINEL_ADMIN_RULES = ("~*", "&*", "+@all")


def parse_address(value: str, default_port: int) -> Address:
    """``host:port`` (``[v6]:port`` too) as a pair; a bare host takes ``default_port``."""
    value = value.strip()
    if value.startswith("["):
        host, rest = value[1:].split("]", 1)
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, colon, port = value.rpartition(":")
    if not colon or ":" in host:
        return value, default_port
    return host, int(port)


def format_address(address: Address) -> str:
    host, port = address
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def ask_sentinels(ask: Callable[[Address, str], Optional[Sequence[Any]]], sentinels: Iterable[str],
                  names: Sequence[str]) -> Tuple[Dict[str, List[Optional[Address]]], List[str]]:
    """Each sentinel's answer to ``SENTINEL GET-MASTER-ADDR-BY-NAME`` for every name, and the sentinels that gave none.

    ``ask(address, name)`` sends the command and returns the reply; it raises
    ``ConnectionError`` (or a subclass the caller maps to it) when the sentinel
    cannot be reached, and that sentinel is skipped.
    """
    answers: Dict[str, List[Optional[Address]]] = {name: [] for name in names}
    unreachable = []
    for sentinel in sentinels:
        address = parse_address(sentinel, SENTINEL_PORT)
        try:
            replies = [(name, ask(address, name)) for name in names]
        except ConnectionError:
            unreachable.append(sentinel)
            continue
        for name, reply in replies:
            answers[name].append((str(reply[0]), int(reply[1])) if reply else None)
    return answers, unreachable


def master_named_by_sentinels(answers: Sequence[Optional[Address]]) -> Optional[Address]:
    """The master most sentinels name, or None when none names one.

    A tie goes to the answer given first, so every host that asks the
    sentinels in the same order decides alike.
    """
    named = [tuple(answer) for answer in answers if answer]
    if not named:
        return None
    counts = Counter(named)
    best = max(counts.values())
    return next(answer for answer in named if counts[answer] == best)  # type: ignore[return-value]


def current_master(answers: Sequence[Optional[Address]], initial_master: Address) -> Tuple[Address, str]:
    """The master to follow and who named it: the sentinels, or the plan for a set they do not know yet."""
    named = master_named_by_sentinels(answers)
    if named is not None:
        return named, "sentinels"
    return tuple(initial_master), "plan"  # type: ignore[return-value]


def replication_change(own: Address, role: Dict[str, Any], master: Address, named_by: str) -> Optional[str]:
    """``REPLICAOF`` arguments that make this instance follow ``master``, or None when it already does.

    ``role`` is the instance's ``ROLE`` reply as ``{"role": "master"}`` or
    ``{"role": "slave", "master": (host, port)}``. The master itself is left
    alone once the sentinels named it; only a new set's initial master is
    told to stop replicating.
    """
    if tuple(own) == tuple(master):
        if role["role"] != "master" and named_by == "plan":
            return "NO ONE"
        return None
    if role["role"] == "slave" and tuple(role.get("master") or ()) == tuple(master):
        return None
    return "%s %d" % master


def flat_pairs(reply: List[Any]) -> Dict[str, str]:
    """A ``[key, value, key, value]`` reply (``SENTINEL MASTERS`` entries) as a mapping."""
    return {str(reply[index]): str(reply[index + 1]) for index in range(0, len(reply) - 1, 2)}


def sentinel_changes(monitored: Dict[str, Dict[str, str]], wanted: List[Dict[str, Any]],
                     answers: Dict[str, Sequence[Optional[Address]]], purge: bool) -> List[List[Any]]:
    """The ``SENTINEL`` commands that make a sentinel monitor exactly ``wanted``.

    ``monitored`` is ``SENTINEL MASTERS`` by name; each wanted set carries
    ``name``, ``initial_master`` (host, port), ``quorum`` and ``down_after_ms``.
    A set the sentinel does not monitor yet starts at the master the other
    sentinels name (``answers``), or at the plan's initial master. A monitored
    set keeps the master the sentinel found; only its quorum and timeout are
    corrected. ``auth-pass`` is not readable back and is left to the caller.
    """
    commands: List[List[Any]] = []
    names = {entry["name"] for entry in wanted}
    if purge:
        commands.extend(["REMOVE", name] for name in sorted(monitored) if name not in names)
    for entry in wanted:
        current = monitored.get(entry["name"])
        if current is None:
            master = current_master(answers.get(entry["name"], []), tuple(entry["initial_master"]))[0]
            commands.append(["MONITOR", entry["name"], master[0], master[1], entry["quorum"]])
            commands.append(["SET", entry["name"], "down-after-milliseconds", entry["down_after_ms"]])
            continue
        if int(current.get("quorum", 0)) != entry["quorum"]:
            commands.append(["SET", entry["name"], "quorum", entry["quorum"]])
        if int(current.get("down-after-milliseconds", 0)) != entry["down_after_ms"]:
            commands.append(["SET", entry["name"], "down-after-milliseconds", entry["down_after_ms"]])
    return commands


def unplanned_master(master: Address, members: Iterable[Address]) -> Optional[str]:
    """Why ``master`` may not be followed, or None when it is one of the set's planned ``members``.

    Sentinel names whatever master it was told to monitor; an instance that
    followed an address outside the plan would send it the set's password
    and replace its data with that server's.
    """
    planned = [tuple(member) for member in members]
    if tuple(master) in planned:
        return None
    return "%s is not one of its planned members (%s)" % (format_address(master),
                                                          ", ".join(format_address(item) for item in planned))


def unplanned_master_recovery(name: str) -> str:
    """What to do about a set whose master is outside its planned members, for both modules' errors."""
    return ("Nothing was changed. If that server is not yours, the sentinels were reconfigured: on each sentinel that "
            "names it, as %s, SENTINEL REMOVE %s, then SENTINEL MONITOR %s at the member with the newest data (the "
            "highest master_repl_offset in INFO replication), and run again; if it is a new member, add it to the "
            "inventory first." % (SENTINEL_ADMIN_USER, name, name))
