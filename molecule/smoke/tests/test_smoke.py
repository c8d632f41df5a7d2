"""The rig runs real systemd: the system is up and the unit runs as a dynamic user."""

import pytest

testinfra_hosts = ["ansible://smoke"]


def test_systemd_is_pid_1_and_running(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded"), host.run("systemctl --failed --no-legend").stdout


def test_smoke_unit_is_enabled_and_running(host):
    service = host.service("rig-smoke.service")
    assert service.is_running
    assert service.is_enabled


@pytest.mark.parametrize("prop, value", [("DynamicUser", "yes"), ("ProtectSystem", "strict"),
                                         ("PrivateTmp", "yes")])
def test_smoke_unit_sandbox_is_live(host, prop, value):
    shown = host.run("systemctl show -p %s --value rig-smoke.service" % prop).stdout.strip()
    assert shown == value


def test_the_other_container_resolves_by_name(host):
    other = "smoke-b" if host.backend.get_hostname() == "smoke-a" else "smoke-a"
    assert host.run("getent hosts %s" % other).rc == 0
