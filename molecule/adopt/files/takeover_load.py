"""The load that runs while site.yml takes the guide's server over (molecule/adopt), and what it saw.

    takeover_load.py --out FILE

Until SIGTERM, as the postgres user on the server itself:
  - jobs: one short job every 0.2 s into each of Mastodon's queues in turn, and every 5 s a long one (60 s) into
    pull: those that started less than about 30 s before the takeover outlive its wait and Sidekiq's 25 s and
    are pushed back; each job as Sidekiq 8 enqueues it (LPUSH queue:NAME), with its id;
  - requests: every 0.1 s a Puma page and a streaming health check through nginx, each answer's status counted;
  - samples every 0.5 s: the connections to Mastodon's database (pg_stat_activity), and Sidekiq's processes that
    take scheduler jobs (in Redis' processes set, not quiet).
On SIGTERM it writes FILE: the jobs' ids, the answers by status (and the time of each that was not a 200), the
samples.
"""

import argparse
import http.client
import json
import signal
import threading
import time
import uuid
from collections import Counter

import psycopg
import redis

QUEUES = ["default", "push", "ingress", "mailers", "pull", "scheduler"]
SHORT_HOLD = 0.2
LONG_HOLD = 60
LONG_EVERY = 5


def push(client, queue, hold):
    now = int(time.time() * 1000)
    jid = uuid.uuid4().hex[:24]
    client.sadd("queues", queue)
    client.lpush("queue:" + queue, json.dumps({"class": "StandIn::HoldJob", "args": [hold], "jid": jid,
                                               "queue": queue, "retry": True, "created_at": now,
                                               "enqueued_at": now}))
    return jid


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_signal: stopping.set())
    lock = threading.Lock()
    jobs, answers, samples, failures = [], Counter(), [], []
    client = redis.Redis(host="localhost", port=6379)

    def enqueue():
        turn, last_long = 0, 0.0
        while not stopping.wait(SHORT_HOLD):
            queue = QUEUES[turn % len(QUEUES)]
            turn += 1
            entries = [(push(client, queue, SHORT_HOLD), queue, SHORT_HOLD)]
            if time.monotonic() - last_long >= LONG_EVERY:
                last_long = time.monotonic()
                entries.append((push(client, "pull", LONG_HOLD), "pull", LONG_HOLD))
            with lock:
                jobs.extend({"jid": jid, "queue": name, "hold": hold} for jid, name, hold in entries)

    def request(path, label):
        while not stopping.wait(0.1):
            connection = http.client.HTTPConnection("127.0.0.1", 80, timeout=30)
            try:
                connection.request("GET", path, headers={"Host": "mastodon.test"})
                response = connection.getresponse()
                response.read()
                status = str(response.status)
            except OSError as error:
                status = type(error).__name__
            finally:
                connection.close()
            with lock:
                answers["%s %s" % (label, status)] += 1
                if status != "200":
                    failures.append({"time": time.time(), "label": label, "status": status})

    def sample():
        database = psycopg.connect("dbname=postgres", autocommit=True)
        while not stopping.wait(0.5):
            connections = database.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'mastodon_production'").fetchone()[0]
            schedulers = 0
            for identity in client.smembers("processes"):
                info, quiet = client.hmget(identity, "info", "quiet")
                if info and "scheduler" in json.loads(info).get("queues", []) and quiet != b"true":
                    schedulers += 1
            with lock:
                samples.append({"time": time.time(), "connections": connections, "schedulers": schedulers})

    threads = [threading.Thread(target=enqueue), threading.Thread(target=request, args=("/", "web")),
               threading.Thread(target=request, args=("/api/v1/streaming/health", "streaming")),
               threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    stopping.wait()
    for thread in threads:
        thread.join(35)
    with open(args.out, "w") as out:
        json.dump({"jobs": jobs, "answers": dict(answers), "failures": failures, "samples": samples}, out)


if __name__ == "__main__":
    main()
