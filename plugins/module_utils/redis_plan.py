# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis and Sentinel planning: each instance with every setting its purpose implies, the sentinel sets, and
Mastodon's three Redis configurations (base, sidekiq, cache) resolved as Mastodon resolves them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils import redis_users, tls
from ansible_collections.fediscale.mastodon.plugins.module_utils.sentinel import SENTINEL_MASTODON_USER
from ansible_collections.fediscale.mastodon.plugins.module_utils.connections import (
    LOOPBACK_NAMES, address_of, endpoint_host,
)
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    AUTO, PlanInputError, host_where, parse_description,
)


def _redis_url(instance: Optional[Dict[str, Any]]) -> Optional[str]:
    if instance is None:
        return None
    return "%s://%s:%d" % ("rediss" if instance["tls"] else "redis", instance["address"], instance["port"])


REDIS_PURPOSE_DEFAULTS = {
    "cache": {"maxmemory_policy": "allkeys-lru", "appendonly": False, "save": ""},
    "persistent": {"maxmemory_policy": "noeviction", "appendonly": True, "save": ""},
    "sidekiq": {"maxmemory_policy": "noeviction", "appendonly": True, "save": ""},
}


# Mastodon's three Redis configurations, by environment prefix.
REDIS_CONFIGURATIONS = {"REDIS": "base", "SIDEKIQ_REDIS": "sidekiq", "CACHE_REDIS": "cache"}


def redis_instance_settings(items: List[Dict[str, Any]], where: str) -> List[Dict[str, Any]]:
    """A host's Redis instances (parsed ``redis_instances``) with every setting its purpose implies.

    The redis role writes exactly these; the rules judge exactly these.
    """
    instances = []
    for index, item in enumerate(items):
        for key in ("name", "port"):
            clash = [other for other in instances if other[key] == item[key]]
            if clash:
                raise PlanInputError("%s[%d].%s" % (where, index, key),
                                     "%r is already used by instance %s" % (item[key], clash[0]["name"]),
                                     "each instance needs its own name and port")
        instance = dict(item)
        for key, value in REDIS_PURPOSE_DEFAULTS[item["purpose"]].items():
            if instance.get(key) is None:
                instance[key] = value
        instances.append(instance)
    return instances


def _redis_instances(hosts: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    instances = []
    for host, sections in sorted(hosts.items()):
        items = (sections.get("redis") or {}).get("instances", [])
        for instance in redis_instance_settings(items, host_where(host, "redis") + ".instances"):
            instance.update(host=host, address=address_of(host, sections), version=sections["redis"]["version"],
                            server=sections["redis"]["server"])
            instance["tls"] = tls.redis_instance_tls(instance)
            instances.append(instance)
    return instances


def sentinel_majority(sentinels: int) -> int:
    """Sentinels that make a majority: Sentinel needs one to authorise a failover, whatever the quorum."""
    return sentinels // 2 + 1


def redis_sentinel(hosts: Dict[str, Dict[str, Any]], cluster: Dict[str, Any],
                   instances: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The sentinels and the replicated sets they monitor.

    Every sentinel monitors every set. The instances that share a
    ``sentinel_master`` form a set; its first member by host name is the master
    a new set starts with. Later the sentinels decide, and the redis role asks
    them before it touches replication.
    """
    sentinels = [{"host": host, "address": address_of(host, sections), "port": sections["redis"]["sentinel_port"]}
                 for host, sections in sorted(hosts.items())
                 if sections.get("redis") is not None and sections["redis"]["sentinel"]]
    quorum = cluster["redis_sentinel_quorum"]
    if quorum == AUTO:
        quorum = sentinel_majority(len(sentinels))
    sets: Dict[str, Dict[str, Any]] = {}
    for instance in instances:
        if instance["sentinel_master"] is None:
            continue
        entry = sets.setdefault(instance["sentinel_master"], {
            "name": instance["sentinel_master"], "members": [], "quorum": quorum,
            "down_after_ms": cluster["redis_sentinel_down_after_ms"]})
        member_keys = ("host", "address", "port", "name", "purpose", "sentinel_master")
        entry["members"].append({key: instance[key] for key in member_keys})
    for entry in sets.values():
        first = entry["members"][0]
        entry["initial_master_host"] = first["host"]
        # What the redis_sentinel and redis_replication modules take.
        entry["monitor"] = {"name": entry["name"], "initial_master": "%s:%d" % (first["address"], first["port"]),
                            "quorum": quorum, "down_after_ms": entry["down_after_ms"],
                            "members": ["%s:%d" % (item["address"], item["port"]) for item in entry["members"]]}
    return {"sentinels": sentinels, "sets": [sets[name] for name in sorted(sets)],
            "endpoints": ["%s:%d" % (item["address"], item["port"]) for item in sentinels]}


def _redis_target_settings(prefix: str, target: Dict[str, Any], sentinel: Dict[str, Any]) -> Dict[str, str]:
    """Mastodon's settings for one configuration: the sentinels when the target is in a monitored set."""
    if target["sentinel_master"] is not None and sentinel["sentinels"]:
        return {prefix + "_SENTINELS": ",".join("%s:%d" % (item["address"], item["port"])
                                                for item in sentinel["sentinels"]),
                prefix + "_SENTINEL_MASTER": target["sentinel_master"],
                # The sentinels' ask-only user for Mastodon (module_utils/sentinel.py); the password is a secret.
                prefix + "_SENTINEL_USERNAME": SENTINEL_MASTODON_USER}
    return {prefix + "_URL": _redis_url(target)}


def plan_redis(hosts: Dict[str, Dict[str, Any]], cluster: Dict[str, Any]) -> Dict[str, Any]:
    instances = _redis_instances(hosts)
    sentinel = redis_sentinel(hosts, cluster, instances)
    by_purpose: Dict[str, Dict[str, Any]] = {}
    for instance in instances:
        by_purpose.setdefault(instance["purpose"], instance)
    settings = cluster["redis_settings"]
    derived = settings is None
    if derived:
        targets = {
            "REDIS": by_purpose.get("persistent"),
            "SIDEKIQ_REDIS": by_purpose.get("sidekiq") or by_purpose.get("persistent"),
            "CACHE_REDIS": by_purpose.get("cache"),
        }
        settings = {}
        for prefix, target in targets.items():
            if target:
                settings.update(_redis_target_settings(prefix, target, sentinel))
    configurations = resolve_redis_settings(settings, instances)
    return {"instances": instances, "settings": settings, "derived": derived, "sentinel": sentinel,
            "configurations": configurations,
            "keep_debian_instance": debian_instances_in_use(configurations, hosts)}


# The port of the instance Debian's redis-server (or valkey-server) package starts.
DEBIAN_INSTANCE_PORT = 6379


def debian_instances_in_use(configurations: Dict[str, Dict[str, Any]], hosts: Dict[str, Dict[str, Any]]) -> List[str]:
    """Redis hosts whose Debian instance Mastodon's settings still use (as the official guide's install does): a
    configuration points at its port there and no planned instance holds it. The redis role leaves it running."""
    kept = set()
    app_hosts = [host for host, sections in hosts.items() if any(s in sections for s in ("web", "streaming", "sidekiq"))]
    for configuration in configurations.values():
        endpoint = configuration["endpoint"]
        if configuration["instance"] is not None or endpoint is None or endpoint[1] != DEBIAN_INSTANCE_PORT:
            continue
        # A loopback endpoint is each app host's own.
        for host in app_hosts or sorted(hosts):
            target = endpoint_host(endpoint[0], host, hosts)
            if "redis" in hosts.get(target, {}):
                kept.add(target)
    return sorted(kept)


def redis_sentinel_of(description: Any) -> Dict[str, Any]:
    """Only the sentinel part of a cluster description's plan: what the redis role needs on its own."""
    parsed = parse_description(description)
    return redis_sentinel(parsed["hosts"], parsed["mastodon"], _redis_instances(parsed["hosts"]))


def resolve_redis_settings(settings: Dict[str, str], instances: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Which endpoint each of Mastodon's Redis configurations uses, as lib/mastodon/redis_configuration.rb does.

    ``*_URL`` wins over ``*_HOST``/``*_PORT``; a sidekiq or cache configuration
    with neither URL, host nor sentinels falls back to the whole base
    configuration (a lone ``CACHE_REDIS_PORT`` is silently ignored).
    """
    resolved: Dict[str, Any] = {}
    for prefix in ("REDIS", "SIDEKIQ_REDIS", "CACHE_REDIS"):
        url = settings.get(prefix + "_URL")
        host = settings.get(prefix + "_HOST")
        sentinels = settings.get(prefix + "_SENTINELS")
        master = settings.get(prefix + "_SENTINEL_MASTER")
        ignored = []
        # Mastodon uses sentinels only with both the list and the master name; one alone is dropped silently.
        half_sentinel = ([name for name in (prefix + "_SENTINELS", prefix + "_SENTINEL_MASTER") if settings.get(name)]
                         if not url and bool(sentinels) != bool(master) else [])
        if url:
            endpoint = _endpoint_from_url(url)
            source = prefix + "_URL"
        elif sentinels and master:
            endpoint = ("sentinel", master)
            source = prefix + "_SENTINELS"
        elif host or prefix == "REDIS":
            endpoint = (host or "localhost", int(settings.get(prefix + "_PORT", 6379)))
            source = prefix + "_HOST" if host else "Mastodon's default localhost:6379"
        else:
            endpoint = resolved["REDIS"]["endpoint"]
            source = "the base REDIS_* configuration"
            ignored = [name for name in (prefix + "_PORT", prefix + "_DB", prefix + "_PASSWORD") if name in settings]
        if endpoint[0] == "sentinel":
            target = next((item for item in instances if item["sentinel_master"] == endpoint[1]), None)
        else:
            target = next((item for item in instances
                           if (item["address"], item["port"]) == tuple(endpoint)
                           or (item["host"], item["port"]) == tuple(endpoint)), None)
        credentials_target = target
        if target is None and endpoint[0] in LOOPBACK_NAMES:
            # Each app host's own Redis (a single-server install): the one planned instance on that port.
            same_port = [item for item in instances if item["port"] == endpoint[1]]
            credentials_target = same_port[0] if len(same_port) == 1 else None
        resolved[prefix] = {"dataset": REDIS_CONFIGURATIONS[prefix], "endpoint": list(endpoint), "source": source,
                            "instance": None if target is None else target["name"],
                            # What Mastodon's user's password on the target derives from (module_utils/redis_users.py);
                            # None for a Redis the plan does not deploy, which gets redis_password alone.
                            "scope": None if credentials_target is None else redis_users.instance_scope(
                                credentials_target["host"], credentials_target["name"],
                                credentials_target["sentinel_master"]),
                            # Whether the setting holds a password (a URL, sentinels) or sends REDIS_PASSWORD's.
                            "carries_password": (source.endswith(("_URL", "_SENTINELS")) if source.startswith(prefix)
                                                 else resolved["REDIS"]["carries_password"] if prefix != "REDIS"
                                                 else False),
                            "ignored": ignored, "half_sentinel": half_sentinel,
                            "tls": bool(url) and url.startswith("rediss://")}
    return resolved


def _endpoint_from_url(url: str) -> tuple:
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, colon, port = rest.rpartition(":")
    if not colon:
        return (rest, 6379)
    return (host, int(port) if port.isdigit() else 6379)
