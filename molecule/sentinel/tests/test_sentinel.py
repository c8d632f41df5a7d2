"""Live Redis Sentinel: one master and two replicas, three sentinels that agree, a failover the role respects.

Tests run in file order; the failover comes last.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

# The collection's own derivation of each user's password (module_utils/redis_users.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / ".rig"))
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import user_password  # noqa: E402

SCENARIO = Path(__file__).resolve().parents[1]
GROUP_VARS = yaml.safe_load((SCENARIO / "group_vars" / "redis.yml").read_text())
PASSWORD = GROUP_VARS["redis_password"]
# The members of set mastodon share their users; sentinel-a's cache (6380) is in no set.
SCOPES = {6379: "set:mastodon", 6380: "sentinel-a/cache"}
MASTODON = ("mastodon", user_password(PASSWORD, SCOPES[6379], "mastodon"))
SENTINEL_ADMIN = ("fediscale-admin", GROUP_VARS["redis_sentinel_admin_password"])
SENTINEL_MASTODON = ("mastodon", GROUP_VARS["redis_sentinel_mastodon_password"])
DOWN_AFTER_MS = GROUP_VARS["mastodon_redis_sentinel_down_after_ms"]
ADDRESSES = {name: yaml.safe_load((SCENARIO / "host_vars" / ("%s.yml" % name)).read_text())["mastodon_address"]
             for name in ("sentinel-a", "sentinel-b", "sentinel-c")}
NAMES = sorted(ADDRESSES)
PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
MARKER = "# Written once by fediscale.mastodon.redis; Redis Sentinel rewrites it from here on."
# The package family: make runs the scenario with each; group_vars read the same variable.
SERVER = os.environ.get("FEDISCALE_RIG_REDIS_SERVER") or "redis"

testinfra_hosts = ["ansible://sentinel-a"]
# What the collection's modules decide alone (which master to follow, when to fail over before a restart) is the
# same with either family; the Redis run proves it, the Valkey run what the servers do.
REDIS_RUN_ONLY = pytest.mark.skipif(SERVER == "valkey", reason="the modules' own logic: proven with Redis")


@pytest.fixture(scope="module")
def hosts(host):
    inventory = host.backend.ansible_inventory
    return {name: host.get_host("ansible://%s" % name, ansible_inventory=inventory) for name in NAMES}


def cli(host, command, port=6379, password=True, user=None, address=None):
    """redis-cli on ``host``: as the instance's admin user, as ``user`` (name, password), or without credentials."""
    auth = ""
    if password and not user and port in SCOPES:
        auth = "--user fediscale-admin --pass %s --no-auth-warning " % user_password(PASSWORD, SCOPES[port], "fediscale-admin")
    if user:
        auth = "--user %s --pass %s --no-auth-warning " % user
    target = "-h %s " % address if address else ""
    return host.run("%s-cli %s-p %d %s%s" % (SERVER, target, port, auth, command))


def replication_in_file(host):
    """The instance's file names a master (its user lines name REPLICAOF as a command, which is not that)."""
    content = host.file("/etc/%s/%s-persistent.conf" % (SERVER, SERVER)).content_string
    return re.search(r"^(replicaof|slaveof) ", content, re.M)


def role(host):
    lines = cli(host, "ROLE").stdout.split()
    return lines[0], (lines[1] + ":" + lines[2]) if lines[0] == "slave" else None


def sentinel_master(host):
    return ":".join(cli(host, "SENTINEL GET-MASTER-ADDR-BY-NAME mastodon", port=26379, password=False).stdout.split())


def sentinel_masters(host):
    """SENTINEL MASTERS as {name: {field: value}}."""
    lines = cli(host, "SENTINEL MASTERS", port=26379, user=SENTINEL_ADMIN).stdout.splitlines()
    masters, current = {}, {}
    for key, value in zip(lines[::2], lines[1::2]):
        if key == "name":
            current = masters.setdefault(value, {})
        current[key] = value
    return masters


def master_host(hosts):
    masters = [name for name in NAMES if role(hosts[name])[0] == "master"]
    assert len(masters) == 1, masters
    return masters[0]


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError("after %d s: %s" % (seconds, what))


def test_the_first_host_is_master_and_the_others_replicate_it(hosts):
    assert master_host(hosts) == "sentinel-a"
    for name in ("sentinel-b", "sentinel-c"):
        assert role(hosts[name]) == ("slave", ADDRESSES["sentinel-a"] + ":6379")
        info = cli(hosts[name], "INFO replication").stdout
        assert "master_link_status:up" in info


def test_every_sentinel_monitors_the_set_alike_and_nothing_else(hosts):
    # Sentinels find each other through hello messages on the master, every 2 s.
    wait_for(lambda: all(sentinel_masters(hosts[name]).get("mastodon", {}).get("num-other-sentinels") == "2"
                         for name in NAMES), 30, "every sentinel knows the other two")
    for name in NAMES:
        masters = sentinel_masters(hosts[name])
        # sentinel-c ran Debian's sample monitor "mymaster" before the converge.
        assert sorted(masters) == ["mastodon"], name
        entry = masters["mastodon"]
        assert (entry["ip"], entry["port"], entry["flags"]) == (ADDRESSES["sentinel-a"], "6379", "master")
        assert (entry["quorum"], entry["down-after-milliseconds"]) == ("2", str(DOWN_AFTER_MS))
        assert (entry["num-slaves"], entry["num-other-sentinels"]) == ("2", "2")


def test_replicas_refuse_writes(hosts):
    assert "READONLY" in cli(hosts["sentinel-b"], "SET job:x 1").stdout


def test_an_instance_outside_the_set_is_left_alone(hosts):
    host = hosts["sentinel-a"]
    assert cli(host, "ROLE", port=6380).stdout.split()[0] == "master"
    assert "connected_slaves:0" in cli(host, "INFO replication", port=6380).stdout
    assert cli(host, "CONFIG GET masterauth", port=6380).stdout.splitlines()[1:] == [""]


def test_replication_is_never_written_to_a_file(hosts):
    for name in NAMES:
        assert not replication_in_file(hosts[name])
        result = cli(hosts[name], "CONFIG REWRITE")
        assert "Read-only file system" in result.stdout + result.stderr, name


def test_the_sentinel_owns_its_configuration_and_no_other(hosts):
    for name in NAMES:
        # /etc/redis is root's: no Redis process can replace an instance's file (Debian makes it redis's, 2770).
        etc = hosts[name].file("/etc/%s" % SERVER)
        assert (etc.user, etc.group, etc.mode) == ("root", SERVER, 0o750), name
        assert hosts[name].run("dpkg-statoverride --list /etc/%s" % SERVER).stdout.split() == [
            "root", SERVER, "750", "/etc/%s" % SERVER]
        own = hosts[name].file("/etc/%s/sentinel" % SERVER)
        assert (own.user, own.group, own.mode) == (SERVER, SERVER, 0o750), name
        # Where Debian's unit read it (sentinel-b's state was there, as an older role left it): no secret left.
        former = hosts[name].file("/etc/%s/sentinel.conf" % SERVER).content_string
        assert former.startswith("# Not read:") and len(former.splitlines()) == 1, name
        conf = hosts[name].file("/etc/%s/sentinel/sentinel.conf" % SERVER)
        # 0640 as written; Sentinel's own rewrites, under UMask=0077, leave 0600.
        assert (conf.user, conf.group) == (SERVER, SERVER) and conf.mode in (0o640, 0o600)
        lines = conf.content_string.splitlines()
        assert lines[0] == MARKER
        assert "bind 127.0.0.1 -::1 %s" % ADDRESSES[name] in lines and "port 26379" in lines
        assert "sentinel monitor mastodon %s 6379 2" % ADDRESSES["sentinel-a"] in lines
        # Its users as digests; only sentinel-pass, which it sends the other sentinels, is in clear.
        assert any(re.match(r"user fediscale-admin on .*#[0-9a-f]{64} ", line) for line in lines), name
        assert any(re.match(r"user mastodon on .*#[0-9a-f]{64} ", line) for line in lines), name
        assert [line for line in lines if SENTINEL_ADMIN[1] in line] == [
            "sentinel sentinel-pass %s" % SENTINEL_ADMIN[1]], name
        assert SENTINEL_MASTODON[1] not in conf.content_string, name


def test_every_sentinel_has_the_users_and_no_other(hosts):
    # sentinel-b started as an older role left it: no users, the default user allowed everything.
    for name in NAMES:
        listed = cli(hosts[name], "ACL LIST", port=26379, user=SENTINEL_ADMIN).stdout.splitlines()
        users = sorted(line.split()[1] for line in listed)
        assert users == ["default", "fediscale-admin", "mastodon"], name
        login = cli(hosts[name], "SENTINEL CONFIG GET sentinel-user", port=26379, user=SENTINEL_ADMIN).stdout.split()
        assert login == ["sentinel-user", "fediscale-admin"], name


REFUSED_TO_ASKERS = ("SENTINEL MONITOR rogue 172.30.42.99 6379 2", "SENTINEL REMOVE mastodon",
                     "SENTINEL SET mastodon quorum 1", "SENTINEL FAILOVER mastodon", "SENTINEL RESET mastodon",
                     "SENTINEL CONFIG SET announce-ip 172.30.42.99", "SENTINEL DEBUG", "ACL LIST",
                     "ACL SETUSER default on nopass +@all", "SHUTDOWN", "PUBLISH +switch-master x")


def test_a_client_on_the_network_may_only_ask_the_sentinels(hosts):
    """As an outsider on the same network would: from another host, without credentials or as Mastodon."""
    outsider = hosts["sentinel-c"]
    target = ADDRESSES["sentinel-a"]
    for user in (None, SENTINEL_MASTODON):
        for command in REFUSED_TO_ASKERS:
            answer = cli(outsider, command, port=26379, password=False, user=user, address=target).stdout
            assert answer.startswith("NOPERM"), (user, command, answer)
        master = cli(outsider, "SENTINEL GET-MASTER-ADDR-BY-NAME mastodon", port=26379, password=False, user=user,
                     address=target).stdout.split()
        assert master == [ADDRESSES["sentinel-a"], "6379"], user
        assert len(cli(outsider, "SENTINEL SENTINELS mastodon", port=26379, password=False, user=user,
                       address=target).stdout.split()) > 4, user
    wrong = cli(outsider, "PING", port=26379, password=False, user=("mastodon", "guess"), address=target)
    assert "WRONGPASS" in wrong.stdout + wrong.stderr


def test_members_and_sentinels_log_in_to_the_master_as_their_own_users(hosts):
    master = hosts[master_host(hosts)]
    clients = cli(master, "CLIENT LIST").stdout.splitlines()
    replicas = [line for line in clients if re.search(r" flags=S ", line)]
    assert len(replicas) == 2 and all(" user=fediscale-replica " in line for line in replicas), clients
    sentinels = [line for line in clients if re.search(r" name=sentinel-", line)]
    assert sentinels and all(" user=fediscale-sentinel " in line for line in sentinels), clients
    assert not [line for line in clients if " user=default " in line], clients
    for name in NAMES:
        content = hosts[name].file("/etc/%s/%s-persistent.conf" % (SERVER, SERVER)).content_string
        assert "masteruser fediscale-replica" in content.splitlines(), name


def test_an_outsider_gets_nothing_from_the_members_and_mastodon_cannot_take_them_over(hosts):
    """From another host on the network: no credentials, the old shared password, then Mastodon's own user."""
    outsider = hosts["sentinel-c"]
    for name in NAMES:
        target = "-h %s -p 6379" % ADDRESSES[name]
        anonymous = outsider.run("%s-cli %s PING" % (SERVER, target))
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr, name
        shared = outsider.run("%s-cli %s -a %s --no-auth-warning PING" % (SERVER, target, PASSWORD))
        assert "WRONGPASS" in shared.stdout + shared.stderr, name
        for command in ("REPLICAOF %s 6380" % ADDRESSES["sentinel-c"], "CONFIG SET masterauth x", "FLUSHALL",
                        "ACL SETUSER default on nopass +@all", "SHUTDOWN NOSAVE", "FAILOVER"):
            result = outsider.run("%s-cli %s --user %s --pass %s --no-auth-warning %s"
                                  % (SERVER, target, *MASTODON, command))
            assert "NOPERM" in result.stdout + result.stderr, (name, command, result.stdout)
        # The replicas' user replicates and does nothing else.
        replica = outsider.run("%s-cli %s --user fediscale-replica --pass %s --no-auth-warning GET x"
                               % (SERVER, target, user_password(PASSWORD, SCOPES[6379], "fediscale-replica")))
        assert "NOPERM" in replica.stdout + replica.stderr, name


def test_the_sentinel_listens_on_its_private_address(hosts):
    host = hosts["sentinel-b"]
    for name in NAMES:
        assert host.run("%s-cli -h %s -p 26379 PING" % (SERVER, ADDRESSES[name])).stdout.strip() == "PONG"


def exposure(host, path):
    out = host.run("systemd-analyze security --offline=true --no-pager %s" % path).stdout
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))


def test_the_production_sentinel_unit_scores_better_than_debians(hosts):
    host = hosts["sentinel-a"]
    # The production form: Debian's unit with the hardening drop-in, not the container one.
    host.run("cat /lib/systemd/system/{0}-sentinel.service /etc/systemd/system/{0}-sentinel.service.d/hardening.conf "
             "/etc/systemd/system/{0}-sentinel.service.d/config.conf > /tmp/score-ours.service".format(SERVER))
    host.run("cp /lib/systemd/system/%s-sentinel.service /tmp/score-debian.service" % SERVER)
    ours, debian = exposure(host, "/tmp/score-ours.service"), exposure(host, "/tmp/score-debian.service")
    # Debian's unit scores 1.2 on Debian 12 and 1.1 on Debian 13; the drop-in keeps ours at 1.1 on both.
    assert ours <= debian <= 1.2 and ours <= 1.1
    show = host.run("systemctl show -p PrivateUsers -p ProtectSystem -p PrivateMounts %s-sentinel" % SERVER).stdout
    assert "PrivateUsers=no" in show and "ProtectSystem=strict" in show and "PrivateMounts=yes" in show
    paths = host.run("systemctl show -p ReadWritePaths -p ExecStart %s-sentinel" % SERVER).stdout
    assert "/etc/%s/sentinel/sentinel.conf" % SERVER in paths
    assert re.search(r"ReadWritePaths=.*/etc/%s/sentinel\b" % SERVER, paths)
    assert not re.search(r"ReadWritePaths=.*/etc/%s( |$)" % SERVER, paths, re.M)
    # One relaxation, under its current name (sentinel-b had an older role's).
    for name in NAMES:
        dropins = hosts[name].run("ls /etc/systemd/system/%s-sentinel.service.d" % SERVER).stdout.split()
        assert "relax-in-container.conf" in dropins and "container.conf" not in dropins, (name, dropins)
    # The sentinel's own user cannot write where the instances' files are.
    assert host.run("runuser -u %s -- touch /etc/%s/probe" % (SERVER, SERVER)).rc != 0


CLIENT = """
import sys
import redis
sentinels, master_user, password, user, sentinel_password = sys.argv[1].split(","), *sys.argv[2:6]
for address in sentinels:
    try:
        sentinel = redis.Redis(host=address, port=26379, username=user, password=sentinel_password, socket_timeout=2)
        host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mastodon")
        break
    except redis.ConnectionError:
        continue
master = redis.Redis(host=host.decode(), port=int(port), username=master_user, password=password, socket_timeout=2)
master.set("probe", "through the sentinels")
print(master.get("probe").decode(), "%s:%d" % (host.decode(), int(port)))
"""


def sentinel_client(host):
    """What Mastodon does with REDIS_SENTINELS: log in to a sentinel as REDIS_SENTINEL_USERNAME, ask it for the
    master (SENTINEL GET-MASTER-ADDR-BY-NAME, as redis-client and ioredis do), then write to it."""
    script = host.run("mktemp").stdout.strip()
    host.run("cat > %s <<'PY'\n%sPY" % (script, CLIENT))
    return host.run("python3 %s %s %s %s %s %s" % (script, ",".join(ADDRESSES[name] for name in NAMES), *MASTODON,
                                                   *SENTINEL_MASTODON))


def test_a_client_finds_the_master_through_the_sentinels(hosts):
    result = sentinel_client(hosts["sentinel-c"])
    assert result.rc == 0, result.stderr
    assert result.stdout.split() == ["through", "the", "sentinels", ADDRESSES["sentinel-a"] + ":6379"]


def converge(host):
    """The role's converge again; -v shows what a task that changed something did."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run([PLAYBOOK, "-v", str(SCENARIO / "converge.yml"), "-i", host.backend.ansible_inventory],
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def changed_tasks(stdout):
    """The tasks of a run that changed something, with the hosts and the results."""
    tasks, task, changed = [], None, None
    for line in stdout.splitlines():
        if line.startswith("TASK [") or line.startswith("PLAY RECAP"):
            task, changed = line, None
        elif line.startswith("changed: ["):
            changed = "%s %s" % (task, line)
            tasks.append(changed)
        elif changed is not None and line.strip():
            tasks[-1] += " " + line.strip()
    return tasks


def assert_nothing_changed(run):
    recap = run.stdout[run.stdout.rindex("PLAY RECAP"):]
    assert re.findall(r"changed=(\d+)", recap) == ["0", "0", "0"], changed_tasks(run.stdout)


@REDIS_RUN_ONLY
def test_a_sentinel_that_names_an_unplanned_master_stops_the_role_and_nothing_follows_it(host, hosts):
    """As after someone with the admin password (or an older, open sentinel) pointed one sentinel elsewhere:
    here at sentinel-a's cache, a Redis that is not a member of the set."""
    master = master_host(hosts)
    rogue = "%s 6380" % ADDRESSES["sentinel-a"]
    hijacked = hosts["sentinel-b"]
    for command in ("SENTINEL REMOVE mastodon", "SENTINEL MONITOR mastodon %s 2" % rogue):
        assert cli(hijacked, command, port=26379, user=SENTINEL_ADMIN).stdout.strip() == "OK"
    roles = {name: role(hosts[name]) for name in NAMES}

    run = converge(host)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    message = "Sentinel 127.0.0.1:26379, set mastodon: the master this sentinel monitors: %s:6380 is not one of " \
              "its planned members (%s). Nothing was changed." % (
                  ADDRESSES["sentinel-a"], ", ".join("%s:6379" % ADDRESSES[name] for name in NAMES))
    # Ansible folds long messages over several lines.
    assert message in " ".join(output.split()), output[-3000:]
    assert re.search(r"fatal: \[sentinel-b\]", output) and not re.search(r"fatal: \[sentinel-[ac]\]", output)
    assert {name: role(hosts[name]) for name in NAMES} == roles
    assert cli(hijacked, "SENTINEL GET-MASTER-ADDR-BY-NAME mastodon", port=26379).stdout.split() == rogue.split()

    # The recovery the message gives, at the master the other sentinels still name.
    for command in ("SENTINEL REMOVE mastodon", "SENTINEL MONITOR mastodon %s 6379 2" % ADDRESSES[master],
                    "SENTINEL SET mastodon down-after-milliseconds %d" % DOWN_AFTER_MS,
                    "SENTINEL SET mastodon auth-user fediscale-sentinel auth-pass %s"
                    % user_password(PASSWORD, SCOPES[6379], "fediscale-sentinel")):
        assert cli(hijacked, command, port=26379, user=SENTINEL_ADMIN).stdout.strip() == "OK"
    wait_for(lambda: sentinel_masters(hijacked)["mastodon"].get("num-slaves") == "2"
             and sentinel_masters(hijacked)["mastodon"].get("num-other-sentinels") == "2", 30,
             "sentinel-b knows the replicas and the other sentinels again")


def test_failover_keeps_the_data_and_the_role_does_not_undo_it(host, hosts):
    old = master_host(hosts)
    writes = "python3 -c \"print('\\n'.join('RPUSH queue:default job%d' % i for i in range(1000)))\""
    assert hosts[old].run("%s | %s-cli --user %s --pass %s --no-auth-warning > /dev/null"
                          % (writes, SERVER, *MASTODON)).rc == 0
    assert cli(hosts[old], "WAIT 2 5000").stdout.strip() == "2"

    assert hosts[old].run("systemctl stop %s-server@persistent" % SERVER).rc == 0
    others = [name for name in NAMES if name != old]
    # Down after DOWN_AFTER_MS, then an election and a promotion.
    wait_for(lambda: len({sentinel_master(hosts[name]) for name in others}) == 1
             and sentinel_master(hosts[others[0]]) != ADDRESSES[old] + ":6379", 60, "the sentinels name a new master")
    new = next(name for name in NAMES if ADDRESSES[name] + ":6379" == sentinel_master(hosts[others[0]]))
    wait_for(lambda: role(hosts[new])[0] == "master", 30, "%s promoted" % new)
    assert cli(hosts[new], "LLEN queue:default").stdout.strip() == "1000"
    assert sentinel_client(hosts[old]).stdout.split()[-1] == ADDRESSES[new] + ":6379"

    # The old master comes back as a master with its own file; the sentinels make it a replica.
    assert hosts[old].run("systemctl start %s-server@persistent" % SERVER).rc == 0
    wait_for(lambda: role(hosts[old]) == ("slave", ADDRESSES[new] + ":6379"), 60, "%s follows %s" % (old, new))
    wait_for(lambda: "master_link_status:up" in cli(hosts[old], "INFO replication").stdout, 30, "link up")
    assert cli(hosts[old], "LLEN queue:default").stdout.strip() == "1000"

    # A second run of the role agrees with Sentinel: nothing changes and the master stays where it is.
    run = converge(host)
    assert run.returncode == 0, run.stdout[-3000:]
    assert_nothing_changed(run)
    assert master_host(hosts) == new
    for name in NAMES:
        assert sentinel_master(hosts[name]) == ADDRESSES[new] + ":6379"
        assert not replication_in_file(hosts[name])


def main_pid(host):
    return host.run("systemctl show -p MainPID --value %s-server@persistent" % SERVER).stdout.strip()


@REDIS_RUN_ONLY
def test_a_restart_the_master_needs_comes_after_a_failover_and_loses_no_write(host, hosts):
    """A setting Redis reads only at start changes on the master, as when an older configuration is upgraded."""
    old = master_host(hosts)
    conf = "/etc/%s/%s-persistent.conf" % (SERVER, SERVER)
    assert hosts[old].run("sed -i 's/^unixsocketperm .*/unixsocketperm 700/' %s" % conf).rc == 0
    # Back within a second, long before the sentinels would call it down.
    assert hosts[old].run("systemctl restart %s-server@persistent" % SERVER).rc == 0
    # Connected is not enough: after the restart each replica syncs in full first, and acknowledges no write until
    # it is online.
    wait_for(lambda: cli(hosts[old], "INFO replication").stdout.count("state=online") == 2, 60, "replicas online")
    assert role(hosts[old])[0] == "master"
    writes = "python3 -c \"print('\\n'.join('RPUSH queue:default late%d' % i for i in range(1000)))\""
    assert hosts[old].run("%s | %s-cli --user %s --pass %s --no-auth-warning > /dev/null"
                          % (writes, SERVER, *MASTODON)).rc == 0
    assert cli(hosts[old], "WAIT 2 5000").stdout.strip() == "2"
    pid = main_pid(hosts[old])

    run = converge(host)
    assert run.returncode == 0, run.stdout[-3000:]

    new = master_host(hosts)
    assert new != old and main_pid(hosts[old]) != pid
    assert cli(hosts[old], "CONFIG GET unixsocketperm").stdout.split()[-1] == "770"
    for name in NAMES:
        assert sentinel_master(hosts[name]) == ADDRESSES[new] + ":6379"
    assert cli(hosts[new], "LLEN queue:default").stdout.strip() == "2000"
    wait_for(lambda: role(hosts[old]) == ("slave", ADDRESSES[new] + ":6379"), 60, "%s follows %s" % (old, new))
