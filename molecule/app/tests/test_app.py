"""The app tier, live: units, their environment, scale-down, nginx limits and upstreams, sandbox scores.

Mastodon's processes are test stand-ins (molecule/shared/files/stand-in.py) that connect to the database host's
PostgreSQL and Redis as Mastodon does, from the environment the roles wrote.
"""

import json
import os
import re
import shlex
import time

import pytest

REPORT = json.load(open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "plan", "budget.json")))
UNITS = REPORT["units"]["app-web"]
NGINX = REPORT["nginx"]["app-proxy"]
QUEUES = ["default", "push", "pull", "ingress", "mailers", "scheduler"]

testinfra_hosts = ["ansible://app-web"]


@pytest.fixture(scope="module")
def web(host):
    return host


@pytest.fixture(scope="module")
def proxy(host):
    return host.get_host("ansible://app-proxy", ansible_inventory=host.backend.ansible_inventory)


def process(host, unit):
    """argv and environment of a unit's main process."""
    pid = host.run("systemctl show -P MainPID %s" % unit).stdout.strip()
    assert pid not in ("", "0"), unit
    argv = host.run("tr '\\0' ' ' < /proc/%s/cmdline" % pid).stdout.split()
    environ = dict(line.split("=", 1) for line in host.run("tr '\\0' '\\n' < /proc/%s/environ" % pid).stdout
                   .splitlines() if "=" in line)
    return argv, environ


def on_app_host(host, code):
    """Python on the app host with Mastodon's direct settings (migrations.env) and .env.production."""
    result = host.run("set -a; . /etc/mastodon/migrations.env; . /home/mastodon/live/.env.production; set +a; "
                      "python3 -c %s" % shlex.quote("import json, os, time, psycopg, redis\n" + code))
    assert result.rc == 0, result.stderr
    return result.stdout


def sql(host, query):
    return json.loads(on_app_host(host, (
        "with psycopg.connect(host=os.environ['DB_HOST'], port=os.environ['DB_PORT'], dbname=os.environ['DB_NAME'],"
        " user=os.environ['DB_USER'], password=os.environ['DB_PASS']) as db:\n"
        "    print(json.dumps(db.execute(%r).fetchall(), default=str))") % query))


def sidekiq_redis(host, code):
    return on_app_host(host, "client = redis.Redis.from_url(os.environ['REDIS_URL'])\n" + code)


@pytest.fixture(scope="module")
def migrated(web):
    """rails db:migrate as the operator runs it: migrations.env, as the mastodon user, in the checkout."""
    result = web.run("runuser -u mastodon -- bash -c 'set -a; . /etc/mastodon/migrations.env; set +a; "
                     "cd /home/mastodon/live && RAILS_ENV=production /home/mastodon/.rbenv/shims/bundle exec rails "
                     "db:migrate'")
    assert result.rc == 0 and "migrated" in result.stdout, result.stderr
    return web


def sidekiq_instances(host):
    listed = host.run("systemctl list-units --all --plain --no-legend 'mastodon-sidekiq-*@*.service'").stdout
    return sorted(line.split()[0] for line in listed.splitlines())


def test_every_unit_verifies(web):
    units = ["mastodon-web.service", "mastodon-streaming@4000.service", "mastodon-streaming.service"] + [
        "mastodon-sidekiq-%s@1.service" % queue for queue in QUEUES]
    result = web.run("systemd-analyze verify %s" % " ".join(units))
    assert result.rc == 0, result.stderr


@pytest.mark.parametrize("queue", QUEUES)
def test_each_queue_process_listens_to_its_queue_only(web, queue):
    argv, environ = process(web, "mastodon-sidekiq-%s@1.service" % queue)
    unit = next(item for item in UNITS["sidekiq"] if item["queue"] == queue)
    assert argv[-6:] == ["-c", str(unit["concurrency"]), "-q", queue, "-t", str(unit["shutdown_timeout"])]
    stop = web.run("systemctl show -P TimeoutStopUSec mastodon-sidekiq-%s@1.service" % queue).stdout.strip()
    assert stop == "%ds" % unit["stop_timeout"]
    assert environ["DB_POOL"] == str(unit["db_pool"]) and environ["CONCURRENCY"] == str(unit["concurrency"])
    assert environ["LD_PRELOAD"] == "libjemalloc.so.2" and "MALLOC_ARENA_MAX" not in environ
    assert environ["DB_HOST"] == "172.30.42.211" and environ["DB_PORT"] == "5432"


def test_scale_down_leaves_exactly_one_pull_process(web):
    pull = [unit for unit in sidekiq_instances(web) if unit.startswith("mastodon-sidekiq-pull@")]
    assert web.service("mastodon-sidekiq-pull@1.service").is_running
    assert web.service("mastodon-sidekiq-pull@1.service").is_enabled
    for number in (2, 3):
        service = web.service("mastodon-sidekiq-pull@%d.service" % number)
        assert not service.is_running and not service.is_enabled
    running = [unit for unit in pull if web.service(unit).is_running]
    assert running == ["mastodon-sidekiq-pull@1.service"]


def test_every_sidekiq_process_beats_in_redis_with_its_queue_and_concurrency(web):
    """The stand-ins reached Redis with the URL and password the role wrote, and run what the plan says."""
    beats = json.loads(sidekiq_redis(web, (
        "print(json.dumps([json.loads(client.hget(key, 'info')) for key in client.smembers('processes')"
        " if client.exists(key)]))")))
    running = sorted((info["queues"], info["concurrency"]) for info in beats)
    # The side effect left one pull process of the plan's three.
    planned = sorted([([unit["queue"]], unit["concurrency"]) for unit in UNITS["sidekiq"]
                      for _instance in unit["instances"] if unit["queue"] != "pull"] + [(["pull"], 2)])
    assert running == planned


def test_a_stopped_sidekiq_pushes_its_running_job_back_and_it_runs_again(web, migrated):
    """A job longer than the old 15 s stop timeout and than -t: the stop waits -t seconds, Sidekiq pushes the
    job back before systemd would kill it, and the restarted process runs it to its end exactly once."""
    unit, mailers = "mastodon-sidekiq-mailers@1.service", next(item for item in UNITS["sidekiq"]
                                                               if item["queue"] == "mailers")
    jid = "stop-proof-%d" % time.time()
    now = int(time.time() * 1000)  # Sidekiq 8 writes epoch milliseconds
    job = json.dumps({"class": "StandIn::HoldJob", "args": [16], "jid": jid, "queue": "mailers", "retry": True,
                      "created_at": now, "enqueued_at": now})
    sidekiq_redis(web, "client.lpush('queue:mailers', %r)\n"
                       "deadline = time.time() + 10\n"
                       "while client.llen('queue:mailers') and time.time() < deadline: time.sleep(0.2)" % job)
    time.sleep(1)
    started = time.monotonic()
    web.run("systemctl stop %s" % unit)
    stopped_after = time.monotonic() - started
    assert mailers["shutdown_timeout"] <= stopped_after < mailers["stop_timeout"], stopped_after
    assert web.run("systemctl show -P Result %s" % unit).stdout.strip() == "success"
    assert jid in sidekiq_redis(web, "print(client.lrange('queue:mailers', 0, -1))")
    assert sql(web, "SELECT count(*) FROM stand_in_jobs WHERE jid = '%s'" % jid) == [[0]]
    web.run("systemctl start %s" % unit)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not sql(web, "SELECT runs FROM stand_in_jobs WHERE jid = '%s'" % jid):
        time.sleep(1)
    assert sql(web, "SELECT runs FROM stand_in_jobs WHERE jid = '%s'" % jid) == [[1]]


def test_target_holds_every_sidekiq_process(web):
    wants = web.run("systemctl show -P Wants mastodon-sidekiq.target").stdout.split()
    assert sorted(wants) == sorted("mastodon-sidekiq-%s@1.service" % queue for queue in QUEUES)


def test_puma_gets_the_plans_sizing_and_listens_where_nginx_reaches_it(web):
    argv, environ = process(web, "mastodon-web.service")
    for name, value in UNITS["web"]["environment"].items():
        assert environ[name] == value, name
    assert environ["BIND"] == "172.30.42.212" and environ["TRUSTED_PROXY_IP"] == "172.30.42.213"
    assert argv[-3:] == ["puma", "-C", "config/puma.rb"]
    assert web.run("systemctl show -P ExecReload mastodon-web.service").stdout.count("-SIGUSR1") == 1


@pytest.mark.parametrize("unit", ["mastodon-web.service", "mastodon-sidekiq-default@1.service",
                                  "mastodon-streaming@4000.service"])
def test_jemalloc_takes_the_units_settings(web, unit):
    """The unit's LD_PRELOAD and MALLOC_CONF, given to a process that allocates: jemalloc prints the options it
    runs with at exit (stats_print), and says nothing about an option it did not understand."""
    environ = process(web, unit)[1]
    result = web.run("LD_PRELOAD=%s MALLOC_CONF=%s,stats_print:true python3 -c pass"
                     % (environ["LD_PRELOAD"], environ["MALLOC_CONF"]))
    options = result.stdout + result.stderr
    assert "opt.narenas: 2" in options and "opt.background_thread: true" in options, options[:2000]
    assert 'opt.thp: "never"' in options and "Invalid conf" not in options


def test_ruby_processes_get_yjit_as_mastodons_image_does(web):
    environ = process(web, "mastodon-web.service")[1]
    version = tuple(int(part) for part in REPORT["mastodon"]["version"].split("."))
    assert version >= (4, 3) and environ["RUBY_YJIT_ENABLE"] == "1"


def test_redis_urls_carry_the_password_and_the_file_is_private(web):
    env_file = web.file("/etc/mastodon/environment")
    assert (env_file.user, env_file.group, env_file.mode) == ("root", "mastodon", 0o640)
    environ = process(web, "mastodon-web.service")[1]
    assert environ["REDIS_URL"] == "redis://:molecule-test-only@172.30.42.211:6379"
    assert environ["CACHE_REDIS_URL"] == "redis://:molecule-test-only@172.30.42.211:6380"


def test_migrations_settings_bypass_pgbouncer(web):
    content = web.file("/etc/mastodon/migrations.env").content_string
    assert "DB_HOST=172.30.42.211" in content and "DB_PORT=5432" in content


@pytest.mark.parametrize("port", [4000, 4001])
def test_one_streaming_process_per_port(web, port):
    environ = process(web, "mastodon-streaming@%d.service" % port)[1]
    assert environ["PORT"] == str(port) and environ["DB_POOL"] == UNITS["streaming"][0]["environment"]["DB_POOL"]
    limits = web.run("systemctl show -P LimitNOFILE mastodon-streaming@%d.service" % port).stdout.strip()
    assert limits == "65536"


def test_streaming_shim_starts_and_stops_them_all(web):
    wants = web.run("systemctl show -P Wants mastodon-streaming.service").stdout.split()
    assert sorted(unit for unit in wants if unit.startswith("mastodon-")) == [
        "mastodon-streaming@4000.service", "mastodon-streaming@4001.service"]


def exposure(host, path):
    out = host.run("systemd-analyze security --offline=true --no-pager %s" % path).stdout
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))


@pytest.mark.parametrize("unit", ["mastodon-web.service", "mastodon-streaming@.service",
                                  "mastodon-streaming.service", "mastodon-sidekiq-pull@.service"])
def test_units_score_no_worse_than_mastodons_own(web, unit):
    # The production form: the unit file alone, without the container drop-in, under another name.
    copy = "/tmp/score-%s" % unit.replace("mastodon-", "ours-")
    web.run("cp /etc/systemd/system/%s %s" % (unit, copy))
    assert exposure(web, copy) <= 1.5


def test_containers_relax_private_users_only(web):
    assert web.run("systemctl show -P PrivateUsers mastodon-web.service").stdout.strip() == "no"
    dropins = web.run("ls /etc/systemd/system/mastodon-.service.d/").stdout.split()
    assert dropins == ["relax-in-container.conf"]


# --- nginx ---

def test_nginx_runs_with_the_plans_limits(proxy):
    config = proxy.run("nginx -T").stdout
    assert "worker_processes auto;" in config
    assert "worker_connections %d;" % NGINX["worker_connections"] in config
    assert "worker_rlimit_nofile %d;" % NGINX["worker_rlimit_nofile"] in config
    assert "proxy_read_timeout %ds;" % NGINX["proxy_read_timeout"] in config
    worker = proxy.run("pgrep -u www-data -n nginx").stdout.strip()
    limits = proxy.run("grep 'Max open files' /proc/%s/limits" % worker).stdout.split()
    assert limits[3:5] == [str(NGINX["worker_rlimit_nofile"])] * 2


def test_nginx_upstreams_list_every_puma_and_streaming_instance(proxy):
    config = proxy.run("nginx -T").stdout
    web = re.search(r"upstream mastodon_web \{(.*?)\}", config, re.S).group(1)
    streaming = re.search(r"upstream mastodon_streaming \{(.*?)\}", config, re.S).group(1)
    assert re.findall(r"server (\S+) fail_timeout", web) == ["172.30.42.212:3000"]
    assert "least_conn;" in streaming
    assert re.findall(r"server (\S+) fail_timeout", streaming) == ["172.30.42.212:4000", "172.30.42.212:4001"]


def test_requests_through_nginx_reach_puma_and_its_database(proxy):
    result = proxy.run("curl -sf -H 'Host: mastodon.test' http://127.0.0.1/about")
    assert result.rc == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["service"], answer["path"], answer["address"]) == ("web", "/about", "172.30.42.212:3000")
    assert answer["pools"]["primary"]["size"] == int(UNITS["web"]["environment"]["DB_POOL"])


def test_requests_through_nginx_reach_streaming(proxy):
    result = proxy.run("curl -sf -H 'Host: mastodon.test' http://127.0.0.1/api/v1/streaming/health")
    assert (result.rc, result.stdout) == (0, "OK"), result.stderr


def test_a_broken_site_never_reached_the_live_file(proxy):
    site = proxy.file("/etc/nginx/sites-available/mastodon.conf").content_string
    assert "server_name mastodon.test;" in site and "broken" not in site
    assert proxy.service("nginx.service").is_running


def test_nginx_production_unit_scores_below_4(proxy):
    proxy.run("cat /lib/systemd/system/nginx.service /etc/systemd/system/nginx.service.d/hardening.conf "
              "/etc/systemd/system/nginx.service.d/limits.conf > /tmp/score-ours-nginx.service")
    proxy.run("cp /lib/systemd/system/nginx.service /tmp/score-debian-nginx.service")
    ours, debian = exposure(proxy, "/tmp/score-ours-nginx.service"), exposure(proxy, "/tmp/score-debian-nginx.service")
    assert ours < 4.0 < debian
