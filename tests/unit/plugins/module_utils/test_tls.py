"""TLS between hosts: which connections are encrypted, how they are checked, and what each host gets."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan, tls
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError

from ...clusters import cluster


# PostgreSQL's tests keep Redis plain, so that what they see is PostgreSQL's alone.
PLAIN_REDIS = [{"name": "persistent", "purpose": "persistent", "port": 6379, "tls": False},
               {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB", "tls": False}]


def report(**changes):
    return plan.connection_budget(cluster(**dict({"hosts__redis1__redis": {"instances": PLAIN_REDIS}}, **changes)))


def behind_pgbouncer(**changes):
    description = cluster(**dict({"hosts__redis1__redis": {"instances": PLAIN_REDIS}}, **changes))
    description["hosts"]["web1"]["pgbouncer"] = {}
    return plan.connection_budget(description)


def test_a_managed_server_on_another_host_is_verified_in_full():
    budget = behind_pgbouncer(hosts__db1__mastodon={"address": "10.0.0.11"})
    assert budget["tls"]["sslmode"] == {"primary": "verify-full"}
    assert budget["tls"]["certificates"] == {"db1": {"subject_alt_names": ["IP:10.0.0.11", "DNS:db1"],
                                                     "extended_key_usage": ["serverAuth", "clientAuth"]}}
    assert budget["tls"]["ca_hosts"] == ["db1", "web1", "worker1"]
    bouncer = budget["pgbouncer"]["web1"]
    assert (bouncer["server_tls_sslmode"], bouncer["server_tls_ca_file"]) == ("verify-full", tls.CA_FILE)


def test_the_server_turns_tls_on_with_its_certificate_and_admits_other_hosts_only_over_it():
    server = report(hosts__db1__mastodon={"address": "10.0.0.11"})["postgresql"]["db1"]
    assert {key: server["settings"][key] for key in ("ssl", "ssl_cert_file", "ssl_key_file")} == {
        "ssl": "on", "ssl_cert_file": tls.CERTIFICATE_FILE, "ssl_key_file": tls.KEY_FILE}
    assert {entry["type"] for entry in server["hba"]} == {"hostssl"}


def test_behind_pgbouncer_mastodon_stays_plain_on_the_loopback_and_migrations_verify():
    environment = behind_pgbouncer()["environment"]["web1"]
    assert environment["units"]["DB_SSLMODE"] == "disable"
    assert "PGSSLROOTCERT" not in environment["units"]
    assert {key: environment["migrations"].get(key) for key in ("DB_SSLMODE", "PGSSLROOTCERT")} == {
        "DB_SSLMODE": "verify-full", "PGSSLROOTCERT": tls.CA_FILE}
    assert "NODE_EXTRA_CA_CERTS" not in environment["migrations"]


def test_without_pgbouncer_rails_and_streaming_verify_with_their_own_settings():
    units = report()["environment"]["web1"]["units"]
    assert {key: units[key] for key in ("DB_SSLMODE", "PGSSLROOTCERT", "NODE_EXTRA_CA_CERTS")} == {
        "DB_SSLMODE": "verify-full", "PGSSLROOTCERT": tls.CA_FILE, "NODE_EXTRA_CA_CERTS": tls.CA_FILE}


def test_a_server_the_role_does_not_manage_is_encrypted_but_not_verified():
    budget = behind_pgbouncer(hosts__db1__postgresql={"max_connections": 200, "ram": "16GB", "limits_from": "live"})
    assert budget["tls"]["sslmode"] == {"primary": "require"}
    assert budget["tls"]["certificates"] == {} and budget["tls"]["ca_hosts"] == []
    assert budget["pgbouncer"]["web1"]["server_tls_ca_file"] is None
    assert budget["environment"]["web1"]["migrations"]["DB_SSLMODE"] == "require"


def test_a_server_on_the_loopback_is_left_as_it_was():
    budget = behind_pgbouncer(hosts__db1__mastodon={"address": "127.0.0.1"})
    assert budget["tls"] == dict(budget["tls"], sslmode={"primary": None}, certificates={}, ca_hosts=[])
    assert "ssl" not in budget["postgresql"]["db1"]["settings"]
    assert budget["pgbouncer"]["web1"]["server_tls_sslmode"] is None
    assert "DB_SSLMODE" not in budget["environment"]["web1"]["migrations"]


def test_the_operator_may_turn_it_off():
    budget = report(hosts__db1__postgresql={"max_connections": 200, "ram": "16GB", "sslmode": "disable"})
    assert {entry["type"] for entry in budget["postgresql"]["db1"]["hba"]} == {"host"}
    assert budget["environment"]["web1"]["units"]["DB_SSLMODE"] == "disable"


def test_a_dns_address_is_named_once():
    assert tls.subject_alt_names("db1", {"mastodon": {"address": None}}) == ["DNS:db1"]
    assert tls.subject_alt_names("db1", {"mastodon": {"address": "db1.internal"}}) == ["DNS:db1.internal", "DNS:db1"]


# --- Redis ---

def test_redis_on_another_host_goes_over_tls_with_a_certificate_and_the_ca_in_the_clients_stores():
    budget = plan.connection_budget(cluster(hosts__redis1__mastodon={"address": "10.0.0.12"}))
    units = budget["environment"]["web1"]["units"]
    assert (units["REDIS_URL"], units["CACHE_REDIS_URL"]) == ("rediss://10.0.0.12:6379", "rediss://10.0.0.12:6380")
    # Streaming's Node needs the CA named; Ruby reads the host's store, which the tls role extends.
    assert units["NODE_EXTRA_CA_CERTS"] == tls.CA_FILE and "SSL_CERT_FILE" not in units
    assert budget["tls"]["certificates"]["redis1"]["subject_alt_names"] == ["IP:10.0.0.12", "DNS:redis1"]
    assert budget["tls"]["redis_hosts"] == ["redis1"] and budget["tls"]["trust_store"] is True
    assert {"web1", "worker1", "redis1"} <= set(budget["tls"]["ca_hosts"])
    assert {item["name"]: item["tls"] for item in budget["redis"]["instances"]} == {"persistent": True, "cache": True}
    assert budget["redis"]["configurations"]["CACHE_REDIS"]["tls"] is True


def test_redis_on_the_loopback_or_turned_off_stays_plain():
    budget = plan.connection_budget(cluster(hosts__redis1__mastodon={"address": "127.0.0.1"}))
    assert budget["environment"]["web1"]["units"]["REDIS_URL"] == "redis://127.0.0.1:6379"
    assert budget["tls"]["trust_store"] is False and "redis1" not in budget["tls"]["certificates"]
    assert report()["environment"]["web1"]["units"]["CACHE_REDIS_URL"] == "redis://redis1:6380"


def sentinel_cluster(tls_setting):
    member = {"name": "persistent", "purpose": "persistent", "port": 6379, "sentinel_master": "mastodon",
              "tls": tls_setting}
    cache = {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB"}
    return cluster(hosts__redis1__redis={"instances": [member, cache], "sentinel": True},
                   hosts__redis1__mastodon={"address": "10.0.0.12"},
                   hosts__redis2={"redis": {"instances": [member], "sentinel": True},
                                  "mastodon": {"address": "10.0.0.13"}},
                   hosts__redis3={"redis": {"sentinel": True}, "mastodon": {"address": "10.0.0.14"}})


def test_a_sentinel_set_stays_plain_because_mastodon_cannot_encrypt_it():
    budget = plan.connection_budget(sentinel_cluster("auto"))
    units = budget["environment"]["web1"]["units"]
    assert "REDIS_URL" not in units and units["REDIS_SENTINEL_MASTER"] == "mastodon"
    assert units["CACHE_REDIS_URL"] == "rediss://10.0.0.12:6380"
    assert budget["tls"]["redis_hosts"] == ["redis1"]


def test_tls_asked_of_a_sentinel_set_is_refused_with_the_reason():
    with pytest.raises(PlanInputError) as error:
        plan.connection_budget(sentinel_cluster(True))
    assert str(error.value).startswith("host redis1, redis.instances.persistent.tls: Redis persistent is in the "
                                       "Sentinel set mastodon, and Mastodon reaches a set only without TLS")
    assert "leave tls out (auto) or set it to false" in str(error.value)


# --- reasons_to_sign_again: a re-run keeps a server's certificate unless one of these holds ---

DB1 = {"subject_alt_names": ["IP:10.0.0.11", "DNS:db1"], "extended_key_usage": ["serverAuth", "clientAuth"]}
KEY = "61:b3:6d"
CA_KEY_ID = "db:f6:51"


def current(**changes):
    """x509_certificate_info's answer (the fields compared) for db1's certificate as the CA signed it."""
    info = {"subject": {"commonName": "db1"}, "subject_alt_name": ["IP:10.0.0.11", "DNS:db1"],
            "extended_key_usage": ["TLS Web Client Authentication", "TLS Web Server Authentication"],
            "public_key_fingerprints": {"sha256": KEY}, "authority_key_identifier": CA_KEY_ID,
            "valid_at": {"renew": True}, "not_after": "20271202130922Z"}
    info.update(changes)
    return info


def test_a_certificate_as_the_ca_would_sign_it_now_stays():
    assert tls.reasons_to_sign_again(current(), "db1", DB1, KEY, CA_KEY_ID) == []
    # The order of the names is the certificate's, not the plan's.
    assert tls.reasons_to_sign_again(current(subject_alt_name=["DNS:db1", "IP:10.0.0.11"]), "db1", DB1, KEY,
                                     CA_KEY_ID) == []


def test_a_missing_certificate_is_signed():
    failed_read = {"failed": True, "msg": "Error while reading certificate file from disk: [Errno 2]"}
    reasons = tls.reasons_to_sign_again(failed_read, "db1", DB1, KEY, CA_KEY_ID)
    assert reasons == ["the server has no readable certificate"]


@pytest.mark.parametrize("changes, reason", [
    ({"valid_at": {"renew": False}}, "it expires within the renewal window (not after 20271202130922Z)"),
    ({"subject": {"commonName": "db2"}}, "it is issued to db2, not db1"),
    ({"subject_alt_name": ["IP:10.0.0.99", "DNS:db1"]}, "it names DNS:db1, IP:10.0.0.99, not IP:10.0.0.11, DNS:db1"),
    ({"extended_key_usage": ["TLS Web Server Authentication"]},
     "its extended key usage is TLS Web Server Authentication, not TLS Web Client Authentication, "
     "TLS Web Server Authentication"),
    ({"public_key_fingerprints": {"sha256": "00:11"}}, "it certifies another key than the server's"),
    ({"authority_key_identifier": "aa:bb"}, "another CA signed it"),
    ({"authority_key_identifier": None}, "another CA signed it"),
])
def test_each_difference_from_what_the_ca_would_sign_now_is_a_reason(changes, reason):
    assert tls.reasons_to_sign_again(current(**changes), "db1", DB1, KEY, CA_KEY_ID) == [reason]


def test_a_ca_whose_identifier_could_not_be_read_signs_again():
    assert tls.reasons_to_sign_again(current(), "db1", DB1, KEY, "") == ["another CA signed it"]


# --- reasons_to_make_the_ca_again: a re-run keeps the private CA, without a module call, unless one of these holds ---

CA = {"common_name": "fediscale.mastodon cluster CA", "key_type": "ECC", "key_curve": "secp384r1",
      "basic_constraints": ["CA:TRUE", "pathlen:0"], "key_usage": ["keyCertSign", "cRLSign"]}


def made_ca(curve=None, common_name=CA["common_name"], path_length=0, alt_name=None, passphrase=None):
    """A CA's key and certificate as PEM, made with cryptography as the tls role's modules make them."""
    import datetime  # pylint: disable=import-outside-toplevel

    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
    from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel

    key = ec.generate_private_key(curve or ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if alt_name:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(alt_name)]), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode(),
            certificate.public_bytes(serialization.Encoding.PEM).decode())


def found(key_pem, certificate_pem, passphrase=""):
    """What the tls role's ca.yml reads, through community.crypto's filters, as its Jinja does."""
    from ansible_collections.community.crypto.plugins.filter.openssl_privatekey_info import (  # pylint: disable=import-outside-toplevel
        openssl_privatekey_info_filter)
    from ansible_collections.community.crypto.plugins.filter.x509_certificate_info import (  # pylint: disable=import-outside-toplevel
        x509_certificate_info_filter)

    encrypted = "ENCRYPTED" in key_pem
    opened = key_pem and encrypted == bool(passphrase)
    return {"certificate": x509_certificate_info_filter(certificate_pem) if certificate_pem else None,
            "key": openssl_privatekey_info_filter(key_pem, passphrase=passphrase or None) if opened else None,
            "key_encrypted": encrypted if key_pem else None}


def test_the_ca_as_the_role_makes_it_stays():
    key, certificate = made_ca()
    assert tls.reasons_to_make_the_ca_again(found(key, certificate), CA, False) == []
    key, certificate = made_ca(passphrase="s3cret")
    assert tls.reasons_to_make_the_ca_again(found(key, certificate, "s3cret"), CA, True) == []


def test_a_missing_ca_is_made():
    key, certificate = made_ca()
    assert tls.reasons_to_make_the_ca_again(found("", ""), CA, False) == ["there is no key", "there is no certificate"]
    assert tls.reasons_to_make_the_ca_again(found(key, ""), CA, False) == ["there is no certificate"]
    # Without its key the certificate is made again too: the key the modules make is a new one.
    assert tls.reasons_to_make_the_ca_again(found("", certificate), CA, False) == ["there is no key"]


def test_a_key_that_does_not_match_the_passphrase_is_a_reason():
    key, certificate = made_ca(passphrase="s3cret")
    assert tls.reasons_to_make_the_ca_again(found(key, certificate), CA, False) == [
        "its key is encrypted and tls_ca_passphrase is empty"]
    key, certificate = made_ca()
    assert tls.reasons_to_make_the_ca_again(found(key, certificate, "s3cret"), CA, True) == [
        "its key is not encrypted and tls_ca_passphrase is set"]


def test_each_difference_from_the_ca_the_role_makes_is_a_reason():
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel

    key, other_certificate = made_ca()[0], made_ca()[1]
    assert tls.reasons_to_make_the_ca_again(found(key, other_certificate), CA, False) == [
        "its certificate is of another key"]
    assert tls.reasons_to_make_the_ca_again(found(*made_ca(curve=ec.SECP256R1())), CA, False) == [
        "its key is ECC secp256r1, not ECC secp384r1"]
    assert tls.reasons_to_make_the_ca_again(found(*made_ca(common_name="another CA")), CA, False) == [
        "its certificate is issued to {'commonName': 'another CA'}, not {'commonName': 'fediscale.mastodon cluster CA'}"]
    assert tls.reasons_to_make_the_ca_again(found(*made_ca(path_length=1)), CA, False) == [
        "its basic constraints are CA:TRUE, pathlen:1, critical, not CA:TRUE, pathlen:0, critical"]
    assert tls.reasons_to_make_the_ca_again(found(*made_ca(alt_name="ca.example")), CA, False) == [
        "its certificate has subject alternative names (DNS:ca.example), which the role's CA has not"]


@pytest.mark.parametrize("changes, reason", [
    ({"key_usage": ["Certificate Sign"]}, "its key usage is Certificate Sign, critical, not CRL Sign, Certificate Sign, critical"),
    ({"key_usage_critical": False}, "its key usage is CRL Sign, Certificate Sign, not CRL Sign, Certificate Sign, critical"),
    ({"basic_constraints_critical": False},
     "its basic constraints are CA:TRUE, pathlen:0, not CA:TRUE, pathlen:0, critical"),
    ({"issuer": {"commonName": "a root"}}, "its certificate is signed by {'commonName': 'a root'}, not by itself"),
    ({"extended_key_usage": ["TLS Web Server Authentication"]},
     "its certificate has extended key usages (TLS Web Server Authentication), which the role's CA has not"),
    ({"subject_key_identifier": None},
     "its certificate has no subject key identifier, by which servers' certificates name it"),
])
def test_each_difference_in_the_certificates_fields_is_a_reason(changes, reason):
    read = found(*made_ca())
    read["certificate"].update(changes)
    assert tls.reasons_to_make_the_ca_again(read, CA, False) == [reason]


def test_a_file_that_could_not_be_parsed_makes_the_modules_run():
    assert tls.reasons_to_make_the_ca_again({"error": "Wrong or empty passphrase provided for private key"}, CA,
                                            True) == [
        "a file of it could not be read (Wrong or empty passphrase provided for private key)"]
