# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a running unit has not read yet.

A role writes a file, then restarts or reloads the unit that reads it (a handler, or a task that asks whether the
file changed). A run killed between the two leaves the change on disk only, and the next run, which finds the file
as it wants it, would never restart the unit: the process would run with the old settings until something else
restarted it. So the roles also ask systemd, which keeps the times a unit started and last changed state, and
compare them with the files' modification times: a file newer than the unit's start is owed a restart, a file the
unit re-reads on reload and newer than its last state change (a reload ends with one) is owed a reload.

Pure functions over `systemctl show` output and file times, no Ansible imports.
"""

from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# The properties asked of systemctl show (with --timestamp=us+utc).
PROPERTIES = ("Id", "LoadState", "ActiveState", "UnitFileState", "NeedDaemonReload", "FragmentPath", "DropInPaths",
              "EnvironmentFiles", "InactiveExitTimestamp", "StateChangeTimestamp")
RUNNING = ("active", "reloading")


def parse_timestamp(text):
    """`Tue 2026-12-01 10:40:00.123456 UTC` as whole microseconds since the epoch (exact, as systemd keeps them);
    None for an empty (never) timestamp."""
    text = text.strip()
    if not text or text == "n/a":
        return None
    parts = text.split()
    stamp = " ".join(parts[1:3]) if len(parts) >= 3 else " ".join(parts[:2])
    moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S")
    return (moment.replace(tzinfo=timezone.utc) - EPOCH) // timedelta(microseconds=1)


def parse_show(text):
    """`systemctl show` of several units (blocks separated by a blank line) as one dict per unit, in order.
    EnvironmentFiles is a list (one line each, `path (ignore_errors=no)`); DropInPaths a list."""
    units = []
    for block in text.strip("\n").split("\n\n"):
        unit = {"EnvironmentFiles": [], "DropInPaths": []}
        for line in block.splitlines():
            key, value = line.split("=", 1) if "=" in line else (line, "")
            if key == "EnvironmentFiles":
                if value.strip():
                    unit[key].append(value.split(" (")[0])
            elif key == "DropInPaths":
                unit[key] = value.split()
            else:
                unit[key] = value
        units.append(unit)
    return units


def files_systemd_reads(unit):
    """The unit's own files: its fragment, drop-ins and environment files (a leading `-` marks an optional one)."""
    files = [unit.get("FragmentPath", "")] + unit["DropInPaths"] \
        + [path.lstrip("-") for path in unit["EnvironmentFiles"]]
    return [path for path in files if path]


def pending(unit, mtimes, start_files=(), reload_files=()):
    """What one unit owes: `restart_for` (files newer than its start), `reload_for` (files it re-reads on reload,
    newer than its last state change; a restart reads them too), and whether systemd must reload its unit files
    first.

    `mtimes` maps a path to its modification time in microseconds since the epoch; a missing file is not owed
    anything. A unit that is not running owes nothing: its next start reads every file.
    """
    running = unit.get("ActiveState") in RUNNING
    started = parse_timestamp(unit.get("InactiveExitTimestamp", ""))
    changed = parse_timestamp(unit.get("StateChangeTimestamp", ""))
    restart_for, reload_for = [], []
    if running and started is not None:
        restart_for = [path for path in files_systemd_reads(unit) + list(start_files)
                       if mtimes.get(path) is not None and mtimes[path] > started]
        if changed is not None:
            reload_for = [path for path in reload_files if mtimes.get(path) is not None and mtimes[path] > changed]
    return {
        "name": unit["Id"],
        "active": running,
        "enabled": unit.get("UnitFileState") == "enabled",
        "need_daemon_reload": unit.get("NeedDaemonReload") == "yes",
        "restart_for": sorted(set(restart_for)),
        "reload_for": sorted(set(reload_for)),
    }
