"""playbooks/plan.yml run as users run it: ansible-playbook fediscale.mastodon.plan -i INVENTORY."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import COLLECTIONS_ROOT, ROOT

PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))


def run_plan(inventory, tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_HOST_KEY_CHECKING="False")
    result = subprocess.run(
        [PLAYBOOK, "fediscale.mastodon.plan", "-i", str(inventory),
         "-e", "mastodon_plan_report_dir=%s" % (tmp_path / "report")],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    return result


def run_site(inventory, tmp_path):
    """site.yml as users run it: (its exit code, its output)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOST_KEY_CHECKING="False")
    result = subprocess.run([PLAYBOOK, "fediscale.mastodon.site", "-i", str(inventory)], env=env,
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    return result.returncode, result.stdout + result.stderr


def copy_inventory(name, tmp_path):
    target = tmp_path / "inventory"
    shutil.copytree(ROOT / "inventories" / name, target)
    return target


def edit_yaml(path, change):
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_nora_prints_185_of_200_with_15_loose(tmp_path):
    result = run_plan(ROOT / "inventories" / "nora", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "185 of 200 max_connections, 15 free" in result.stdout
    report = json.loads((tmp_path / "report" / "budget.json").read_text())
    assert (report["servers"]["primary"]["total"], report["servers"]["primary"]["free"]) == (185, 15)
    assert "| primary | db1 | 185 | 200 |" in (tmp_path / "report" / "budget.md").read_text()


@pytest.mark.parametrize("name", ["example", "hachyderm"])
def test_shipped_inventories_plan_clean(name, tmp_path):
    result = run_plan(ROOT / "inventories" / name, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors, 0 warnings" in result.stdout


def failing_plan(tmp_path, change):
    """Plan a copy of the example inventory after ``change(inventory_dir)``; it must fail. Returns stdout."""
    inventory = copy_inventory("example", tmp_path)
    change(inventory)
    result = run_plan(inventory, tmp_path)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def test_second_scheduler_fails_naming_hosts_and_units(tmp_path):
    stdout = failing_plan(tmp_path, lambda inventory: edit_yaml(
        inventory / "host_vars" / "sidekiq2.yml",
        lambda data: data["sidekiq_queues"].append({"queue": "scheduler", "concurrency": 5})))
    assert "sidekiq-scheduler-count" in stdout
    assert "sidekiq1 mastodon-sidekiq-scheduler@.service x1" in stdout
    assert "sidekiq2 mastodon-sidekiq-scheduler@.service x1" in stdout


def test_db_pool_below_concurrency_fails_naming_host_and_unit(tmp_path):
    stdout = failing_plan(tmp_path, lambda inventory: edit_yaml(
        inventory / "host_vars" / "sidekiq2.yml", lambda data: data["sidekiq_queues"][0].update(db_pool=4)))
    assert "ERROR sidekiq-db-pool-below-concurrency [sidekiq2 mastodon-sidekiq-pull@.service]" in stdout


def test_typo_fails_with_the_variable_and_host(tmp_path):
    stdout = failing_plan(tmp_path, lambda inventory: (inventory / "host_vars" / "web1.yml").write_text(
        "web_concurency: 8\n"))
    assert ("host web1, variable web_concurency: unknown variable, set in its host_vars (did you mean "
            "web_concurrency?") in stdout


def test_host_in_no_group_with_the_plans_variables_fails(tmp_path):
    def change(inventory):
        edit_yaml(inventory / "hosts.yml", lambda data: data["all"].setdefault("hosts", {}).update(stray=None))
        (inventory / "host_vars" / "stray.yml").write_text("web_concurrency: 8\n")
    stdout = failing_plan(tmp_path, change)
    assert ("host stray, variable web_concurrency: stray is in none of the groups db, redis, web, streaming, "
            "sidekiq, proxy, backup, so the plan would drop it and this setting from its host_vars") in stdout


def test_a_bastion_outside_the_groups_is_left_alone(tmp_path):
    """Bastions and monitoring hosts share the inventory: what they inherit from all is not theirs to carry."""
    inventory = copy_inventory("example", tmp_path)
    edit_yaml(inventory / "hosts.yml", lambda data: data["all"]["children"].update(
        bastion={"hosts": {"bastion1": None}}))
    (inventory / "group_vars" / "bastion.yml").write_text("nginx_vhosts: [ssh-jump]\n")
    result = run_plan(inventory, tmp_path)
    assert result.returncode == 0, result.stdout
    assert "WARNING inventory-variable-unknown [bastion1 nginx_vhosts]: nginx_vhosts, set in group bastion" \
        in result.stdout


def test_negative_number_names_host_and_variable(tmp_path):
    stdout = failing_plan(tmp_path, lambda inventory: (inventory / "host_vars" / "web1.yml").write_text(
        "web_concurrency: -2\n"))
    assert "host web1, variable web_concurrency: must be from 1 to 512, got -2" in stdout


def test_site_stops_at_the_plan_before_contacting_any_host(tmp_path):
    """An over-committed primary: site.yml fails in its first play, and no host is ever contacted."""
    inventory = copy_inventory("example", tmp_path)
    # Addresses from TEST-NET-1 (RFC 5737): contacting any of them would show up as UNREACHABLE.
    # Four pgbouncers with fixed pools of 49 open 160 for their clients, and 10 direct connections: 170 for
    # 147 usable.
    edit_yaml(inventory / "group_vars" / "all.yml",
              lambda data: data.update(ansible_connection="ssh", ansible_ssh_common_args="-o ConnectTimeout=2",
                                       pgbouncer_default_pool_size=49))
    edit_yaml(inventory / "host_vars" / "db1.yml", lambda data: data.update(postgresql_max_connections=150))
    returncode, output = run_site(inventory, tmp_path)
    assert returncode != 0
    assert "ERROR connections-over-usable-capacity [db1 postgresql primary]" in output
    assert "UNREACHABLE" not in output and "Gathering Facts" not in output
    assert "PLAY [PostgreSQL]" not in output


def add_sentinels(inventory, hosts=("redis1", "redis2", "redis3")):
    """The example's Redis host and two more, a replicated persistent set, a sentinel on each of ``hosts``."""
    edit_yaml(inventory / "hosts.yml", lambda data: data["all"]["children"]["redis"]["hosts"].update(
        redis2={"ansible_host": "10.0.0.12"}, redis3={"ansible_host": "10.0.0.13"}))
    edit_yaml(inventory / "host_vars" / "redis1.yml",
              lambda data: data["redis_instances"][0].update(sentinel_master="mastodon"))
    for index, name in ((2, "redis2"), (3, "redis3")):
        (inventory / "host_vars" / ("%s.yml" % name)).write_text(yaml.safe_dump({
            "mastodon_address": "10.0.0.1%d" % index,
            "redis_instances": [{"name": "persistent", "purpose": "persistent", "sentinel_master": "mastodon"}]}))
    for name in hosts:
        edit_yaml(inventory / "host_vars" / ("%s.yml" % name), lambda data: data.update(redis_sentinel=True))


def test_sentinels_replace_the_persistent_urls_in_mastodons_environment(tmp_path):
    inventory = copy_inventory("example", tmp_path)
    add_sentinels(inventory)
    result = run_plan(inventory, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors, 0 warnings" in result.stdout
    report = json.loads((tmp_path / "report" / "budget.json").read_text())
    units = report["environment"]["web1"]["units"]
    assert units["REDIS_SENTINELS"] == units["SIDEKIQ_REDIS_SENTINELS"] == "10.0.0.11:26379,10.0.0.12:26379,10.0.0.13:26379"
    assert units["REDIS_SENTINEL_MASTER"] == "mastodon" and "REDIS_URL" not in units
    assert units["CACHE_REDIS_URL"] == "rediss://10.0.0.11:6380"


def test_site_with_sentinels_stops_before_any_host_without_the_sentinels_passwords(tmp_path):
    inventory = copy_inventory("example", tmp_path)
    add_sentinels(inventory)
    edit_yaml(inventory / "group_vars" / "all.yml",
              lambda data: data.update(ansible_connection="ssh", ansible_ssh_common_args="-o ConnectTimeout=2",
                                       plan_find_running_units=False))
    returncode, output = run_site(inventory, tmp_path)
    assert returncode != 0
    assert "host redis1, redis sentinel: redis_sentinel_admin_password is empty or unset." in output
    assert "host redis1, redis sentinel: redis_sentinel_mastodon_password is empty or unset." in output
    assert "host web1, redis sentinel: app_redis_sentinel_password is empty or unset." in output
    assert "UNREACHABLE" not in output and "PLAY [PostgreSQL]" not in output


def test_site_with_a_replica_stops_before_any_host_without_the_replication_password(tmp_path):
    inventory = copy_inventory("example", tmp_path)
    edit_yaml(inventory / "hosts.yml",
              lambda data: data["all"]["children"]["db"]["hosts"].update(db2={"ansible_host": "10.0.0.12"}))
    (inventory / "host_vars" / "db2.yml").write_text(
        (inventory / "host_vars" / "db1.yml").read_text().replace("10.0.0.10", "10.0.0.12")
        + "postgresql_role: replica\n")
    with open(inventory / "host_vars" / "db1.yml", "a") as primary:
        primary.write("postgresql_max_slot_wal_keep_size: 50GB\npostgresql_wal_disk_free: 500GB\n")
    edit_yaml(inventory / "group_vars" / "all.yml",
              lambda data: data.update(ansible_connection="ssh", ansible_ssh_common_args="-o ConnectTimeout=2",
                                       plan_find_running_units=False))
    returncode, output = run_site(inventory, tmp_path)
    assert returncode != 0
    for host in ("db1", "db2"):
        assert ("host %s, postgresql: postgresql_replication_password is empty or unset. The replica copies and "
                "streams from the primary as the replication role (fediscale_replication)" % host) in output
    assert "UNREACHABLE" not in output and "PLAY [PostgreSQL]" not in output


def test_two_sentinels_fail_naming_them(tmp_path):
    stdout = failing_plan(tmp_path, lambda inventory: add_sentinels(inventory, hosts=("redis1", "redis2")))
    assert "ERROR redis-sentinel-too-few-sentinels [redis sentinel mastodon]" in stdout
    assert "2 sentinel(s) (redis1, redis2)" in stdout


def test_address_over_ungathered_facts_is_named_with_its_fix(tmp_path):
    stdout = failing_plan(tmp_path, lambda inventory: (inventory / "host_vars" / "web1.yml").write_text(
        'mastodon_address: "{{ ansible_default_ipv4.address }}"\n'))
    line = next(line for line in stdout.splitlines() if "host web1, variable mastodon_address" in line)
    assert "its template cannot be resolved where the plan runs" in line
    assert "set it to the host's address (e.g. 10.0.0.21)" in line


def test_another_roles_fact_templates_do_not_concern_the_plan(tmp_path):
    inventory = copy_inventory("example", tmp_path)
    (inventory / "host_vars" / "web1.yml").write_text(
        'node_exporter_web_listen_address: "{{ ansible_default_ipv4.address }}:9100"\n')
    result = run_plan(inventory, tmp_path)
    assert result.returncode == 0, result.stdout


def test_the_console_shows_plain_lines_and_a_one_line_verdict(tmp_path):
    stdout = failing_plan(tmp_path, lambda inventory: edit_yaml(
        inventory / "host_vars" / "sidekiq2.yml", lambda data: data["sidekiq_queues"][0].update(db_pool=4)))
    assert "\nhost                service    unit" in stdout and '"msg": [' not in stdout
    # ansible-core 2.19 prints "[ERROR]: Task failed: Action failed: MSG", 2.18 'fatal: [localhost]: FAILED! => {..."msg": "MSG"}'.
    first_error = next(line for line in stdout.splitlines() if line.startswith(("[ERROR]", "fatal")))
    assert ("the plan is refused, nothing was deployed (1 error(s), 0 warning(s)); first: "
            "sidekiq-db-pool-below-concurrency [sidekiq2 mastodon-sidekiq-pull@.service]: DB_POOL 4") in first_error
    assert '"summary"' not in first_error and '"files"' not in first_error
    assert '"table"' not in stdout


# The plan role alone, as an operator's own playbook applies it before its other roles.
PLAN_ROLE_PLAY = """- name: Plan
  hosts: all
  gather_facts: false
  roles: [fediscale.mastodon.plan]
- name: After the plan
  hosts: all
  gather_facts: false
  tasks:
    - name: Reached only when the plan passed
      ansible.builtin.debug:
        msg: after the plan
"""


def plan_role_without_hosts(tmp_path, change):
    """The plan role over a copy of the example inventory after ``change(inventory_dir)``, with hosts that cannot be
    reached: it must fail, stopping the run for every host, and contact none."""
    inventory = copy_inventory("example", tmp_path)
    change(inventory)
    edit_yaml(inventory / "group_vars" / "all.yml",
              lambda data: data.update(ansible_connection="ssh", ansible_ssh_common_args="-o ConnectTimeout=2",
                                       plan_find_running_units=False))
    playbook = tmp_path / "plan-role.yml"
    playbook.write_text(PLAN_ROLE_PLAY)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOST_KEY_CHECKING="False")
    result = subprocess.run([PLAYBOOK, str(playbook), "-i", str(inventory)], env=env, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "UNREACHABLE" not in output and "after the plan" not in output
    return output


def test_the_plan_stops_on_half_of_the_buckets_credentials_naming_each_app_host(tmp_path):
    output = plan_role_without_hosts(tmp_path, lambda inventory: edit_yaml(
        inventory / "group_vars" / "all.yml", lambda data: data.update(app_s3_access_key_id="AKIAEXAMPLE")))
    for host in ("web1", "sidekiq1", "sidekiq2"):
        assert ("host %s, app: only one of app_s3_access_key_id and app_s3_secret_access_key is set. Set both"
                % host) in output
    assert "AKIAEXAMPLE" not in output


def test_the_plan_stops_on_backups_without_the_repositorys_passphrase(tmp_path):
    output = plan_role_without_hosts(tmp_path, lambda inventory: edit_yaml(
        inventory / "host_vars" / "db1.yml",
        lambda data: data.update(pgbackrest_archive=True, pgbackrest_repo_path="/srv/pgbackrest")))
    assert ("host db1, pgbackrest: pgbackrest_repo_cipher_pass is empty or unset, and pgbackrest_archive is on. "
            "The repository is encrypted with it and no backup can be restored without it.") in output


def test_the_plan_stops_on_backups_to_a_bucket_without_the_buckets_key(tmp_path):
    output = plan_role_without_hosts(tmp_path, lambda inventory: edit_yaml(
        inventory / "host_vars" / "db1.yml",
        lambda data: data.update(pgbackrest_archive=True, pgbackrest_repo_cipher_pass="a passphrase of its own",
                                 pgbackrest_repo_s3_bucket="mastodon-backups",
                                 pgbackrest_s3_access_key_id="AKIABACKUPS")))
    assert ("host db1, pgbackrest: the repository is in bucket mastodon-backups (pgbackrest_repo_s3_bucket), and "
            "pgbackrest_s3_access_key_id or pgbackrest_s3_secret_access_key is empty or unset.") in output
    assert "a passphrase of its own" not in output and "AKIABACKUPS" not in output
