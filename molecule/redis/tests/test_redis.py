"""Live Redis (or Valkey) state: policies, persistence, a kill -9, eviction and OOM, and the sandbox."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://redis"]

# The collection's own derivation of each user's password (module_utils/redis_users.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / ".rig"))
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import user_password  # noqa: E402

PASSWORD = "molecule-test-only"
PORTS = {"persistent": 6379, "cache": 6380, "sidekiq": 6381}
# What Mastodon's user may never send, and what Mastodon, Sidekiq and streaming do send.
DENIED = ("FLUSHALL", "FLUSHDB", "CONFIG SET maxmemory 1", "CONFIG GET masterauth", "SHUTDOWN NOSAVE",
          "REPLICAOF 127.0.0.1 1", "ACL LIST", "ACL SETUSER intruder on", "BGSAVE",
          "CLIENT KILL TYPE normal")
ALLOWED = (("SET fediscale:probe 1", "OK"), ("GET fediscale:probe", "1"), ("KEYS fediscale:*", "fediscale:probe"),
           ("SCAN 0 MATCH fediscale:* COUNT 1000", "fediscale:probe"), ("UNLINK fediscale:probe", "1"),
           ("CLIENT SETNAME sidekiq", "OK"), ("ROLE", "master"), ("PUBLISH timeline:1 probe", "0"),
           ("EVAL 'return 7' 0", "7"), ("INFO server", "redis_version"))
# The package family the scenario runs (make runs it with each); the inventory reads the same variable.
SERVER = os.environ.get("FEDISCALE_RIG_REDIS_SERVER") or "redis"
OTHER = "valkey" if SERVER == "redis" else "redis"


def cli(host, instance, command, stdin=None, user="fediscale-admin"):
    """redis-cli as one of the instance's users (the collection's admin unless told), or the default user (None)."""
    auth = ("--user %s --pass %s" % (user, user_password(PASSWORD, "redis-a/" + instance, user)) if user
            else "-a %s" % PASSWORD)
    base = "%s-cli -p %d %s --no-auth-warning" % (SERVER, PORTS[instance], auth)
    if stdin is not None:
        return host.run("%s | %s" % (stdin, base))
    return host.run("%s %s" % (base, command))


def config(host, instance, name):
    lines = cli(host, instance, "CONFIG GET %s" % name).stdout.splitlines()
    return lines[1] if len(lines) > 1 else ""


@pytest.mark.parametrize("instance", sorted(PORTS))
def test_instance_runs_as_its_own_unit(host, instance):
    service = host.service("%s-server@%s.service" % (SERVER, instance))
    assert service.is_running and service.is_enabled
    assert cli(host, instance, "PING").stdout.strip() == "PONG"


def test_retired_instance_is_stopped_and_its_data_kept(host):
    service = host.service("%s-server@retired.service" % SERVER)
    assert not service.is_running and not service.is_enabled
    assert not host.file("/etc/%s/%s-retired.conf" % (SERVER, SERVER)).exists
    assert host.file("/var/lib/%s/retired" % SERVER).is_directory


def test_default_instance_is_off(host):
    service = host.service("%s-server.service" % SERVER)
    assert not service.is_running and not service.is_enabled


@pytest.mark.parametrize("instance, setting, value", [
    ("cache", "maxmemory-policy", "allkeys-lru"),
    ("cache", "maxmemory", str(8 * 1024 * 1024)),
    ("cache", "save", ""),
    ("cache", "appendonly", "no"),
    ("persistent", "maxmemory-policy", "noeviction"),
    # 32MB before the converge, which sets it live.
    ("persistent", "maxmemory", str(16 * 1024 * 1024)),
    ("persistent", "appendonly", "yes"),
    ("persistent", "appendfsync", "everysec"),
    ("persistent", "save", ""),
    ("sidekiq", "maxmemory-policy", "noeviction"),
    ("sidekiq", "appendonly", "yes"),
    ("sidekiq", "protected-mode", "yes"),
    ("cache", "bind", "127.0.0.1 -::1"),
])
def test_live_settings(host, instance, setting, value):
    assert config(host, instance, setting) == value


def main_pid(host, instance):
    return host.run("systemctl show -p MainPID --value %s-server@%s" % (SERVER, instance)).stdout.strip()


def pid_before_converge(host, instance):
    lines = host.file("/var/tmp/redis-pids-before-converge").content_string.splitlines()
    return dict(line.split() for line in lines)[instance]


def queued_job(host, instance):
    return cli(host, instance, "LRANGE queue:default 0 -1").stdout.strip()


def test_a_changed_maxmemory_is_applied_live_keeping_the_process_and_its_queue(host):
    assert main_pid(host, "persistent") == pid_before_converge(host, "persistent")
    assert config(host, "persistent", "maxmemory") == str(16 * 1024 * 1024)
    assert queued_job(host, "persistent") == '{"class":"ActivityPub::DeliveryWorker","jid":"prepare-6379"}'


def test_a_setting_read_only_at_start_restarts_the_instance_after_its_aof_is_rewritten(host):
    assert main_pid(host, "sidekiq") != pid_before_converge(host, "sidekiq")
    assert config(host, "sidekiq", "unixsocketperm") == "770"
    assert queued_job(host, "sidekiq") == '{"class":"ActivityPub::DeliveryWorker","jid":"prepare-6381"}'
    log = host.file("/var/log/%s/%s-server-sidekiq.log" % (SERVER, SERVER)).content_string.splitlines()
    # Between the prepare's start and the converge's: an AOF rewrite that finished, then the shutdown.
    starts = [index for index, line in enumerate(log) if "Server initialized" in line]
    window = log[starts[-2]:starts[-1]]
    rewritten = [index for index, line in enumerate(window) if "AOF rewrite" in line and "successfully" in line]
    stopped = [index for index, line in enumerate(window) if "ready to exit" in line.lower()]
    assert rewritten and stopped and rewritten[-1] < stopped[0], "\n".join(window)


def test_the_kernel_is_told_to_over_commit_for_redis_forks(host):
    # A container cannot set its host's kernel: the file is there for the day it runs on a machine.
    assert host.file("/etc/sysctl.d/60-fediscale-mastodon-redis.conf").content_string.split() == [
        "vm.overcommit_memory=1"]


def test_each_instance_has_its_own_files(host):
    dirs = {config(host, instance, "dir") for instance in PORTS}
    assert dirs == {"/var/lib/%s/%s" % (SERVER, instance) for instance in PORTS}


def test_wrong_password_is_refused(host):
    result = host.run("%s-cli -p 6379 -a wrong --no-auth-warning PING" % SERVER)
    assert "WRONGPASS" in result.stdout + result.stderr
    result = host.run("%s-cli -p 6379 PING" % SERVER)
    assert "NOAUTH" in result.stdout + result.stderr


def test_configuration_holding_the_password_is_not_world_readable(host):
    for instance in PORTS:
        conf = host.file("/etc/%s/%s-%s.conf" % (SERVER, SERVER, instance))
        assert (conf.user, conf.group, conf.mode) == ("root", SERVER, 0o640)


@pytest.mark.parametrize("instance", sorted(PORTS))
def test_mastodons_user_may_not_administer_the_instance(host, instance):
    for command in DENIED:
        result = cli(host, instance, command, user="mastodon")
        assert "NOPERM" in result.stdout + result.stderr, (command, result.stdout, result.stderr)
    for command, answer in ALLOWED:
        result = cli(host, instance, command, user="mastodon")
        assert answer in result.stdout and "NOPERM" not in result.stdout + result.stderr, (command, result.stdout)
    assert config(host, instance, "maxmemory-policy") in ("noeviction", "allkeys-lru")
    assert host.service("%s-server@%s.service" % (SERVER, instance)).is_running


@pytest.mark.parametrize("instance", sorted(PORTS))
def test_each_instance_has_its_own_users_and_the_file_only_their_digests(host, instance):
    users = sorted(cli(host, instance, "ACL USERS").stdout.split())
    assert users == ["default", "fediscale-admin", "fediscale-replica", "fediscale-sentinel", "mastodon"]
    content = host.file("/etc/%s/%s-%s.conf" % (SERVER, SERVER, instance)).content_string
    assert "requirepass" not in content and PASSWORD not in content
    for user in users:
        assert user_password(PASSWORD, "redis-a/" + instance, user) not in content
    # Another instance's password for the same user is refused.
    other = "cache" if instance != "cache" else "persistent"
    result = host.run("%s-cli -p %d --user mastodon --pass %s --no-auth-warning PING"
                      % (SERVER, PORTS[instance], user_password(PASSWORD, "redis-a/" + other, "mastodon")))
    assert "WRONGPASS" in result.stdout + result.stderr


def test_the_default_user_is_off_where_no_client_uses_it(host):
    for instance in ("cache", "sidekiq"):
        result = cli(host, instance, "PING", user=None)
        assert "WRONGPASS" in result.stdout + result.stderr, instance


def test_an_instance_set_up_before_the_users_gets_them_live_and_its_client_keeps_working(host):
    """The persistent instance ran with requirepass alone and a client logged in as the default user (prepare):
    the users came live (same process), and the default user stays on for that client, with Mastodon's rights."""
    assert main_pid(host, "persistent") == pid_before_converge(host, "persistent")
    assert host.service("legacy-redis-client").is_running
    assert cli(host, "persistent", "PING", user=None).stdout.strip() == "PONG"
    result = cli(host, "persistent", "FLUSHALL", user=None)
    assert "NOPERM" in result.stdout + result.stderr
    clients = cli(host, "persistent", "CLIENT LIST").stdout
    assert [line for line in clients.splitlines() if " user=default " in line and " cmd=subscribe " in line], clients


def test_the_next_run_after_the_last_default_client_turns_the_default_user_off(host):
    host.run("systemctl stop legacy-redis-client")
    command, env = converge(host)
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"redis-a\s+: ok=\d+\s+changed=1 ", run.stdout), run.stdout[-2000:]
    result = cli(host, "persistent", "PING", user=None)
    assert "WRONGPASS" in result.stdout + result.stderr
    assert main_pid(host, "persistent") == pid_before_converge(host, "persistent")


def wait_for_pong(host, instance, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cli(host, instance, "PING").stdout.strip() == "PONG":
            return
        time.sleep(0.5)
    raise AssertionError("redis %s did not come back" % instance)


def test_persistent_keys_survive_kill_9(host):
    writes = "python3 -c \"print('\\n'.join('SET job:%d payload' % i for i in range(1000)))\""
    assert cli(host, "persistent", None, stdin=writes).rc == 0
    time.sleep(2)  # appendfsync everysec: at most a second of writes is at risk
    unit = "%s-server@persistent" % SERVER
    pid_before = host.run("systemctl show -p MainPID --value %s" % unit).stdout.strip()
    assert host.run("systemctl kill -s KILL %s" % unit).rc == 0
    time.sleep(1)
    wait_for_pong(host, "persistent")
    assert host.run("systemctl show -p MainPID --value %s" % unit).stdout.strip() != pid_before
    assert int(cli(host, "persistent", "EVAL \"return #redis.call('KEYS', 'job:*')\" 0").stdout.strip()) == 1000


def test_cache_evicts_past_maxmemory(host):
    writes = "python3 -c \"print('\\n'.join('SET cache:%d %s' % (i, 'x' * 5000) for i in range(4000)))\""
    result = cli(host, "cache", None, stdin=writes)
    assert "OOM" not in result.stdout
    stats = cli(host, "cache", "INFO stats").stdout
    assert int(re.search(r"evicted_keys:(\d+)", stats).group(1)) > 0
    assert int(cli(host, "cache", "DBSIZE").stdout.strip()) < 4000


def test_persistent_refuses_writes_instead_of_evicting(host):
    writes = "python3 -c \"print('\\n'.join('SET fill:%d %s' % (i, 'x' * 5000) for i in range(6000)))\""
    result = cli(host, "persistent", None, stdin=writes)
    assert "OOM command not allowed" in result.stdout
    stats = cli(host, "persistent", "INFO stats").stdout
    assert int(re.search(r"evicted_keys:(\d+)", stats).group(1)) == 0
    cli(host, "persistent", "EVAL \"for _, k in ipairs(redis.call('KEYS', 'fill:*')) do "
                            "redis.call('DEL', k) end\" 0")


def test_flushing_the_cache_leaves_persistent_data(host):
    assert cli(host, "cache", "FLUSHALL").stdout.strip() == "OK"
    assert int(cli(host, "persistent", "EVAL \"return #redis.call('KEYS', 'job:*')\" 0").stdout.strip()) == 1000


def test_only_private_users_is_relaxed_in_the_container(host):
    show = host.run("systemctl show -p PrivateUsers -p ProtectSystem -p PrivateMounts -p UMask "
                    "-p NoNewPrivileges %s-server@cache" % SERVER).stdout
    assert "PrivateUsers=no" in show
    assert "ProtectSystem=strict" in show and "PrivateMounts=yes" in show
    assert "UMask=0077" in show and "NoNewPrivileges=yes" in show


def exposure(host, path):
    out = host.run("systemd-analyze security --offline=true --no-pager %s" % path).stdout
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))


def test_production_unit_scores_better_than_debians(host):
    # The production form: Debian's template with the hardening drop-in, without the container one.
    # The copies get other names: offline scoring still applies the drop-ins of the unit's own name.
    host.run("cat /lib/systemd/system/{0}-server@.service "
             "/etc/systemd/system/{0}-server@.service.d/hardening.conf > /tmp/score-ours@x.service".format(SERVER))
    host.run("cp /lib/systemd/system/%s-server@.service /tmp/score-debian@x.service" % SERVER)
    ours, debian = exposure(host, "/tmp/score-ours@x.service"), exposure(host, "/tmp/score-debian@x.service")
    # Debian's redis unit scores 1.2 on Debian 12 and 1.1 on Debian 13 (its valkey unit too); the drop-in keeps
    # ours at 1.1.
    assert ours <= debian <= 1.2 and ours <= 1.1


def test_the_server_is_the_family_and_version_planned(host):
    info = dict(line.split(":", 1) for line in cli(host, "cache", "INFO server").stdout.split() if ":" in line)
    if SERVER == "valkey":
        # Valkey tells clients it is Redis 7.2, and its own version apart.
        assert info["redis_version"].startswith("7.2.") and info["valkey_version"].startswith("8.")
    else:
        assert "valkey_version" not in info and int(info["redis_version"].split(".")[0]) >= 7
    assert info["executable"] == "/usr/bin/%s-server" % SERVER


def test_the_other_familys_data_stops_the_role_before_it_changes_anything(host):
    """As when redis_server changes under an instance that holds data."""
    host.run("mkdir -p /var/lib/%s/persistent && touch /var/lib/%s/persistent/dump.rdb" % (OTHER, OTHER))
    before = host.run("find /etc/%s /etc/systemd/system -type f -exec sha256sum {} + | sort" % SERVER).stdout
    try:
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        playbook = Path(__file__).resolve().parents[1] / "converge.yml"
        run = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(playbook),
                              "-i", host.backend.ansible_inventory], env=env, capture_output=True, text=True,
                             timeout=600, check=False)
        output = " ".join((run.stdout + run.stderr).split())
        assert run.returncode != 0
        assert ("redis_server is %s, but /var/lib/%s/persistent holds the %s data of this instance"
                % (SERVER, OTHER, OTHER)) in output, output[-3000:]
        assert "Nothing was changed" in output
        after = host.run("find /etc/%s /etc/systemd/system -type f -exec sha256sum {} + | sort" % SERVER).stdout
        assert after == before
    finally:
        host.run("rm -rf /var/lib/%s/persistent" % OTHER)


def converge(host, *extra):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    playbook = Path(__file__).resolve().parents[1] / "converge.yml"
    return [str(Path(sys.executable).with_name("ansible-playbook")), str(playbook),
            "-i", host.backend.ansible_inventory] + list(extra), env


@pytest.mark.skipif(SERVER != "redis", reason="the role's steps are the same for either family")
def test_a_run_killed_part_way_converges_on_the_next_and_loses_nothing(host):
    """Runs that resize every instance, killed as they write the instances' files and as they apply the settings
    live; then a whole run: every unit runs with its file's settings, the process and the queued job are the
    same. The kills follow the run's own output, so a fast machine cannot finish a run before its kill."""
    pid = main_pid(host, "persistent")
    job = queued_job(host, "persistent")
    for task, size in (("Write each instance's configuration", 24), ("Apply each instance's settings live", 40)):
        resized = {"redis_instances": [
            {"name": "persistent", "purpose": "persistent", "port": 6379, "maxmemory": "%dMB" % size},
            {"name": "cache", "purpose": "cache", "port": 6380, "maxmemory": "%dMB" % (size // 2)},
            {"name": "sidekiq", "purpose": "sidekiq", "port": 6381}]}
        command, env = converge(host, "-e", json.dumps(resized))
        # A session of its own: the kill takes every process the run started (mitogen's too).
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
        for line in run.stdout:
            if "TASK [fediscale.mastodon.redis : %s" % task in line:
                break
        # Into the task, which loops over the instances.
        time.sleep(0.5)
        os.killpg(run.pid, 9)
        run.stdout.close()
        assert run.wait() == -9, "the run ended before %s" % task
    for attempt in ("converges", "changes nothing"):
        command, env = converge(host)
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert run.returncode == 0, (attempt, run.stdout[-3000:])
    assert re.search(r"redis-a\s+: ok=\d+\s+changed=0 ", run.stdout), run.stdout[-2000:]
    for instance in PORTS:
        assert host.service("%s-server@%s.service" % (SERVER, instance)).is_running, instance
    assert config(host, "persistent", "maxmemory") == str(16 * 1024 * 1024)
    assert config(host, "cache", "maxmemory") == str(8 * 1024 * 1024)
    assert main_pid(host, "persistent") == pid and queued_job(host, "persistent") == job
