#!/usr/bin/python
# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: unit_pending
short_description: Find the changed files that running systemd units have not read yet
version_added: 0.1.0
description:
  - Compares the modification times of the files each unit reads with the times systemd keeps for the unit. A
    file newer than the unit's start (C(InactiveExitTimestamp)) is owed a restart; a file the unit re-reads on
    reload and newer than its last state change (C(StateChangeTimestamp), which a reload ends with) is owed a
    reload.
  - The unit's own files (its unit file, drop-ins and C(EnvironmentFile=)s) come from systemd; O(units[].start_files)
    and O(units[].reload_files) name the files the service reads itself.
  - The roles call it after writing their files, so that a change a killed run wrote but never applied (its
    handler or restart task did not run) is applied by the next run, which finds the files already as planned.
  - A unit that is not running owes nothing, since its next start reads every file. It only reads, and never
    restarts anything; in check mode the roles' files are not written, so it finds what an earlier run left.
options:
  names:
    description: Units to look at, each reading O(start_files) and O(reload_files) besides the files systemd
      loads for it.
    type: list
    elements: str
    default: []
  start_files:
    description: Files every unit of O(names) reads only when it starts.
    type: list
    elements: path
    default: []
  reload_files:
    description: Files every unit of O(names) re-reads on reload.
    type: list
    elements: path
    default: []
  units:
    description: Units to look at, with the files the service reads itself.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The unit's full name, such as C(pgbouncer@1.service).
        type: str
        required: true
      start_files:
        description: Files the service reads only when it starts, besides those systemd loads for it.
        type: list
        elements: path
        default: []
      reload_files:
        description: Files the service re-reads on reload.
        type: list
        elements: path
        default: []
extends_documentation_fragment:
  - fediscale.mastodon.live_check
author:
  - fediscale.mastodon contributors (@fediscale)
"""
EXAMPLES = r"""
- name: Find what the running pgbouncer has not read yet
  fediscale.mastodon.unit_pending:
    units:
      - name: pgbouncer.service
        reload_files: [/etc/pgbouncer/pgbouncer.ini, /etc/pgbouncer/userlist.txt]
  register: pgbouncer_pending

- name: Reload it
  ansible.builtin.systemd_service:
    name: pgbouncer.service
    state: reloaded
  when: pgbouncer_pending.reload | length > 0
"""
RETURN = r"""
units:
  description: Per unit, in the order given (O(names) first), what it owes.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The unit.
      type: str
    active:
      description: Whether it runs (or reloads) now.
      type: bool
    enabled:
      description: Whether it is enabled.
      type: bool
    need_daemon_reload:
      description: Whether systemd must reload unit files before this unit's next start.
      type: bool
    restart_for:
      description: The files newer than its start.
      type: list
      elements: str
    reload_for:
      description: The reload files newer than its last reload (a restart reads them too).
      type: list
      elements: str
restart:
  description: The units that owe a restart.
  returned: success
  type: list
  elements: str
reload:
  description: The units that owe a reload and no restart.
  returned: success
  type: list
  elements: str
not_running:
  description: The units that do not run now.
  returned: success
  type: list
  elements: str
not_enabled:
  description: The units that are not enabled.
  returned: success
  type: list
  elements: str
need_daemon_reload:
  description: Whether any of the units needs systemd to reload unit files.
  returned: success
  type: bool
"""
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fediscale.mastodon.plugins.module_utils.unit_pending import (
    PROPERTIES, files_systemd_reads, parse_show, pending,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            names=dict(type="list", elements="str", default=[]),
            start_files=dict(type="list", elements="path", default=[]),
            reload_files=dict(type="list", elements="path", default=[]),
            units=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                start_files=dict(type="list", elements="path", default=[]),
                reload_files=dict(type="list", elements="path", default=[]),
            )),
        ),
        supports_check_mode=True,
    )
    params = module.params
    requested = [dict(name=name, start_files=params["start_files"], reload_files=params["reload_files"])
                 for name in params["names"]] \
        + module.params["units"]
    names = [unit["name"] for unit in requested]
    result = dict(changed=False, units=[], restart=[], reload=[], not_running=[], not_enabled=[],
                  need_daemon_reload=False)
    if not names:
        module.exit_json(**result)
    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, err = module.run_command([systemctl, "show", "--timestamp=us+utc", "--property=" + ",".join(PROPERTIES)]
                                      + names)
    if rc != 0:
        module.fail_json(msg="systemctl show %s: %s" % (" ".join(names), err.strip()))
    shown = parse_show(out)
    if len(shown) != len(names):
        module.fail_json(msg="systemctl show answered for %d units, asked for %d" % (len(shown), len(names)))
    for ask, unit in zip(requested, shown):
        paths = set(files_systemd_reads(unit) + ask["start_files"] + ask["reload_files"])
        mtimes = {}
        for path in paths:
            try:
                mtimes[path] = os.stat(path).st_mtime_ns // 1000
            except OSError:
                pass
        owed = pending(unit, mtimes, ask["start_files"], ask["reload_files"])
        result["units"].append(owed)
        if owed["restart_for"]:
            result["restart"].append(owed["name"])
        elif owed["reload_for"]:
            result["reload"].append(owed["name"])
        if not owed["active"]:
            result["not_running"].append(owed["name"])
        if not owed["enabled"]:
            result["not_enabled"].append(owed["name"])
        result["need_daemon_reload"] = result["need_daemon_reload"] or owed["need_daemon_reload"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
