# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Redis connections of the redis_replication and redis_sentinel modules (redis-py on the managed host)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

try:
    import redis
except ImportError:
    redis = None

TIMEOUT_SECONDS = 3
# The library the modules name when redis-py is missing.
REQUIREMENT = "redis-py (Debian: python3-redis)"


def connect(host: str, port: int, password: Optional[str] = None, tls_ca_file: Optional[str] = None,
            username: Optional[str] = None) -> Any:
    """A client over TCP; with ``tls_ca_file``, over TLS with the server's certificate and name checked."""
    tls = {} if tls_ca_file is None else {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True,
                                          "ssl_ca_certs": tls_ca_file}
    return redis.Redis(host=host, port=port, username=username, password=password, socket_timeout=TIMEOUT_SECONDS,
                       decode_responses=True, **tls)


def connect_socket(path: str, password: Optional[str] = None, username: Optional[str] = None) -> Any:
    return redis.Redis(unix_socket_path=path, username=username, password=password, socket_timeout=TIMEOUT_SECONDS,
                       decode_responses=True)


# A disabled user the modules set to a rule list, to read how this server renders it.
PROBE_USER = "fediscale-probe"


def acl_user(client: Any, name: str) -> Optional[dict]:
    """``ACL GETUSER`` as a mapping; None for no such user."""
    reply = client.execute_command("ACL", "GETUSER", name)
    return dict(zip(reply[0::2], reply[1::2])) if reply else None


def rendered(client: Any, rules: Sequence[str]) -> Optional[dict]:
    """How this server reports ``rules``: set on a disabled scratch user, read back, removed."""
    client.execute_command("ACL", "SETUSER", PROBE_USER, "reset", "off", *rules)
    try:
        return acl_user(client, PROBE_USER)
    finally:
        client.execute_command("ACL", "DELUSER", PROBE_USER)


def ask_sentinel(address: Tuple[str, int], name: str) -> Optional[Sequence[Any]]:
    """``SENTINEL GET-MASTER-ADDR-BY-NAME``; an unreachable sentinel raises ConnectionError."""
    try:
        return connect(*address).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
    except redis.RedisError as error:
        raise ConnectionError(str(error)) from error
