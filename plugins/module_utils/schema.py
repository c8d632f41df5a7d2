# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster description: its sections, their keys, types and defaults.

Pure Python, no Ansible imports. Every inventory variable the plan reads is a
section prefix plus a key of that section (``web_concurrency`` is the key
``concurrency`` of the section ``web``), so this file is the one list of them.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, NamedTuple, Optional

MISSING = object()
AUTO = "auto"


class PlanInputError(ValueError):
    """Bad input: names the place (host, section, key), the value and the fix."""

    def __init__(self, where: str, problem: str, hint: str = "") -> None:
        self.where = where
        self.problem = problem
        self.hint = hint
        text = "%s: %s" % (where, problem)
        if hint:
            text += " (%s)" % hint
        super().__init__(text)


def suggest(name: str, known: List[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return "did you mean %r?" % close[0] if close else "known keys: %s" % ", ".join(sorted(known))


# --- value parsers: each takes (value, where) and returns the clean value ---

def parse_int(value: Any, where: str, minimum: int = 0, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool):
        raise PlanInputError(where, "expected a whole number, got the boolean %r" % value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise PlanInputError(where, "expected a whole number, got %r" % (value,))
    if value < minimum:
        raise PlanInputError(where, "must be at least %d, got %d" % (minimum, value))
    if maximum is not None and value > maximum:
        raise PlanInputError(where, "must be at most %d, got %d" % (maximum, value))
    return value


def parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "true", "on", "1", "no", "false", "off", "0"):
        return value.strip().lower() in ("yes", "true", "on", "1")
    raise PlanInputError(where, "expected true or false, got %r" % (value,))


def parse_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PlanInputError(where, "expected a non-empty string, got %r" % (value,))
    return value


_SIZE_UNITS = {"kb": 1, "mb": 1024, "gb": 1024 ** 2, "tb": 1024 ** 3}


def parse_size_kb(value: Any, where: str, bare_unit: Optional[str] = "kB") -> int:
    """A memory size as PostgreSQL writes it (``4MB``, ``16GB``), in kB.

    ``bare_unit`` is the unit of a bare number (PostgreSQL's ``work_mem`` takes
    kB); ``None`` refuses bare numbers so nobody has to guess the unit.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if bare_unit is None:
            raise PlanInputError(where, "a size needs a unit, got %r" % (value,), "write it like 16GB or 512MB")
        return parse_int(value, where) * _SIZE_UNITS[bare_unit.lower()]
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT][bB])\s*", value) if isinstance(value, str) else None
    if not match:
        raise PlanInputError(where, "expected a size such as 4MB or 16GB, got %r" % (value,))
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_size_kb(kb: int) -> str:
    """PGTune's and PostgreSQL's way of writing a size: the largest exact unit."""
    for unit, factor in (("TB", 1024 ** 3), ("GB", 1024 ** 2), ("MB", 1024)):
        if kb >= factor and kb % factor == 0:
            return "%d%s" % (kb // factor, unit)
    return "%dkB" % kb


class Field:
    """One key of a section: how to parse it and its default."""

    def __init__(self, parse: Callable[[Any, str], Any], default: Any = MISSING, doc: str = "") -> None:
        self.parse = parse
        self.default = default
        self.doc = doc

    @property
    def required(self) -> bool:
        return self.default is MISSING


def integer(minimum: int = 0, maximum: Optional[int] = None) -> Callable[[Any, str], int]:
    return lambda value, where: parse_int(value, where, minimum, maximum)


def integer_or_auto(minimum: int = 0) -> Callable[[Any, str], Any]:
    def parse(value: Any, where: str) -> Any:
        if value == AUTO:
            return AUTO
        return parse_int(value, where, minimum)
    return parse


def optional(parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, where: None if value is None else parse(value, where)


def choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(value: Any, where: str) -> str:
        if value not in choices:
            raise PlanInputError(where, "expected one of %s, got %r" % (", ".join(choices), value))
        return value
    return parse


def version(value: Any, where: str) -> str:
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", text):
        raise PlanInputError(where, "expected a version such as 4.5 or 1.18, got %r" % (value,))
    return text


def version_tuple(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


def string_list(value: Any, where: str) -> List[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise PlanInputError(where, "expected a list of strings, got %r" % (value,))
    return [parse_str(item, "%s[%d]" % (where, index)) for index, item in enumerate(value)]


def env_mapping(value: Any, where: str) -> Dict[str, str]:
    """Environment variables: names as written, values as strings (as a process sees them)."""
    if not isinstance(value, Mapping):
        raise PlanInputError(where, "expected a mapping of environment variables, got %r" % (value,))
    result = {}
    for name, item in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise PlanInputError(where, "%r is not an environment variable name" % (name,))
        if isinstance(item, bool):
            item = "true" if item else "false"
        if item is None or isinstance(item, (list, dict)):
            raise PlanInputError("%s.%s" % (where, name), "expected a string or number, got %r" % (item,))
        result[name] = str(item)
    return result


def count_mapping(value: Any, where: str) -> Dict[str, int]:
    if not isinstance(value, Mapping):
        raise PlanInputError(where, "expected a mapping of name to connection count, got %r" % (value,))
    return {str(name): parse_int(item, "%s.%s" % (where, name)) for name, item in value.items()}


LIVE_LIMITS = ("max_connections", "superuser_reserved_connections", "reserved_connections")


def live_limits(value: Any, where: str) -> Dict[str, Any]:
    """What was read from a running server: its limits, or why they could not be read."""
    if not isinstance(value, Mapping) or not ("error" in value or all(key in value for key in LIVE_LIMITS)):
        raise PlanInputError(where, "expected %s, or error, got %r" % (", ".join(LIVE_LIMITS), value))
    if "error" in value:
        return {"error": parse_str(value["error"], where + ".error")}
    return {key: parse_int(value[key], "%s.%s" % (where, key)) for key in LIVE_LIMITS}


def address_list(value: Any, where: str) -> str:
    """TRUSTED_PROXY_IP: addresses or networks, separated by commas or spaces (Mastodon parses each with IPAddr)."""
    text = parse_str(value, where)
    for item in re.split(r"[\s,]+", text.strip()):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise PlanInputError(where, "%r is not an IP address or network" % item,
                                 "Mastodon refuses to boot with it; give addresses such as 10.0.0.5 or 10.0.0.0/24")
    return text


def port(value: Any, where: str) -> int:
    return parse_int(value, where, 1, 65535)


def port_list(value: Any, where: str) -> List[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise PlanInputError(where, "expected a list of ports, got %r" % (value,))
    ports = [port(item, "%s[%d]" % (where, index)) for index, item in enumerate(value)]
    if len(set(ports)) != len(ports):
        raise PlanInputError(where, "lists a port twice: %s" % ports)
    return ports


def records(fields: Dict[str, Field], what: str) -> Callable[[Any, str], List[Dict[str, Any]]]:
    """A list of mappings, each checked against ``fields`` (typos are errors)."""
    def parse(value: Any, where: str) -> List[Dict[str, Any]]:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise PlanInputError(where, "expected a list of %s, got %r" % (what, value))
        return [parse_section(item, fields, "%s[%d]" % (where, index)) for index, item in enumerate(value)]
    return parse


def parse_section(value: Any, fields: Dict[str, Field], where: str) -> Dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise PlanInputError(where, "expected a mapping, got %r" % (value,))
    known = list(fields)
    for key in value:
        if key not in fields:
            raise PlanInputError("%s.%s" % (where, key), "unknown key", suggest(str(key), known))
    result = {}
    for key, field in fields.items():
        if key in value and value[key] is not None:
            result[key] = field.parse(value[key], "%s.%s" % (where, key))
        elif field.required:
            raise PlanInputError("%s.%s" % (where, key), "is required but missing", field.doc)
        else:
            default = field.default
            result[key] = copy.deepcopy(default) if isinstance(default, (dict, list)) else default
    return result


# --- the sections ---

CLUSTER = {
    "version": Field(version, "4.5", "Mastodon version"),
    "experimental_features": Field(string_list, [], "EXPERIMENTAL_FEATURES, e.g. [fasp]"),
    "request_timeout": Field(integer(1), 120, "seconds Mastodon works on a request"),
    "trusted_proxy_ip": Field(optional(address_list), None, "TRUSTED_PROXY_IP: the proxies' addresses"),
    "migrations_via": Field(choice("direct", "pgbouncer"), "direct", "how rails db:migrate reaches PostgreSQL"),
    "db_name": Field(parse_str, "mastodon_production", "DB_NAME: Mastodon's database"),
    "db_user": Field(parse_str, "mastodon", "DB_USER: the role Mastodon connects as"),
    "direct_connections": Field(count_mapping, {"migrations": 1, "tootctl": 1},
                                "connections that bypass pgbouncer"),
    "redis_settings": Field(optional(env_mapping), None, "Mastodon's REDIS_* settings, when not derived"),
    "redis_sentinel_quorum": Field(integer_or_auto(1), AUTO,
                                   "sentinels that must agree a master is down; default a majority"),
    "redis_sentinel_down_after_ms": Field(integer(1000), 30000,
                                          "milliseconds a master stays unreachable before it counts as down"),
}

HOST = {
    "nofile_hard_limit": Field(integer(1), 524288, "the host's hard open-file limit"),
    "env_production": Field(env_mapping, {}, "sizing variables found in .env.production"),
    "environment": Field(env_mapping, {}, "extra variables in every Mastodon unit's environment"),
    "address": Field(optional(parse_str), None, "address other hosts use for this host"),
}

POSTGRESQL = {
    "role": Field(choice("primary", "replica"), "primary", "primary or replica"),
    "max_connections": Field(integer(1), 200, "PostgreSQL max_connections"),
    "superuser_reserved_connections": Field(integer(0), 3, ""),
    "reserved_connections": Field(integer(0), 0, "PostgreSQL 16+"),
    "work_mem": Field(optional(parse_size_kb), None, "default: the PGTune value for this host"),
    "ram": Field(lambda v, w: parse_size_kb(v, w, None), MISSING, "RAM of the database host, e.g. 16GB"),
    "cpus": Field(optional(integer(1)), None, "CPU count, for PGTune"),
    "disk_type": Field(choice("ssd", "nvme", "san", "hdd"), "ssd", ""),
    "database_size": Field(choice("less_ram", "mid_ram", "greater_ram"), "mid_ram", "database size relative to RAM"),
    "version": Field(integer(10), 15, "PostgreSQL major version"),
    "acknowledge_max_connections_over_1000": Field(parse_bool, False, ""),
    "limits_from": Field(choice("inventory", "live"), "inventory",
                         "where max_connections and the reserved slots come from: the inventory, or the running "
                         "server (one the postgresql role does not manage)"),
    "live_limits": Field(optional(live_limits), None, "set by site.yml's plan play from the running server"),
}

WEB = {
    "concurrency": Field(integer(1), 2, "WEB_CONCURRENCY: Puma workers"),
    "max_threads": Field(optional(integer(1)), None, "MAX_THREADS: threads per worker"),
    "db_pool": Field(optional(integer(1)), None, "DB_POOL of each worker"),
    "port": Field(port, 3000, ""),
}

STREAMING = {
    "ports": Field(port_list, [4000], "one mastodon-streaming@PORT instance per port"),
    "db_pool": Field(optional(integer(1)), None, "DB_POOL of each instance"),
}

SIDEKIQ_QUEUE = {
    "queue": Field(optional(parse_str), None, "the one queue of this unit"),
    "queues": Field(optional(string_list), None, "several queues (refused: one queue per unit)"),
    "instances": Field(integer(0), 1, "processes of this unit"),
    "concurrency": Field(optional(integer(1)), None, "sidekiq -c"),
    "db_pool": Field(optional(integer(1)), None, "DB_POOL of each process"),
}

SIDEKIQ = {
    "queues": Field(records(SIDEKIQ_QUEUE, "queue units"), [], "one entry per queue unit"),
}

PGBOUNCER = {
    "enabled": Field(parse_bool, True, "pgbouncer in front of this host's processes"),
    "pool_mode": Field(choice("transaction", "session", "statement"), "transaction", ""),
    "default_pool_size": Field(integer_or_auto(1), AUTO, "server connections per database/user pair"),
    "reserve_pool_size": Field(integer(0), 0, ""),
    "max_client_conn": Field(integer_or_auto(1), AUTO, ""),
    "max_db_connections": Field(integer(0), 0, "0: unlimited"),
    "processes": Field(integer(1), 1, "pgbouncer processes on this host"),
    "limit_nofile": Field(integer_or_auto(1), AUTO, "LimitNOFILE of each process"),
    "users": Field(integer(1), 1, "database users that connect through it"),
    "version": Field(version, "1.18", "pgbouncer version (Debian 12: 1.18)"),
}

REDIS_INSTANCE = {
    "name": Field(parse_str, MISSING, "instance name, e.g. cache"),
    "purpose": Field(choice("cache", "persistent", "sidekiq"), MISSING, "cache, persistent or sidekiq"),
    "port": Field(port, 6379, ""),
    "maxmemory": Field(optional(lambda v, w: parse_size_kb(v, w, None)), None, "e.g. 2GB"),
    "maxmemory_policy": Field(optional(parse_str), None, "default by purpose"),
    "appendonly": Field(optional(parse_bool), None, "default by purpose"),
    "appendfsync": Field(choice("always", "everysec", "no"), "everysec", ""),
    "save": Field(optional(lambda v, w: v if isinstance(v, str) else " ".join(string_list(v, w))), None,
                  "RDB schedule; \"\" disables it"),
    "sentinel_master": Field(optional(parse_str), None,
                             "the name Sentinel monitors this instance's replicated set by; the instances of one "
                             "name on several hosts form the set"),
}

REDIS = {
    "instances": Field(records(REDIS_INSTANCE, "Redis instances"), [], ""),
    "sentinel": Field(parse_bool, False, "this host runs a Redis Sentinel that monitors every replicated set"),
    "sentinel_port": Field(port, 26379, ""),
}

NGINX = {
    "expected_clients": Field(integer(1), 2048, "client connections nginx should hold at once"),
    "worker_connections": Field(integer_or_auto(1), AUTO, "default 2 × expected_clients (a proxied client holds two)"),
    "worker_rlimit_nofile": Field(integer_or_auto(1), AUTO, "default 2 × worker_connections"),
    "limit_nofile": Field(integer_or_auto(1), AUTO, "systemd LimitNOFILE; default worker_rlimit_nofile"),
    "proxy_read_timeout": Field(integer(1), 120, "seconds"),
}


class Section(NamedTuple):
    fields: Dict[str, Field]
    group: Optional[str]  # the inventory group that brings the section; None: every host, or app hosts
    prefix: str  # of its inventory variables


HOST_SECTIONS = {
    "mastodon": Section(HOST, None, "mastodon_"),
    "postgresql": Section(POSTGRESQL, "db", "postgresql_"),
    "redis": Section(REDIS, "redis", "redis_"),
    "web": Section(WEB, "web", "web_"),
    "streaming": Section(STREAMING, "streaming", "streaming_"),
    "sidekiq": Section(SIDEKIQ, "sidekiq", "sidekiq_"),
    "pgbouncer": Section(PGBOUNCER, None, "pgbouncer_"),
    "nginx": Section(NGINX, "proxy", "nginx_"),
}
APP_SECTIONS = ("web", "streaming", "sidekiq")
GROUPS = tuple(section.group for section in HOST_SECTIONS.values() if section.group)


def parse_description(description: Any) -> Dict[str, Any]:
    """Check a cluster description and fill in every default."""
    if not isinstance(description, Mapping):
        raise PlanInputError("cluster description", "expected a mapping with keys mastodon and hosts, got %r"
                             % (type(description).__name__,))
    for key in description:
        if key not in ("mastodon", "hosts"):
            raise PlanInputError(str(key), "unknown top-level key", suggest(str(key), ["mastodon", "hosts"]))
    hosts = description.get("hosts")
    if not isinstance(hosts, Mapping) or not hosts:
        raise PlanInputError("hosts", "expected a mapping of host name to its sections, got %r" % (hosts,),
                             "list at least the database host and one Mastodon host")
    result = {"mastodon": parse_section(description.get("mastodon"), CLUSTER, "mastodon"), "hosts": {}}
    for name, sections in hosts.items():
        where = "hosts.%s" % name
        if not isinstance(sections, Mapping):
            raise PlanInputError(where, "expected a mapping of sections, got %r" % (sections,))
        for section in sections:
            if section not in HOST_SECTIONS:
                raise PlanInputError("%s.%s" % (where, section), "unknown section", suggest(str(section),
                                                                                            list(HOST_SECTIONS)))
        parsed = {"mastodon": parse_section(sections.get("mastodon"), HOST, where + ".mastodon")}
        for section, spec in HOST_SECTIONS.items():
            if section != "mastodon" and section in sections:
                parsed[section] = parse_section(sections[section], spec.fields, "%s.%s" % (where, section))
        if any(section in parsed for section in APP_SECTIONS) and "pgbouncer" not in parsed:
            parsed["pgbouncer"] = parse_section({}, PGBOUNCER, where + ".pgbouncer")
        result["hosts"][str(name)] = parsed
    return result
