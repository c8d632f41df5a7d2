"""How the plan action turns the registered live reads into the description's live_limits."""

from ansible_collections.fediscale.mastodon.plugins.action.connection_plan import _add_live_limits

READ = {"changed": False, "max_connections": 40, "superuser_reserved_connections": 3, "reserved_connections": 0,
        "connections": 2}


def description():
    return {"hosts": {"db1": {"postgresql": {"limits_from": "live"}}, "web1": {"web": {}}}}


def test_a_read_gives_the_three_limits():
    result = description()
    _add_live_limits(result, {"db1": READ})
    assert result["hosts"]["db1"]["postgresql"]["live_limits"] == {
        "max_connections": 40, "superuser_reserved_connections": 3, "reserved_connections": 0}


def test_a_failed_read_kept_going_by_failed_when_gives_its_message():
    result = description()
    _add_live_limits(result, {"db1": {"failed": False, "failed_when_result": False,
                                      "msg": "cannot read 127.0.0.1:5999 as postgres: connection refused"}})
    assert result["hosts"]["db1"]["postgresql"]["live_limits"] == {
        "error": "cannot read 127.0.0.1:5999 as postgres: connection refused"}


def test_unreachable_hosts_count_as_unread():
    result = description()
    _add_live_limits(result, {"db1": {"unreachable": True, "msg": "ssh: no route to host"}})
    assert result["hosts"]["db1"]["postgresql"]["live_limits"] == {"error": "ssh: no route to host"}


def test_skipped_reads_and_hosts_without_postgresql_are_left_alone():
    result = description()
    _add_live_limits(result, {"db1": {"skipped": True}, "web1": READ, "gone": READ})
    assert result == description()
