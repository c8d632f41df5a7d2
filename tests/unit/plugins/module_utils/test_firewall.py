"""Who may reach each listener: the plan's edges, from which the firewall role writes its rules."""

from ansible_collections.fediscale.mastodon.plugins.module_utils import model, plan

from ...clusters import cluster, with_sentinels


def addressed(description):
    for index, host in enumerate(sorted(description["hosts"])):
        description["hosts"][host].setdefault("mastodon", {})["address"] = "10.0.0.%d" % (10 + index)
    return description


def with_proxy_and_sentinels():
    description = with_sentinels(cluster())
    description["hosts"]["proxy1"] = {"nginx": {}}
    description["mastodon"]["trusted_proxy_ip"] = "10.0.0.99"
    addressed(description)
    description["hosts"]["proxy1"]["mastodon"]["address"] = "10.0.0.99"
    return description


def listeners(report, host):
    return {(item["service"], item["port"]): item for item in report["firewall"]["hosts"][host]}


def test_each_listener_admits_the_hosts_the_plan_connects_to_it():
    report = model.compute(with_proxy_and_sentinels())
    hosts = report["firewall"]["hosts"]
    # db1 10, redis1 12, redis2 13, redis3 14, web1 15, worker1 16, proxy1 99
    assert listeners(report, "db1")[("postgresql", 5432)]["addresses"] == ["10.0.0.15", "10.0.0.16"]
    redis1 = listeners(report, "redis1")
    # The persistent set: the app hosts (through the sentinels), the other members and the sentinels' hosts.
    assert redis1[("redis", 6379)]["clients"] == ["redis2", "redis3", "web1", "worker1"]
    # The cache is no member: only the app hosts.
    assert redis1[("redis", 6380)]["clients"] == ["web1", "worker1"]
    assert redis1[("sentinel", 26379)]["clients"] == ["redis2", "redis3", "web1", "worker1"]
    # Puma and streaming, with their handover ports: the proxy only.
    web = listeners(report, "web1")
    assert sorted(web) == [("puma", 3000), ("puma", 3100), ("streaming", 4000), ("streaming", 4100)]
    assert {tuple(item["addresses"]) for item in web.values()} == {("10.0.0.99",)}
    # Sidekiq listens on nothing; pgbouncer on loopback only; nginx serves everyone.
    assert "worker1" not in hosts and "proxy1" not in hosts
    assert report["firewall"]["enabled"] and report["firewall"]["unaddressed"] == []


def test_admin_addresses_reach_the_data_tier_only():
    description = with_proxy_and_sentinels()
    description["mastodon"]["admin_addresses"] = ["192.0.2.7", "198.51.100.0/24"]
    report = model.compute(description)
    assert listeners(report, "db1")[("postgresql", 5432)]["admin_addresses"] == ["192.0.2.7", "198.51.100.0/24"]
    assert listeners(report, "redis1")[("sentinel", 26379)]["admin_addresses"] == ["192.0.2.7", "198.51.100.0/24"]
    assert listeners(report, "web1")[("puma", 3000)]["admin_addresses"] == []


def test_puma_on_loopback_behind_its_own_nginx_gets_no_rule():
    description = addressed(cluster())
    description["hosts"]["web1"]["nginx"] = {}
    report = model.compute(description)
    assert "web1" not in report["firewall"]["hosts"]


def test_a_host_known_by_name_keeps_auto_off_and_the_report_says_why():
    report = plan.connection_budget(cluster())
    assert not report["firewall"]["enabled"] and report["firewall"]["unaddressed"] == ["web1", "worker1"]
    assert plan.firewall_statement(report).startswith("off: web1, worker1 known by name, not IP address")
    report = plan.connection_budget(addressed(cluster()))
    assert report["firewall"]["enabled"]
    assert plan.firewall_statement(report) == (
        "on: 3 listeners on 2 hosts admit only the hosts the plan connects to them")
    assert not plan.connection_budget(addressed(cluster(mastodon__firewall=False)))["firewall"]["enabled"]


def test_admin_addresses_must_be_addresses_or_networks():
    for bad, problem in (("bastion", "'bastion' is not an IP address or network"), ("0.0.0.0/0", "is every address")):
        try:
            model.compute(cluster(mastodon__admin_addresses=["10.0.0.5", bad]))
        except model.PlanInputError as error:
            assert error.where == "mastodon.admin_addresses[1]" and problem in error.problem
        else:
            raise AssertionError(bad)
