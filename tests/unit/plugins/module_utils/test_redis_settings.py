"""Which Redis settings a running server takes live, and how a file's line compares with its CONFIG GET answer."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_settings import (
    SETTINGS_READ_AT_START, aof_rewrite_state, comparable, parse_configuration, settings_that_differ, shown,
    size_in_bytes, split_by_restart,
)

FILE = """# Instance persistent: persistent data for Mastodon.
bind 127.0.0.1 -::1
port 6379
unixsocketperm 770
dir /var/lib/redis/persistent
save ""
appendfilename "appendonly.aof"
appendonly yes
maxmemory 16384kb
maxmemory-policy noeviction
requirepass s3cret
"""
# What a Redis 7 that read FILE answers to CONFIG GET.
RUNNING = {"bind": "127.0.0.1 -::1", "port": "6379", "unixsocketperm": "770", "dir": "/var/lib/redis/persistent",
           "save": "", "appendfilename": "appendonly.aof", "appendonly": "yes", "maxmemory": "16777216",
           "maxmemory-policy": "noeviction", "requirepass": "s3cret"}


def test_a_file_reads_as_redis_reads_it():
    settings = parse_configuration(FILE)
    assert settings["save"] == "" and settings["appendfilename"] == "appendonly.aof"
    assert settings["bind"] == "127.0.0.1 -::1" and "#" not in "".join(settings)


def test_save_lines_add_up_and_an_empty_one_clears_them():
    assert parse_configuration("save 3600 1\nsave 300 100\n")["save"] == "3600 1 300 100"
    assert parse_configuration("save 3600 1\nsave \"\"\n")["save"] == ""


def test_a_server_that_read_the_file_differs_in_nothing():
    assert settings_that_differ(parse_configuration(FILE), RUNNING) == []


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("16384kb", 16 * 1024 ** 2), ("16mb", 16 * 1024 ** 2), ("1k", 1000), ("2GB", 2 * 1024 ** 3),
    ("1g", 10 ** 9),
])
def test_sizes_take_redis_units(value, expected):
    assert size_in_bytes(value) == expected


def test_a_size_redis_would_not_read_is_an_error():
    with pytest.raises(ValueError, match="'16 MB' is not a Redis size"):
        size_in_bytes("16 MB")


def test_words_compare_regardless_of_case_and_paths_and_secrets_as_written():
    assert comparable("appendonly", "Yes") == comparable("appendonly", "yes")
    assert comparable("dir", "/var/lib/Redis") != comparable("dir", "/var/lib/redis")
    assert comparable("requirepass", "S3cret") != comparable("requirepass", "s3cret")


def test_a_sizing_change_is_applied_live_and_a_socket_change_needs_a_restart():
    wanted = dict(parse_configuration(FILE), maxmemory="32mb", unixsocketperm="700", appendfsync="always")
    assert settings_that_differ(wanted, RUNNING) == ["appendfsync", "maxmemory", "unixsocketperm"]
    assert split_by_restart(settings_that_differ(wanted, RUNNING)) == (["appendfsync", "maxmemory"], ["unixsocketperm"])


def test_settings_redis_reads_only_at_start_include_its_files_and_socket():
    assert {"unixsocket", "dir", "dbfilename", "appendfilename", "logfile"} <= SETTINGS_READ_AT_START
    assert not {"maxmemory", "maxmemory-policy", "appendfsync", "save", "appendonly", "bind", "port"} & SETTINGS_READ_AT_START


def test_a_diff_never_shows_a_secret():
    text = shown({"requirepass": "s3cret", "maxmemory": "16mb"}, ["requirepass", "maxmemory"])
    assert text == "maxmemory 16mb\nrequirepass ********\n"


@pytest.mark.parametrize("persistence, state", [
    ({"aof_rewrite_in_progress": 1, "aof_rewrite_scheduled": 0, "aof_last_bgrewrite_status": "ok"}, "running"),
    ({"aof_rewrite_in_progress": 0, "aof_rewrite_scheduled": 1, "aof_last_bgrewrite_status": "ok"}, "running"),
    ({"aof_rewrite_in_progress": 0, "aof_rewrite_scheduled": 0, "aof_last_bgrewrite_status": "ok"}, "ok"),
    ({"aof_rewrite_in_progress": 0, "aof_rewrite_scheduled": 0, "aof_last_bgrewrite_status": "err"}, "failed"),
])
def test_an_aof_rewrite_is_over_when_none_runs_or_waits(persistence, state):
    assert aof_rewrite_state(persistence) == state
