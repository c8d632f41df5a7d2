"""The demo's load (molecule/cluster/side_effect.yml): bounded, self-stopping, on the rig network only.

    demo_load.py http --web N --streaming M --hold S --server-name NAME
        through the local nginx: N requests that each hold one of Puma's pooled connections for S seconds, and M
        streaming clients whose token check holds one of the streaming pool's for S seconds, then stay
        subscribed 2 s more; prints the answers by status
    demo_load.py jobs --hold S QUEUE=COUNT ...
        pushes COUNT jobs into each queue as Sidekiq 8 does (LPUSH queue:NAME, enqueued_at in milliseconds), each
        holding one of the sidekiq pool's connections for S seconds; prints their job ids
    demo_load.py direct --hold S NAME=COUNT ...
        holds COUNT direct connections named NAME (application_name) for S seconds, as a tool the inventory names
        in mastodon_direct_connections (PgHero, an exporter) would

    demo_load.py flood --queue Q --rate R --seconds T --hold S
        pushes R jobs a second into queue Q for T seconds, each holding a connection for S seconds: more than the
        queue's processes take, so its latency grows (the advisor's test)
    demo_load.py finished --wait S JID ...
        waits up to S seconds until every job id has its row in stand_in_jobs; prints how many have

jobs, direct and finished read Mastodon's settings from the environment (the app role's files and .env.production,
sourced by the caller).
"""

import argparse
import http.client
import json
import os
import threading
import time
import uuid
from collections import Counter


def http_load(args):
    answers, lock = Counter(), threading.Lock()

    def request(path, stream):
        connection = http.client.HTTPConnection("127.0.0.1", 80, timeout=args.hold + 30)
        try:
            connection.request("GET", path, headers={"Host": args.server_name})
            response = connection.getresponse()
            if stream and response.status == 200:
                response.fp.raw._sock.settimeout(1)
                end = time.monotonic() + args.hold + 2
                while time.monotonic() < end:
                    try:
                        response.read1(1024)
                    except OSError:
                        pass
            else:
                response.read()
            status = str(response.status)
        except OSError as error:
            status = type(error).__name__
        finally:
            connection.close()
        with lock:
            answers[("streaming " if stream else "web ") + status] += 1

    threads = [threading.Thread(target=request, args=("/stand-in/hold?seconds=%g" % args.hold, False))
               for _number in range(args.web)]
    threads += [threading.Thread(target=request, args=("/api/v1/streaming/public?stand_in_hold=%g" % args.hold, True))
                for _number in range(args.streaming)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(dict(answers)))


def counts(pairs):
    return {name: int(count) for name, count in (pair.split("=", 1) for pair in pairs)}


def sidekiq_redis():
    """Where Rails pushes jobs; over TLS (rediss://) checked as Ruby's OpenSSL checks, against the host's store."""
    import redis
    import ssl
    url = os.environ.get("SIDEKIQ_REDIS_URL") or os.environ["REDIS_URL"]
    tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True,
           "ssl_ca_certs": ssl.get_default_verify_paths().cafile} if url.startswith("rediss://") else {}
    return redis.Redis.from_url(url, **tls)


def push(client, queue, hold):
    """One job as Sidekiq 8 enqueues it; returns its id."""
    now = int(time.time() * 1000)
    jid = uuid.uuid4().hex[:24]
    client.sadd("queues", queue)
    client.lpush("queue:" + queue, json.dumps({"class": "StandIn::HoldJob", "args": [hold], "jid": jid,
                                               "queue": queue, "retry": True, "created_at": now, "enqueued_at": now}))
    return jid


def jobs(args):
    client = sidekiq_redis()
    print(json.dumps([push(client, queue, args.hold) for queue, count in counts(args.queues).items()
                      for _number in range(count)]))


def flood(args):
    client, started, pushed = sidekiq_redis(), time.monotonic(), 0
    while time.monotonic() - started < args.seconds:
        push(client, args.queue, args.hold)
        pushed += 1
        time.sleep(max(started + pushed / args.rate - time.monotonic(), 0))
    print(json.dumps({"pushed": pushed}))


def connect(name=""):
    import psycopg
    return psycopg.connect(host=os.environ["DB_HOST"], port=os.environ["DB_PORT"], dbname=os.environ["DB_NAME"],
                           user=os.environ["DB_USER"], password=os.environ["DB_PASS"], application_name=name)


def direct(args):
    def hold(name):
        with connect(name) as db:
            db.execute("SELECT pg_sleep(%s)", (args.hold,))

    threads = [threading.Thread(target=hold, args=(name,))
               for name, count in counts(args.connections).items() for _number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"held": len(threads)}))


def finished(args):
    deadline = time.monotonic() + args.wait
    with connect("demo-load") as db:
        while True:
            count = db.execute("SELECT count(*) FROM stand_in_jobs WHERE jid = ANY(%s)", (args.jids,)).fetchone()[0]
            db.commit()
            if count == len(args.jids) or time.monotonic() > deadline:
                break
            time.sleep(1)
    print(count)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("http")
    load.add_argument("--web", type=int, required=True)
    load.add_argument("--streaming", type=int, required=True)
    load.add_argument("--hold", type=float, required=True)
    load.add_argument("--server-name", required=True)
    queue = commands.add_parser("jobs")
    queue.add_argument("--hold", type=float, required=True)
    queue.add_argument("queues", nargs="+", metavar="QUEUE=COUNT")
    named = commands.add_parser("direct")
    named.add_argument("--hold", type=float, required=True)
    named.add_argument("connections", nargs="+", metavar="NAME=COUNT")
    burst = commands.add_parser("flood")
    burst.add_argument("--queue", required=True)
    burst.add_argument("--rate", type=float, required=True)
    burst.add_argument("--seconds", type=float, required=True)
    burst.add_argument("--hold", type=float, required=True)
    done = commands.add_parser("finished")
    done.add_argument("--wait", type=float, required=True)
    done.add_argument("jids", nargs="+", metavar="JID")
    args = parser.parse_args()
    {"http": http_load, "jobs": jobs, "direct": direct, "flood": flood, "finished": finished}[args.command](args)


if __name__ == "__main__":
    main()
