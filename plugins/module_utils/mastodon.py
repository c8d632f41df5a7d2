# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Mastodon sizes its database pools, by version.

Sources: Mastodon's config/puma.rb, config/database.yml, config/sidekiq.yml and
streaming/database.js. Rails and streaming load .env.production with dotenv,
which never overrides a variable the unit already sets: the unit wins.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote

from ansible_collections.fediscale.mastodon.plugins.module_utils import redis_users, schema
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import (
    PlanInputError, parse_int, version_tuple,
)

# The releases whose pools, queues and settings this file models.
OLDEST_MODELLED = "4.2"
NEWEST_MODELLED = "4.6"

PUMA_DEFAULT_WORKERS = 2
PUMA_DEFAULT_THREADS = 5
RAILS_DEFAULT_POOL = 5
STREAMING_DEFAULT_POOL = 10
SIDEKIQ_DEFAULT_CONCURRENCY = 5

# Variables that size a process (schema.SIZING_VARIABLES, with the inventory
# variable for each); placed in .env.production they reach every process on
# the host that does not set them itself.
SIZING_VARIABLES = tuple(schema.SIZING_VARIABLES)

# Mastodon's image enables YJIT (RUBY_YJIT_ENABLE=1 in its Dockerfile) from 4.3 on.
YJIT_SINCE = "4.3"


def yjit_enabled(setting, version: str) -> bool:
    """mastodon_yjit: true, false, or auto (on from YJIT_SINCE)."""
    if setting == schema.AUTO:
        return version_tuple(version) >= version_tuple(YJIT_SINCE)
    return bool(setting)


# rails db:migrate: Rails takes its migration advisory lock on a connection of
# its own (activerecord/lib/active_record/migration.rb,
# with_advisory_lock_connection), beside the one that runs the migrations.
MIGRATION_CONNECTIONS = 2


def tootctl_connections(concurrency: int) -> int:
    """tootctl resets its pool to --concurrency + 1 (lib/mastodon/cli/base.rb, reset_connection_pools!)."""
    return concurrency + 1


def direct_connections(given: Mapping[str, object], tootctl_concurrency: int, where: str) -> Dict[str, int]:
    """The direct users the plan counts: migrations and tootctl by what they open, then the named others.

    ``given`` is mastodon_direct_connections: migrations and tootctl take auto
    (their real count) or 0 (not counted: the room above the line covers
    them); any other count for them is refused, since it would not be what
    they open.
    """
    known = {"migrations": MIGRATION_CONNECTIONS, "tootctl": tootctl_connections(tootctl_concurrency)}
    why = {"migrations": "rails db:migrate holds %d connections (one for Rails' migration advisory lock)"
                         % MIGRATION_CONNECTIONS,
           "tootctl": "tootctl opens --concurrency + 1 connections: %d at mastodon_tootctl_concurrency %d"
                      % (known["tootctl"], tootctl_concurrency)}
    result = dict(known)
    for name, count in given.items():
        if name in known:
            if count not in ("auto", 0, known[name]):
                raise PlanInputError("%s.%s" % (where, name), "%s is not what %s opens: %s" % (count, name, why[name]),
                                     "write %s: auto (or 0 to leave it out of the count)%s"
                                     % (name, ", and set mastodon_tootctl_concurrency" if name == "tootctl" else ""))
            result[name] = known[name] if count == "auto" else count
        elif count == "auto":
            raise PlanInputError("%s.%s" % (where, name), "auto is known only for migrations and tootctl",
                                 "give the number of connections %s opens" % name)
        else:
            result[name] = count
    return result


def version_outside_model(version: str) -> int:
    """-1 for a release older than the model knows, 1 for a newer one, 0 inside."""
    if version_tuple(version) < version_tuple(OLDEST_MODELLED):
        return -1
    return 1 if version_tuple(version)[:2] > version_tuple(NEWEST_MODELLED) else 0


def known_queues(version: str) -> List[str]:
    """The queues config/sidekiq.yml of a version lists."""
    known = ["default", "push", "ingress", "mailers", "pull", "scheduler"]
    if version_tuple(version) >= (4, 4):
        known.append("fasp")
    return known


def used_queues(version: str, experimental_features: List[str]) -> List[str]:
    """The queues that get jobs: fasp only when EXPERIMENTAL_FEATURES has it."""
    return [queue for queue in known_queues(version) if queue != "fasp" or "fasp" in experimental_features]


def _from_env(name: str, unit: Mapping[str, str], env_production: Mapping[str, str],
              where: str) -> Tuple[Optional[int], str]:
    """A sizing variable from the unit, else from .env.production; ``where`` is the host's mastodon section."""
    if name in unit:
        return parse_int(unit[name], "%s.environment.%s" % (where, name), 1, 1000), "%s in the unit" % name
    if name in env_production:
        return (parse_int(env_production[name], "%s.env_production.%s" % (where, name), 1, 1000),
                "%s from .env.production" % name)
    return None, ""


def web_sizing(unit: Mapping[str, str], env_production: Mapping[str, str], where: str) -> Dict[str, object]:
    """Puma workers, threads and the pool of each worker.

    Puma reads WEB_CONCURRENCY and MAX_THREADS before dotenv runs, so only the
    unit's values count for them (mastodon issue 28440); database.yml is read
    after dotenv, so the pool sees .env.production.
    """
    workers = parse_int(unit.get("WEB_CONCURRENCY", PUMA_DEFAULT_WORKERS), where + ".environment.WEB_CONCURRENCY",
                        1, 1000)
    threads = parse_int(unit.get("MAX_THREADS", PUMA_DEFAULT_THREADS), where + ".environment.MAX_THREADS", 1, 1000)
    pool, source = _from_env("DB_POOL", unit, env_production, where)
    if pool is None:
        pool, source = _from_env("MAX_THREADS", unit, env_production, where)
    if pool is None:
        pool, source = RAILS_DEFAULT_POOL, "Rails default"
    return {"processes": workers, "threads": threads, "pool": pool, "pool_source": source}


def streaming_sizing(unit: Mapping[str, str], env_production: Mapping[str, str], where: str) -> Dict[str, object]:
    pool, source = _from_env("DB_POOL", unit, env_production, where)
    if pool is None:
        pool, source = STREAMING_DEFAULT_POOL, "streaming default"
    return {"processes": 1, "threads": None, "pool": pool, "pool_source": source}


def sidekiq_sizing(version: str, concurrency: Optional[int], unit: Mapping[str, str],
                   env_production: Mapping[str, str], where: str) -> Dict[str, object]:
    """Threads (-c) and pool of one sidekiq process.

    From 4.3 the pool falls back to the sidekiq concurrency; before, to
    MAX_THREADS and then 5.
    """
    threads = concurrency if concurrency is not None else SIDEKIQ_DEFAULT_CONCURRENCY
    pool, source = _from_env("DB_POOL", unit, env_production, where)
    if pool is None:
        if version_tuple(version) >= (4, 3):
            pool, source = threads, "sidekiq concurrency"
        else:
            pool, source = _from_env("MAX_THREADS", unit, env_production, where)
            if pool is None:
                pool, source = RAILS_DEFAULT_POOL, "Rails default"
    return {"processes": 1, "threads": threads, "pool": pool, "pool_source": source}


# Where Mastodon connects: the settings .env.production holds after the official guide's setup wizard.
ENDPOINT_SETTINGS = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DATABASE_URL", "REDIS_HOST", "REDIS_PORT",
                     "REDIS_URL", "SIDEKIQ_REDIS_URL", "CACHE_REDIS_URL")

REDIS_PREFIXES = ("REDIS", "SIDEKIQ_REDIS", "CACHE_REDIS")
REDIS_URL_SETTINGS = tuple(prefix + "_URL" for prefix in REDIS_PREFIXES)


def redis_credentials(password: str, scope: Optional[str], carries_password: bool = True) -> Tuple[str, str]:
    """The user and password Mastodon logs in to one Redis configuration with: its own user, ``mastodon``, with
    the password derived for the planned instance or set ``scope``; on a Redis the plan does not deploy, no user
    and ``password`` itself where the setting carries one (a URL, sentinels), else none (``REDIS_HOST``, the
    official guide's, sends what ``REDIS_PASSWORD`` says, which the collection leaves alone)."""
    if scope and password:
        return redis_users.MASTODON_USER, redis_users.user_password(password, scope, redis_users.MASTODON_USER)
    return ("", password) if carries_password else ("", "")


def with_redis_password(environment: Dict[str, str], password: str, sentinel_password: str = "",
                        scopes: Optional[Mapping[str, Optional[str]]] = None) -> Dict[str, str]:
    """``environment`` with Redis credentials in each Redis URL, or sentinel setting, that carries none yet.

    Mastodon takes the user and password from the URL when a ``*_URL`` is set
    (``*_REDIS_USER`` and ``*_REDIS_PASSWORD`` are read only with ``*_HOST`` or
    sentinels). With sentinels, ``*_USER``/``*_PASSWORD`` are the master's, and
    ``sentinel_password`` goes to ``*_SENTINEL_PASSWORD``: Rails
    (``lib/mastodon/redis_configuration.rb``) and streaming (``streaming/redis.js``)
    log in to the sentinels as ``*_SENTINEL_USERNAME`` with it, falling back to
    the master's user and password.

    ``scopes`` names, per configuration prefix (``REDIS``, ``SIDEKIQ_REDIS``,
    ``CACHE_REDIS``), the planned instance or set it reaches
    (``redis_users.instance_scope``): there Mastodon logs in as its own user,
    ``mastodon``, with that instance's password derived from ``password``. A
    configuration with no planned target (an operator's own Redis) gets
    ``password`` itself, with no user.
    """
    result = dict(environment)
    scopes = scopes or {}
    for prefix in REDIS_PREFIXES:
        user, secret = redis_credentials(password, scopes.get(prefix))
        if result.get(prefix + "_SENTINELS") and not result.get(prefix + "_URL"):
            if user:
                result.setdefault(prefix + "_USER", user)
            if secret:
                result.setdefault(prefix + "_PASSWORD", secret)
            if sentinel_password:
                result.setdefault(prefix + "_SENTINEL_PASSWORD", sentinel_password)
            continue
        url = result.get(prefix + "_URL")
        if not secret or not url or "://" not in url:
            continue
        scheme, rest = url.split("://", 1)
        if "@" in rest.split("/", 1)[0]:
            continue
        result[prefix + "_URL"] = "%s://%s:%s@%s" % (scheme, quote(user, safe=""), quote(secret, safe=""), rest)
    return result
