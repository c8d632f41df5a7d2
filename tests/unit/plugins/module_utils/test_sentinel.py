"""Who is master of a replicated set, and what an instance or a sentinel must change to agree."""

from ansible_collections.fediscale.mastodon.plugins.module_utils.sentinel import (
    SENTINEL_ASK_RULES, ask_sentinels, current_master, flat_pairs, format_address,
    master_named_by_sentinels, parse_address, replication_change, sentinel_changes, unplanned_master,
    unplanned_master_recovery,
)

A, B, C = ("10.0.0.11", 6379), ("10.0.0.12", 6379), ("10.0.0.13", 6379)


def test_addresses_parse_and_format_both_ways():
    assert parse_address("10.0.0.11:26380", 26379) == ("10.0.0.11", 26380)
    assert parse_address("redis1", 26379) == ("redis1", 26379)
    assert parse_address("[fd00::1]:6380", 6379) == ("fd00::1", 6380)
    assert parse_address("fd00::1", 6379) == ("fd00::1", 6379)
    assert format_address(("fd00::1", 6380)) == "[fd00::1]:6380" and format_address(A) == "10.0.0.11:6379"


def test_the_master_most_sentinels_name_wins_and_a_tie_goes_to_the_first():
    assert master_named_by_sentinels([B, None, B, A]) == B
    assert master_named_by_sentinels([A, B]) == A
    assert master_named_by_sentinels([None, None]) is None


def test_a_set_no_sentinel_knows_starts_at_the_plans_master():
    assert current_master([], A) == (A, "plan")
    assert current_master([None, None, None], A) == (A, "plan")
    assert current_master([None, B, None], A) == (B, "sentinels")


def test_a_replica_of_another_master_or_none_is_pointed_at_the_master():
    assert replication_change(B, {"role": "master"}, A, "plan") == "10.0.0.11 6379"
    assert replication_change(C, {"role": "slave", "master": B}, A, "sentinels") == "10.0.0.11 6379"
    assert replication_change(B, {"role": "slave", "master": A}, A, "sentinels") is None


def test_the_master_the_sentinels_named_is_left_alone():
    # After a failover the new master is whatever ROLE says; the module never moves it back.
    assert replication_change(B, {"role": "master"}, B, "sentinels") is None
    assert replication_change(B, {"role": "slave", "master": A}, B, "sentinels") is None
    # A new set's initial master stops replicating.
    assert replication_change(A, {"role": "slave", "master": C}, A, "plan") == "NO ONE"


WANTED = [{"name": "mastodon", "initial_master": A, "quorum": 2, "down_after_ms": 5000}]


def test_a_new_monitor_starts_at_the_master_the_other_sentinels_name():
    assert sentinel_changes({}, WANTED, {"mastodon": [None, B]}, purge=True) == [
        ["MONITOR", "mastodon", "10.0.0.12", 6379, 2], ["SET", "mastodon", "down-after-milliseconds", 5000]]
    assert sentinel_changes({}, WANTED, {}, purge=True)[0] == ["MONITOR", "mastodon", "10.0.0.11", 6379, 2]


def test_a_monitored_set_keeps_its_master_and_gets_its_settings_corrected():
    monitored = {"mastodon": {"name": "mastodon", "ip": "10.0.0.12", "port": "6379", "quorum": "3",
                              "down-after-milliseconds": "5000"}}
    assert sentinel_changes(monitored, WANTED, {}, purge=True) == [["SET", "mastodon", "quorum", 2]]
    monitored["mastodon"]["quorum"] = "2"
    assert sentinel_changes(monitored, WANTED, {}, purge=True) == []


def test_unplanned_monitors_go_only_with_purge():
    monitored = {"mymaster": {"quorum": "2", "down-after-milliseconds": "30000"}}
    assert sentinel_changes(monitored, [], {}, purge=True) == [["REMOVE", "mymaster"]]
    assert sentinel_changes(monitored, [], {}, purge=False) == []


def test_flat_replies_become_mappings():
    assert flat_pairs(["name", "mastodon", "ip", "10.0.0.11", "port", 6379]) == {
        "name": "mastodon", "ip": "10.0.0.11", "port": "6379"}


def test_sentinels_are_asked_for_every_name_and_unreachable_ones_are_named():
    replies = {("10.0.0.11", 26379): {"mastodon": ["10.0.0.12", "6379"], "jobs": None},
               ("10.0.0.12", 26380): {"mastodon": ["10.0.0.12", "6379"], "jobs": ["10.0.0.13", "6380"]}}

    def ask(address, name):
        if address not in replies:
            raise ConnectionError("connection refused")
        return replies[address][name]

    answers, unreachable = ask_sentinels(ask, ["10.0.0.11", "10.0.0.12:26380", "10.0.0.13"], ["mastodon", "jobs"])
    assert answers == {"mastodon": [B, B], "jobs": [None, ("10.0.0.13", 6380)]}
    assert unreachable == ["10.0.0.13"]


def test_a_master_outside_the_planned_members_is_named_with_the_members():
    assert unplanned_master(B, [A, B, C]) is None
    assert unplanned_master(("10.0.0.99", 6379), [A, B]) == (
        "10.0.0.99:6379 is not one of its planned members (10.0.0.11:6379, 10.0.0.12:6379)")
    # Another port of a member's host is another server.
    assert unplanned_master(("10.0.0.11", 6380), [A, B]) is not None
    recovery = unplanned_master_recovery("mastodon")
    assert recovery.startswith("Nothing was changed.")
    assert "as fediscale-admin, SENTINEL REMOVE mastodon, then SENTINEL MONITOR mastodon at the member" in recovery


def test_the_ask_only_rules_allow_no_command_that_changes_a_sentinel():
    allowed = {rule[1:] for rule in SENTINEL_ASK_RULES if rule.startswith("+")}
    assert "-@all" in SENTINEL_ASK_RULES and not any(rule.startswith("+@") for rule in SENTINEL_ASK_RULES)
    for command in ("sentinel|monitor", "sentinel|remove", "sentinel|set", "sentinel|reset", "sentinel|failover",
                    "sentinel|config", "sentinel|debug", "sentinel|flushconfig", "acl", "shutdown", "publish"):
        assert command not in allowed
    assert {"sentinel|get-master-addr-by-name", "sentinel|sentinels", "sentinel|replicas", "auth", "hello"} <= allowed
