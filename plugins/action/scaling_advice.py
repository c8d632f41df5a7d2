# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side advice: live signals against the plan made from the inventory."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.fediscale.mastodon.plugins.module_utils import advice, inventory
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError
from ansible_collections.fediscale.mastodon.plugins.plugin_utils.inputs import inventory_description, plain


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("queues", "postgres", "latency_warning_seconds"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=dict(
            queues=dict(type="list", elements="dict", required=True),
            postgres=dict(type="dict"),
            latency_warning_seconds=dict(type="float", default=60),
        ))[1]
        try:
            description = inventory_description(task_vars["hostvars"], task_vars["groups"])
            answer = advice.advise(description, plain(args["queues"]), plain(args["postgres"]),
                                   args["latency_warning_seconds"])
        except PlanInputError as error:
            raise AnsibleActionFail("the plan's input is wrong: %s" % to_native(inventory.inventory_wording(error)))
        # Plain lines on the console, as the plan's table.
        Display().display("\n".join(answer["lines"]))
        result.update(changed=False, advice=answer["lines"], changes=answer["changes"])
        return result
