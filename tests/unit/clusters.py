"""Cluster descriptions for tests: a valid one, changed a little per test."""

import copy

QUEUES = ["default", "push", "ingress", "mailers", "pull", "scheduler"]

BASE = {
    # Media in a bucket: web and sidekiq run on two hosts.
    "mastodon": {"version": "4.5", "media": "s3", "s3_bucket": "mastodon-media", "s3_alias_host": "files.example.com"},
    "hosts": {
        "db1": {"postgresql": {"max_connections": 200, "ram": "16GB"}},
        "redis1": {"redis": {"instances": [
            {"name": "persistent", "purpose": "persistent", "port": 6379},
            {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB"},
        ]}},
        "web1": {"web": {"concurrency": 2, "max_threads": 5}, "streaming": {"ports": [4000]},
                 "pgbouncer": {"enabled": False}},
        "worker1": {"sidekiq": {"queues": [{"queue": queue, "concurrency": 5} for queue in QUEUES]},
                    "pgbouncer": {"enabled": False}},
    },
}


def cluster(**changes):
    """A copy of BASE; keys like "hosts.web1.web.concurrency" set nested values."""
    description = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = description
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return description


def with_sentinels(description, port=None):
    """Three Redis hosts, each with a sentinel and a member of the persistent set "mastodon"."""
    for host in ("redis1", "redis2", "redis3"):
        section = description["hosts"].setdefault(host, {}).setdefault("redis", {"instances": []})
        section["sentinel"] = True
        if port is not None:
            section["sentinel_port"] = port
        persistent = [item for item in section["instances"] if item["purpose"] == "persistent"]
        if persistent:
            persistent[0]["sentinel_master"] = "mastodon"
        else:
            section["instances"].append({"name": "persistent", "purpose": "persistent",
                                         "sentinel_master": "mastodon"})
    return description
