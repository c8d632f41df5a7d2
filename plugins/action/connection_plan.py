# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side plan: the model's budget, shown, written and checked in one task."""

from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.fediscale.mastodon.plugins.module_utils import inventory, plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import LIVE_LIMITS, PlanInputError
from ansible_collections.fediscale.mastodon.plugins.plugin_utils.inputs import inventory_description, plain, select


def _add_live_limits(description, results):
    """Each database host's registered postgres_connections result, as the plan's live_limits."""
    for host, result in results.items():
        section = ((description.get("hosts") or {}).get(host) or {}).get("postgresql")
        if not isinstance(section, dict) or not isinstance(result, dict) or not result or result.get("skipped"):
            continue
        # failed_when: false leaves a failed read not marked failed: its numbers are what is missing.
        if result.get("failed") or result.get("unreachable") or any(key not in result for key in LIVE_LIMITS):
            section["live_limits"] = {"error": to_native(result.get("msg", "the read failed"))}
        else:
            section["live_limits"] = {key: result[key] for key in LIVE_LIMITS}


def _add_running_units(description, results):
    """Each app host's registered mastodon_units result: the units the plan counts and the roles take over, and
    the sizing and endpoint settings of .env.production they read."""
    for host, result in results.items():
        sections = (description.get("hosts") or {}).get(host)
        if not isinstance(sections, dict) or not isinstance(result, dict) or "units" not in result:
            continue
        section = sections.setdefault("mastodon", {})
        if not isinstance(section, dict):
            continue
        section["running_units"] = result["units"]
        section["running_env_production"] = result.get("env_production") or {}
        if result.get("media_filesystem"):
            section["media_filesystem"] = result["media_filesystem"]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("cluster", "query", "report_dir", "fail_on_error", "return_report", "live_limits",
                             "running_units"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=dict(
            cluster=dict(type="dict"),
            query=dict(type="str"),
            report_dir=dict(type="path"),
            fail_on_error=dict(type="bool", default=True),
            return_report=dict(type="bool", default=False),
            live_limits=dict(type="dict", default={}),
            running_units=dict(type="dict", default={}),
        ))[1]
        from_inventory = args["cluster"] is None
        try:
            if from_inventory:
                description = inventory_description(task_vars["hostvars"], task_vars["groups"])
            else:
                description = select(plain(args["cluster"]), args["query"])
            _add_live_limits(description, plain(args["live_limits"]))
            _add_running_units(description, plain(args["running_units"]))
            report = plan.connection_budget(description)
        except PlanInputError as error:
            if from_inventory:
                error = inventory.inventory_wording(error)
            raise AnsibleActionFail("the plan's input is wrong: %s" % to_native(error))

        files = []
        if args["report_dir"]:
            os.makedirs(args["report_dir"], exist_ok=True)
            for name, text in (("budget.json", json.dumps(report, indent=2, sort_keys=True) + "\n"),
                               ("budget.md", plan.render_markdown(report))):
                path = os.path.join(args["report_dir"], name)
                with open(path, "w", encoding="utf-8") as stream:
                    stream.write(text)
                files.append(path)

        table = plan.render_table(report)
        server_keys = ("host", "total", "max_connections", "usable", "warning_line", "free", "utilisation_percent")
        result.update(
            changed=False,
            msg=plan.verdict(report),
            table=table.splitlines(),
            summary={
                "servers": {role: {key: server[key] for key in server_keys}
                            for role, server in report["servers"].items()},
                "errors": report["errors"],
                "warnings": report["warnings"],
                "headroom": report["headroom"],
            },
            files=files,
        )
        # The table as people read it: plain lines on the console, not a JSON list of strings.
        Display().display(table)
        if report["errors"] and args["fail_on_error"]:
            # The failure is the verdict alone, one line on every ansible-core (2.18 prints the whole result);
            # the table is on the console already.
            return {"failed": True, "changed": False, "msg": result["msg"]}
        elif args["return_report"]:
            # The caller uses the report; printing it would flood the output.
            result["report"] = report
        return result
