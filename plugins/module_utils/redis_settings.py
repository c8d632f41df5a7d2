# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which of a Redis instance's settings a running server takes with ``CONFIG SET``, and which only a restart applies.

Redis reads a setting flagged ``IMMUTABLE_CONFIG`` only at start, and refuses ``CONFIG SET`` on one flagged
``PROTECTED_CONFIG`` while ``enable-protected-configs`` is off, as the collection leaves it (``src/config.c``;
Valkey's table is the same). Every other setting the redis role writes (``maxmemory``, ``maxmemory-policy``,
``appendonly``, ``appendfsync``, ``save``, ``bind``, ``port``, …) is applied live, so a sizing change never
restarts an instance. Pure functions; the module redis_live_settings talks to the server.
"""

from __future__ import annotations

import re
import shlex
from typing import Dict, Iterable, List, Mapping, Tuple

# Settings of the role's configuration file that a running server cannot take.
SETTINGS_READ_AT_START = frozenset({
    # IMMUTABLE_CONFIG
    "daemonize", "supervised", "pidfile", "unixsocket", "unixsocketperm", "logfile", "appendfilename",
    "appenddirname", "databases", "syslog-enabled", "syslog-ident",
    # PROTECTED_CONFIG
    "dir", "dbfilename",
    # Modifiable, but the redis role restarts for it: the TLS listener takes over the plain one's port.
    "tls-port",
})
# Compared and applied like the others, never shown.
SECRET_SETTINGS = frozenset({"requirepass", "masterauth"})
# Sizes Redis reads with units (memtoull) and reports in bytes.
SIZE_SETTINGS = frozenset({"maxmemory"})
# Names and paths, compared as written; other values (yes/no, policies, levels) Redis reports in lower case.
CASE_SENSITIVE_SETTINGS = frozenset({
    "dir", "logfile", "pidfile", "unixsocket", "dbfilename", "appendfilename", "appenddirname", "syslog-ident",
    "tls-cert-file", "tls-key-file", "tls-ca-cert-file",
}) | SECRET_SETTINGS
# Settings whose lines add up instead of replacing each other.
ACCUMULATING_SETTINGS = frozenset({"save"})

_SIZE = re.compile(r"^(\d+)(k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_UNITS = {None: 1, "k": 1000, "kb": 1024, "m": 1000 ** 2, "mb": 1024 ** 2, "g": 1000 ** 3, "gb": 1024 ** 3}


# Lines that are not settings: users (module_utils/redis_users.py), compared with ACL GETUSER instead.
NOT_SETTINGS = frozenset({"user"})


def parse_configuration(text: str) -> Dict[str, str]:
    """A ``redis.conf`` as ``{setting: value}``, values unquoted as Redis reads them; a later line wins.
    ``user`` lines are left out."""
    settings: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.split(None, 1)[0].lower() in NOT_SETTINGS:
            continue
        words = shlex.split(line)
        name, value = words[0].lower(), " ".join(words[1:])
        if name in ACCUMULATING_SETTINGS and settings.get(name):
            value = (settings[name] + " " + value).strip() if value else ""
        settings[name] = value
    return settings


def size_in_bytes(value: str) -> int:
    """A Redis size (``16mb``, ``16384kb``, ``1g``, ``0``) in bytes, with Redis's units: ``k`` is 1000, ``kb`` 1024."""
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError("%r is not a Redis size" % value)
    return int(match.group(1)) * _UNITS[match.group(2) and match.group(2).lower()]


def comparable(name: str, value: str) -> str:
    """A value as ``CONFIG GET`` reports it, so a file's line and a running server's answer compare equal."""
    if name in SIZE_SETTINGS:
        return str(size_in_bytes(value))
    if name in CASE_SENSITIVE_SETTINGS:
        return value
    return " ".join(value.split()).lower()


def settings_that_differ(wanted: Mapping[str, str], running: Mapping[str, str]) -> List[str]:
    """The names of ``wanted`` whose running value differs (a setting the server does not report differs)."""
    return sorted(name for name, value in wanted.items()
                  if name not in running or comparable(name, value) != comparable(name, running[name]))


def split_by_restart(names: Iterable[str]) -> Tuple[List[str], List[str]]:
    """``(applied live, applied by a restart)``."""
    names = sorted(names)
    return ([name for name in names if name not in SETTINGS_READ_AT_START],
            [name for name in names if name in SETTINGS_READ_AT_START])


def shown(settings: Mapping[str, str], names: Iterable[str]) -> str:
    """Lines for a diff: each named setting with its value, a secret's hidden."""
    return "".join("%s %s\n" % (name, "********" if name in SECRET_SETTINGS else settings.get(name, "(not set)"))
                   for name in sorted(names))


def aof_rewrite_state(persistence: Mapping[str, object]) -> str:
    """From ``INFO persistence``: ``running`` while a rewrite runs or waits, else ``ok`` or ``failed`` (the last one's)."""
    if int(persistence.get("aof_rewrite_in_progress", 0)) or int(persistence.get("aof_rewrite_scheduled", 0)):
        return "running"
    return "ok" if str(persistence.get("aof_last_bgrewrite_status", "ok")) == "ok" else "failed"
