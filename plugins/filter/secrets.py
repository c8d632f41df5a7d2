# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for credentials the roles write (pgbouncer's auth_file, Redis's users, Mastodon's Redis settings)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.fediscale.mastodon.plugins.module_utils import mastodon, redis_users, scram


def scram_secret(password, existing=None):
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError("scram_secret: the password must be a non-empty string")
    return scram.kept_or_new_secret(password, existing if isinstance(existing, str) else None)


def with_redis_password(environment, password, sentinel_password="", configurations=None):
    if not isinstance(environment, dict):
        raise AnsibleFilterError("with_redis_password: expected the environment mapping, got %r" % (environment,))
    if configurations is not None and not isinstance(configurations, dict):
        raise AnsibleFilterError("with_redis_password: configurations must be the plan's redis.configurations "
                                 "mapping, got %r" % (configurations,))
    scopes = {str(prefix): (entry or {}).get("scope") for prefix, entry in (configurations or {}).items()}
    return mastodon.with_redis_password({str(key): str(value) for key, value in environment.items()},
                                        "" if password is None else str(password),
                                        "" if sentinel_password is None else str(sentinel_password), scopes)


def redis_credentials(configuration, secret):
    if not isinstance(configuration, dict) or "scope" not in configuration:
        raise AnsibleFilterError("redis_credentials: expected one of the plan's redis.configurations, got %r"
                                 % (configuration,))
    user, password = mastodon.redis_credentials("" if secret is None else str(secret), configuration["scope"],
                                                bool(configuration.get("carries_password", True)))
    return {"user": user, "password": password}


def _secret(name, secret):
    if not isinstance(secret, str) or not secret:
        raise AnsibleFilterError("%s: the Redis secret (redis_password) must be a non-empty string" % name)
    return secret


def redis_scope(instance, host):
    if not isinstance(instance, dict) or "name" not in instance:
        raise AnsibleFilterError("redis_scope: expected an instance of redis_instances, got %r" % (instance,))
    return redis_users.instance_scope(str(host), str(instance["name"]), instance.get("sentinel_master"))


def redis_user_lines(secret, scope):
    return redis_users.user_lines(_secret("redis_user_lines", secret), str(scope))


def redis_user_password(secret, scope, user):
    known = [name for name, _rules in redis_users.INSTANCE_USERS]
    if user not in known:
        raise AnsibleFilterError("redis_user_password: no user %r; the users are %s" % (user, ", ".join(known)))
    return redis_users.user_password(_secret("redis_user_password", secret), str(scope), user)


class FilterModule:
    def filters(self):
        return {
            "scram_secret": scram_secret,
            "with_redis_password": with_redis_password,
            "redis_credentials": redis_credentials,
            "redis_scope": redis_scope,
            "redis_user_lines": redis_user_lines,
            "redis_user_password": redis_user_password,
        }
