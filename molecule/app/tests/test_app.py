"""The app tier, live: units, their environment, scale-down, nginx limits and upstreams, sandbox scores.

Mastodon's processes are test stand-ins (molecule/shared/files/stand-in.py) that connect to the database host's
PostgreSQL and Redis as Mastodon does, from the environment the roles wrote.
"""

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

# The collection's own derivation of each Redis user's password (module_utils/redis_users.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / ".rig"))
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import user_password  # noqa: E402

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


@pytest.fixture(scope="module")
def bucket(host):
    """The object storage on app-media (an nginx standing in for S3)."""
    return host.get_host("ansible://app-media", ansible_inventory=host.backend.ansible_inventory)


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
    # Mastodon's own user, with each instance's own password (module_utils/redis_users.py).
    for name, instance, port in (("REDIS_URL", "persistent", 6379), ("CACHE_REDIS_URL", "cache", 6380)):
        password = user_password("molecule-test-only", "app-db/" + instance, "mastodon")
        assert environ[name] == "redis://mastodon:%s@172.30.42.211:%d" % (password, port)
    assert ":molecule-test-only@" not in env_file.content_string


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
              "/etc/systemd/system/nginx.service.d/limits.conf /etc/systemd/system/nginx.service.d/media-cache.conf "
              "> /tmp/score-ours-nginx.service")
    proxy.run("cp /lib/systemd/system/nginx.service /tmp/score-debian-nginx.service")
    ours, debian = exposure(proxy, "/tmp/score-ours-nginx.service"), exposure(proxy, "/tmp/score-debian-nginx.service")
    assert ours < 4.0 < debian


# Media: uploads go to the bucket, nginx serves them at the alias host through its cache.

MEDIA = REPORT["nginx"]["app-proxy"]["media"]


def media_get(proxy, path, *options):
    """A GET of the media host through nginx: status, headers (lower-case names) and body."""
    result = proxy.run("curl -s -D /dev/stderr %s -H 'Host: files.mastodon.test' http://127.0.0.1%s"
                       % (" ".join(options), path))
    lines = result.stderr.replace("\r", "").split("\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, result.stdout


def origin_log(bucket, path):
    return [line for line in bucket.file("/var/log/nginx/origin.log").content_string.splitlines()
            if " %s " % path in line]


def test_units_read_the_buckets_settings_and_credentials_from_the_private_file(web):
    _argv, environ = process(web, "mastodon-web.service")
    assert {name: environ.get(name) for name in ("S3_ENABLED", "S3_BUCKET", "S3_ENDPOINT", "S3_PROTOCOL",
                                                 "S3_ALIAS_HOST", "AWS_ACCESS_KEY_ID")} == {
        "S3_ENABLED": "true", "S3_BUCKET": "mastodon-media", "S3_ENDPOINT": "http://172.30.42.214:9000",
        "S3_PROTOCOL": "http", "S3_ALIAS_HOST": "files.mastodon.test", "AWS_ACCESS_KEY_ID": "molecule-access-key"}
    environment = web.file("/etc/mastodon/environment")
    assert environment.mode == 0o640 and "AWS_SECRET_ACCESS_KEY=molecule-test-only-s3-secret" in \
        environment.content_string
    assert "S3_" not in web.file("/home/mastodon/live/.env.production").content_string


def test_an_upload_lands_in_the_bucket_and_nginx_serves_it_cached(proxy, bucket):
    result = proxy.run("head -c 20000 /dev/urandom > /tmp/upload.bin && curl -sf -H 'Host: mastodon.test' "
                       "--data-binary @/tmp/upload.bin http://127.0.0.1/api/v2/media")
    assert result.rc == 0, result.stderr
    url = json.loads(result.stdout)["url"]
    assert url.startswith("http://files.mastodon.test/media_attachments/files/")
    path = url[len("http://files.mastodon.test"):]
    # Puma put it at the endpoint's bucket, path style, with the access key of the environment file.
    [put] = origin_log(bucket, "/mastodon-media" + path)
    assert put.startswith("PUT ") and " 201 " in put and "Credential=molecule-access-key/" in put
    uploaded = proxy.run("sha256sum < /tmp/upload.bin").stdout

    status, headers, _body = media_get(proxy, path, "-o /tmp/first.bin", "-H 'Cookie: session=client-secret'",
                                       "-H 'Authorization: Bearer client-token'")
    assert (status, headers["x-cache-status"]) == (200, ["MISS"])
    status, headers, _body = media_get(proxy, path, "-o /tmp/second.bin")
    assert (status, headers["x-cache-status"]) == (200, ["HIT"])
    assert proxy.run("sha256sum < /tmp/first.bin").stdout == proxy.run("sha256sum < /tmp/second.bin").stdout \
        == uploaded
    # The provider's headers and cookies stay behind nginx; the client's credentials and cookies never reach it.
    assert not {"set-cookie", "x-amz-request-id", "x-amz-id-2"} & set(headers)
    assert headers["access-control-allow-origin"] == ["*"]
    [get] = [line for line in origin_log(bucket, "/mastodon-media" + path) if line.startswith("GET ")]
    assert 'auth="-" cookie="-"' in get  # nginx logs an absent header as -


def test_the_bucket_is_never_listed_and_takes_no_writes_through_nginx(proxy):
    assert media_get(proxy, "/")[0] == 404
    assert media_get(proxy, "/media_attachments/x.bin", "-X PUT --data x")[0] == 403


def test_a_stale_object_is_served_while_the_bucket_is_down(proxy, bucket):
    bucket.run("mkdir -p /srv/s3/mastodon-media/short-lived && echo stale-proof > "
               "/srv/s3/mastodon-media/short-lived/object.txt")
    assert media_get(proxy, "/short-lived/object.txt")[1]["x-cache-status"] == ["MISS"]
    time.sleep(2)  # the origin said max-age=1: the cached copy is stale now
    assert bucket.run("systemctl stop nginx.service").rc == 0
    try:
        status, headers, body = media_get(proxy, "/short-lived/object.txt")
        assert (status, headers["x-cache-status"], body) == (200, ["STALE"], "stale-proof\n")
        assert media_get(proxy, "/never-cached.txt")[0] == 502
    finally:
        assert bucket.run("systemctl start nginx.service").rc == 0


def test_simultaneous_misses_make_one_request_to_the_bucket(proxy, bucket):
    # 192 kB at the origin's 64 kB/s: about 3 s, within proxy_cache_lock_timeout's 5 s.
    bucket.run("mkdir -p /srv/s3/mastodon-media/slow && head -c 196608 /dev/urandom > "
               "/srv/s3/mastodon-media/slow/video.bin")
    result = proxy.run("for n in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -w '%{http_code}\\n' "
                       "-H 'Host: files.mastodon.test' http://127.0.0.1/slow/video.bin & done; wait")
    assert result.stdout.split() == ["200"] * 8
    assert len(origin_log(bucket, "/mastodon-media/slow/video.bin")) == 1


def test_the_cache_is_sized_and_placed_by_the_plan(proxy):
    config = proxy.run("nginx -T").stdout
    assert "proxy_cache_path %s levels=1:2 keys_zone=mastodon_media:%s max_size=%s inactive=%s" % (
        MEDIA["cache_path"], MEDIA["cache_keys_zone"], MEDIA["cache_max_size"], MEDIA["cache_inactive"]) in config
    cache = proxy.file(MEDIA["cache_path"])
    assert (cache.user, cache.mode) == ("www-data", 0o700)
    assert int(proxy.run("find %s -type f | wc -l" % MEDIA["cache_path"]).stdout) >= 2
