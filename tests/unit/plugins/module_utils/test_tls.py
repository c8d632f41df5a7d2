"""TLS between hosts: which connections are encrypted, how they are checked, and what each host gets."""

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan, tls

from ...clusters import cluster


def report(**changes):
    return plan.connection_budget(cluster(**changes))


def behind_pgbouncer(**changes):
    description = cluster(**changes)
    description["hosts"]["web1"]["pgbouncer"] = {}
    return plan.connection_budget(description)


def test_a_managed_server_on_another_host_is_verified_in_full():
    budget = behind_pgbouncer(hosts__db1__mastodon={"address": "10.0.0.11"})
    assert budget["tls"]["sslmode"] == {"primary": "verify-full"}
    assert budget["tls"]["certificates"] == {"db1": {"subject_alt_names": ["IP:10.0.0.11", "DNS:db1"]}}
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
