# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for credentials the roles write (pgbouncer's auth_file)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.fediscale.mastodon.plugins.module_utils import mastodon, scram


def scram_secret(password, existing=None):
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError("scram_secret: the password must be a non-empty string")
    return scram.kept_or_new_secret(password, existing if isinstance(existing, str) else None)


def with_redis_password(environment, password, sentinel_password=""):
    if not isinstance(environment, dict):
        raise AnsibleFilterError("with_redis_password: expected the environment mapping, got %r" % (environment,))
    return mastodon.with_redis_password({str(key): str(value) for key, value in environment.items()},
                                        "" if password is None else str(password),
                                        "" if sentinel_password is None else str(sentinel_password))


class FilterModule:
    def filters(self):
        return {
            "scram_secret": scram_secret,
            "with_redis_password": with_redis_password,
        }
