"""The filters: thin wrappers that turn model errors into AnsibleFilterError."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.fediscale.mastodon.plugins.filter.budget import FilterModule
from ansible_collections.fediscale.mastodon.plugins.filter.tls import FilterModule as TlsFilterModule

from ...clusters import cluster

FILTERS = FilterModule().filters()


def test_connection_budget():
    assert FILTERS["connection_budget"](cluster())["servers"]["primary"]["total"] == 58


def test_query_pulls_the_description_out_of_a_foreign_shape():
    foreign = {"site": {"mastodon_cluster": cluster()}}
    report = FILTERS["connection_budget"](foreign, query="site.mastodon_cluster")
    assert report["servers"]["primary"]["total"] == 58


def test_query_that_selects_nothing():
    with pytest.raises(AnsibleFilterError, match="selects nothing"):
        FILTERS["connection_budget"]({}, query="nothing.here")


def test_model_error_becomes_a_filter_error():
    with pytest.raises(AnsibleFilterError) as caught:
        FILTERS["connection_budget"](cluster(hosts__web1__web={"concurrency": -1}))
    assert str(caught.value).startswith("fediscale.mastodon.connection_budget: host web1, web.concurrency: ")


def test_findings_by_severity_from_a_description_or_a_report():
    description = cluster(hosts__db1={"postgresql": {"max_connections": 64, "ram": "16GB"}})
    report = FILTERS["connection_budget"](description)
    assert FILTERS["budget_findings"](report, "error") == []
    assert [item["rule"] for item in FILTERS["budget_findings"](description, "warning")] == [
        "connections-over-warning-line"]
    with pytest.raises(AnsibleFilterError, match="severity must be error or warning"):
        FILTERS["budget_findings"](report, "fatal")


def test_table_and_markdown():
    assert "58 of 200 max_connections" in FILTERS["budget_table"](cluster())
    assert FILTERS["budget_markdown"](cluster()).startswith("# Connection budget for Mastodon 4.5")


def test_sidekiq_units():
    units = FILTERS["sidekiq_units"](cluster())
    assert [unit["template"] for unit in units["worker1"]][0] == "mastodon-sidekiq-default@.service"


def test_pgbouncer_sizing():
    sized = FILTERS["pgbouncer_sizing"](150, server_share=24, processes=2)
    assert sized["default_pool_size"] == 12
    assert sized["max_client_conn"] == 180
    # 180 clients + 12 + pool 12 x 1 database x 3 users.
    assert sized["fd_need"] == 228 and sized["limit_nofile"] == 292
    assert sized["server_connections"] == 24
    assert FILTERS["pgbouncer_sizing"](150, server_share=24, processes=2, max_db_connections=5)[
        "server_connections"] == 10


def test_pgbouncer_sizing_bad_input():
    with pytest.raises(AnsibleFilterError, match="local_clients: must be from 0 to 2147483647, got -1"):
        FILTERS["pgbouncer_sizing"](-1)


def test_postgresql_tuning():
    assert FILTERS["postgresql_tuning"]("16GB")["work_mem"] == "20164kB"
    with pytest.raises(AnsibleFilterError, match="disk_type: expected one of ssd, nvme, san, hdd"):
        FILTERS["postgresql_tuning"]("16GB", disk_type="floppy")


def test_reasons_to_sign_again_wants_the_plans_certificate_entry():
    reasons = TlsFilterModule().filters()["reasons_to_sign_again"]
    with pytest.raises(AnsibleFilterError, match="expected the plan's entry of tls.certificates for db1"):
        reasons({}, "db1", {"subject_alt_names": []})
    with pytest.raises(AnsibleFilterError, match="expected x509_certificate_info's result"):
        reasons(None, "db1", {"subject_alt_names": [], "extended_key_usage": []})
    assert reasons({}, "db1", {"subject_alt_names": [], "extended_key_usage": []}) == [
        "the server has no readable certificate"]


def test_reasons_to_make_the_ca_again_wants_what_the_role_read_and_the_cas_description():
    reasons = TlsFilterModule().filters()["reasons_to_make_the_ca_again"]
    ca = {"common_name": "fediscale.mastodon cluster CA", "key_type": "ECC", "key_curve": "secp384r1",
          "basic_constraints": ["CA:TRUE", "pathlen:0"], "key_usage": ["keyCertSign", "cRLSign"]}
    with pytest.raises(AnsibleFilterError, match="expected what the tls role read of the CA"):
        reasons(None, ca)
    with pytest.raises(AnsibleFilterError, match="the CA's description lacks key_curve, key_usage"):
        reasons({}, {"common_name": "x", "key_type": "ECC", "basic_constraints": []})
    with pytest.raises(AnsibleFilterError, match="key usage digitalSignature is not one of cRLSign, keyCertSign"):
        reasons({}, dict(ca, key_usage=["keyCertSign", "digitalSignature"]))
    assert reasons({"certificate": None, "key": None, "key_encrypted": None}, ca) == [
        "there is no key", "there is no certificate"]
