# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading what runs Mastodon on a host (the mastodon_units module): systemd's view of a unit, an environment
file, and which settings may leave the host."""

from __future__ import annotations

import os
import re
import shlex
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit, urlunsplit

from ansible_collections.fediscale.mastodon.plugins.module_utils import mastodon, schema

SHOW_PROPERTIES = ("Id", "ExecStart", "WorkingDirectory", "Environment", "EnvironmentFiles", "ActiveState",
                   "UnitFileState", "FragmentPath", "ControlGroup")
# Settings that size a process or say where it connects; nothing else leaves the host.
KEPT_SETTINGS = set(schema.SIZING_VARIABLES) | set(mastodon.ENDPOINT_SETTINGS) | {
    "STREAMING_CLUSTER_NUM", "PORT", "BIND", "SOCKET", "TRUSTED_PROXY_IP", "PREPARED_STATEMENTS", "REDIS_NAMESPACE",
    "SIDEKIQ_REDIS_HOST", "SIDEKIQ_REDIS_PORT", "CACHE_REDIS_HOST", "CACHE_REDIS_PORT", "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER", "SIDEKIQ_REDIS_SENTINELS", "SIDEKIQ_REDIS_SENTINEL_MASTER", "CACHE_REDIS_SENTINELS",
    "CACHE_REDIS_SENTINEL_MASTER", "REPLICA_DB_HOST", "REPLICA_DB_PORT", "REPLICA_DATABASE_URL"}
POSTGRESQL_PORTS = (5432, 6432)
MASK = "********"


def parse_show(text: str) -> List[Dict[str, Any]]:
    """``systemctl show --property=...`` of several units: one block each, separated by a blank line."""
    units = []
    for block in re.split(r"\n\s*\n", text.strip()):
        values: Dict[str, List[str]] = {}
        for line in block.splitlines():
            key, _sign, value = line.partition("=")
            values.setdefault(key, []).append(value)
        if "Id" not in values:
            continue
        first = {key: items[0] for key, items in values.items()}
        units.append({
            "id": first["Id"],
            "arguments": exec_arguments(first.get("ExecStart", "")),
            "working_directory": first.get("WorkingDirectory", "").lstrip("!-"),
            "environment": dict(item.split("=", 1) for item in shlex.split(" ".join(values.get("Environment", [])))
                                if "=" in item),
            "environment_files": [item.split(" (", 1)[0].lstrip("-") for item in values.get("EnvironmentFiles", [])
                                  if item],
            "active": first.get("ActiveState") in ("active", "activating", "reloading", "deactivating"),
            "enabled": first.get("UnitFileState") in ("enabled", "enabled-runtime"),
            "fragment_path": first.get("FragmentPath", ""),
            "control_group": first.get("ControlGroup", ""),
        })
    return units


def exec_arguments(value: str) -> List[str]:
    """The argv of systemd's ``ExecStart={ path=... ; argv[]=A B C ; ... }``."""
    found = re.search(r"argv\[\]=(.*?) ; ", value)
    if not found:
        return []
    try:
        return shlex.split(found.group(1))
    except ValueError:
        return found.group(1).split()


def program_of(unit: Dict[str, Any], app_dir: str) -> Optional[str]:
    """puma, sidekiq or streaming when the unit runs that program from Mastodon's checkout."""
    if unit["working_directory"].rstrip("/") != app_dir:
        return None
    names = [os.path.basename(argument) for argument in unit["arguments"]]
    if "puma" in names:
        return "puma"
    if "sidekiq" in names:
        return "sidekiq"
    if names and names[0].startswith("node") and any(
            argument.rstrip("/") in ("./streaming", "streaming", "streaming/index.js", "./streaming/index.js")
            for argument in unit["arguments"][1:]):
        return "streaming"
    return None


def parse_environment_file(path: str) -> Dict[str, str]:
    """KEY=VALUE lines as systemd and dotenv read them (quotes removed, comments and blank lines skipped)."""
    values = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                line = line.strip()
                if line.startswith("export "):
                    line = line[7:].strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                name, value = line.split("=", 1)
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                values[name.strip()] = value
    except OSError:
        pass
    return values


def masked(value: str) -> str:
    """A URL's password replaced by asterisks."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc="%s:%s@%s" % (user, MASK, host)))


def kept_settings(environment: Dict[str, str]) -> Dict[str, str]:
    return {name: masked(value) for name, value in sorted(environment.items()) if name in KEPT_SETTINGS}


def postgresql_peer(tcp_port: Optional[int], unix_path: Optional[str]) -> bool:
    """A connection to PostgreSQL or pgbouncer: their TCP ports, or PostgreSQL's Unix socket."""
    return tcp_port in POSTGRESQL_PORTS or bool(unix_path and "/.s.PGSQL." in unix_path)


def _unescape_mount(text: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def filesystem_under(path: str, mountinfo: str) -> Dict[str, str]:
    """The file system a resolved, existing ``path`` is on, from /proc/self/mountinfo: its type and mount point
    (the longest mount point that holds the path; a later mount over the same point wins, as in the kernel)."""
    best = ("", "")
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount = _unescape_mount(fields[4])
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, fstype)
    return {"path": path, "type": best[1] or "unknown", "mount": best[0] or "/"}
