# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which PostgreSQL and Redis connections cross hosts and so go over TLS, and the certificates that prove the servers.

A connection to a server address on the loopback never leaves its host and stays as it was. Any other goes
over TLS with the server's certificate checked (``verify-full``: signed by the cluster's CA, and naming the
address the client dials) on a server the postgresql role manages, whose certificate the tls role issues; and
encrypted (``require``) on one it does not (``postgresql_limits_from: live``), whose CA the collection does not
know. ``postgresql_sslmode`` sets it otherwise.

Who connects how (config/database.yml, streaming/database.js):
- pgbouncer's server connections: ``server_tls_sslmode`` with ``server_tls_ca_file``;
- migrations and tootctl (migrations.env), and Mastodon's processes on a host without pgbouncer: Rails passes
  ``DB_SSLMODE`` to libpq, which reads the CA from ``PGSSLROOTCERT``; streaming's node-postgres encrypts only
  when ``DB_SSLMODE`` is set (``no-verify`` skips the check, any other value verifies against Node's store, to
  which ``NODE_EXTRA_CA_CERTS`` adds the CA);
- Mastodon's processes behind the local pgbouncer: ``DB_SSLMODE=disable``, nothing leaves the host.

Redis (lib/mastodon/redis_configuration.rb, streaming/redis.js): a ``rediss://`` URL turns TLS on in Ruby's
redis-client and in Node's ioredis, and both check the certificate and the name dialled. Ruby's OpenSSL verifies
against the host's store, which the tls role extends with the CA (Debian's ``update-ca-certificates``); Node
against its own bundle plus ``NODE_EXTRA_CA_CERTS``. With Sentinel neither side can encrypt: Rails builds a
``redis://`` URL to the master and gives the sentinels no TLS option, and streaming passes ioredis none. An
instance in a Sentinel set stays plain.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils.connections import LOOPBACK_NAMES, address_of
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import AUTO, PlanInputError, host_where

# Where the tls role puts the cluster's CA (every host that dials a server over TLS) and a server's own pair.
TLS_DIR = "/etc/ssl/fediscale-mastodon"
CA_FILE = TLS_DIR + "/ca.crt"
CERTIFICATE_FILE = TLS_DIR + "/server.crt"
KEY_FILE = TLS_DIR + "/server.key"

VERIFYING = ("verify-ca", "verify-full")

# A server certificate's extended key usages: a server's, and also a client's (pgBackRest's servers admit each
# other by their certificates). The names a request takes, to those x509_certificate_info gives back.
SERVER_EXTENDED_KEY_USAGE = {"serverAuth": "TLS Web Server Authentication",
                             "clientAuth": "TLS Web Client Authentication"}


def is_loopback(address: str) -> bool:
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def server_sslmode(server: Dict[str, Any]) -> Optional[str]:
    """The sslmode clients on other hosts use for a server; None when its address is on the loopback."""
    if is_loopback(server["address"]):
        return None
    if server["sslmode"] != "auto":
        return server["sslmode"]
    return "verify-full" if server["limits_from"] == "inventory" else "require"


def redis_instance_tls(instance: Dict[str, Any]) -> bool:
    """Whether clients reach a Redis instance over TLS: ``tls``, or by default when they dial a non-loopback address
    and the instance is in no Sentinel set."""
    if instance["tls"] is True and instance["sentinel_master"] is not None:
        raise PlanInputError(host_where(instance["host"], "redis") + ".instances.%s.tls" % instance["name"],
                             "Redis %s is in the Sentinel set %s, and Mastodon reaches a set only without TLS "
                             "(Rails and streaming give the sentinels and the master no TLS option)"
                             % (instance["name"], instance["sentinel_master"]),
                             "leave tls out (auto) or set it to false on the members of a Sentinel set")
    if instance["tls"] == AUTO:
        return instance["sentinel_master"] is None and not is_loopback(instance["address"])
    return bool(instance["tls"])


def subject_alt_names(host: str, sections: Dict[str, Any]) -> List[str]:
    """What a server's certificate names: the address clients dial, and the host's inventory name."""
    names = []
    for name in (address_of(host, sections), host):
        try:
            entry = "IP:%s" % ipaddress.ip_address(name)
        except ValueError:
            entry = "DNS:%s" % name
        if entry not in names:
            names.append(entry)
    return names


def plan_tls(servers: Dict[str, Any], hosts: Dict[str, Dict[str, Any]], app_hosts: List[str],
             redis_instances: List[Dict[str, Any]], backups: Dict[str, Any]) -> Dict[str, Any]:
    """Each server's sslmode, the certificates the tls role issues (managed PostgreSQL servers and Redis hosts that
    other hosts dial over TLS, and both ends of pgBackRest's TLS, which also show them as clients), the
    hosts that need the CA (those that dial a verifying server) and whether it joins their trust store (for Ruby's
    Redis clients)."""
    modes = {role: server_sslmode(server) for role, server in servers.items()}
    servers_with_tls = {server["host"] for role, server in servers.items()
                        if modes[role] is not None and server["limits_from"] == "inventory"}
    redis_hosts = {instance["host"] for instance in redis_instances if instance["tls"]}
    # pgBackRest's server admits a client by its certificate's common name (tls-server-auth).
    pgbackrest_hosts = {name for host, plan in backups.items() if plan and plan["repo_host"]
                        for name in (host, plan["repo_host"]) + ((plan["standby"]["host"],) if plan["standby"] else ())}
    certificates = {host: {"subject_alt_names": subject_alt_names(host, hosts[host]),
                           "extended_key_usage": list(SERVER_EXTENDED_KEY_USAGE)}
                    for host in sorted(servers_with_tls | redis_hosts | pgbackrest_hosts)}
    verifying = any(mode in VERIFYING for mode in modes.values()) or bool(redis_hosts) or bool(pgbackrest_hosts)
    return {
        "sslmode": modes,
        "certificates": certificates,
        "ca_hosts": sorted(set(app_hosts) | set(certificates)) if verifying or certificates else [],
        "trust_store": bool(redis_hosts),
        "redis_hosts": sorted(redis_hosts),
        "ca_file": CA_FILE,
        "certificate_file": CERTIFICATE_FILE,
        "key_file": KEY_FILE,
    }


def reasons_to_sign_again(current: Dict[str, Any], host: str, certificate: Dict[str, Any], key_sha256: str,
                          ca_key_identifier: str) -> List[str]:
    """Why the certificate a server has is not the one the private CA would sign it now; none: it stays.

    ``current`` is what x509_certificate_info read from the server's file, with ``valid_at.renew`` (the end of the
    renewal window), or a failed read's result when there is no file; ``certificate`` is the plan's entry for the
    host (tls.certificates); ``key_sha256`` the fingerprint of the server's public key (openssl_privatekey's) and
    ``ca_key_identifier`` the CA's subject key identifier. A re-run's usual answer is none, found with one read,
    so the tls role asks for a request and a signature only when there is a reason."""
    if "subject" not in current:
        return ["the server has no readable certificate"]
    reasons = []
    if not (current.get("valid_at") or {}).get("renew", False):
        reasons.append("it expires within the renewal window (not after %s)" % current.get("not_after"))
    common_name = (current.get("subject") or {}).get("commonName")
    if common_name != host:
        reasons.append("it is issued to %s, not %s" % (common_name, host))
    names = sorted(current.get("subject_alt_name") or [])
    if names != sorted(certificate["subject_alt_names"]):
        reasons.append("it names %s, not %s" % (", ".join(names) or "nothing", ", ".join(certificate["subject_alt_names"])))
    usages = sorted(current.get("extended_key_usage") or [])
    planned = sorted(SERVER_EXTENDED_KEY_USAGE[usage] for usage in certificate["extended_key_usage"])
    if usages != planned:
        reasons.append("its extended key usage is %s, not %s" % (", ".join(usages) or "none", ", ".join(planned)))
    if (current.get("public_key_fingerprints") or {}).get("sha256") != key_sha256:
        reasons.append("it certifies another key than the server's")
    if not ca_key_identifier or current.get("authority_key_identifier") != ca_key_identifier:
        reasons.append("another CA signed it")
    return reasons


# The key usages the CA's request takes, to the names x509_certificate_info gives back.
CA_KEY_USAGE = {"keyCertSign": "Certificate Sign", "cRLSign": "CRL Sign"}


def reasons_to_make_the_ca_again(found: Dict[str, Any], ca: Dict[str, Any], passphrase_given: bool) -> List[str]:
    """Why the tls role would make the cluster's private CA, or sign its certificate, again; none: it stays.

    ``found`` is what the role read on the controller: ``certificate``, community.crypto's x509_certificate_info
    filter on ca.crt, and ``key``, its openssl_privatekey_info filter on ca.key (each None without the file, the
    key also when it is not opened: encrypted and no passphrase, or a passphrase and not encrypted), with
    ``key_encrypted`` (None without a key); or ``error`` when a file could not be parsed. ``ca`` is how the role
    makes the CA (common_name, key_type, key_curve, basic_constraints, key_usage). The reasons are the differences
    for which community.crypto's openssl_privatekey or x509_certificate would make the key or the certificate
    again, so a re-run that finds none calls neither: the CA it would keep is the CA it has."""
    if found.get("error"):
        return ["a file of it could not be read (%s)" % found["error"]]
    reasons = []
    key, certificate, encrypted = found.get("key"), found.get("certificate"), found.get("key_encrypted")
    if encrypted is None:
        reasons.append("there is no key")
    elif encrypted != passphrase_given:
        reasons.append("its key is encrypted and tls_ca_passphrase is empty" if encrypted
                       else "its key is not encrypted and tls_ca_passphrase is set")
    elif key is not None:
        kind = (key.get("type"), (key.get("public_data") or {}).get("curve"))
        if kind != (ca["key_type"], ca["key_curve"]):
            reasons.append("its key is %s %s, not %s %s" % (kind + (ca["key_type"], ca["key_curve"])))
    if certificate is None:
        return reasons + ["there is no certificate"]
    if key is not None and certificate.get("public_key") != key.get("public_key"):
        reasons.append("its certificate is of another key")
    subject = certificate.get("subject") or {}
    if subject != {"commonName": ca["common_name"]}:
        reasons.append("its certificate is issued to %s, not %s" % (subject, {"commonName": ca["common_name"]}))
    if certificate.get("issuer") != subject:
        reasons.append("its certificate is signed by %s, not by itself" % (certificate.get("issuer"),))
    constraints = sorted(certificate.get("basic_constraints") or [])
    if constraints != sorted(ca["basic_constraints"]) or not certificate.get("basic_constraints_critical"):
        reasons.append("its basic constraints are %s%s, not %s, critical"
                       % (", ".join(constraints) or "none",
                          ", critical" if certificate.get("basic_constraints_critical") else "",
                          ", ".join(sorted(ca["basic_constraints"]))))
    usages = sorted(certificate.get("key_usage") or [])
    planned = sorted(CA_KEY_USAGE[usage] for usage in ca["key_usage"])
    if usages != planned or not certificate.get("key_usage_critical"):
        reasons.append("its key usage is %s%s, not %s, critical"
                       % (", ".join(usages) or "none", ", critical" if certificate.get("key_usage_critical") else "",
                          ", ".join(planned)))
    for extension, called in (("subject_alt_name", "subject alternative names"),
                              ("extended_key_usage", "extended key usages")):
        if certificate.get(extension):
            reasons.append("its certificate has %s (%s), which the role's CA has not"
                           % (called, ", ".join(certificate[extension])))
    if not certificate.get("subject_key_identifier"):
        reasons.append("its certificate has no subject key identifier, by which servers' certificates name it")
    return reasons


def redis_client_environment(configurations: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """What streaming's Node needs to verify a Redis over TLS; Ruby reads the host's trust store."""
    if any(configuration["tls"] for configuration in configurations.values()):
        return {"NODE_EXTRA_CA_CERTS": CA_FILE}
    return {}


def client_environment(sslmode: Optional[str], through_pgbouncer: bool) -> Dict[str, str]:
    """DB_SSLMODE and the CA settings of Mastodon's processes, by how they reach the primary."""
    if through_pgbouncer:
        return {"DB_SSLMODE": "disable"}
    if sslmode is None:
        return {}
    env = {"DB_SSLMODE": sslmode}
    if sslmode in VERIFYING:
        env.update(PGSSLROOTCERT=CA_FILE, NODE_EXTRA_CA_CERTS=CA_FILE)
    return env
