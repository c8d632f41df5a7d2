# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan: the budget report with its findings, and its readable forms."""

from __future__ import annotations

import gc
from typing import Any, Dict, List

from ansible_collections.fediscale.mastodon.plugins.module_utils import model, rules

BAR_WIDTH = 50


def connection_budget(description: Any) -> Dict[str, Any]:
    """Budget report, findings and a one-line headroom statement for a cluster description."""
    # The report is a large tree of new containers with no cycles; the cyclic
    # collector would scan it over and over as it grows (10,000 app hosts:
    # 2.4 s with it, 1.3 s without, benchmarks/README.md).
    collecting = gc.isenabled()
    gc.disable()
    try:
        report = model.compute(description)
    finally:
        if collecting:
            gc.enable()
    report["findings"] = rules.check(report)
    report["errors"] = sum(1 for item in report["findings"] if item["severity"] == rules.ERROR)
    report["warnings"] = sum(1 for item in report["findings"] if item["severity"] == rules.WARNING)
    report["ok"] = report["errors"] == 0
    report["headroom"] = headroom_statement(report["servers"]["primary"])
    return report


def verdict(report: Dict[str, Any]) -> str:
    """The plan in one line: the first error when there is one, else the primary's numbers."""
    primary = report["servers"]["primary"]
    counts = "%d error(s), %d warning(s)" % (report["errors"], report["warnings"])
    errors = [item for item in report["findings"] if item["severity"] == rules.ERROR]
    if errors:
        first = errors[0]
        return "the plan is refused, nothing was deployed (%s); first: %s [%s%s]: %s; fix: %s" % (
            counts, first["rule"], first["host"] + " " if first["host"] else "", first["service"], first["message"],
            first["hint"])
    return "the plan holds: %d of %d connections on the primary %s (%.1f %%), %s" % (
        primary["total"], primary["max_connections"], primary["host"], primary["utilisation_percent"], counts)


def firewall_statement(report: Dict[str, Any]) -> str:
    """Whether the firewall role admits only the planned hosts to each listener, and why not."""
    plan = report["firewall"]
    listeners = sum(len(items) for items in plan["hosts"].values())
    if plan["enabled"]:
        return "on: %d listeners on %d hosts admit only the hosts the plan connects to them" % (
            listeners, len(plan["hosts"]))
    if not listeners:
        return "off: no listener beyond loopback"
    if plan["setting"] is False:
        return "off (mastodon_firewall: false): %d listeners are open to the whole network" % listeners
    return ("off: %s known by name, not IP address (set mastodon_address on each); %d listeners are open to the "
            "whole network" % (", ".join(plan["unaddressed"]), listeners))


def headroom_statement(server: Dict[str, Any]) -> str:
    room = server["headroom"]
    if room["connections"] < 0:
        return "the %s is %d connections over the 90 %% line (%d of %d)" % (
            server["role"], -room["connections"], server["warning_line"], server["max_connections"])
    return "%d more sidekiq processes at concurrency %d fit below the 90 %% line (%d of %d); %d connections of room" % (
        room["sidekiq_processes"], room["concurrency"], server["warning_line"], server["max_connections"],
        room["connections"])


def sidekiq_units(report: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """Per host, the sidekiq templates and instances to run, with their environment."""
    return {host: units["sidekiq"] for host, units in sorted(report["units"].items()) if units["sidekiq"]}


def _bar(server: Dict[str, Any]) -> str:
    scale = server["max_connections"]
    used = min(BAR_WIDTH, server["total"] * BAR_WIDTH // scale)
    usable = min(BAR_WIDTH, server["usable"] * BAR_WIDTH // scale)
    line = server["warning_line"] * BAR_WIDTH // scale
    cells = []
    for index in range(BAR_WIDTH):
        if index < used:
            cells.append("#" if index < line else "!")
        elif index == line:
            cells.append("|")
        elif index < usable:
            cells.append(".")
        else:
            cells.append("x")
    return "[%s]" % "".join(cells)


def _server_lines(server: Dict[str, Any]) -> List[str]:
    return [
        "PostgreSQL %s on %s: %d of %d max_connections, %d free; usable %d (%d superuser_reserved, %d reserved),"
        " 90 %% line %d" % (
            server["role"], server["host"], server["total"], server["max_connections"], server["free"],
            server["usable"], server["superuser_reserved_connections"], server["reserved_connections"],
            server["warning_line"]),
        "%s %.1f %%   (# used, ! used above the 90 %% line, | the line, . free, x reserved)" % (
            _bar(server), server["utilisation_percent"]),
    ]


def _hosts_label(hosts: List[str]) -> str:
    if len(hosts) <= 3:
        return ", ".join(hosts)
    return "%d hosts: %s .. %s" % (len(hosts), hosts[0], hosts[-1])


def _rows(report: Dict[str, Any]) -> List[List[str]]:
    """Table rows; hosts whose rows are identical share one row, so a 1000-host plan stays readable.

    procs and conns are the sums over the hosts of a row; pool is per process.
    """
    groups: Dict[tuple, Dict[str, Any]] = {}

    def add(host: str, key: tuple, processes: int, connections: int) -> None:
        group = groups.setdefault(key, {"hosts": [], "processes": 0, "connections": 0})
        group["hosts"].append(host)
        group["processes"] += processes
        group["connections"] += connections

    for row in report["processes"]:
        add(row["host"], (row["service"], row["unit"], row["pool"], row["via"]), row["processes"], row["connections"])
    for host, bouncer in sorted(report["pgbouncer"].items()):
        clients = "%d clients / max_client_conn %d" % (bouncer["clients"], bouncer["max_client_conn"])
        add(host, ("pgbouncer", clients, bouncer["default_pool_size"] + bouncer["reserve_pool_size"], "to primary"),
            bouncer["processes"], bouncer["primary_connections"])
    rows = [["host", "service", "unit", "procs", "pool", "conns", "via"]]
    for (service, unit, pool, via), group in groups.items():
        rows.append([_hosts_label(group["hosts"]), service, unit, str(group["processes"]), str(pool),
                     str(group["connections"]), via])
    for name, count in sorted(report["direct_connections"].items()):
        rows.append(["-", "direct", name, "", "", str(count), "direct"])
    return rows


def _during_change(report: Dict[str, Any]) -> str:
    change = report["during_change"]
    return ("During the change: the running units %s connect straight to the primary beside the planned processes:"
            " %d connections (planned %d + running units %d) of %d usable"
            % (", ".join("%s on %s (%d)" % (row["unit"], row["host"], row["connections"]) for row in change["units"]),
               change["total"], change["planned"], change["running_units"],
               report["servers"]["primary"]["usable"]))


def render_table(report: Dict[str, Any]) -> str:
    """The plan as plain text: one bar per database server, a row per process group, the findings."""
    lines = ["Connection budget for Mastodon %s" % report["mastodon"]["version"], ""]
    for server in report["servers"].values():
        lines.extend(_server_lines(server))
    lines.append("")
    rows = _rows(report)
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.rjust(width) if 3 <= index <= 5 else cell.ljust(width)
                               for index, (cell, width) in enumerate(zip(row, widths))).rstrip())
    lines.extend(["", "Headroom: %s" % report["headroom"], "Firewall: %s" % firewall_statement(report), ""])
    if report.get("during_change"):
        lines.extend([_during_change(report), ""])
    lines.append("%d errors, %d warnings" % (report["errors"], report["warnings"]))
    for item in report["findings"]:
        lines.append("%s %s [%s%s]: %s" % (item["severity"].upper(), item["rule"],
                                           item["host"] + " " if item["host"] else "", item["service"],
                                           item["message"]))
        lines.append("    fix: %s" % item["hint"])
    return "\n".join(lines)


def render_markdown(report: Dict[str, Any]) -> str:
    """The plan as Markdown, for a ticket or a wiki page."""
    lines = ["# Connection budget for Mastodon %s" % report["mastodon"]["version"], ""]
    lines.append("| server | host | total | max_connections | usable | 90 % line | free | utilisation |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for server in report["servers"].values():
        lines.append("| %s | %s | %d | %d | %d | %d | %d | %.1f %% |" % (
            server["role"], server["host"], server["total"], server["max_connections"], server["usable"],
            server["warning_line"], server["free"], server["utilisation_percent"]))
    lines.extend(["", "## Processes", ""])
    rows = _rows(report)
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("| " + " | ".join("---:" if 3 <= index <= 5 else "---" for index in range(len(rows[0]))) + " |")
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:])
    lines.extend(["", "Headroom: %s" % report["headroom"], "", "Firewall: %s" % firewall_statement(report)])
    if report.get("during_change"):
        lines.extend(["", "## During the change", "", _during_change(report)])
    lines.extend(["", "## Findings", ""])
    if not report["findings"]:
        lines.append("None.")
    for item in report["findings"]:
        lines.append("- **%s** `%s` (%s%s): %s. Fix: %s." % (
            item["severity"], item["rule"], item["host"] + ", " if item["host"] else "", item["service"],
            item["message"], item["hint"]))
    return "\n".join(lines) + "\n"
