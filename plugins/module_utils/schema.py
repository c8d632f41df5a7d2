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

from ansible_collections.fediscale.mastodon.plugins.module_utils import debian, media

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

# A number no field accepts, so a string of thousands of digits is refused
# before Python converts it (and a field without its own range still has one).
INT_CEILING = 2 ** 31 - 1
_INT_TEXT = re.compile(r"\s*-?[0-9]{1,12}\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _show(value: Any) -> str:
    """A value for a message: short, on one line, whatever the input."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_int(value: Any, where: str, minimum: int = 0, maximum: Optional[int] = None) -> int:
    """A whole number in [minimum, maximum]; integer strings (INI inventories) count, digits in ASCII only."""
    if maximum is None:
        maximum = INT_CEILING
    if isinstance(value, bool):
        raise PlanInputError(where, "expected a whole number, got the boolean %r" % value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise PlanInputError(where, "expected a whole number from %d to %d, got %s" % (minimum, maximum, _show(value)))
    if not minimum <= value <= maximum:
        raise PlanInputError(where, "must be from %d to %d, got %s" % (minimum, maximum, _show(value)))
    return value


def parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "true", "on", "1", "no", "false", "off", "0"):
        return value.strip().lower() in ("yes", "true", "on", "1")
    raise PlanInputError(where, "expected true or false, got %s" % _show(value))


def parse_str(value: Any, where: str) -> str:
    """A name or setting: not blank, no control characters (they end up in files and unit names)."""
    if not isinstance(value, str) or not value.strip():
        raise PlanInputError(where, "expected a non-empty string, got %s" % _show(value))
    if _CONTROL.search(value):
        raise PlanInputError(where, "has a control character: %s" % _show(value), "remove it")
    return value


# PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
POSTGRESQL_NAME_BYTES = 63


def postgresql_name(value: Any, where: str) -> str:
    """A database or role name as pgbouncer.ini, pg_hba.conf and DB_NAME/DB_USER carry it."""
    text = parse_str(value, where)
    if re.search(r"[\s,\"'=#;]", text):
        raise PlanInputError(where, "%s has white space or a quote, comma, =, # or ;" % _show(text),
                             "pg_hba.conf and pgbouncer.ini cannot hold it unquoted; use letters, digits and _")
    if len(text.encode("utf-8")) > POSTGRESQL_NAME_BYTES:
        raise PlanInputError(where, "%s is longer than PostgreSQL's %d bytes" % (_show(text), POSTGRESQL_NAME_BYTES))
    return text


# Labels of a DNS name; _ too, which /etc/hosts and many inventories use.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host_address(value: Any, where: str) -> str:
    """An IP address or a DNS name, as other hosts, nginx upstreams and pg_hba.conf use it."""
    text = parse_str(value, where)
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if len(text) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in text.rstrip(".").split(".")):
        raise PlanInputError(where, "%s is neither an IP address nor a DNS name" % _show(text),
                             "give the address other hosts reach this one at, e.g. 10.0.0.21")
    return text


_SIZE_UNITS = {"kb": 1, "mb": 1024, "gb": 1024 ** 2, "tb": 1024 ** 3}


def parse_size_kb(value: Any, where: str, bare_unit: Optional[str] = "kB", minimum_kb: int = 0,
                  maximum_kb: int = 64 * 1024 ** 3) -> int:
    """A memory size as PostgreSQL writes it (``4MB``, ``16GB``), in kB.

    ``bare_unit`` is the unit of a bare number (PostgreSQL's ``work_mem`` takes
    kB); ``None`` refuses bare numbers so nobody has to guess the unit.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if bare_unit is None:
            raise PlanInputError(where, "a size needs a unit, got %s" % _show(value), "write it like 16GB or 512MB")
        kb = parse_int(value, where, 0, maximum_kb) * _SIZE_UNITS[bare_unit.lower()]
    else:
        match = re.fullmatch(r"\s*([0-9]{1,12})\s*([kKmMgGtT][bB])\s*", value) if isinstance(value, str) else None
        if not match:
            raise PlanInputError(where, "expected a size such as 4MB or 16GB, got %s" % _show(value))
        kb = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not minimum_kb <= kb <= maximum_kb:
        raise PlanInputError(where, "must be from %s to %s, got %s" % (
            format_size_kb(minimum_kb), format_size_kb(maximum_kb), _show(value)))
    return kb


def size_kb(minimum_kb: int, bare_unit: Optional[str] = None) -> Callable[[Any, str], int]:
    return lambda value, where: parse_size_kb(value, where, bare_unit, minimum_kb)


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


def integer(minimum: int = 0, maximum: int = INT_CEILING) -> Callable[[Any, str], int]:
    return lambda value, where: parse_int(value, where, minimum, maximum)


def bool_or_auto(value: Any, where: str) -> Any:
    return AUTO if value == AUTO else parse_bool(value, where)


def integer_or_auto(minimum: int = 0, maximum: int = INT_CEILING) -> Callable[[Any, str], Any]:
    def parse(value: Any, where: str) -> Any:
        if value == AUTO:
            return AUTO
        return parse_int(value, where, minimum, maximum)
    return parse


def optional(parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, where: None if value is None else parse(value, where)


def choice(*choices: str, refused: Optional[Dict[str, tuple]] = None) -> Callable[[Any, str], str]:
    """One of ``choices``; ``refused`` maps a value the service knows but Mastodon cannot use to (why, fix)."""
    def parse(value: Any, where: str) -> str:
        if refused and isinstance(value, str) and value in refused:
            raise PlanInputError(where, "%s: %s" % (_show(value), refused[value][0]), refused[value][1])
        if value not in choices:
            raise PlanInputError(where, "expected one of %s, got %s" % (", ".join(choices), _show(value)))
        return value
    return parse


def version(value: Any, where: str) -> str:
    """A version as a string. YAML reads an unquoted 4.10 as the number 4.1: a number is refused."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise PlanInputError(where, "the version is the number %s, not a string; YAML reads 4.10 as 4.1" % _show(value),
                             "quote it: '%s'" % value)
    text = value.strip() if isinstance(value, str) else ""
    if not re.fullmatch(r"[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,3})?", text):
        raise PlanInputError(where, "expected a version such as '4.6' or '1.24', got %s" % _show(value))
    return text


def version_tuple(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


def string_list(value: Any, where: str, maximum: int = 100) -> List[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise PlanInputError(where, "expected a list of strings, got %s" % _show(value))
    if len(value) > maximum:
        raise PlanInputError(where, "lists %d items; at most %d are accepted" % (len(value), maximum))
    return [parse_str(item, "%s[%d]" % (where, index)) for index, item in enumerate(value)]


def port(value: Any, where: str) -> int:
    return parse_int(value, where, 1, 65535)


# Mastodon's Redis settings (lib/mastodon/redis_configuration.rb) by suffix, checked as Mastodon would parse them.
REDIS_SETTING_PREFIXES = ("SIDEKIQ_REDIS_", "CACHE_REDIS_", "REDIS_")


def _redis_url(value: str, where: str) -> str:
    match = re.fullmatch(r"(redis|rediss|unix)://(.*)", value)
    if not match:
        raise PlanInputError(where, "%s is not a redis://, rediss:// or unix:// URL" % _show(value),
                             "write it like redis://10.0.0.11:6379/0")
    scheme, rest = match.groups()
    if scheme == "unix":
        return value
    authority = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host, colon, number = authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    if not colon:
        host, number = authority, ""
    if not host.strip("[]"):
        raise PlanInputError(where, "%s names no host" % _show(value), "write it like redis://10.0.0.11:6379/0")
    if number:
        port(number, where + " (its port)")
    database = rest.split("/", 1)[1] if "/" in rest else ""
    if database:
        parse_int(database, where + " (its database number)", 0, 1000000)
    return value


def _redis_sentinels(value: str, where: str) -> str:
    for item in value.split(","):
        host, colon, number = item.strip().rpartition(":")
        host_address(host if colon else item.strip(), where)
        if colon:
            port(number, where)
    return value


REDIS_SETTING_CHECKS: Dict[str, Callable[[str, str], Any]] = {
    "URL": _redis_url,
    "HOST": host_address,
    "PORT": port,
    "DB": lambda value, where: parse_int(value, where, 0, 1000000),
    "SENTINELS": _redis_sentinels,
    "SENTINEL_PORT": port,
}


def check_mastodon_setting(name: str, value: str, where: str) -> None:
    """Settings Mastodon parses itself (Redis URLs, hosts, ports): refused here rather than at boot."""
    for prefix in REDIS_SETTING_PREFIXES:
        if name.startswith(prefix):
            check = REDIS_SETTING_CHECKS.get(name[len(prefix):])
            if check is not None:
                check(value, where)
            return


def env_mapping(value: Any, where: str) -> Dict[str, str]:
    """Environment variables: names as written, values as strings (as a process sees them)."""
    if not isinstance(value, Mapping):
        raise PlanInputError(where, "expected a mapping of environment variables, got %s" % _show(value))
    result = {}
    for name, item in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
            raise PlanInputError(where, "%s is not an environment variable name" % _show(name))
        if isinstance(item, bool):
            item = "true" if item else "false"
        if item is None or isinstance(item, (list, dict)) or isinstance(item, float) and not item.is_integer():
            raise PlanInputError("%s.%s" % (where, name), "expected a string or whole number, got %s" % _show(item))
        text = str(int(item)) if isinstance(item, float) else str(item)
        if _CONTROL.search(text) or len(text) > 4096:
            raise PlanInputError("%s.%s" % (where, name), "a control character or more than 4096 characters: %s"
                                 % _show(text), "an environment file holds one line per variable")
        check_mastodon_setting(name, text, "%s.%s" % (where, name))
        result[name] = text
    return result


# Variables that size a process. In mastodon_environment they would reach every
# unit on the host, and systemd lets the environment file win over each unit's own.
SIZING_VARIABLES = {"DB_POOL": "web_db_pool, streaming_db_pool or sidekiq_queues[].db_pool",
                    "MAX_THREADS": "web_max_threads", "WEB_CONCURRENCY": "web_concurrency",
                    "SIDEKIQ_CONCURRENCY": "sidekiq_queues[].concurrency"}


def unit_environment(value: Any, where: str) -> Dict[str, str]:
    """mastodon_environment: every unit's extra variables, sizing and media excepted."""
    result = env_mapping(value, where)
    for name in media.MEDIA_VARIABLES:
        if name in result:
            raise PlanInputError("%s.%s" % (where, name), "is a media setting the plan writes itself from "
                                 "mastodon_media and mastodon_s3_*, and checks",
                                 "remove it and set %s" % ("mastodon_media" if name == "S3_ENABLED" else
                                                           "mastodon_media_path" if name == "PAPERCLIP_ROOT_PATH"
                                                           else "mastodon_" + next(
                                                               key for key, item in media.S3_SETTINGS.items()
                                                               if item == name)))
    for name, variable in SIZING_VARIABLES.items():
        if name in result:
            raise PlanInputError("%s.%s" % (where, name), "sizes every Mastodon unit on the host at once, and the "
                                 "environment file would win over each unit's own value",
                                 "remove it and set %s" % variable)
    return result


def count_mapping(value: Any, where: str) -> Dict[str, Any]:
    """Named direct connections: a count each (0 to 1000), or auto where the model knows the count."""
    if not isinstance(value, Mapping):
        raise PlanInputError(where, "expected a mapping of name to connection count, got %s" % _show(value))
    result = {}
    for name, item in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise PlanInputError(where, "%s is not a name (letters, digits, _ . -)" % _show(name))
        result[name] = integer_or_auto(0, 1000)(item, "%s.%s" % (where, name))
    return result


LIVE_LIMITS = ("max_connections", "superuser_reserved_connections", "reserved_connections")


def live_limits(value: Any, where: str) -> Dict[str, Any]:
    """What was read from a running server: its limits, or why they could not be read."""
    if not isinstance(value, Mapping) or not ("error" in value or all(key in value for key in LIVE_LIMITS)):
        raise PlanInputError(where, "expected %s, or error, got %s" % (", ".join(LIVE_LIMITS), _show(value)))
    if "error" in value:
        # A driver's message may span lines: one line here, since findings are one line each.
        return {"error": parse_str(" ".join(str(value["error"]).split()), where + ".error")}
    return {key: parse_int(value[key], "%s.%s" % (where, key)) for key in LIVE_LIMITS}


def address_list(value: Any, where: str) -> str:
    """TRUSTED_PROXY_IP: addresses or networks, separated by commas or spaces (Mastodon parses each with IPAddr)."""
    text = parse_str(value, where)
    for item in re.split(r"[\s,]+", text.strip()):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise PlanInputError(where, "%s is not an IP address or network" % _show(item),
                                 "Mastodon refuses to boot with it; give addresses such as 10.0.0.5 or 10.0.0.0/24")
        if network.prefixlen == 0:
            raise PlanInputError(where, "%s trusts every address: any client could set X-Forwarded-For and "
                                 "pose as any other" % item, "list only your proxies' addresses, e.g. 10.0.0.5")
    return text


def network_list(value: Any, where: str) -> List[str]:
    """Addresses or networks (10.0.0.5, 10.0.1.0/24, fd00::/64), as a list."""
    items = string_list(value, where, 256)
    for index, item in enumerate(items):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise PlanInputError("%s[%d]" % (where, index), "%s is not an IP address or network" % _show(item),
                                 "give addresses or networks such as 10.0.0.5 or 10.0.1.0/24")
        if network.prefixlen == 0:
            raise PlanInputError("%s[%d]" % (where, index), "%s is every address" % item,
                                 "list only the hosts that administer the data tier (a bastion, monitoring)")
    return items


def port_list(value: Any, where: str) -> List[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise PlanInputError(where, "expected a list of ports, got %s" % _show(value))
    if len(value) > 64:
        raise PlanInputError(where, "lists %d ports; at most 64 are accepted" % len(value))
    ports = [port(item, "%s[%d]" % (where, index)) for index, item in enumerate(value)]
    if len(set(ports)) != len(ports):
        raise PlanInputError(where, "lists a port twice: %s" % ports)
    return ports


def absolute_path(value: Any, where: str) -> str:
    text = parse_str(value, where)
    if not text.startswith("/") or re.search(r"\s", text) or "/../" in text + "/":
        raise PlanInputError(where, "%s is not an absolute path without spaces or .." % _show(text),
                             "write it like /var/lib/mastodon/system")
    return text.rstrip("/") or "/"


def _host_and_port(pattern: str, what: str, example: str) -> Callable[[Any, str], str]:
    """A URL-like setting whose named groups ``host`` and ``port`` are checked as such."""
    def parse(value: Any, where: str) -> str:
        text = parse_str(value, where)
        match = re.fullmatch(pattern, text)
        if not match:
            raise PlanInputError(where, "%s is not %s" % (_show(text), what), "write it like %s" % example)
        host_address(match.group("host"), where)
        if match.group("port"):
            port(match.group("port"), where + " (its port)")
        return text.rstrip("/")
    return parse


# An S3 endpoint: http(s)://HOST[:PORT], no path (Paperclip appends the bucket).
http_endpoint = _host_and_port(r"https?://(?P<host>[^/:\s]+)(?::(?P<port>[0-9]{1,5}))?/?",
                               "an http:// or https:// URL of a host, with no path",
                               "https://s3.eu-central-1.example.com")
# S3_ALIAS_HOST: the host (and optional port and path) Mastodon links media at, without a scheme.
alias_host = _host_and_port(r"(?P<host>[^/:\s]+)(?::(?P<port>[0-9]{1,5}))?(/[^\s]*)?",
                            "a host name with an optional port and path", "files.example.com, without a scheme")


S3_CANNED_ACLS = ("private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
                  "bucket-owner-read", "bucket-owner-full-control")


def s3_permission(value: Any, where: str) -> str:
    """S3_PERMISSION: a canned ACL, or "" for a bucket without ACLs (Paperclip then sends none)."""
    if value == "":
        return ""
    return choice(*S3_CANNED_ACLS)(value, where)


def dns_servers(value: Any, where: str) -> str:
    """nginx's resolver: DNS servers' IP addresses, separated by spaces."""
    text = " ".join(string_list(value, where, 16)) if isinstance(value, (list, tuple)) else parse_str(value, where)
    for item in text.split():
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise PlanInputError(where, "%s is not an IP address" % _show(item), "list DNS servers' addresses")
    return " ".join(text.split())


def found_filesystem(value: Any, where: str) -> Dict[str, str]:
    """What the plan play read about the file system under a path: its type and mount point."""
    if not isinstance(value, Mapping) or not all(key in value for key in ("path", "type", "mount")):
        raise PlanInputError(where, "expected path, type and mount, got %s" % _show(value))
    return {key: parse_str(value[key], "%s.%s" % (where, key)) for key in ("path", "type", "mount")}


def named(pattern: str, what: str) -> Callable[[Any, str], str]:
    """A name that becomes part of a unit name or path."""
    def parse(value: Any, where: str) -> str:
        text = parse_str(value, where)
        if not re.fullmatch(pattern, text):
            raise PlanInputError(where, "%s is not a valid %s" % (_show(text), what),
                                 "use letters, digits, _ and -, starting with a letter or digit")
        return text
    return parse


def redis_save(value: Any, where: str) -> str:
    """Redis' save: "" (off) or pairs of seconds and changes, as a string or a list."""
    text = value if isinstance(value, str) else " ".join(string_list(value, where))
    numbers = text.split()
    if len(numbers) % 2 or not all(re.fullmatch(r"[0-9]{1,9}", number) for number in numbers):
        raise PlanInputError(where, "expected \"\" or pairs of seconds and changes such as \"3600 1 300 100\", got %s"
                             % _show(value))
    return " ".join(numbers)


def records(fields: Dict[str, Field], what: str, maximum: int = 100) -> Callable[[Any, str], List[Dict[str, Any]]]:
    """A list of mappings, each checked against ``fields`` (typos are errors)."""
    def parse(value: Any, where: str) -> List[Dict[str, Any]]:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise PlanInputError(where, "expected a list of %s, got %s" % (what, _show(value)))
        if len(value) > maximum:
            raise PlanInputError(where, "lists %d %s; at most %d are accepted" % (len(value), what, maximum))
        return [parse_section(item, fields, "%s[%d]" % (where, index)) for index, item in enumerate(value)]
    return parse


def parse_section(value: Any, fields: Dict[str, Field], where: str) -> Dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise PlanInputError(where, "expected a mapping, got %s" % _show(value))
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

NOFILE_CEILING = 1073741816  # the kernel's largest fs.nr_open

CLUSTER = {
    "version": Field(version, "4.6", "Mastodon version"),
    "experimental_features": Field(string_list, [], "EXPERIMENTAL_FEATURES, e.g. [fasp]"),
    "request_timeout": Field(integer(1, 3600), 120, "seconds Mastodon works on a request"),
    "trusted_proxy_ip": Field(optional(address_list), None, "TRUSTED_PROXY_IP: the proxies' addresses"),
    "migrations_via": Field(choice("direct", "pgbouncer"), "direct", "how rails db:migrate reaches PostgreSQL"),
    "db_name": Field(postgresql_name, "mastodon_production", "DB_NAME: Mastodon's database"),
    "db_user": Field(postgresql_name, "mastodon", "DB_USER: the role Mastodon connects as"),
    "direct_connections": Field(count_mapping, {},
                                "connections that bypass pgbouncer, by name, added to migrations (auto: 2) and "
                                "tootctl (auto: its concurrency + 1); 0 leaves one out"),
    "tootctl_concurrency": Field(integer(1, 100), 5, "tootctl --concurrency; tootctl opens this + 1 connections"),
    "yjit": Field(bool_or_auto, AUTO, "RUBY_YJIT_ENABLE for the Ruby processes; auto: on from Mastodon 4.3, as "
                                      "Mastodon's image has it"),
    "redis_settings": Field(optional(env_mapping), None, "Mastodon's REDIS_* settings, when not derived"),
    "redis_sentinel_quorum": Field(integer_or_auto(1, 100), AUTO,
                                   "sentinels that must agree a master is down; default a majority"),
    "redis_sentinel_down_after_ms": Field(integer(1000, 3600000), 30000,
                                          "milliseconds a master stays unreachable before it counts as down"),
    "firewall": Field(bool_or_auto, AUTO,
                      "an nftables rule per listener: only the hosts the plan connects to it reach it; auto: on "
                      "when every such host has an IP address (mastodon_address)"),
    "admin_addresses": Field(network_list, [],
                             "addresses or networks (a bastion, monitoring) that may reach the data tier through "
                             "the firewall"),
    "media": Field(choice("local", "s3"), "local",
                   "where media lives: local (each host's disk; one host only) or s3 (a bucket)"),
    "media_path": Field(optional(absolute_path), None, "PAPERCLIP_ROOT_PATH; default the checkout's public/system"),
    "s3_bucket": Field(optional(named(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", "bucket name")), None, "S3_BUCKET"),
    "s3_region": Field(optional(named(r"[a-z0-9][a-z0-9-]{0,63}", "region")), None,
                       "S3_REGION; Mastodon's default us-east-1"),
    "s3_endpoint": Field(optional(http_endpoint), None, "S3_ENDPOINT, for storage other than Amazon's"),
    "s3_hostname": Field(optional(host_address), None, "S3_HOSTNAME; Mastodon's default s3-REGION.amazonaws.com"),
    "s3_protocol": Field(choice("https", "http"), "https", "S3_PROTOCOL"),
    "s3_alias_host": Field(optional(alias_host), None,
                           "S3_ALIAS_HOST: the host media is linked at; nginx proxies it to the bucket with a cache"),
    "s3_override_path_style": Field(parse_bool, False, "S3_OVERRIDE_PATH_STYLE: virtual-host style with S3_ENDPOINT"),
    "s3_permission": Field(optional(s3_permission), None, "S3_PERMISSION; \"\" for a bucket without ACLs"),
}


def debian_release(value: Any, where: str) -> int:
    release = parse_int(value, where, 0, 99)
    if release not in debian.RELEASES:
        raise PlanInputError(where, "Debian %d is not a release the collection supports" % release,
                             "use %s" % " or ".join(str(item) for item in debian.RELEASES))
    return release


# A Mastodon unit found running on a host (the mastodon_units module, through site.yml's plan play).
RUNNING_UNIT = {
    "name": Field(named(r"[A-Za-z0-9][A-Za-z0-9:_.@-]{0,250}[.]service", "systemd service name"), MISSING, ""),
    "program": Field(choice("puma", "sidekiq", "streaming"), MISSING, "what its ExecStart runs"),
    "managed": Field(parse_bool, False, "written by this collection (it loads the app role's environment file)"),
    "active": Field(parse_bool, False, ""),
    "enabled": Field(parse_bool, False, ""),
    "path": Field(parse_str, "", "its unit file"),
    "arguments": Field(lambda value, where: string_list(value, where, 1000), [], "ExecStart's arguments"),
    "environment": Field(env_mapping, {}, "its sizing and endpoint settings (Environment=, EnvironmentFile=)"),
    "live_postgresql_connections": Field(optional(integer(0, 1000000)), None,
                                         "PostgreSQL connections its processes hold now"),
}

HOST = {
    "debian_version": Field(debian_release, debian.DEFAULT_RELEASE,
                            "the host's Debian release; PostgreSQL's, pgbouncer's and Redis' versions follow it"),
    "nofile_hard_limit": Field(integer(1, NOFILE_CEILING), 524288, "the host's hard open-file limit"),
    "env_production": Field(env_mapping, {}, "sizing variables found in .env.production"),
    "environment": Field(unit_environment, {}, "extra variables in every Mastodon unit's environment"),
    "address": Field(optional(host_address), None, "address other hosts use for this host"),
    "running_units": Field(optional(records(RUNNING_UNIT, "running units", 1000)), None,
                           "set by site.yml's plan play: the Mastodon units the host runs now"),
    "running_env_production": Field(optional(env_mapping), None,
                                    "set by site.yml's plan play: the sizing and endpoint settings of the host's "
                                    ".env.production, as the running units read them"),
    "replace_units": Field(string_list, [], "units besides the official guide's that the run may quiet, stop and "
                                            "back up like them"),
    "media_path_fs": Field(optional(named(r"[a-z0-9][a-z0-9._-]{0,63}", "file system type")), None,
                           "the type of the file system under the media path (ext4, nfs4, ...), as you know it"),
    "media_filesystem": Field(optional(found_filesystem), None,
                              "set by site.yml's plan play: the file system found under the media path"),
}

# Below 64kB PostgreSQL refuses work_mem.
WORK_MEM_MINIMUM_KB = 64

POSTGRESQL = {
    "role": Field(choice("primary", "replica"), "primary", "primary or replica"),
    "max_connections": Field(integer(1, 262143), 200, "PostgreSQL max_connections"),
    "superuser_reserved_connections": Field(integer(0, 262142), 3, ""),
    "reserved_connections": Field(integer(0, 262142), 0, "PostgreSQL 16+"),
    "work_mem": Field(optional(lambda v, w: parse_size_kb(v, w, "kB", WORK_MEM_MINIMUM_KB, 2 * 1024 ** 3)), None,
                      "default: the PGTune value for this host"),
    "ram": Field(size_kb(128 * 1024), MISSING, "RAM of the database host, e.g. 16GB"),
    "cpus": Field(optional(integer(1, 4096)), None, "CPU count, for PGTune"),
    "disk_type": Field(choice("ssd", "nvme", "san", "hdd"), "ssd", ""),
    "database_size": Field(choice("less_ram", "mid_ram", "greater_ram"), "mid_ram", "database size relative to RAM"),
    "version": Field(optional(integer(10, 99)), None, "PostgreSQL major version; default: the host's release's"),
    "acknowledge_max_connections_over_1000": Field(parse_bool, False, ""),
    "limits_from": Field(choice("inventory", "live"), "inventory",
                         "where max_connections and the reserved slots come from: the inventory, or the running "
                         "server (one the postgresql role does not manage)"),
    "live_limits": Field(optional(live_limits), None, "set by site.yml's plan play from the running server"),
    # Replication (a read replica): PostgreSQL's defaults unless set.
    "max_wal_senders": Field(integer(0, 262143), 10, "WAL senders: one per replica, two for pg_basebackup"),
    "max_replication_slots": Field(integer(0, 262143), 10, "slots: one per replica, one for pg_basebackup"),
    "max_prepared_transactions": Field(integer(0, 262143), 0, "a replica needs at least the primary's"),
    "max_locks_per_transaction": Field(integer(10, 2147483647), 64, "a replica needs at least the primary's"),
    "wal_level": Field(choice("minimal", "replica", "logical"), "replica", "replica or logical for a replica"),
    "max_slot_wal_keep_size": Field(optional(size_kb(1024, "MB")), None,
                                    "WAL a slot may keep for a replica that is down (default: no limit)"),
    "wal_disk_free": Field(optional(size_kb(1024)), None,
                           "free space of the disk that holds pg_wal, e.g. 200GB; the slot's limit stays below it"),
    "replica_max_lag": Field(integer(1, 86400), 30,
                             "seconds of replay lag above which the live checks warn (Mastodon then shows stale reads)"),
    "sslmode": Field(choice("auto", "disable", "require", "verify-ca", "verify-full"), "auto",
                     "how clients on other hosts reach it; auto: verify-full on a server the postgresql role manages "
                     "(its certificate from the tls role), require on one it does not"),
}

WEB = {
    "concurrency": Field(integer(1, 512), 2, "WEB_CONCURRENCY: Puma workers"),
    "max_threads": Field(optional(integer(1, 512)), None, "MAX_THREADS: threads per worker"),
    "db_pool": Field(optional(integer(1, 1000)), None, "DB_POOL of each worker"),
    "port": Field(port, 3000, ""),
}

STREAMING = {
    "ports": Field(port_list, [4000], "one mastodon-streaming@PORT instance per port"),
    "db_pool": Field(optional(integer(1, 1000)), None, "DB_POOL of each instance"),
}

SIDEKIQ_QUEUE = {
    "queue": Field(optional(named(r"[a-z][a-z0-9_]{0,63}", "queue name")), None, "the one queue of this unit"),
    "queues": Field(optional(string_list), None, "several queues (refused: one queue per unit)"),
    "instances": Field(integer(0, 1000), 1, "processes of this unit"),
    "concurrency": Field(optional(integer(1, 1000)), None, "sidekiq -c"),
    "db_pool": Field(optional(integer(1, 1000)), None, "DB_POOL of each process"),
}

SIDEKIQ = {
    "queues": Field(records(SIDEKIQ_QUEUE, "queue units"), [], "one entry per queue unit"),
    # Sidekiq's own default, which Mastodon keeps (config/sidekiq.yml sets no :timeout:).
    "shutdown_timeout": Field(integer(1, 3600), 25, "sidekiq -t: seconds a stop waits for running jobs"),
    "stop_timeout": Field(integer(1, 3600), 35, "the unit's TimeoutStopSec"),
}

PGBOUNCER = {
    "enabled": Field(parse_bool, True, "pgbouncer in front of this host's processes"),
    "pool_mode": Field(choice("transaction", "session", refused={"statement": (
        "Mastodon runs transactions of several statements, which statement pooling refuses",
        "use pool_mode transaction")}), "transaction", ""),
    "default_pool_size": Field(integer_or_auto(1, 10000), AUTO, "server connections per database/user pair"),
    "reserve_pool_size": Field(integer(0, 10000), 0, ""),
    "max_client_conn": Field(integer_or_auto(1, 1000000), AUTO, ""),
    "max_db_connections": Field(integer(0, 100000), 0, "0: unlimited"),
    "processes": Field(integer(1, 64), 1, "pgbouncer processes on this host"),
    "limit_nofile": Field(integer_or_auto(1, NOFILE_CEILING), AUTO, "LimitNOFILE of each process"),
    "users": Field(integer(1, 100), 1, "database users that connect through it"),
    "version": Field(optional(version), None, "pgbouncer version; default: the host's release's"),
    "max_prepared_statements": Field(integer(0, 100000), 0,
                                     "protocol-level prepared statements tracked per connection (1.21+); "
                                     "above 0 Mastodon prepares statements (an opt-in)"),
    "acknowledge_prepared_statements": Field(parse_bool, False, ""),
}

REDIS_MAXMEMORY_POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
                            "volatile-lfu", "volatile-random", "volatile-ttl")

REDIS_INSTANCE = {
    # The name goes into redis-server@NAME.service and /etc/redis/redis-NAME.conf.
    "name": Field(named(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", "Redis instance name"), MISSING,
                  "instance name, e.g. cache"),
    "purpose": Field(choice("cache", "persistent", "sidekiq"), MISSING, "cache, persistent or sidekiq"),
    "port": Field(port, 6379, ""),
    "maxmemory": Field(optional(size_kb(1024)), None, "e.g. 2GB"),
    "maxmemory_policy": Field(optional(choice(*REDIS_MAXMEMORY_POLICIES)), None, "default by purpose"),
    "appendonly": Field(optional(parse_bool), None, "default by purpose"),
    "appendfsync": Field(choice("always", "everysec", "no"), "everysec", ""),
    "save": Field(optional(redis_save), None, "RDB schedule; \"\" disables it"),
    "tls": Field(bool_or_auto, AUTO, "clients reach it over TLS (rediss://); auto: when they dial a non-loopback "
                                     "address and it is in no Sentinel set, whose clients Mastodon cannot encrypt"),
    "sentinel_master": Field(optional(named(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "Sentinel master name")), None,
                             "the name Sentinel monitors this instance's replicated set by; the instances of one "
                             "name on several hosts form the set"),
}

REDIS = {
    "instances": Field(records(REDIS_INSTANCE, "Redis instances", 32), [], ""),
    "sentinel": Field(parse_bool, False, "this host runs a Redis Sentinel that monitors every replicated set"),
    "sentinel_port": Field(port, 26379, ""),
    "server": Field(choice("redis", "valkey"), "redis",
                    "Debian's redis-server or valkey-server packages; the instances behave the same"),
    "version": Field(optional(version), None, "Redis (or Valkey) version; default: the host's release's"),
}

NGINX = {
    "expected_clients": Field(integer(1, 10000000), 2048, "client connections nginx should hold at once"),
    "worker_connections": Field(integer_or_auto(1, 10000000), AUTO,
                                "default 2 × expected_clients (a proxied client holds two)"),
    "worker_rlimit_nofile": Field(integer_or_auto(1, NOFILE_CEILING), AUTO, "default 2 × worker_connections"),
    "limit_nofile": Field(integer_or_auto(1, NOFILE_CEILING), AUTO, "systemd LimitNOFILE; default worker_rlimit_nofile"),
    "proxy_read_timeout": Field(integer(1, 86400), 120, "seconds"),
    "media_cache_path": Field(absolute_path, "/var/cache/nginx/mastodon-media", "where nginx caches media"),
    "media_cache_max_size": Field(size_kb(1024), 10 * 1024 ** 2, "the media cache's size on disk, e.g. 10GB"),
    "media_cache_inactive_hours": Field(integer(1, 8760), 168, "hours a cached object unread is kept"),
    "media_resolver": Field(optional(dns_servers), None,
                            "DNS servers nginx re-resolves the bucket's host with; default: resolved at reload"),
}


PGBACKREST = {
    "archive": Field(parse_bool, False, "WAL archiving and scheduled backups of this server with pgBackRest"),
    "repo_path": Field(optional(absolute_path), None,
                       "the repository: a directory on this host, best the mount of another disk or of network "
                       "storage (a restore on another host reads it there); with pgbackrest_repo_host, the "
                       "directory on that host"),
    "repo_s3_bucket": Field(optional(named(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", "bucket name")), None,
                            "keep the repository in this bucket, on the S3 storage the media settings give "
                            "(mastodon_media: s3: its endpoint, region and path style); pgbackrest_repo_path is "
                            "then the path in it (default /pgbackrest)"),
    "repo_host": Field(optional(parse_str), None,
                       "the inventory name of a repository host (group backup): it keeps the repository, runs the "
                       "backups and takes the WAL over TLS with the cluster's CA (pgBackRest's server on both)"),
    "backup_from_standby": Field(parse_bool, False,
                                 "copy a backup's files from the replica instead of the primary's disks "
                                 "(pgBackRest's backup-standby); needs the replica and pgbackrest_repo_host"),
    "retention_days": Field(integer(1, 3650), 14,
                            "days of backups, and of the WAL to replay them, kept: how far back a restore reaches"),
    "full_backups": Field(choice("weekly", "daily"), "weekly",
                          "weekly (Sunday, differential backups on the other days) or daily"),
    "process_max": Field(integer(1, 64), 1, "processes that copy and compress files during a backup"),
    "archive_timeout": Field(integer(60, 86400), 300,
                             "PostgreSQL's archive_timeout: seconds of writes that may wait unarchived; the live "
                             "checks warn when the last archived segment is older than twice this"),
    "backup_max_age_hours": Field(integer(1, 8760), 36, "the live checks warn when the last backup is older"),
}


# A repository host (group backup) has no settings of its own: the primary that backs up to it names it.
BACKUP: Dict[str, Field] = {}


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
    "pgbackrest": Section(PGBACKREST, "db", "pgbackrest_"),
    "backup": Section(BACKUP, "backup", "pgbackrest_"),
}
APP_SECTIONS = ("web", "streaming", "sidekiq")
GROUPS = tuple(dict.fromkeys(section.group for section in HOST_SECTIONS.values() if section.group))
# Settings that would send a pgbouncer host's Mastodon processes around their pgbouncer.
DATABASE_ENDPOINT_SETTINGS = ("DB_HOST", "DB_PORT", "DATABASE_URL", "REPLICA_DB_HOST", "REPLICA_DB_PORT",
                              "REPLICA_DATABASE_URL")


def host_where(host: str, section: str) -> str:
    """Where a host's section sits, in the form inventory.inventory_wording turns into a variable name."""
    return "host %s, %s" % (host, section)


def _check_pgbouncer_not_bypassed(host: str, parsed: Dict[str, Any]) -> None:
    bouncer = parsed.get("pgbouncer")
    if not bouncer or not bouncer["enabled"]:
        return
    for key in ("environment", "env_production"):
        # The units set DB_HOST and DB_PORT themselves (they win over .env.production); a URL there does not.
        names = DATABASE_ENDPOINT_SETTINGS if key == "environment" else ("DATABASE_URL", "REPLICA_DATABASE_URL")
        for name in names:
            if name in parsed["mastodon"][key]:
                raise PlanInputError(
                    "%s.%s.%s" % (host_where(host, "mastodon"), key, name),
                    "sends the Mastodon processes on %s around the planned pgbouncer, so the plan's count of "
                    "their connections would be wrong" % host,
                    "remove it: the collection points them at the local pgbouncer (or set pgbouncer_enabled: "
                    "false on %s)" % host)


def _versions_from_release(name: str, parsed: Dict[str, Any]) -> None:
    """Versions the inventory leaves out are those the host's Debian release ships."""
    release = parsed["mastodon"]["debian_version"]
    for section, cast in (("postgresql", int), ("pgbouncer", str), ("redis", str)):
        if parsed.get(section) is not None and parsed[section]["version"] is None:
            package = parsed[section]["server"] if section == "redis" else section
            found = debian.shipped(release, package)
            if found is None:
                raise PlanInputError(
                    "%s.server" % host_where(name, "redis"), "Debian %d ships no %s package" % (release, package),
                    "set redis_server: redis, run the host on Debian %d (it ships %s %s), or set redis_version to "
                    "the version you install from elsewhere"
                    % (debian.DEFAULT_RELEASE, package, debian.shipped(debian.DEFAULT_RELEASE, package)))
            parsed[section]["version"] = cast(found)


def parse_description(description: Any) -> Dict[str, Any]:
    """Check a cluster description and fill in every default."""
    if not isinstance(description, Mapping):
        raise PlanInputError("cluster description", "expected a mapping with keys mastodon and hosts, got %r"
                             % (type(description).__name__,))
    for key in description:
        if key not in ("mastodon", "hosts", "inventory"):
            raise PlanInputError(str(key), "unknown top-level key", suggest(str(key), ["mastodon", "hosts"]))
    hosts = description.get("hosts")
    if not isinstance(hosts, Mapping) or not hosts:
        raise PlanInputError("hosts", "expected a mapping of host name to its sections, got %s" % _show(hosts),
                             "list at least the database host and one Mastodon host")
    result = {"mastodon": parse_section(description.get("mastodon"), CLUSTER, "mastodon"), "hosts": {},
              "inventory": parse_section(description.get("inventory"), INVENTORY, "inventory")}
    for name, sections in hosts.items():
        name = str(name)
        where = "host %s" % name
        if not isinstance(sections, Mapping):
            raise PlanInputError(where, "expected a mapping of sections, got %s" % _show(sections))
        for section in sections:
            if section not in HOST_SECTIONS:
                raise PlanInputError(host_where(name, str(section)), "unknown section",
                                     suggest(str(section), list(HOST_SECTIONS)))
        parsed = {"mastodon": parse_section(sections.get("mastodon"), HOST, host_where(name, "mastodon"))}
        for section, spec in HOST_SECTIONS.items():
            if section != "mastodon" and section in sections:
                parsed[section] = parse_section(sections[section], spec.fields, host_where(name, section))
        if any(section in parsed for section in APP_SECTIONS) and "pgbouncer" not in parsed:
            parsed["pgbouncer"] = parse_section({}, PGBOUNCER, host_where(name, "pgbouncer"))
        if "pgbackrest" in parsed and "postgresql" not in parsed:
            raise PlanInputError(host_where(name, "pgbackrest"), "describes a database host's backups, and this "
                                 "host has no postgresql section", "move it to the db host, or remove it")
        if "postgresql" in parsed and "pgbackrest" not in parsed:
            parsed["pgbackrest"] = parse_section({}, PGBACKREST, host_where(name, "pgbackrest"))
        _check_pgbouncer_not_bypassed(name, parsed)
        _versions_from_release(name, parsed)
        result["hosts"][str(name)] = parsed
    return result


# What reading the inventory noticed but did not refuse (inventory.description_from_inventory).
UNKNOWN_VARIABLE = {
    "variable": Field(parse_str, MISSING, ""),
    "origin": Field(parse_str, MISSING, "where it is set: its host_vars, a group, or group all"),
    "hosts": Field(lambda value, where: string_list(value, where, 1000000), MISSING, "the hosts that have it"),
    "suggestion": Field(optional(parse_str), None, ""),
}

INVENTORY = {
    "unknown_variables": Field(records(UNKNOWN_VARIABLE, "unknown variables", 100000), [], ""),
}
