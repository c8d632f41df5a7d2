"""The demo cluster is up, and the plan computed for it is the one its inventory describes."""

import json
import os

testinfra_hosts = ["ansible://all"]

PLAN = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "plan", "budget.json")


def test_every_container_runs_systemd(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded"), host.run("systemctl --failed --no-legend").stdout


def test_the_plan_covers_this_host(host):
    with open(PLAN, encoding="utf-8") as stream:
        report = json.load(stream)
    name = host.backend.get_hostname()
    assert name in report["hosts"]
    assert report["errors"] == 0
    # web 2 x 2 x 5, streaming 2 x 2 x 10 and sidekiq 8 processes go through pgbouncer on their hosts.
    primary = report["servers"]["primary"]
    assert primary["total"] == sum(source["connections"] for source in primary["sources"])
    assert primary["total"] <= primary["warning_line"] == 90
