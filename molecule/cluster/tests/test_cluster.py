"""The cluster as site.yml leaves it: the budget proven under load, the advisor's advice applied, over-commit
stopped, faults survived.

Tests run in file order (pytest runs the one without a host first); the ones that break things (faults) come
last and restore what they need. The advisor's test comes before them: a container restart leaves the killed
Sidekiq processes in Redis for the 60 s of their heartbeat, as real Sidekiq's do.
"""

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

# The collection's own derivation of each Redis user's password (module_utils/redis_users.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / ".rig"))
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import user_password  # noqa: E402

REPORT = json.load(open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "plan", "budget.json")))
PRIMARY = REPORT["servers"]["primary"]
# The cluster of the PostgreSQL version the plan chose for the host's Debian release.
POSTGRESQL_UNIT = "postgresql@%d-main.service" % PRIMARY["version"]
SECRETS = yaml.safe_load((Path(__file__).resolve().parents[1] / "group_vars" / "all.yml").read_text())
DATABASE_PASSWORD = SECRETS["postgresql_mastodon_password"]
REDIS_PASSWORD = SECRETS["redis_password"]
REDIS_SOCKETS = {6379: "/run/redis-persistent/redis-server.sock", 6380: "/run/redis-cache/redis-server.sock"}
REDIS_SCOPES = {6379: "demo-redis1/persistent", 6380: "demo-redis1/cache"}
REDIS_ADMIN = {port: user_password(REDIS_PASSWORD, scope, "fediscale-admin") for port, scope in REDIS_SCOPES.items()}
REDIS_MASTODON = user_password(REDIS_PASSWORD, REDIS_SCOPES[6379], "mastodon")
STATS_PASSWORD = SECRETS["pgbouncer_stats_password"]
HOSTS = sorted(REPORT["hosts"])
BOUNCERS = sorted(REPORT["pgbouncer"])
PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
# The tests' own runs use the strategy the scenario's converge used (tools/rig chooses it).
PLAYBOOK_ENV = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")

# Each test picks the hosts it needs from the scenario's inventory.
testinfra_hosts = ["ansible://demo-db1"]

# Proofs that do not depend on the release's packages (the plan, Redis lists and pg_stat_activity, systemd
# bringing enabled units back): proven once, on Debian 13, to keep make test within its 40 minutes.
DEBIAN_13_ONLY = pytest.mark.skipif(os.environ.get("FEDISCALE_RIG_DEBIAN") == "12",
                                    reason="release-independent: proven on Debian 13")


@pytest.fixture(scope="module")
def hosts(host):
    inventory = host.backend.ansible_inventory
    return {name: host.get_host("ansible://%s" % name, ansible_inventory=inventory) for name in HOSTS}


def managed_units(name):
    """Every unit the collection runs on a host, from the plan."""
    sections = REPORT["hosts"][name]
    units = []
    if "postgresql" in sections:
        units.append(POSTGRESQL_UNIT)
    if "redis" in sections:
        units += ["%s-server@%s.service" % (item["server"], item["name"]) for item in REPORT["redis"]["instances"]
                  if item["host"] == name]
    if name in REPORT["pgbouncer"]:
        units += [process["unit"] for process in REPORT["pgbouncer"][name]["process_units"]]
    app = REPORT["units"].get(name, {})
    if app.get("web"):
        units.append(app["web"]["unit"])
    units += [item["unit"] for item in app.get("streaming", [])]
    if app.get("streaming"):
        units.append("mastodon-streaming.service")
    for item in app.get("sidekiq", []):
        units += item["instances"]
    if "nginx" in sections:
        units.append("nginx.service")
    return units


def run_playbook(host, *args):
    return subprocess.run([PLAYBOOK, "fediscale.mastodon.site", "-i", host.backend.ansible_inventory] + list(args),
                          env=PLAYBOOK_ENV, capture_output=True, text=True, timeout=900, check=False)


def python(host, script):
    encoded = base64.b64encode(script.encode()).decode()
    return host.run("echo %s | base64 -d | python3 -" % encoded)


@pytest.mark.parametrize("name", HOSTS)
def test_every_managed_unit_is_enabled_and_running(hosts, name):
    for unit in managed_units(name):
        service = hosts[name].service(unit)
        assert service.is_running and service.is_enabled, unit


# --- 1. The budget is true ---

def test_the_demo_load_reaches_exactly_the_plan_on_every_server_and_pgbouncer():
    """side_effect.yml held every pool of the stand-ins at once (Puma threads, streaming pools, sidekiq threads,
    a migration, tootctl, the named direct users) while the live modules watched: each peak is the plan's number,
    no more (the plan holds) and no less (the plan counts nothing that is never opened)."""
    summary = json.load(open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "demo-load.json")))
    assert [(row["host"], row["peak"]) for row in summary["postgresql"]] == [("demo-db1", PRIMARY["total"])]
    assert sorted(row["host"] for row in summary["pgbouncer"]) == BOUNCERS
    for row in summary["pgbouncer"]:
        planned = REPORT["pgbouncer"][row["host"]]
        assert (row["peak_clients"], row["peak_servers"]) == (planned["clients"], planned["primary_connections"]), row
    units = REPORT["units"].values()
    threads = sum(int(item["web"]["environment"]["WEB_CONCURRENCY"]) * int(item["web"]["environment"]["MAX_THREADS"])
                  for item in units if item["web"])
    pools = sum(int(item["environment"]["DB_POOL"]) for unit in units for item in unit["streaming"])
    assert summary["answers"] == {"web 200": 2 * threads, "streaming 200": pools}
    assert summary["jobs"]["finished"] == summary["jobs"]["pushed"] > 0


MEDIA_ROUND_TRIP = """
import json, urllib.request
def call(path, host, data=None):
    request = urllib.request.Request("http://127.0.0.1" + path, data=data, headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [response.status, response.headers.get("X-Cache-Status"), response.read().decode()]
url = json.loads(call("/api/v2/media", "mastodon.test", b"demo-media")[2])["url"]
print(json.dumps([url] + [call(url[len("http://files.demo.test"):], "files.demo.test") for _ in range(2)]))
"""


def test_an_upload_goes_to_the_bucket_and_comes_back_through_nginxs_cache(hosts):
    result = python(hosts["demo-proxy1"], MEDIA_ROUND_TRIP)
    assert result.rc == 0, result.stderr
    url, first, second = json.loads(result.stdout)
    assert url.startswith("http://files.demo.test/media_attachments/")
    assert (first, second) == ([200, "MISS", "demo-media"], [200, "HIT", "demo-media"])


ASK_NGINX = """
import http.client, json
answers = {}
for name in ("172.30.42.16", "unknown.example", "mastodon.test"):
    connection = http.client.HTTPConnection("172.30.42.16", 80, timeout=10)
    connection.request("GET", "/about", headers={"Host": name})
    try:
        response = connection.getresponse()
        answers[name] = [response.status, response.read().decode()]
    except http.client.RemoteDisconnected:
        answers[name] = "closed"
print(json.dumps(answers))
"""


def test_nginx_gives_a_host_it_does_not_serve_no_page(hosts):
    # From another host on the network, by address and by a made-up name: nginx closes without an answer.
    result = python(hosts["demo-web1"], ASK_NGINX)
    assert result.rc == 0, result.stderr
    answers = json.loads(result.stdout)
    assert (answers["172.30.42.16"], answers["unknown.example"], answers["mastodon.test"][0]) == ("closed", "closed", 200)
    # The Mastodon-shaped stand-in behind it serves no environment and no secret.
    page = answers["mastodon.test"][1]
    for secret in (DATABASE_PASSWORD, REDIS_PASSWORD, STATS_PASSWORD):
        assert secret not in page
    assert "REDIS_URL" not in page and "DB_PASS" not in page
    config = hosts["demo-proxy1"].run("nginx -T").stdout
    assert "configuration file /etc/nginx/sites-enabled/default" not in config
    assert "return 444;" in config


PROBE_PORTS = """
import json, socket
answers = {}
for target in %s:
    host, port = target.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        answers[target] = "open"
    except ConnectionRefusedError:
        answers[target] = "refused"
    except OSError as error:
        answers[target] = type(error).__name__
print(json.dumps(answers))
"""
# Every listener the collection runs beyond loopback (the handover ports answer only during a restart).
LISTENERS = ["172.30.42.11:5432", "172.30.42.12:6379", "172.30.42.12:6380", "172.30.42.13:3000",
             "172.30.42.13:4000", "172.30.42.14:3000", "172.30.42.14:4000"]


def probe(host, targets):
    result = python(host, PROBE_PORTS % json.dumps(targets))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_an_outsider_on_the_network_reaches_only_nginx(host, hosts):
    # demo-media1 is on the cluster's network and in no group of the plan: an outsider without credentials.
    outsider = host.get_host("ansible://demo-media1", ansible_inventory=host.backend.ansible_inventory)
    answers = probe(outsider, LISTENERS + ["172.30.42.16:80"])
    assert answers == dict({target: "refused" for target in LISTENERS}, **{"172.30.42.16:80": "open"})
    # The planned clients still reach them: an app host the database and Redis, the proxy Puma and streaming.
    assert set(probe(hosts["demo-sidekiq1"], LISTENERS[:3]).values()) == {"open"}
    assert set(probe(hosts["demo-proxy1"], LISTENERS[3:]).values()) == {"open"}
    # The rules as nftables holds them.
    table = hosts["demo-db1"].run("nft list table inet fediscale_mastodon").stdout
    assert "tcp dport 5432 ip saddr { 172.30.42.13, 172.30.42.14, 172.30.42.15 } accept" in table
    assert "tcp dport 5432 reject with tcp reset" in table


def test_the_firewall_unit_scores_like_mastodons_own(hosts):
    unit = "/etc/systemd/system/fediscale-mastodon-firewall.service"
    out = hosts["demo-db1"].run("systemd-analyze security --offline=true --no-pager %s" % unit).stdout
    assert float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1)) <= 1.5
    assert hosts["demo-db1"].service("fediscale-mastodon-firewall").is_enabled


THROUGH_PGBOUNCER = ("set -a; . /etc/mastodon/environment; set +a; python3 -c 'import os, psycopg; psycopg.connect("
                     "host=os.environ[\"DB_HOST\"], port=os.environ[\"DB_PORT\"], dbname=os.environ[\"DB_NAME\"], "
                     "user=os.environ[\"DB_USER\"], password=os.environ[\"DB_PASS\"], "
                     "sslmode=os.environ[\"DB_SSLMODE\"]).execute(\"SELECT 1\")'")


def test_every_connection_from_another_host_is_encrypted(hosts):
    # A query through each app host's pgbouncer (DB_SSLMODE=disable to the loopback) keeps a server connection
    # open from each; PostgreSQL reports each one's TLS.
    for name in ("demo-web1", "demo-web2", "demo-sidekiq1"):
        result = hosts[name].run(THROUGH_PGBOUNCER)
        assert result.rc == 0, result.stderr
    rows = hosts["demo-db1"].run(
        "runuser -u postgres -- psql -XAtq -c \"SELECT host(a.client_addr) || ' ' || s.ssl FROM pg_stat_activity a "
        "JOIN pg_stat_ssl s USING (pid) WHERE a.client_addr IS NOT NULL\"").stdout.split()
    addresses = rows[0::2]
    assert {"172.30.42.13", "172.30.42.14", "172.30.42.15"} <= set(addresses), rows
    assert set(rows[1::2]) == {"true"}, rows


# A client on an app host, with the password as an argument; TLS checks the certificate against the CA and the
# name against the address, as Mastodon's clients do.
REDIS_PING = ("python3 -c 'import redis, sys; print(redis.Redis(host=\"172.30.42.12\", port=6379, "
              "username=\"mastodon\", password=sys.argv[1], socket_timeout=5%s).ping())' " + REDIS_MASTODON)
TLS_OPTIONS = (", ssl=True, ssl_cert_reqs=\"required\", ssl_check_hostname=True, "
               "ssl_ca_certs=\"/etc/ssl/fediscale-mastodon/ca.crt\"")


def test_redis_takes_only_tls_from_other_hosts_and_the_wire_shows_no_password_or_job(hosts):
    node, web = hosts["demo-redis1"], hosts["demo-web1"]
    assert [redis(node, port, "CONFIG GET %s" % name).stdout.split()[1] for port in (6379, 6380)
            for name in ("port", "tls-port")] == ["0", "6379", "0", "6380"]
    # Streaming on the web hosts and Sidekiq hold connections on the TLS port, the only one there is.
    clients = {line.split(" addr=")[1].split(":")[0] for line in redis(node, 6379, "CLIENT LIST").stdout.splitlines()
               if " addr=172." in line}
    assert {"172.30.42.13", "172.30.42.14", "172.30.42.15"} <= clients, clients

    node.run("rm -f /tmp/redis.pcap; (timeout 30 tcpdump -i any -U -w /tmp/redis.pcap tcp port 6379 "
             "> /dev/null 2>&1 &)")
    time.sleep(2)
    secured = web.run(REDIS_PING % TLS_OPTIONS)
    time.sleep(3)
    node.run("pkill -INT tcpdump")
    time.sleep(1)
    assert secured.stdout.strip() == "True", secured.stderr
    packets = node.run("tcpdump -r /tmp/redis.pcap 2>/dev/null | wc -l").stdout
    text = node.run("tcpdump -A -r /tmp/redis.pcap 2>/dev/null").stdout
    assert int(packets) > 10
    for secret in (REDIS_PASSWORD, REDIS_MASTODON, "AUTH", "queue:", "BRPOP", "SUBSCRIBE"):
        assert secret not in text, secret

    plain = web.run(REDIS_PING % "")
    assert plain.rc != 0 and "True" not in plain.stdout


# What the units' own environment logs in as: Mastodon's user, which may use Redis and not administer it.
AS_THE_UNITS = ("set -a; . /etc/mastodon/environment; set +a; python3 -c '\n"
                "import os, redis\n"
                "for name in (\"REDIS_URL\", \"CACHE_REDIS_URL\"):\n"
                "    client = redis.Redis.from_url(os.environ[name], ssl_ca_certs=\"/etc/ssl/fediscale-mastodon/ca.crt\",\n"
                "                                  socket_timeout=5, decode_responses=True)\n"
                "    print(name, client.client_info()[\"user\"], client.set(\"fediscale:probe\", 1), client.info()[\"role\"],\n"
                "          client.unlink(\"fediscale:probe\"))\n"
                "    for command in (\"FLUSHALL\", \"CONFIG SET maxmemory 1\", \"SHUTDOWN NOSAVE\", \"REPLICAOF 172.30.42.17 6379\",\n"
                "                    \"ACL LIST\", \"MONITOR\"):\n"
                "        try:\n"
                "            client.execute_command(*command.split())\n"
                "            print(name, command, \"ALLOWED\")\n"
                "        except redis.ResponseError as error:\n"
                "            print(name, command, type(error).__name__)\n"
                "'")


def test_the_units_log_in_as_mastodons_user_which_cannot_administer_redis(hosts):
    result = hosts["demo-sidekiq1"].run(AS_THE_UNITS)
    assert result.rc == 0, result.stderr
    lines = result.stdout.splitlines()
    # The probe key written is removed again (UNLINK answers 1): later tests count the keys.
    assert "REDIS_URL mastodon True master 1" in lines and "CACHE_REDIS_URL mastodon True master 1" in lines, lines
    denied = [line for line in lines if line.split()[-1] == "NoPermissionError"]
    assert len(denied) == 12 and not [line for line in lines if line.endswith("ALLOWED")], lines
    environment = hosts["demo-sidekiq1"].file("/etc/mastodon/environment").content_string
    assert "rediss://mastodon:" in environment and REDIS_PASSWORD not in environment
    for port in (6379, 6380):
        assert redis(hosts["demo-redis1"], port, "ACL GETUSER default").stdout.splitlines()[1] == "off"
        assert redis(hosts["demo-redis1"], port, "PING").stdout.strip() == "PONG"


# --- 2. The advisor, and its advice applied (a scale-up and a scale-down in one run) ---

# push has one process of 10 threads: 0.5 s jobs at 30 a second outrun its 20 a second, so its latency grows.
FLOOD = ("set -a; . /etc/mastodon/environment; set +a; nohup timeout 200 python3 /usr/local/lib/demo_load.py flood "
         "--queue push --rate 30 --seconds 150 --hold 0.5 > /tmp/flood.log 2>&1 &")


def read_queue(hosts, queue):
    result = hosts["demo-redis1"].ansible("fediscale.mastodon.sidekiq_queues",
                                          "login_unix_socket=%s login_user=fediscale-admin login_password=%s "
                                          "trend_seconds=5" % (REDIS_SOCKETS[6379], REDIS_ADMIN[6379]), check=True)
    return next(row for row in result["queues"] if row["queue"] == queue)


@DEBIAN_13_ONLY
def test_the_advisor_names_a_flooded_queue_and_its_advice_brings_the_latency_down(host, hosts):
    """A flood on push; the advisor names push and a number of processes the budget allows; applied with the
    tags it names (and pull scaled down from 3 to 1 in the same run), the live checks pass against the new
    plan, the latency falls, and the extra pull processes are stopped and disabled. Then the inventory's
    numbers come back."""
    node = hosts["demo-sidekiq1"]
    node.run(FLOOD)
    applied = {}
    try:
        scale_push_by_the_advice_and_pull_down(host, hosts, node, applied)
    finally:
        node.run("pkill -f 'demo_load.py flood'")
        # After a failure too: later tests count these units.
        if "tags" in applied:
            back_to_the_inventorys_numbers(host, node, applied["tags"])


def hosts_with_tasks_past_the_plan(output):
    """The hosts with a task result (ok, changed, skipping, failed, included) in a play after the plan's, role
    argument checks left out: Ansible tags those always, and they run on the controller."""
    found = set()
    for play in re.split(r"^PLAY \[", output, flags=re.M)[1:]:
        if play.startswith("Plan the Mastodon connection budget]"):
            continue
        for task in re.split(r"^TASK \[", play, flags=re.M)[1:]:
            if " : Validating arguments against arg spec " in task.split("\n", 1)[0]:
                continue
            for line in task.splitlines()[1:]:
                result = re.match(r"(?:ok|changed|skipping|failed|fatal): \[([^\] ]+)", line)
                included = re.match(r"included: .* for (.+)$", line)
                if result:
                    found.add(result.group(1))
                elif included:
                    found.update(included.group(1).split(", "))
    return found


def task_results(output, task):
    """The result of each host (ok, changed, skipping, failed, fatal) for the task named, in every play of the run."""
    results = []
    for block in re.split(r"^TASK \[", output, flags=re.M)[1:]:
        if block.split("]", 1)[0] == task:
            results += re.findall(r"^(ok|changed|skipping|failed|fatal): \[", block, flags=re.M)
    return results


def back_to_the_inventorys_numbers(host, node, tags):
    """Scaling up starts the pull processes again, the extra push process goes. The run, limited by the tags
    the advisor named (the sidekiq play, and pgbouncer's where the pools change), has no task on a database,
    Redis or proxy host past the plan's play, and keeps the CA without a module call."""
    result = run_playbook(host, "--tags", tags)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    touched = hosts_with_tasks_past_the_plan(result.stdout)
    assert "demo-sidekiq1" in touched and touched <= set(REPORT["units"]), (tags, touched)
    # The CA the converge made is read on the controller and kept: no module makes or signs it again
    # (reasons_to_make_the_ca_again finds no reason).
    for task in ("Make the CA's key", "Describe the CA", "Sign the CA's own certificate"):
        assert task_results(result.stdout, "fediscale.mastodon.tls : " + task) == ["skipping"], task
    for number in (1, 2, 3):
        service = node.service("mastodon-sidekiq-pull@%d.service" % number)
        assert service.is_running and service.is_enabled
    assert not node.service("mastodon-sidekiq-push@2.service").is_running


def scale_push_by_the_advice_and_pull_down(host, hosts, node, applied):
    """The advisor's verdict on the flooded push, applied; the tags it named go into applied once a run used them."""
    time.sleep(8)
    advice = subprocess.run([PLAYBOOK, "fediscale.mastodon.advise", "-i", host.backend.ansible_inventory,
                             "-e", "advise_latency_warning_seconds=2"], env=PLAYBOOK_ENV, capture_output=True, text=True,
                            timeout=300, check=False)
    assert advice.returncode == 0, advice.stdout[-3000:] + advice.stderr[-3000:]
    verdict = re.search(r"verdict: push: latency \d+ s and growing; the budget allows (\d+) more push processes on "
                        r"demo-sidekiq1 \(10 connections each, (\d+) free below the 90 % line\): add (\d+), set "
                        r"instances: (\d+)", advice.stdout)
    assert verdict, advice.stdout[-3000:]
    allowed, free, added, instances = (int(number) for number in verdict.groups())
    assert free == PRIMARY["headroom"]["connections"] and allowed == free // 10 and instances == 1 + added >= 2
    tags = re.search(r"then run site.yml --tags (\S+)", advice.stdout).group(1)
    before = read_queue(hosts, "push")
    assert before["growing"] and before["processes"] == 1, before

    queues = [{"queue": unit["queue"], "concurrency": unit["concurrency"],
               "instances": {"push": instances, "pull": 1}.get(unit["queue"], len(unit["instances"]))}
              for unit in REPORT["units"]["demo-sidekiq1"]["sidekiq"]]
    # The check tag runs the live checks against the new plan: they fail the run on an error.
    applied["tags"] = tags
    result = run_playbook(host, "--tags", tags + ",check", "-e", json.dumps({"sidekiq_queues": queues}))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = read_queue(hosts, "push")
    assert after["processes"] == instances and not after["growing"], after
    # Falling while the flood still runs (the backlog of the run's minutes drains), or already drained: under
    # the advisor's line of 2 s, where both samples can be 0.
    assert after["latency"] < after["latency_before"] or after["latency"] < 2, (before, after)
    assert node.run("pgrep -f 'demo_load.py flood'").rc == 0, "the flood ended before the latency was read"

    listed = node.run("systemctl list-units --all --plain --no-legend 'mastodon-sidekiq-pull@*.service'").stdout
    running = [line.split()[0] for line in listed.splitlines() if node.service(line.split()[0]).is_running]
    assert running == ["mastodon-sidekiq-pull@1.service"]
    for number in (2, 3):
        service = node.service("mastodon-sidekiq-pull@%d.service" % number)
        assert not service.is_running and not service.is_enabled


# --- 3. Over-commit is stopped ---

def snapshot(hosts):
    paths = "/etc/postgresql /etc/pgbouncer /etc/redis /etc/mastodon /etc/nginx /etc/systemd/system"
    return {name: hosts[name].run("find %s -type f -exec sha256sum {} + 2>/dev/null | sort" % paths).stdout
            for name in HOSTS}


@DEBIAN_13_ONLY
def test_over_commit_by_one_connection_fails_at_the_plan_and_changes_nothing(host, hosts):
    # Direct connections up to one more than the pgbouncers' one-per-pool floors leave room for
    # (migrations and tootctl left out, so that one named user holds them all).
    floors = len(BOUNCERS)
    direct = PRIMARY["usable"] - floors + 1
    before = snapshot(hosts)
    result = run_playbook(host, "-e", json.dumps({"mastodon_direct_connections": {
        "migrations": 0, "tootctl": 0, "overcommit": direct}}))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ERROR connections-over-usable-capacity [demo-db1 postgresql primary]" in output
    assert "the plan opens %d connections on the primary" % (PRIMARY["usable"] + 1) in output
    assert "PLAY [PostgreSQL]" not in output
    assert snapshot(hosts) == before


@DEBIAN_13_ONLY
def test_local_media_on_several_hosts_fails_at_the_plan_and_changes_nothing(host, hosts):
    before = snapshot(hosts)
    result = run_playbook(host, "-e", json.dumps(dict(
        {"mastodon_" + name: None for name in ("s3_bucket", "s3_endpoint", "s3_protocol", "s3_alias_host")},
        mastodon_media="local")))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ERROR media-local-on-several-hosts [media]" in output
    assert "Puma and Sidekiq write it on demo-sidekiq1, demo-web1, demo-web2 (nginx serves it from its own disk " \
           "on demo-proxy1)" in output
    assert "PLAY [PostgreSQL]" not in output
    assert snapshot(hosts) == before


@DEBIAN_13_ONLY
def test_a_plan_for_another_debian_release_stops_every_host_before_it_is_changed(host, hosts):
    # The first role on each host checks its release (roles/plan/tasks/main.yml), once the facts are there.
    before = snapshot(hosts)
    result = run_playbook(host, "-e", "mastodon_debian_version=12")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for name in HOSTS:
        assert ("host %s: the plan assumes Debian 12 and the versions it ships, but the host runs Debian 13. Set "
                "mastodon_debian_version: 13 for it and plan again." % name) in output
    assert "PLAY [Backup repository (pgBackRest)]" not in output
    assert snapshot(hosts) == before


# --- 4. Faults ---

def redis(host, port, command):
    """redis-cli on the Redis host, through the instance's socket (its port takes only TLS)."""
    return host.run("redis-cli -s %s --user fediscale-admin --pass %s --no-auth-warning %s"
                    % (REDIS_SOCKETS[port], REDIS_ADMIN[port], command))


def test_persistent_redis_keeps_every_job_through_kill_9(hosts):
    node = hosts["demo-redis1"]
    jobs = 2000
    node.run("seq %d | awk '{ print \"LPUSH queue:probe job-\" $1 }' | redis-cli -s %s --user fediscale-admin "
             "--pass %s --no-auth-warning >/dev/null" % (jobs, REDIS_SOCKETS[6379], REDIS_ADMIN[6379]))
    time.sleep(1.5)  # appendfsync everysec
    before = node.run("systemctl show -P MainPID redis-server@persistent.service").stdout.strip()
    node.run("systemctl kill -s KILL redis-server@persistent.service")
    for _attempt in range(30):
        time.sleep(1)
        after = node.run("systemctl show -P MainPID redis-server@persistent.service").stdout.strip()
        if after not in ("0", before) and redis(node, 6379, "PING").stdout.strip() == "PONG":
            break
    assert after not in ("0", before)
    assert redis(node, 6379, "LLEN queue:probe").stdout.strip() == str(jobs)


def test_flushing_the_cache_leaves_persistent_data_alone(hosts):
    node = hosts["demo-redis1"]
    persistent = int(redis(node, 6379, "DBSIZE").stdout.strip())
    jobs = redis(node, 6379, "LLEN queue:probe").stdout.strip()
    redis(node, 6380, "SET cache:probe 1")
    assert redis(node, 6380, "DBSIZE").stdout.strip() == "1"
    redis(node, 6380, "FLUSHALL")
    assert redis(node, 6380, "DBSIZE").stdout.strip() == "0"
    assert int(redis(node, 6379, "DBSIZE").stdout.strip()) == persistent
    assert redis(node, 6379, "LLEN queue:probe").stdout.strip() == jobs == "2000"
    redis(node, 6379, "DEL queue:probe")


# Like Rails' pool: a connection that fails is replaced by a new one on the next checkout.
RESILIENT_CLIENT = """
import json, time, psycopg
DSN = "host=127.0.0.1 port=6432 dbname=mastodon_production user=mastodon password=%s connect_timeout=10"
conn = None
log = []
end = time.time() + 45
while time.time() < end:
    try:
        if conn is None or conn.closed:
            conn = psycopg.connect(DSN, autocommit=True, prepare_threshold=None)
        conn.execute("SELECT 1")
        log.append("ok")
    except psycopg.Error as error:
        log.append(type(error).__name__ + ": " + str(error).strip()[:120])
    time.sleep(0.2)
json.dump(log, open("/tmp/resilient.json", "w"))
"""


def test_clients_behind_pgbouncer_recover_from_a_postgresql_restart(hosts):
    app = hosts["demo-web1"]
    encoded = base64.b64encode((RESILIENT_CLIENT % DATABASE_PASSWORD).encode()).decode()
    app.run("rm -f /tmp/resilient.json; echo %s | base64 -d > /tmp/resilient.py; "
            "nohup timeout 90 python3 /tmp/resilient.py >/dev/null 2>&1 &" % encoded)
    time.sleep(3)
    assert hosts["demo-db1"].run("systemctl restart %s" % POSTGRESQL_UNIT).rc == 0
    log = None
    for _attempt in range(90):
        content = app.run("cat /tmp/resilient.json 2>/dev/null").stdout
        if content:
            log = json.loads(content)
            break
        time.sleep(1)
    assert log, "the client did not finish"
    # Queries work again after the restart, with no action taken on pgbouncer or the client's host. Errors
    # may last up to pgbouncer's server_login_retry (15 s) when its first login hits PostgreSQL starting up.
    errors = [entry for entry in log if entry != "ok"]
    assert len(errors) * 0.2 <= 20, log
    assert log[-50:] == ["ok"] * 50, log


def test_systemd_brings_a_killed_pgbouncer_back(hosts):
    app = hosts["demo-sidekiq1"]
    unit = REPORT["pgbouncer"]["demo-sidekiq1"]["process_units"][0]["unit"]
    before = app.run("systemctl show -P MainPID %s" % unit).stdout.strip()
    app.run("systemctl kill -s KILL %s" % unit)
    after = before
    for _attempt in range(20):
        time.sleep(1)
        after = app.run("systemctl show -P MainPID %s" % unit).stdout.strip()
        if after not in ("0", before) and app.service(unit).is_running:
            break
    assert after not in ("0", before)
    result = python(app, "import psycopg\nprint(psycopg.connect('host=127.0.0.1 port=6432 user=mastodon "
                         "dbname=mastodon_production password=%s').execute('SELECT 1').fetchone()[0])"
                    % DATABASE_PASSWORD)
    assert result.rc == 0 and result.stdout.strip() == "1", result.stderr


@DEBIAN_13_ONLY
def test_every_unit_comes_back_after_a_container_restart(hosts):
    subprocess.run(["docker", "restart"] + HOSTS, check=True, capture_output=True, timeout=300)
    for name in HOSTS:
        state = hosts[name].run("systemctl is-system-running --wait").stdout.strip()
        assert state in ("running", "degraded"), hosts[name].run("systemctl --failed --no-legend").stdout
        for unit in managed_units(name):
            service = hosts[name].service(unit)
            assert service.is_running and service.is_enabled, (name, unit)


# --- 5. An interrupted run ---

# Where each run is killed: after the play wrote its files, before the reload or restart that applies them (a
# handler at the end of the play, or a task further on). Each is a run an operator makes, limited to one part.
KILL_POINTS = (
    ("postgresql", "fediscale.mastodon.postgresql : Read the files as PostgreSQL would apply them"),
    ("pgbouncer", "fediscale.mastodon.pgbouncer : Find process configurations the plan no longer has"),
    ("nginx", "fediscale.mastodon.nginx : Find what the running nginx has not read yet"),
    ("sidekiq", "fediscale.mastodon.sidekiq : Write the target that holds every sidekiq process"),
    ("web", "fediscale.mastodon.web : Write the Puma unit"),
)
DRILL_MARK = {"FEDISCALE_DRILL": "killed-runs"}


def run_killed_at(host, task, *args):
    """site.yml, killed (with everything it started on the controller) once it starts `task`; the kill follows
    the run's own output, so a fast machine cannot finish the run first."""
    run = subprocess.Popen([PLAYBOOK, "fediscale.mastodon.site", "-i", host.backend.ansible_inventory] + list(args),
                           env=PLAYBOOK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    seen = []
    for line in run.stdout:
        seen.append(line)
        if "TASK [%s]" % task in line:
            break
    os.killpg(run.pid, 9)
    run.stdout.close()
    assert run.wait() == -9, "the run ended before %s: %s" % (task, "".join(seen[-40:]))


def process_environment(node, unit):
    pid = node.run("systemctl show -P MainPID %s" % unit).stdout.strip()
    return dict(item.split("=", 1) for item in node.run("tr '\\0' '\\n' < /proc/%s/environ" % pid).stdout.splitlines()
                if "=" in item)


def bouncer_setting(node, process, name):
    socket_dir = process.get("socket_dir", "/run/postgresql")
    return python(node, "import psycopg\nconn = psycopg.connect(host=%r, port=6432, dbname='pgbouncer', "
                        "user='pgbouncer_stats', password=%r, autocommit=True, cursor_factory=psycopg.ClientCursor)\n"
                        "print(dict((row[0], row[1]) for row in conn.execute('SHOW CONFIG')).get(%r))"
                  % (socket_dir, STATS_PASSWORD, name)).stdout.strip()


def sql(node, query):
    return node.run("runuser -u postgres -- psql -XAtq -d mastodon_production -c %s" % json.dumps(query)).stdout.strip()


def app_units(name):
    units = REPORT["units"].get(name, {})
    web = [units["web"]["unit"]] if units.get("web") else []
    return web + [item["unit"] for item in units.get("streaming", [])] \
        + [instance for item in units.get("sidekiq", []) for instance in item["instances"]]


@DEBIAN_13_ONLY
def test_runs_killed_between_writing_and_applying_are_finished_by_the_next_and_lose_nothing(host, hosts):
    """A change to PostgreSQL, pgbouncer, nginx and every Mastodon unit's environment, made by runs of one part
    each, killed after the part wrote its files and before it reloaded or restarted for them (so the files are as
    planned and the processes run the old settings: checked); then one whole run. It applies every change the
    killed runs left unread, from systemd's times (the unit_pending module), every unit runs, and the rows and
    queued jobs written before are all there. The same run finds the primary's certificate replaced by one the
    cluster's CA did not sign (same key and names), signs it again and PostgreSQL serves the new one."""
    db, proxy = hosts["demo-db1"], hosts["demo-proxy1"]
    sql(db, "CREATE TABLE IF NOT EXISTS drill_rows (id int); INSERT INTO drill_rows SELECT generate_series(1, 500)")
    redis(hosts["demo-redis1"], 6379, "RPUSH queue:drill " + " ".join(str(number) for number in range(300)))
    work_mem = "5MB" if sql(db, "SHOW work_mem") == "4MB" else "4MB"
    bouncers = {name: REPORT["pgbouncer"][name]["process_units"] for name in BOUNCERS}
    max_client_conn = 7 + max(int(bouncer_setting(hosts[name], process, "max_client_conn"))
                              for name, processes in bouncers.items() for process in processes)
    change = json.dumps({"postgresql_work_mem": work_mem, "pgbouncer_max_client_conn": max_client_conn,
                         "nginx_proxy_read_timeout": 121, "mastodon_environment": DRILL_MARK})
    for tag, task in KILL_POINTS:
        run_killed_at(host, task, "--tags", tag, "-e", change)

    # Written and not applied.
    assert "work_mem = '%s'" % work_mem in db.run("cat /etc/postgresql/*/main/conf.d/fediscale-mastodon.conf").stdout
    assert sql(db, "SHOW work_mem") != work_mem
    assert "proxy_read_timeout 121s" in proxy.run("cat /etc/nginx/sites-available/mastodon.conf").stdout
    for name in HOSTS:
        if app_units(name):
            assert "FEDISCALE_DRILL=killed-runs" in hosts[name].run("cat /etc/mastodon/environment").stdout
            assert "FEDISCALE_DRILL" not in process_environment(hosts[name], app_units(name)[0]), name
    assert bouncer_setting(hosts[BOUNCERS[0]], bouncers[BOUNCERS[0]][0], "max_client_conn") != str(max_client_conn)

    # What the tls role's re-run must not keep: another issuer (reasons_to_sign_again).
    db.run("cd /etc/ssl/fediscale-mastodon && openssl req -x509 -key server.key -subj /CN=demo-db1 -days 400 "
           "-addext subjectAltName=IP:172.30.42.11,DNS:demo-db1 -out server.crt")
    assert db.run("openssl verify -CAfile /etc/ssl/fediscale-mastodon/ca.crt "
                  "/etc/ssl/fediscale-mastodon/server.crt").rc != 0

    result = run_playbook(host, "-e", change)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert sql(db, "SHOW work_mem") == work_mem
    served = hosts["demo-web1"].run(
        "echo | openssl s_client -connect 172.30.42.11:5432 -starttls postgres -verify_return_error "
        "-verify_hostname demo-db1 -CAfile /etc/ssl/fediscale-mastodon/ca.crt 2>/dev/null "
        "| openssl x509 -noout -fingerprint -sha256")
    assert served.rc == 0 and served.stdout == db.run("openssl x509 -noout -fingerprint -sha256 "
                                                      "-in /etc/ssl/fediscale-mastodon/server.crt").stdout
    for name, processes in bouncers.items():
        for process in processes:
            assert bouncer_setting(hosts[name], process, "max_client_conn") == str(max_client_conn), (name, process)
    # Every worker nginx runs now started after the site file was written (a reload starts new workers).
    ages = proxy.run("stat -c %Y /etc/nginx/sites-available/mastodon.conf; date +%s; "
                     "ps -o etimes= --ppid $(systemctl show -P MainPID nginx.service)").stdout.split()
    written, now, workers = int(ages[0]), int(ages[1]), [int(age) for age in ages[2:]]
    assert workers and all(now - age >= written for age in workers), ages
    for name in HOSTS:
        for unit in managed_units(name):
            assert hosts[name].service(unit).is_running, (name, unit)
        for unit in app_units(name):
            assert process_environment(hosts[name], unit).get("FEDISCALE_DRILL") == "killed-runs", (name, unit)
    assert sql(db, "SELECT count(*) FROM drill_rows") == "500"
    assert redis(hosts["demo-redis1"], 6379, "LLEN queue:drill").stdout.strip() == "300"
