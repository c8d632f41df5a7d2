"""The connection arithmetic: worked examples and properties that hold for any plan."""

import copy

import pytest

from hypothesis import given, settings, strategies as st

from ansible_collections.fediscale.mastodon.plugins.module_utils import model, plan, redis_plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import PlanInputError

from ...clusters import QUEUES, cluster, with_sentinels

NORA = {
    "mastodon": {"version": "4.5", "direct_connections": {"migrations": 0, "tootctl": 0}, "media": "s3",
                 "s3_bucket": "media", "s3_alias_host": "files.example.com"},
    "hosts": {
        "db1": {"postgresql": {"max_connections": 200, "ram": "16GB"}, "redis": {"instances": [
            {"name": "persistent", "purpose": "persistent"},
            {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB"}]}},
        "app1": {"web": {"concurrency": 3, "max_threads": 10},
                 "streaming": {"ports": [4000, 4001, 4002], "db_pool": 15}, "pgbouncer": {"enabled": False}},
        "worker1": {"pgbouncer": {"enabled": False}, "sidekiq": {"queues": [
            {"queue": queue, "concurrency": threads, "db_pool": threads}
            for queue, threads in [("default", 25), ("push", 25), ("pull", 25), ("ingress", 25),
                                   ("mailers", 5), ("scheduler", 5)]]}},
    },
}


# The base cluster's direct connections: migrations 2, tootctl at concurrency 5 opens 6.
DIRECT = 2 + 6


def test_direct_connections_count_what_migrations_and_tootctl_open():
    """Migrations hold 2: Rails takes its migration advisory lock on a connection of its own
    (activerecord/lib/active_record/migration.rb, with_advisory_lock_connection). tootctl resets its
    pool to --concurrency + 1 (mastodon lib/mastodon/cli/base.rb, reset_connection_pools!, which
    parallelize_with_progress calls); tootctl's default concurrency is 5."""
    report = plan.connection_budget(cluster())
    assert report["direct_connections"] == {"migrations": 2, "tootctl": 6}
    report = plan.connection_budget(cluster(mastodon__tootctl_concurrency=16,
                                            mastodon__direct_connections={"pghero": 2, "tootctl": "auto"}))
    assert report["direct_connections"] == {"migrations": 2, "tootctl": 17, "pghero": 2}
    sources = {item["host"]: item["connections"] for item in report["servers"]["primary"]["sources"]
               if item["via"] == "direct connection"}
    assert sources == {"migrations": 2, "tootctl": 17, "pghero": 2}


def test_direct_connections_left_out_on_purpose():
    report = plan.connection_budget(cluster(mastodon__direct_connections={"migrations": 0, "tootctl": 0}))
    assert report["direct_connections"] == {"migrations": 0, "tootctl": 0}
    assert report["servers"]["primary"]["total"] == 50


def test_fixed_pgbouncer_pool_never_counts_more_than_its_clients():
    """pgbouncer opens a server connection only for a client that needs one (min_pool_size 0: pgbouncer
    doc/config.md), so a host running only the scheduler (5 clients) with pool 20 opens 5, not 20."""
    description = cluster(hosts__worker1__sidekiq={"queues": [
        {"queue": queue, "concurrency": 5} for queue in QUEUES if queue != "scheduler"]},
        hosts__worker2={"sidekiq": {"queues": [{"queue": "scheduler", "concurrency": 5}]},
                        "pgbouncer": {"default_pool_size": 20}})
    report = plan.connection_budget(description)
    assert report["pgbouncer"]["worker2"]["clients"] == 5
    assert report["pgbouncer"]["worker2"]["primary_connections"] == 5
    assert report["servers"]["primary"]["total"] == 20 + 25 + 5 + DIRECT


def test_fixed_pool_cap_counts_in_the_share_of_auto_pools():
    # Line 36 of 40 - direct 8 - web1's 20 = 8; worker2's fixed pool 20 serves 5 clients and takes 5, worker1 3.
    description = cluster(hosts__db1={"postgresql": {"max_connections": 40, "ram": "16GB"}},
                          hosts__worker1={"sidekiq": {"queues": [
                              {"queue": queue, "concurrency": 5} for queue in QUEUES if queue != "scheduler"]}},
                          hosts__worker2={"sidekiq": {"queues": [{"queue": "scheduler", "concurrency": 5}]},
                                          "pgbouncer": {"default_pool_size": 20}})
    report = plan.connection_budget(description)
    assert report["pgbouncer"]["worker2"]["primary_connections"] == 5
    assert report["pgbouncer"]["worker1"]["default_pool_size"] == 3
    assert report["servers"]["primary"]["total"] == 36


def test_replica_pool_counts_only_the_rails_clients():
    """Streaming never uses the replica (streaming/database.js), so a pgbouncer's replica pool serves only the
    host's web and sidekiq processes, and never counts more than they are."""
    description = cluster(hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"}},
                          hosts__web1={"web": {"concurrency": 1, "max_threads": 3}, "streaming": {"ports": [4000]},
                                       "pgbouncer": {"default_pool_size": 20}})
    bouncer = plan.connection_budget(description)["pgbouncer"]["web1"]
    assert (bouncer["clients"], bouncer["replica_clients"]) == (13, 3)
    assert (bouncer["primary_connections"], bouncer["replica_connections"]) == (13, 3)


def test_nora_tindall_185_of_200_with_15_loose():
    report = plan.connection_budget(NORA)
    primary = report["servers"]["primary"]
    assert (primary["total"], primary["max_connections"], primary["free"]) == (185, 200, 15)
    by_service = {}
    for row in report["processes"]:
        by_service[row["service"]] = by_service.get(row["service"], 0) + row["connections"]
    assert by_service == {"web": 30, "streaming": 45, "sidekiq": 110}
    assert report["errors"] == 0
    assert [item["rule"] for item in report["findings"]] == ["connections-over-warning-line"]


def test_mastodon_4_6_is_the_default_release():
    description = cluster()
    del description["mastodon"]["version"]
    assert plan.connection_budget(description)["mastodon"]["version"] == "4.6"


def test_defaults_follow_mastodon():
    description = cluster(hosts__web1={"web": {}, "streaming": {}, "pgbouncer": {"enabled": False}},
                          hosts__worker1__sidekiq={"queues": [{"queue": queue} for queue in QUEUES]})
    rows = {row["service"]: row for row in plan.connection_budget(description)["processes"]}
    assert (rows["web"]["processes"], rows["web"]["threads"], rows["web"]["pool"]) == (2, 5, 5)
    assert (rows["streaming"]["pool"], rows["streaming"]["pool_source"]) == (10, "streaming default")
    assert (rows["sidekiq"]["threads"], rows["sidekiq"]["pool"]) == (5, 5)


def test_sidekiq_pool_before_4_3_falls_back_to_max_threads():
    description = cluster(mastodon__version="4.2",
                          hosts__worker1__mastodon={"env_production": {"MAX_THREADS": "7"}},
                          hosts__worker1__sidekiq={"queues": [{"queue": queue, "concurrency": 10}
                                                              for queue in QUEUES]})
    row = [row for row in plan.connection_budget(description)["processes"] if row["service"] == "sidekiq"][0]
    assert (row["pool"], row["pool_source"]) == (7, "MAX_THREADS from .env.production")


def test_replica_counts_rails_processes_only():
    description = cluster(hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"}})
    report = plan.connection_budget(description)
    assert report["servers"]["primary"]["total"] == 50 + DIRECT
    assert report["servers"]["replica"]["total"] == 40  # web 10 + sidekiq 30, no streaming, no direct


def test_pgbouncer_host_counts_its_pools_not_its_clients():
    report = plan.connection_budget(cluster(hosts__worker1__pgbouncer={"default_pool_size": 8,
                                                                       "reserve_pool_size": 2, "processes": 1}))
    bouncer = report["pgbouncer"]["worker1"]
    assert (bouncer["clients"], bouncer["primary_connections"]) == (30, 10)
    # web1's web and streaming 20 direct, worker1's pool 8 + reserve 2, the direct connections.
    assert report["servers"]["primary"]["total"] == 20 + 10 + DIRECT


def test_max_db_connections_caps_each_process():
    report = plan.connection_budget(cluster(hosts__worker1__pgbouncer={"default_pool_size": 20,
                                                                       "max_db_connections": 6,
                                                                       "processes": 2, "version": "1.21"}))
    assert report["pgbouncer"]["worker1"]["primary_connections"] == 12


def test_auto_pools_share_what_is_left_below_the_line():
    # Line 54 of 60 - direct 8 - web1's 20 direct = 26 left for worker1 (30 clients): pool 20 fits.
    report = plan.connection_budget(cluster(hosts__db1={"postgresql": {"max_connections": 60, "ram": "16GB"}},
                                            hosts__worker1__pgbouncer={}))
    assert report["pgbouncer"]["worker1"]["default_pool_size"] == 20
    # Line 36 of 40: 8 left.
    report = plan.connection_budget(cluster(hosts__db1={"postgresql": {"max_connections": 40, "ram": "16GB"}},
                                            hosts__worker1__pgbouncer={}))
    assert report["pgbouncer"]["worker1"]["default_pool_size"] == 8
    assert report["servers"]["primary"]["total"] == 36


def test_auto_pools_split_by_clients():
    report = plan.connection_budget(cluster(hosts__db1={"postgresql": {"max_connections": 40, "ram": "16GB"}},
                                            hosts__web1__pgbouncer={}, hosts__worker1__pgbouncer={}))
    # 36 - 8 direct = 28; one each first, then 26 split 20:30 -> 1 + 10 and 1 + 15.
    assert report["pgbouncer"]["web1"]["default_pool_size"] == 11
    assert report["pgbouncer"]["worker1"]["default_pool_size"] == 16
    assert report["servers"]["primary"]["total"] == 35


def test_headroom_statement():
    report = plan.connection_budget(cluster())
    # Line 180 - 58 = 122 connections; sidekiq runs at concurrency 5.
    assert report["servers"]["primary"]["headroom"] == {"connections": 122, "concurrency": 5,
                                                        "sidekiq_processes": 24}
    assert report["headroom"].startswith("24 more sidekiq processes at concurrency 5 fit below the 90 % line")


def test_environment_points_units_at_pgbouncer_and_migrations_at_the_primary():
    report = plan.connection_budget(cluster(hosts__db1={"postgresql": {"ram": "16GB"},
                                                        "mastodon": {"address": "10.0.0.10"}},
                                            hosts__worker1__pgbouncer={}))
    env = report["environment"]["worker1"]
    assert env["units"]["DB_HOST"] == "127.0.0.1" and env["units"]["DB_PORT"] == "6432"
    assert env["migrations"]["DB_HOST"] == "10.0.0.10" and env["migrations"]["DB_PORT"] == "5432"
    assert env["units"]["CACHE_REDIS_URL"] == "rediss://redis1:6380"
    assert report["environment"]["web1"]["units"]["DB_HOST"] == "10.0.0.10"


def test_replica_gets_its_own_pgbouncer_database_and_migrations_skip_it():
    report = plan.connection_budget(cluster(hosts__db2={"postgresql": {"role": "replica", "ram": "16GB"},
                                                        "mastodon": {"address": "10.0.0.11"}},
                                            hosts__worker1__pgbouncer={}, mastodon__db_name="social"))
    entries = report["pgbouncer"]["worker1"]["database_entries"]
    assert [(entry["alias"], entry["host"], entry["dbname"]) for entry in entries] == [
        ("social", "db1", "social"), ("social_replica", "10.0.0.11", "social")]
    units, migrations = (report["environment"]["worker1"][key] for key in ("units", "migrations"))
    assert (units["REPLICA_DB_HOST"], units["REPLICA_DB_PORT"], units["REPLICA_DB_NAME"]) == (
        "127.0.0.1", "6432", "social_replica")
    assert "REPLICA_DB_HOST" not in migrations and migrations["DB_NAME"] == "social"


def test_postgresql_hosts_get_their_settings_and_the_app_hosts_as_clients():
    report = plan.connection_budget(cluster(hosts__web1__mastodon={"address": "10.0.0.21"},
                                            hosts__db1__postgresql={"max_connections": 150, "ram": "16GB",
                                                                    "superuser_reserved_connections": 5}))
    server = report["postgresql"]["db1"]
    assert server["role"] == "primary" and server["clients"] == ["10.0.0.21/32", "worker1"]
    assert (server["database"], server["user"]) == ("mastodon_production", "mastodon")
    settings = server["settings"]
    assert (settings["max_connections"], settings["superuser_reserved_connections"]) == (150, 5)
    assert settings["work_mem"] == report["servers"]["primary"]["work_mem"]
    assert settings["reserved_connections"] == 0  # Debian 13's PostgreSQL 17
    on_debian_12 = plan.connection_budget(cluster(hosts__db1={"postgresql": {"ram": "16GB"},
                                                              "mastodon": {"debian_version": 12}}))
    assert on_debian_12["postgresql"]["db1"]["version"] == 15
    assert "reserved_connections" not in on_debian_12["postgresql"]["db1"]["settings"]  # PostgreSQL 16+ only


def test_somaxconn_is_raised_only_past_the_kernels_default_for_postgresqls_backlog():
    # PostgreSQL listens with twice max_connections; the kernel's default 4096 holds 2048 connections' worth.
    assert plan.connection_budget(cluster())["postgresql"]["db1"]["somaxconn"] is None
    large = cluster(hosts__db1__postgresql={"max_connections": 3000, "ram": "64GB",
                                            "acknowledge_max_connections_over_1000": True})
    assert plan.connection_budget(large)["postgresql"]["db1"]["somaxconn"] == 6000


def test_versions_follow_the_hosts_debian_release():
    report = plan.connection_budget(cluster(hosts__worker1__pgbouncer={}))
    assert (report["servers"]["primary"]["version"], report["pgbouncer"]["worker1"]["version"]) == (17, "1.24")
    assert {item["version"] for item in report["redis"]["instances"]} == {"8.0"}
    assert report["debian"] == {"db1": 13, "redis1": 13, "web1": 13, "worker1": 13}
    report = plan.connection_budget(cluster(hosts__worker1={"mastodon": {"debian_version": 12}, "pgbouncer": {},
                                                            "sidekiq": {"queues": [{"queue": queue}
                                                                                   for queue in QUEUES]}}))
    assert report["pgbouncer"]["worker1"]["version"] == "1.18" and report["debian"]["worker1"] == 12


def test_pgbouncer_prepared_statements_written_out_as_0_where_pgbouncer_knows_them():
    on_13 = plan.connection_budget(cluster(hosts__worker1__pgbouncer={}))["pgbouncer"]["worker1"]
    assert on_13["max_prepared_statements"] == 0
    on_12 = plan.connection_budget(cluster(hosts__worker1__pgbouncer={"version": "1.18"}))["pgbouncer"]["worker1"]
    assert on_12["max_prepared_statements"] is None


def test_one_pgbouncer_process_is_debians_unit_several_are_template_instances_with_own_sockets():
    one = plan.connection_budget(cluster(hosts__worker1__pgbouncer={}))
    assert one["pgbouncer"]["worker1"]["process_units"] == [
        {"peer_id": None, "unit": "pgbouncer.service", "config": "/etc/pgbouncer/pgbouncer.ini",
         "socket_dir": "/run/pgbouncer"}]
    assert one["units"]["worker1"]["after"] == ["network.target", "pgbouncer.service"]
    two = plan.connection_budget(cluster(hosts__worker1__pgbouncer={"processes": 2}))
    assert two["pgbouncer"]["worker1"]["process_units"] == [
        {"peer_id": number, "unit": "pgbouncer@%d.service" % number,
         "config": "/etc/pgbouncer/pgbouncer-%d.ini" % number, "socket_dir": "/run/pgbouncer/%d" % number}
        for number in (1, 2)]
    assert two["units"]["worker1"]["after"] == ["network.target", "pgbouncer@1.service", "pgbouncer@2.service"]
    # A host without pgbouncer orders its units after the network only.
    assert two["units"]["web1"]["after"] == ["network.target"]


def test_several_pgbouncer_processes_count_each_ones_pools():
    one = plan.connection_budget(cluster(hosts__worker1__pgbouncer={"default_pool_size": 4}))
    two = plan.connection_budget(cluster(hosts__worker1__pgbouncer={"default_pool_size": 4, "processes": 2}))
    assert one["pgbouncer"]["worker1"]["primary_connections"] == 4
    assert two["pgbouncer"]["worker1"]["primary_connections"] == 8
    assert two["servers"]["primary"]["total"] - one["servers"]["primary"]["total"] == 4


def test_app_units_write_out_every_sizing_variable():
    units = plan.connection_budget(cluster())["units"]
    assert units["web1"]["web"]["environment"] == {"WEB_CONCURRENCY": "2", "MAX_THREADS": "5", "DB_POOL": "5",
                                                   "PORT": "3000"}
    assert units["web1"]["web"]["handover_port"] == 3100
    assert units["web1"]["streaming"] == [{"unit": "mastodon-streaming@4000.service", "port": 4000,
                                           "handover_unit": "mastodon-streaming@4100.service", "handover_port": 4100,
                                           "environment": {"DB_POOL": "10"}}]
    assert [unit["queue"] for unit in units["worker1"]["sidekiq"]] == QUEUES
    assert units["worker1"]["web"] is None


def test_app_hosts_listen_on_their_address_only_when_nginx_is_elsewhere():
    alone = plan.connection_budget(cluster(hosts__web1__nginx={}))
    assert alone["environment"]["web1"]["units"]["BIND"] == "127.0.0.1"
    assert alone["nginx"]["web1"]["web_upstream"] == ["127.0.0.1:3000"]
    apart = plan.connection_budget(cluster(hosts__lb1={"nginx": {}}, hosts__web1__mastodon={"address": "10.0.0.21"},
                                           hosts__web2={"web": {}, "streaming": {"ports": [4000, 4001]},
                                                        "pgbouncer": {"enabled": False}},
                                           mastodon__trusted_proxy_ip="10.0.0.5"))
    assert apart["environment"]["web1"]["units"]["BIND"] == "10.0.0.21"
    assert apart["nginx"]["lb1"]["web_upstream"] == ["10.0.0.21:3000", "web2:3000"]
    assert apart["nginx"]["lb1"]["streaming_upstream"] == ["10.0.0.21:4000", "web2:4000", "web2:4001"]
    assert apart["nginx"]["lb1"]["streaming_backup_upstream"] == ["10.0.0.21:4100", "web2:4100", "web2:4101"]


def test_a_handover_port_that_is_a_planned_port_is_refused():
    with pytest.raises(PlanInputError) as caught:
        plan.connection_budget(cluster(hosts__web1__streaming={"ports": [4000, 4100]}))
    assert caught.value.where == "host web1, streaming.ports[0]"
    assert ("port 4100 (the handover port of streaming_ports[0], +100) is also streaming_ports[1]'s on web1"
            in str(caught.value))
    assert "100 apart from every other" in str(caught.value)


def test_nginx_worker_connections_follow_the_expected_clients():
    sized = plan.connection_budget(cluster(hosts__lb1={"nginx": {"expected_clients": 10000}}))["nginx"]["lb1"]
    assert (sized["worker_connections"], sized["worker_rlimit_nofile"], sized["limit_nofile"]) == (20000, 40000, 40000)


def test_sidekiq_units_per_host():
    units = plan.sidekiq_units(plan.connection_budget(cluster(hosts__worker1__sidekiq={"queues": [
        {"queue": queue, "concurrency": 10, "instances": 3 if queue == "pull" else 1} for queue in QUEUES]})))
    pull = [unit for unit in units["worker1"] if unit["queue"] == "pull"][0]
    assert pull["template"] == "mastodon-sidekiq-pull@.service"
    assert pull["instances"] == ["mastodon-sidekiq-pull@1.service", "mastodon-sidekiq-pull@2.service",
                                 "mastodon-sidekiq-pull@3.service"]
    assert pull["environment"] == {"DB_POOL": "10", "CONCURRENCY": "10"}


def test_rendered_table_and_markdown_carry_the_numbers():
    report = plan.connection_budget(NORA)
    table = plan.render_table(report)
    assert "185 of 200 max_connections, 15 free" in table
    assert "WARNING connections-over-warning-line" in table
    markdown = plan.render_markdown(report)
    assert "| primary | db1 | 185 | 200 | 197 | 180 | 15 | 92.5 % |" in markdown


# --- properties ---

queue_entry = st.fixed_dictionaries({
    "queue": st.sampled_from(QUEUES),
    "instances": st.integers(0, 6),
    "concurrency": st.integers(1, 30),
}, optional={"db_pool": st.integers(1, 30)})

host_entry = st.fixed_dictionaries({
    "web": st.one_of(st.none(), st.fixed_dictionaries({"concurrency": st.integers(1, 8),
                                                       "max_threads": st.integers(1, 10)})),
    "streaming": st.one_of(st.none(), st.fixed_dictionaries({
        "ports": st.lists(st.integers(4000, 4010), min_size=1, max_size=4, unique=True),
        "db_pool": st.integers(1, 20)})),
    "sidekiq": st.one_of(st.none(), st.fixed_dictionaries({"queues": st.lists(
        queue_entry, max_size=5, unique_by=lambda entry: entry["queue"])})),
    # Plans whose server side is fixed: no pgbouncer, or a pgbouncer with a given pool.
    "pgbouncer": st.one_of(st.just({"enabled": False}), st.fixed_dictionaries({
        "default_pool_size": st.integers(1, 30), "reserve_pool_size": st.integers(0, 3)})),
})


def random_cluster(hosts, direct, max_connections):
    description = cluster(hosts__db1={"postgresql": {"max_connections": max_connections, "ram": "64GB",
                                                     "acknowledge_max_connections_over_1000": True}},
                          mastodon__direct_connections=direct)
    del description["hosts"]["web1"], description["hosts"]["worker1"]
    for index, host in enumerate(hosts):
        description["hosts"]["app%d" % index] = {key: value for key, value in host.items() if value is not None}
    return description


direct_users = st.fixed_dictionaries({}, optional={"migrations": st.sampled_from(["auto", 0, 2]),
                                                   "tootctl": st.sampled_from(["auto", 0]),
                                                   "pghero": st.integers(0, 5)})
clusters = st.builds(random_cluster, st.lists(host_entry, min_size=1, max_size=5), direct_users,
                     st.integers(20, 2000))


@settings(max_examples=150, deadline=None)
@given(clusters)
def test_total_is_the_sum_of_its_parts(description):
    report = model.compute(description)
    primary = report["servers"]["primary"]
    expected = sum(report["direct_connections"].values())
    for host, clients in report["clients"].items():
        if host in report["pgbouncer"]:
            expected += report["pgbouncer"][host]["primary_connections"]
        else:
            expected += clients["primary"]
    assert primary["total"] == expected
    direct_rows = sum(row["connections"] for row in report["processes"] if row["via"] == "direct")
    pooled = sum(bouncer["primary_connections"] for bouncer in report["pgbouncer"].values())
    assert primary["total"] == direct_rows + pooled + sum(report["direct_connections"].values())
    assert primary["free"] == primary["max_connections"] - primary["total"]


@settings(max_examples=150, deadline=None)
@given(clusters, st.integers(0, 4), st.integers(1, 30))
def test_adding_a_process_never_lowers_the_total(description, host_index, concurrency):
    before = model.compute(description)["servers"]["primary"]["total"]
    grown = copy.deepcopy(description)
    hosts = sorted(name for name in grown["hosts"] if name.startswith("app"))
    host = grown["hosts"][hosts[host_index % len(hosts)]]
    queues = host.setdefault("sidekiq", {"queues": []})["queues"]
    pull = [entry for entry in queues if entry["queue"] == "pull"]
    if pull:
        pull[0]["instances"] += 1
    else:
        queues.append({"queue": "pull", "concurrency": concurrency})
    assert model.compute(grown)["servers"]["primary"]["total"] >= before


@settings(max_examples=150, deadline=None)
@given(clusters, st.integers(1, 30))
def test_headroom_is_exact(description, concurrency):
    report = model.compute(description)
    primary = report["servers"]["primary"]
    if primary["headroom"]["connections"] < 0:
        return
    headroom_concurrency = primary["headroom"]["concurrency"]
    fits = primary["headroom"]["sidekiq_processes"]

    def with_extra(processes):
        grown = copy.deepcopy(description)
        # A queue entry takes at most 1000 instances: spread them over hosts.
        for index, start in enumerate(range(0, processes, 1000)):
            grown["hosts"]["extra%d" % index] = {"pgbouncer": {"enabled": False}, "sidekiq": {"queues": [
                {"queue": "pull", "instances": min(1000, processes - start), "concurrency": headroom_concurrency}]}}
        return model.compute(grown)["servers"]["primary"]

    assert with_extra(fits)["total"] <= primary["warning_line"]
    assert with_extra(fits + 1)["total"] > primary["warning_line"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=6), st.integers(30, 1000))
def test_auto_pools_stay_below_the_line_when_they_can(client_counts, max_connections):
    description = cluster(hosts__db1={"postgresql": {"max_connections": max_connections, "ram": "64GB",
                                                     "acknowledge_max_connections_over_1000": True}},
                          mastodon__direct_connections={"migrations": 0, "tootctl": 0})
    del description["hosts"]["web1"]
    for index, clients in enumerate(client_counts):
        description["hosts"]["app%d" % index] = {"streaming": {"ports": [4000], "db_pool": clients}}
    report = model.compute(description)
    primary = report["servers"]["primary"]
    if len(report["pgbouncer"]) + 30 <= primary["warning_line"]:  # room for at least one connection each
        assert primary["total"] <= primary["warning_line"]


def test_sentinel_set_replaces_the_urls_of_the_datasets_it_holds():
    description = with_sentinels(cluster(), port=26380)
    for index, host in enumerate(("redis1", "redis2", "redis3")):
        description["hosts"][host]["mastodon"] = {"address": "10.0.0.%d" % (11 + index)}
    report = plan.connection_budget(description)
    sentinel = report["redis"]["sentinel"]
    assert [item["host"] for item in sentinel["sentinels"]] == ["redis1", "redis2", "redis3"]
    [entry] = sentinel["sets"]
    assert entry["initial_master_host"] == "redis1" and entry["quorum"] == 2 and entry["down_after_ms"] == 30000
    assert [(item["host"], item["address"], item["port"]) for item in entry["members"]] == [
        ("redis1", "10.0.0.11", 6379), ("redis2", "10.0.0.12", 6379), ("redis3", "10.0.0.13", 6379)]
    assert entry["monitor"] == {"name": "mastodon", "initial_master": "10.0.0.11:6379", "quorum": 2,
                                "down_after_ms": 30000,
                                "members": ["10.0.0.11:6379", "10.0.0.12:6379", "10.0.0.13:6379"]}
    assert sentinel["endpoints"] == ["10.0.0.11:26380", "10.0.0.12:26380", "10.0.0.13:26380"]
    units = report["environment"]["web1"]["units"]
    for prefix in ("REDIS", "SIDEKIQ_REDIS"):
        assert units[prefix + "_SENTINELS"] == "10.0.0.11:26380,10.0.0.12:26380,10.0.0.13:26380"
        assert units[prefix + "_SENTINEL_MASTER"] == "mastodon"
        assert units[prefix + "_SENTINEL_USERNAME"] == "mastodon"
        assert prefix + "_URL" not in units
    # The cache is in no Sentinel set: it alone goes over TLS.
    assert units["CACHE_REDIS_URL"] == "rediss://10.0.0.11:6380"
    assert report["redis"]["configurations"]["REDIS"]["instance"] == "persistent"
    # Mastodon's user's password is bound to the set (its members share it), the cache's to its host and name.
    assert {prefix: entry["scope"] for prefix, entry in report["redis"]["configurations"].items()} == {
        "REDIS": "set:mastodon", "SIDEKIQ_REDIS": "set:mastodon", "CACHE_REDIS": "redis1/cache"}
    assert report["findings"] == []
    assert redis_plan.redis_sentinel_of(description) == sentinel


@pytest.mark.parametrize("changes, expected", [
    ({"mastodon__version": "4.6"}, "1"),
    ({"mastodon__version": "4.3"}, "1"),
    ({"mastodon__version": "4.2"}, "0"),
    ({"mastodon__version": "4.6", "mastodon__yjit": False}, "0"),
    ({"mastodon__version": "4.2", "mastodon__yjit": "yes"}, "1"),
])
def test_yjit_follows_mastodons_image_unless_the_inventory_says(changes, expected):
    """Mastodon's image sets RUBY_YJIT_ENABLE=1 from 4.3; the environment file carries it to every unit."""
    report = plan.connection_budget(cluster(**changes))
    assert {env["units"]["RUBY_YJIT_ENABLE"] for env in report["environment"].values()} == {expected}


def test_mastodon_on_the_database_host_logs_in_by_peer_there():
    apart = plan.connection_budget(cluster())["postgresql"]["db1"]
    assert apart["local_peer"] is False
    together = plan.connection_budget(cluster(hosts__db1__sidekiq={"queues": [{"queue": "pull"}]}))
    assert together["postgresql"]["db1"]["local_peer"] is True


def test_the_debian_instance_mastodon_still_uses_is_kept():
    # The official guide's Redis (Debian's instance on 6379) keeps base and Sidekiq data; the plan adds a cache.
    kept = plan.connection_budget(cluster(
        mastodon__redis_settings={"REDIS_HOST": "localhost", "REDIS_PORT": "6379",
                                  "CACHE_REDIS_URL": "redis://web1:6380"},
        hosts__web1__redis={"instances": [{"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "1GB"}]},
        hosts__worker1__web={"concurrency": 1}))
    assert kept["redis"]["keep_debian_instance"] == ["web1"]
    # worker1 reaches its own localhost, where no Redis is planned: nothing to keep there.
    assert plan.connection_budget(cluster())["redis"]["keep_debian_instance"] == []


def test_a_loopback_redis_url_on_a_single_server_gets_that_instances_credentials():
    instances = [{"host": "mastodon1", "address": "10.0.0.5", "port": 6380, "name": "cache", "sentinel_master": None}]
    resolved = redis_plan.resolve_redis_settings({"REDIS_HOST": "localhost", "CACHE_REDIS_URL": "redis://127.0.0.1:6380"},
                                                 instances)
    assert resolved["CACHE_REDIS"]["scope"] == "mastodon1/cache"
    # The guide's own instance (6379) is not the plan's: its clients keep the password they have.
    assert resolved["REDIS"]["scope"] is None
    two = instances + [dict(instances[0], host="mastodon2", address="10.0.0.6")]
    assert redis_plan.resolve_redis_settings({"CACHE_REDIS_URL": "redis://127.0.0.1:6380"}, two)["CACHE_REDIS"][
        "scope"] is None
