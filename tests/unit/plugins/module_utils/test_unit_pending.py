"""What a running unit has not read yet, from systemctl show and the files' times (a run killed between a write
and its restart or reload)."""

from ansible_collections.fediscale.mastodon.plugins.module_utils.unit_pending import (
    files_systemd_reads, parse_show, parse_timestamp, pending,
)

# systemctl show --timestamp=us+utc of a running unit reloaded two seconds after its start, and of an unknown one
# (systemd 257's output, keys in its order).
SHOWN = """EnvironmentFiles=/etc/mastodon/environment (ignore_errors=no)
EnvironmentFiles=/etc/mastodon/optional (ignore_errors=yes)
Id=mastodon-web.service
LoadState=loaded
ActiveState=active
FragmentPath=/etc/systemd/system/mastodon-web.service
DropInPaths=/etc/systemd/system/mastodon-.service.d/sandbox.conf /etc/systemd/system/mastodon-web.service.d/x.conf
UnitFileState=enabled
StateChangeTimestamp=Tue 2026-12-01 10:36:12.000000 UTC
InactiveExitTimestamp=Tue 2026-12-01 10:36:10.000000 UTC
NeedDaemonReload=no

Id=pgbouncer@2.service
LoadState=not-found
ActiveState=inactive
FragmentPath=
DropInPaths=
UnitFileState=
StateChangeTimestamp=
InactiveExitTimestamp=
NeedDaemonReload=no
"""
STARTED = parse_timestamp("Tue 2026-12-01 10:36:10.000000 UTC")
SECOND = 1000000
RELOADED = STARTED + 2 * SECOND


def web():
    return parse_show(SHOWN)[0]


def test_systemctl_shows_each_unit_in_order_with_its_files():
    web_unit, unknown = parse_show(SHOWN)
    assert (web_unit["Id"], unknown["Id"]) == ("mastodon-web.service", "pgbouncer@2.service")
    assert files_systemd_reads(web_unit) == [
        "/etc/systemd/system/mastodon-web.service", "/etc/systemd/system/mastodon-.service.d/sandbox.conf",
        "/etc/systemd/system/mastodon-web.service.d/x.conf", "/etc/mastodon/environment", "/etc/mastodon/optional"]
    assert files_systemd_reads(unknown) == []


def test_timestamps_keep_their_microseconds_and_never_is_none():
    assert parse_timestamp("Tue 2026-12-01 10:36:10.000001 UTC") - STARTED == 1
    assert parse_timestamp("Tue 2026-12-01 10:36:10.000000 UTC") == 1796121370 * SECOND
    assert parse_timestamp("") is None and parse_timestamp("n/a") is None


def test_an_environment_written_after_the_start_is_owed_a_restart():
    owed = pending(web(), {"/etc/mastodon/environment": STARTED + 5 * SECOND,
                           "/etc/systemd/system/mastodon-web.service": 0})
    assert owed["restart_for"] == ["/etc/mastodon/environment"] and owed["active"] and owed["enabled"]


def test_files_older_than_the_start_or_missing_owe_nothing():
    owed = pending(web(), {"/etc/mastodon/environment": STARTED - SECOND}, reload_files=["/etc/missing.ini"])
    assert owed["restart_for"] == [] and owed["reload_for"] == []


def test_a_reload_file_newer_than_the_last_reload_is_owed_a_reload():
    mtimes = {"/etc/pgbouncer/pgbouncer.ini": RELOADED + SECOND, "/etc/pgbouncer/userlist.txt": RELOADED - SECOND}
    owed = pending(web(), mtimes, reload_files=sorted(mtimes))
    assert owed["reload_for"] == ["/etc/pgbouncer/pgbouncer.ini"] and owed["restart_for"] == []


def test_a_reload_file_written_between_start_and_reload_was_read_by_the_reload():
    owed = pending(web(), {"/etc/nginx/nginx.conf": STARTED + SECOND}, reload_files=["/etc/nginx/nginx.conf"])
    assert owed["reload_for"] == []


def test_a_unit_that_owes_a_restart_still_names_what_a_reload_would_read():
    """A role that only reloads (the firewall: a restart would drop its rules for a moment) acts on reload_for."""
    mtimes = {"/etc/systemd/system/mastodon-web.service": STARTED + 9 * SECOND, "/etc/x.ini": RELOADED + SECOND}
    owed = pending(web(), mtimes, reload_files=["/etc/x.ini"])
    assert owed["restart_for"] == ["/etc/systemd/system/mastodon-web.service"] and owed["reload_for"] == ["/etc/x.ini"]


def test_a_start_file_the_service_reads_itself_counts_like_systemds():
    owed = pending(web(), {"/etc/postgresql/17/main/conf.d/x.conf": STARTED + SECOND},
                   start_files=["/etc/postgresql/17/main/conf.d/x.conf"])
    assert owed["restart_for"] == ["/etc/postgresql/17/main/conf.d/x.conf"]


def test_a_unit_that_does_not_run_owes_nothing_its_start_reads_everything():
    stopped = dict(web(), ActiveState="inactive")
    owed = pending(stopped, {"/etc/mastodon/environment": STARTED + 5 * SECOND},
                   reload_files=["/etc/mastodon/environment"])
    assert owed["restart_for"] == [] and owed["reload_for"] == [] and not owed["active"]
    unknown = pending(parse_show(SHOWN)[1], {})
    assert unknown == {"name": "pgbouncer@2.service", "active": False, "enabled": False, "need_daemon_reload": False,
                       "restart_for": [], "reload_for": []}


def test_a_changed_unit_file_that_systemd_has_not_loaded_is_named():
    assert pending(dict(web(), NeedDaemonReload="yes"), {})["need_daemon_reload"]
