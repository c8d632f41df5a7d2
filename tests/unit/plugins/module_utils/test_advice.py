"""The scaling advisor and the Sidekiq readings it judges: each verdict, reached and not."""

import pytest

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.advice import (
    advise, database_bottleneck, database_lines)
from ansible_collections.fediscale.mastodon.plugins.module_utils.live import (
    job_latency, sidekiq_queue_findings, sidekiq_queue_rows)

from ...clusters import cluster


def row(queue="pull", size=500, latency=42.0, processes=1, threads=5, busy=5, **extra):
    return dict(queue=queue, size=size, latency=latency, processes=processes, threads=threads, busy=busy, **extra)


def with_pull_instances(instances):
    description = cluster()
    for entry in description["hosts"]["worker1"]["sidekiq"]["queues"]:
        if entry["queue"] == "pull":
            entry["instances"] = instances
    return description


class TestLateQueue:
    def test_more_processes_as_far_as_the_plan_allows(self):
        # 58 planned, 90 % line of 200 at 180: 122 free, 24 pull processes of 5 connections.
        answer = advise(cluster(), [row(latency_before=30.0, growing=True)], latency_warning_seconds=30)
        [change] = answer["changes"]
        # No pgbouncer in this cluster: the sidekiq play applies it alone.
        assert change == {"host": "worker1", "queue": "pull", "instances": 2, "concurrency": 5, "allowed": 24,
                          "tags": "sidekiq"}
        verdict = [line for line in answer["lines"] if line.startswith("verdict:")]
        assert verdict == ["verdict: pull: latency 42 s and growing; the budget allows 24 more pull processes on "
                           "worker1 (5 connections each, 122 free below the 90 % line): add 1, set instances: 2"]
        assert answer["lines"][0] == "pull: 500 jobs, latency 42.0 s and growing; 1 process, 5 of 5 threads busy"
        assert answer["lines"][-1].startswith("inventory: on worker1, set the sidekiq_queues entry of pull to "
                                              "{queue: pull, instances: 2, concurrency: 5}")

    def test_behind_pgbouncer_the_advice_runs_the_pgbouncer_play_when_pools_are_shared_anew(self):
        # worker1's pgbouncer gets 5 more clients; the auto pools share the room by client count: web1's 18 become 17.
        description = cluster(hosts__worker1__pgbouncer={"enabled": True}, hosts__web1__pgbouncer={"enabled": True},
                              hosts__db1={"postgresql": {"max_connections": 60, "ram": "16GB"}})
        [change] = advise(description, [row()], latency_warning_seconds=30)["changes"]
        assert change["tags"] == "sidekiq,pgbouncer"
        assert advise(description, [row()], latency_warning_seconds=30)["lines"][-1].endswith(
            "then run site.yml --tags sidekiq,pgbouncer")

    def test_the_allowed_number_is_the_last_the_plan_keeps_below_the_line(self):
        rules = {item["rule"] for item in plan.connection_budget(with_pull_instances(25))["findings"]}
        assert "connections-over-warning-line" not in rules
        rules = {item["rule"] for item in plan.connection_budget(with_pull_instances(26))["findings"]}
        assert "connections-over-warning-line" in rules

    def test_no_room_says_what_to_change_first(self):
        # 58 planned over the 90 % line of 64 (57): nothing fits.
        answer = advise(cluster(hosts__db1={"postgresql": {"max_connections": 64, "ram": "16GB"}}), [row()],
                        latency_warning_seconds=30)
        assert answer["changes"] == []
        assert "the budget has no room for another pull process (5 connections, -1 free below the 90 % line)" in \
            answer["lines"][-1] and "raise postgresql_max_connections" in answer["lines"][-1]

    def test_a_queue_no_host_runs(self):
        answer = advise(cluster(), [row(queue="fasp", processes=0, threads=0, busy=0)], latency_warning_seconds=30)
        assert answer["lines"][-1] == "verdict: fasp is late and no host in the plan runs it: add it to sidekiq_queues"


class TestNothingLate:
    def test_under_the_threshold_or_empty(self):
        answer = advise(cluster(), [row(latency=10.0), row(queue="push", size=0, latency=100.0)],
                        latency_warning_seconds=30)
        assert answer["changes"] == [] and answer["lines"][-1] == (
            "verdict: every queue's latency is under 30 s: nothing to add")


class TestDatabaseBottleneck:
    def test_lock_waits_mean_more_processes_will_not_help(self):
        postgres = {"states": {"active": 10, "idle": 2}, "waits": [
            {"backend_type": "client backend", "wait_event_type": "Lock", "wait_event": "transactionid", "count": 4}]}
        answer = advise(cluster(), [row()], postgres, latency_warning_seconds=30)
        assert answer["changes"] == []
        assert answer["lines"][-1] == ("verdict: the database is the bottleneck: 4 of 10 active connections wait "
                                       "(4 on locks, 0 on WAL writes); adding sidekiq processes will not help")

    def test_wal_writes_name_synchronous_commit_without_setting_it(self):
        postgres = {"states": {"active": 10}, "waits": [
            {"backend_type": "client backend", "wait_event_type": "IO", "wait_event": "WALWrite", "count": 3}]}
        assert "synchronous_commit = off" in database_bottleneck(postgres)

    def test_the_primary_line_shows_idle_share_and_waits(self):
        postgres = {"states": {"active": 8, "idle": 2}, "waits": [
            {"backend_type": "client backend", "wait_event_type": "IO", "wait_event": "WALWrite", "count": 1}]}
        assert database_lines(postgres, behind_pgbouncer=False) == [
            "primary: 10 client connections, 8 active, 2 idle (20 % idle); 0 waiting on locks, 1 on WAL writes"]

    def test_no_idle_connection_behind_pgbouncer_means_full_pools(self):
        lines = database_lines({"states": {"active": 20}, "waits": []}, behind_pgbouncer=True)
        assert len(lines) == 2 and "its pools are full" in lines[1]
        assert len(database_lines({"states": {"active": 20}, "waits": []}, behind_pgbouncer=False)) == 1

    def test_a_lagging_replica_is_in_the_answer(self):
        postgres = {"states": {"active": 2, "idle": 2}, "waits": [], "findings": [
            {"rule": "live-replica-lag", "message": "the replica of slot db2 replays 45.0 s behind, more than 30 s",
             "hint": "look for long queries"},
            {"rule": "live-utilisation-high", "message": "not about the replica", "hint": ""}]}
        assert database_lines(postgres, behind_pgbouncer=False)[1:] == [
            "replica: the replica of slot db2 replays 45.0 s behind, more than 30 s (look for long queries)"]

    def test_backups_are_in_the_answer_with_their_findings(self):
        postgres = {"states": {"active": 2, "idle": 2}, "waits": [], "findings": [
            {"rule": "live-backup-old", "message": "the last backup ended 40.0 h ago", "hint": "see the timers"}],
            "backup": {"info": {"last_backup": {"type": "diff", "age_seconds": 144000.0}},
                       "ready_segments": {"count": 1}}}
        assert database_lines(postgres, behind_pgbouncer=False)[1:] == [
            "backups: the last a diff backup 40.0 h ago, 1 WAL segments waiting to be archived",
            "backups: the last backup ended 40.0 h ago (see the timers)"]
        postgres["backup"]["info"]["last_backup"] = None
        assert database_lines(postgres, behind_pgbouncer=False)[1].startswith("backups: none yet, 1 WAL")

    def test_a_few_waits_are_normal(self):
        postgres = {"states": {"active": 10}, "waits": [
            {"backend_type": "client backend", "wait_event_type": "Lock", "wait_event": "tuple", "count": 2},
            {"backend_type": "autovacuum worker", "wait_event_type": "Lock", "wait_event": "tuple", "count": 5}]}
        assert database_bottleneck(postgres) is None


class TestSidekiqReadings:
    @pytest.mark.parametrize("enqueued_at, latency", [(1_700_000_000_000, 42.5), (1_699_999_990.0, 52.5)])
    def test_latency_of_sidekiq_8_milliseconds_and_older_float_seconds(self, enqueued_at, latency):
        assert job_latency({"enqueued_at": enqueued_at}, 1_700_000_042.5) == pytest.approx(latency)
        assert job_latency({}, 1_700_000_042.5) == 0.0

    def test_rows_count_listening_processes_threads_and_busy_jobs(self):
        processes = [{"queues": ["pull"], "concurrency": 10}, {"queues": ["pull"], "concurrency": 10},
                     {"queues": ["default"], "concurrency": 5}]
        work = [{"queue": "pull"}] * 7 + [{"queue": "default"}]
        rows = sidekiq_queue_rows({"pull": 120, "mailers": 3}, {"pull": 42.0, "mailers": 1.0}, processes, work)
        assert rows == [
            {"queue": "default", "size": 0, "latency": 0.0, "processes": 1, "threads": 5, "busy": 1},
            {"queue": "mailers", "size": 3, "latency": 1.0, "processes": 0, "threads": 0, "busy": 0},
            {"queue": "pull", "size": 120, "latency": 42.0, "processes": 2, "threads": 20, "busy": 7}]

    def test_findings_at_the_warning_and_at_mastodons_lock_expiry(self):
        rows = [row(latency=61.0), row(queue="push", latency=901.0), row(queue="mailers", latency=59.0),
                row(queue="fasp", size=2, latency=1.0, processes=0)]
        findings = {(item["rule"], item["numbers"]["queue"]) for item in sidekiq_queue_findings(rows)}
        assert findings == {("sidekiq-latency-over-threshold", "pull"), ("sidekiq-latency-over-lock-expiry", "push"),
                            ("sidekiq-queue-unserved", "fasp")}
