# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: postgresql_standby
short_description: Read what a PostgreSQL data directory holds, and whether a replica may be copied over it
version_added: 0.2.0
description:
  - Reads a cluster's control file with C(pg_controldata) (its system identifier and state, whether or not the
    server runs), whether it is configured as a standby (C(standby.signal)), and its databases besides
    C(postgres) and the templates (the directories under C(base/) with an OID of 16384 or more, the first a
    database created after C(initdb) can have).
  - With O(primary_host), judges a replica by the connection plan's rule (C(replication.standby_decision)). An
    empty cluster (the one Debian's package creates) is C(copy); a standby of this primary whose slot is lost
    or gone, or beside a copy an earlier run did not finish, is C(copy again); a standby of it with its slot is C(keep); a cluster holding a database, or a
    standby of another primary (another system identifier), is C(refuse), with a message that says what was
    found and what to do.
  - Changes nothing.
options:
  data_directory:
    description: The cluster's data directory.
    type: path
    required: true
  version:
    description: PostgreSQL's major version, whose C(pg_controldata) reads the directory.
    type: int
    required: true
  replica_host:
    description: The replica's inventory name (its slot is named after it).
    type: str
  primary_host:
    description: The primary's inventory name. Set it to judge this cluster as that primary's replica.
    type: str
  primary_system_identifier:
    description: The primary's system identifier (this module's C(found.system_identifier) there); unset when it
      has no cluster yet.
    type: str
  slot_status:
    description: The C(wal_status) of the replica's slot on the primary; unset when there is no slot.
    type: str
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Judge the replica's data directory against its primary
  fediscale.mastodon.postgresql_standby:
    data_directory: /var/lib/postgresql/17/main
    version: 17
    replica_host: "{{ inventory_hostname }}"
    primary_host: db1
    primary_system_identifier: "{{ hostvars['db1'].primary_cluster.found.system_identifier }}"
    slot_status: reserved
  register: standby
"""

RETURN = r"""
found:
  description:
    - C(exists), C(version), C(data_directory), C(system_identifier), C(state) (as C(pg_controldata) prints it),
      C(in_recovery) and C(databases) (as C(base/OID)).
  returned: success
  type: dict
decision:
  description: With O(primary_host), C(action) (C(keep), C(copy), C(copy again) or C(refuse)) and C(message).
  returned: when O(primary_host) is set
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fediscale.mastodon.plugins.module_utils import replication


def main():
    module = AnsibleModule(
        argument_spec=dict(
            data_directory=dict(type="path", required=True),
            version=dict(type="int", required=True),
            replica_host=dict(type="str"),
            primary_host=dict(type="str"),
            primary_system_identifier=dict(type="str"),
            slot_status=dict(type="str"),
        ),
        required_by={"primary_host": ["replica_host"]},
        supports_check_mode=True,
    )
    params = module.params
    data = params["data_directory"]
    found = dict(exists=os.path.isfile(os.path.join(data, "PG_VERSION")), version=params["version"],
                 data_directory=data, system_identifier=None, state=None, in_recovery=False, databases=[])
    if found["exists"]:
        command = ["/usr/lib/postgresql/%d/bin/pg_controldata" % params["version"], "-D", data]
        rc, out, err = module.run_command(command, environ_update={"LC_ALL": "C"})
        if rc != 0:
            module.fail_json(msg="cannot read %s's control file: %s" % (data, err.strip() or out.strip()))
        found.update(replication.parse_controldata(out))
        found["in_recovery"] = (replication.controldata_in_recovery(found["state"])
                                or os.path.exists(os.path.join(data, "standby.signal")))
        found["databases"] = replication.user_database_directories(os.listdir(os.path.join(data, "base")))
    # The copy starts by making this directory and ends by renaming it to the data directory.
    found["copy_unfinished"] = os.path.exists(data + replication.COPY_SUFFIX)
    result = dict(changed=False, found=found)
    if params["primary_host"]:
        result["decision"] = replication.standby_decision(
            params["replica_host"], found, params["primary_host"],
            {"system_identifier": params["primary_system_identifier"], "slot_status": params["slot_status"]})
    module.exit_json(**result)


if __name__ == "__main__":
    main()
