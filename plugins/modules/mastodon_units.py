# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: mastodon_units
short_description: Find the systemd units that run Mastodon on a host, with their settings and live connections
version_added: 0.1.0
description:
  - Lists every service unit systemd knows (loaded, or installed under C(/etc/systemd/system)) whose C(ExecStart)
    runs Puma, Sidekiq or the streaming server (C(node ./streaming)) from Mastodon's checkout, as the official
    installation guide's units do and as the collection's own do.
  - For each, its state, its unit file, its C(ExecStart) arguments and the sizing and endpoint settings of its
    environment (C(Environment=) and C(EnvironmentFile=) as systemd reads them), and the PostgreSQL connections its
    processes hold now (TCP to ports 5432 and 6432, and PostgreSQL's Unix socket).
  - Reads the same settings from the checkout's C(.env.production). Secrets never leave the host - passwords in
    URLs are masked, and other settings are left out.
  - Changes nothing. C(site.yml)'s plan play runs it on every app host, so that the plan counts what runs there
    and the roles take it over in order.
options:
  app_dir:
    description: Mastodon's checkout; a unit counts when its C(WorkingDirectory) is this directory.
    type: path
    default: /home/mastodon/live
  managed_environment_file:
    description:
      - The environment file the collection's units load (the app role's); a unit that loads it is the
        collection's own (C(managed) in RV(units)).
    type: path
    default: /etc/mastodon/environment
  media_path:
    description:
      - Where Mastodon keeps local media (C(PAPERCLIP_ROOT_PATH)); the file system under it is returned in
        RV(media_filesystem). Default the checkout's C(public/system). A path not created yet is judged by the
        nearest directory above it that exists.
    type: path
extends_documentation_fragment:
  - fediscale.mastodon.live_check
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Find what runs Mastodon here
  fediscale.mastodon.mastodon_units:
    app_dir: /home/mastodon/live
  register: running
"""

RETURN = r"""
units:
  description:
    - One entry per unit, by name. C(name), C(program) (puma, sidekiq or streaming), C(managed) (the collection's
      own), C(active), C(enabled), C(path) (its unit file), C(arguments) (of C(ExecStart)), C(environment) (sizing
      and endpoint settings only), C(live_postgresql_connections).
  returned: success
  type: list
  elements: dict
env_production:
  description: The sizing and endpoint settings of the checkout's C(.env.production), passwords masked.
  returned: success
  type: dict
media_filesystem:
  description: The file system under the media path, from the kernel's mount table.
  returned: success
  type: dict
  contains:
    path:
      description: The media path.
      type: str
    type:
      description: The file system's type, e.g. C(ext4) or C(nfs4).
      type: str
    mount:
      description: Where that file system is mounted.
      type: str
"""

import glob
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fediscale.mastodon.plugins.module_utils.discovery import (
    SHOW_PROPERTIES, filesystem_under, kept_settings, parse_environment_file, parse_show, postgresql_peer, program_of)


def _run(module, argv):
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="%s failed: %s" % (" ".join(argv), err.strip() or out.strip()))
    return out


def _media_filesystem(path):
    existing = path
    while not os.path.exists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        found = filesystem_under(os.path.realpath(existing), mountinfo.read())
    return dict(found, path=path)


def _candidate_units(module):
    """Every service systemd has loaded, and every one installed as a file (a disabled unit is not loaded)."""
    names = set()
    out = _run(module, ["systemctl", "list-units", "--all", "--type=service", "--plain", "--no-legend", "--full"])
    names.update(line.split()[0] for line in out.splitlines() if line.strip())
    for directory in ("/etc/systemd/system", "/lib/systemd/system"):
        for path in glob.glob(os.path.join(directory, "*.service")):
            name = os.path.basename(path)
            if not name.endswith("@.service"):
                names.add(name)
        # Instances started from a template appear only through their links.
        for path in glob.glob(os.path.join(directory, "*.wants", "*@*.service")):
            names.add(os.path.basename(path))
    return sorted(name for name in names if name.endswith(".service"))


def _socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _tcp_peers():
    """Socket inode to the remote port, for every TCP connection on the host."""
    peers = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == "01":  # ESTABLISHED
                        peers[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
        except OSError:
            continue
    return peers


def _unix_peers(module):
    """Client socket inode to the path of the server socket it is connected to (ss shows the server side's path
    and its peer's inode)."""
    rc, out, _err = module.run_command(["ss", "-xnH"])
    peers = {}
    if rc != 0:
        return peers
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[4].startswith("/"):
            peers[fields[7]] = fields[4]
    return peers


def _pids(control_group):
    if not control_group:
        return []
    pids = []
    for path in glob.glob("/sys/fs/cgroup%s/**/cgroup.procs" % control_group, recursive=True) or \
            glob.glob("/sys/fs/cgroup/systemd%s/cgroup.procs" % control_group):
        try:
            with open(path) as lines:
                pids.extend(int(line) for line in lines if line.strip())
        except OSError:
            continue
    return pids


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app_dir=dict(type="path", default="/home/mastodon/live"),
            managed_environment_file=dict(type="path", default="/etc/mastodon/environment"),
            media_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    app_dir = module.params["app_dir"].rstrip("/")
    names = _candidate_units(module)
    shown = parse_show(_run(module, ["systemctl", "show", "--property=" + ",".join(SHOW_PROPERTIES), "--"] + names))
    tcp, unix = None, None
    units = []
    for properties in shown:
        program = program_of(properties, app_dir)
        if program is None:
            continue
        files = properties["environment_files"]
        environment = {}
        for path in files:
            environment.update(parse_environment_file(path))
        environment.update(properties["environment"])
        live = None
        if properties["active"]:
            if tcp is None:
                tcp, unix = _tcp_peers(), _unix_peers(module)
            live = sum(1 for pid in _pids(properties["control_group"]) for inode in _socket_inodes(pid)
                       if postgresql_peer(tcp.get(inode), unix.get(inode)))
        units.append({
            "name": properties["id"],
            "program": program,
            "managed": module.params["managed_environment_file"] in files,
            "active": properties["active"],
            "enabled": properties["enabled"],
            "path": properties["fragment_path"],
            "arguments": properties["arguments"],
            "environment": kept_settings(environment),
            "live_postgresql_connections": live,
        })
    env_production = kept_settings(parse_environment_file(os.path.join(app_dir, ".env.production")))
    module.exit_json(changed=False, units=units, env_production=env_production,
                     media_filesystem=_media_filesystem(module.params["media_path"] or app_dir + "/public/system"))


if __name__ == "__main__":
    main()
