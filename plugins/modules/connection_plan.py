# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module runs on the controller only: the action plugin of the same name does the work.

DOCUMENTATION = r"""
module: connection_plan
short_description: Compute, show and check the Mastodon connection budget on the controller
version_added: 0.1.0
description:
  - Builds the cluster description from the inventory (or takes O(cluster)), computes the connection budget with
    every rule, prints it as a table of plain lines on the controller's console, writes it as JSON and Markdown to
    O(report_dir), and fails on any error finding with a one-line verdict. It contacts no host; live limits come
    in through O(live_limits).
  - From the inventory, it templates only the variables the plan reads or judges, one at a time; one that cannot
    be resolved on the controller (for example a template over facts the play did not gather) is named in the
    error. Variables that look like the plan's but are unknown are errors on the hosts they are meant for, and
    warnings (C(inventory-variable-unknown)) where another role may read them.
  - This is the single task of the C(fediscale.mastodon.plan) playbook; one task keeps a 1000-host plan fast.
options:
  cluster:
    description:
      - A cluster description (see P(fediscale.mastodon.connection_budget#filter)). Default, the inventory's groups
        and host variables, as P(fediscale.mastodon.cluster_from_inventory#filter) reads them.
    type: dict
  query:
    description: A JMESPath expression selecting the cluster description inside O(cluster).
    type: str
  report_dir:
    description: Directory for C(budget.json) and C(budget.md) on the controller. Empty writes nothing.
    type: path
  live_limits:
    description:
      - Per database host, the registered result of M(fediscale.mastodon.postgres_connections) run on it. For a host
        with C(postgresql_limits_from=live), the plan takes C(max_connections) and the reserved slots from it.
        A failed read leaves the inventory's values and a warning (C(postgresql-live-limits-unread)).
      - The plan role fills it in; skipped and missing results are ignored.
    type: dict
    default: {}
  running_units:
    description:
      - Per app host, the registered result of M(fediscale.mastodon.mastodon_units) run on it. The plan counts the
        units that are not the collection's beside the planned ones (sized by what they read, their unit and
        C(.env.production)), and refuses those it would leave running. The planned units set every sizing
        variable themselves, so C(.env.production) does not size them.
      - The plan role fills it in; skipped and missing results are ignored.
    type: dict
    default: {}
  fail_on_error:
    description: Fail the task when the plan has an error finding.
    type: bool
    default: true
  return_report:
    description:
      - Return the whole report (every process group, host and finding) in RV(report), not only the summary.
      - Off by default so that the output stays short. A failing plan returns no report.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The reports are written in check mode too; they describe the plan, not a host.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: all
notes:
  - Runs on the controller whatever the play's hosts are; run it once, from a play on C(localhost).
author:
  - fediscale.mastodon contributors (@fediscale)
"""

EXAMPLES = r"""
- name: Plan the cluster of this inventory, stop on errors
  fediscale.mastodon.connection_plan:
    report_dir: "{{ playbook_dir }}/plan"

- name: Plan a cluster described in my own variables
  fediscale.mastodon.connection_plan:
    cluster: "{{ my_site }}"
    query: mastodon.cluster
    fail_on_error: false
  register: budget
"""

RETURN = r"""
summary:
  description: Per database server its totals, and the counts of findings.
  returned: always
  type: dict
  sample:
    servers:
      primary: {host: db1, total: 185, max_connections: 200, usable: 197, warning_line: 180, free: 15}
    errors: 0
    warnings: 1
    headroom: the primary is 5 connections over the 90 % line (180 of 200)
msg:
  description:
    - The verdict in one line. When the plan has an error finding, the first error with its host, service,
      numbers and fix.
  returned: always
  type: str
  sample: "the plan holds: 185 of 200 connections on the primary db1 (92.5 %), 0 error(s), 1 warning(s)"
table:
  description: The budget as the console shows it, a line per item, with the findings and their fixes.
  returned: unless the task fails on an error finding (the console shows the table then)
  type: list
  elements: str
report:
  description:
    - The whole report of P(fediscale.mastodon.connection_budget#filter); its C(findings) list every finding
      with C(rule), C(severity), C(host), C(service), C(message), C(hint) and C(numbers).
  returned: when O(return_report=true) and the plan has no error finding (or O(fail_on_error=false))
  type: dict
files:
  description: The files written.
  returned: always
  type: list
  elements: path
"""
