"""TEST STAND-IN for Mastodon's processes: Mastodon itself cannot be installed on the test machines.

It opens PostgreSQL and Redis connections the way Mastodon 4.6 does, from nothing but the environment systemd
gives it and .env.production, read as dotenv reads it (never over a variable already set). A wrong DB_POOL,
URL or password therefore shows in the live connection counts instead of being hidden.

    stand-in.py puma -C config/puma.rb        WEB_CONCURRENCY workers of MAX_THREADS threads (config/puma.rb),
                                              each worker with a lazy pool of DB_POOL, else MAX_THREADS, else 5
    stand-in.py sidekiq [-c N] [-q Q] [-t S]  N threads take jobs from queue:Q with BRPOP, each job runs on one
                                              connection of a pool of DB_POOL, else N; TSTP quiets, TERM waits S
                                              seconds (25) for running jobs and pushes the rest back
    stand-in.py streaming                     a pool of DB_POOL, else 10 (idle connections close after 10 s, as
                                              node-postgres does), one Redis subscriber, SSE clients
    stand-in.py rails db:migrate              two direct connections: Rails' migration advisory lock, the DDL
    stand-in.py tootctl ... [--concurrency N] a pool of N + 1 connections (lib/mastodon/cli/base.rb), N = 5

Puma also takes uploads (POST /api/v2/media) and stores them as Paperclip does: under PAPERCLIP_ROOT_PATH, or
with S3_ENABLED a PUT to S3_ENDPOINT's bucket (path style unless S3_OVERRIDE_PATH_STYLE) claiming
AWS_ACCESS_KEY_ID, answering the URL at S3_ALIAS_HOST.

Test-only hooks, so that a load can hold every pooled connection at once: GET /stand-in/hold?seconds=S (Puma)
and ?stand_in_hold=S on a streaming request hold one connection for S seconds; a StandIn::HoldJob (args [S])
does the same in sidekiq; tootctl --stand-in-hold S and STAND_IN_MIGRATION_SECONDS for migrations.
"""

import json
import os
import random
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import redis
import redis.sentinel

CHECKOUT_TIMEOUT = 5  # config/database.yml: timeout 5000 (ms)
# config/sidekiq.yml when no -q is given: every queue, with its weight.
SIDEKIQ_QUEUES = [("default", 8), ("push", 6), ("ingress", 4), ("mailers", 2), ("pull", 1), ("scheduler", 1),
                  ("fasp", 1)]


def load_dotenv(path=".env.production"):
    """dotenv: a variable already in the environment wins over the file."""
    try:
        with open(path) as lines:
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    name, value = line.split("=", 1)
                    os.environ.setdefault(name.strip(), value.strip().strip("'\""))
    except FileNotFoundError:
        pass


def log(message):
    print(message, flush=True)


# PostgreSQL: the settings of config/database.yml and streaming/database.js.

# TLS trust as each runtime has it. Node verifies against the roots it ships (Mozilla's list) and
# NODE_EXTRA_CA_CERTS, never the host's store; Ruby's OpenSSL against SSL_CERT_FILE or the host's store.
MOZILLA_ROOTS = "/usr/share/ca-certificates/mozilla"
_node_ca_file = None


def node_ca_file():
    global _node_ca_file
    if _node_ca_file is None:
        roots = [os.path.join(MOZILLA_ROOTS, name) for name in sorted(os.listdir(MOZILLA_ROOTS))] \
            if os.path.isdir(MOZILLA_ROOTS) else []
        extra = os.environ.get("NODE_EXTRA_CA_CERTS")
        descriptor, _node_ca_file = tempfile.mkstemp(prefix="node-roots-", suffix=".pem")
        with os.fdopen(descriptor, "w") as bundle:
            for path in roots + ([extra] if extra else []):
                with open(path) as certificate:
                    bundle.write(certificate.read().strip() + "\n")
    return _node_ca_file


def ruby_ca_file():
    return ssl.get_default_verify_paths().cafile


def node_ssl(sslmode):
    """streaming/database.js: no DB_SSLMODE is no TLS; no-verify encrypts without a check; any other value
    verifies against Node's store (Node never reads PGSSLROOTCERT)."""
    if sslmode in (None, "", "disable"):
        return {"sslmode": "disable"}
    if sslmode == "no-verify":
        return {"sslmode": "require", "sslrootcert": "/nonexistent"}
    return {"sslmode": "verify-full", "sslrootcert": node_ca_file()}


def database_settings(prefix="", node=False):
    """libpq settings for the primary (prefix "") or the replica ("REPLICA_", falling back to DB_*); for
    streaming's node-postgres with ``node``."""
    env = os.environ
    if env.get(prefix + "DATABASE_URL"):
        return {"conninfo": env[prefix + "DATABASE_URL"]}

    def get(name, default):
        return env.get(prefix + name) or env.get(name) or default

    settings = {"host": get("DB_HOST", "localhost"), "port": get("DB_PORT", "5432"),
                "dbname": get("DB_NAME", "mastodon_production"), "user": get("DB_USER", "mastodon"),
                "password": get("DB_PASS", ""), "sslmode": get("DB_SSLMODE", "prefer"), "application_name": ""}
    if node:
        settings.update(node_ssl(env.get("DB_SSLMODE")))
    return settings


def replica_configured():
    return bool(os.environ.get("REPLICA_DB_HOST") or os.environ.get("REPLICA_DATABASE_URL"))


class Pool:
    """A lazily filled pool of at most `size` connections, as ActiveRecord's and node-postgres's are:
    a connection is opened only when every open one is checked out, and a checkout waits at most
    CHECKOUT_TIMEOUT seconds for one to come back."""

    def __init__(self, name, settings, size, idle_timeout, prepared_statements=False):
        self.name, self.settings, self.size, self.idle_timeout = name, settings, size, idle_timeout
        # Rails prepares every statement unless PREPARED_STATEMENTS=false; psycopg does so with threshold 0.
        self.prepare_threshold = 0 if prepared_statements else None
        self.idle, self.opened, self.cond = [], 0, threading.Condition()
        self.busy = set()
        threading.Thread(target=self._reap, daemon=True).start()

    def checkout(self):
        deadline = time.monotonic() + CHECKOUT_TIMEOUT
        with self.cond:
            while not self.idle and self.opened >= self.size:
                if time.monotonic() >= deadline:
                    raise TimeoutError("could not obtain a connection from the %s pool within %d s; all %d "
                                       "pooled connections were in use" % (self.name, CHECKOUT_TIMEOUT, self.size))
                self.cond.wait(deadline - time.monotonic())
            if self.idle:
                connection = self.idle.pop()[0]
                self.busy.add(connection)
                return connection
            self.opened += 1
        try:
            settings = dict(self.settings)
            conninfo = settings.pop("conninfo", "")
            connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=15, **settings)
            connection.prepare_threshold = self.prepare_threshold
            with self.cond:
                self.busy.add(connection)
            return connection
        except Exception:
            with self.cond:
                self.opened -= 1
                self.cond.notify()
            raise

    def checkin(self, connection):
        with self.cond:
            self.busy.discard(connection)
            if connection.closed or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                connection.close()
                self.opened -= 1
            else:
                self.idle.append((connection, time.monotonic()))
            self.cond.notify()

    def run(self, sql, params=()):
        connection = self.checkout()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else None
        finally:
            self.checkin(connection)

    def transaction(self, statements):
        connection = self.checkout()
        try:
            with connection.transaction(), connection.cursor() as cursor:
                for sql, params in statements:
                    cursor.execute(sql, params)
        finally:
            self.checkin(connection)

    def _reap(self):
        while True:
            time.sleep(min(self.idle_timeout, 10) / 2)
            with self.cond:
                now, keep = time.monotonic(), []
                for connection, since in self.idle:
                    if now - since > self.idle_timeout:
                        connection.close()
                        self.opened -= 1
                    else:
                        keep.append((connection, since))
                self.idle = keep

    def cancel_running(self):
        """Cancel the queries in progress, as the pg gem does when Sidekiq's shutdown interrupts a job's thread:
        otherwise the server would run them on after the process has gone."""
        with self.cond:
            running = list(self.busy)
        for connection in running:
            try:
                connection.cancel()
            except Exception:
                pass

    def state(self):
        with self.cond:
            return {"size": self.size, "open": self.opened, "idle": len(self.idle)}


def rails_pools(pool_size):
    """ActiveRecord: a primary pool, and a replica pool of the same size when REPLICA_DB_* is set.
    Idle connections close after 300 s (idle_timeout)."""
    prepared = os.environ.get("PREPARED_STATEMENTS", "true") != "false"
    pools = {"primary": Pool("primary", database_settings(), pool_size, 300, prepared)}
    if replica_configured():
        replica_prepared = os.environ.get("REPLICA_PREPARED_STATEMENTS", os.environ.get("PREPARED_STATEMENTS", "true"))
        pools["replica"] = Pool("replica", database_settings("REPLICA_"), pool_size, 300, replica_prepared != "false")
    return pools


# Redis: lib/mastodon/redis_configuration.rb and streaming/redis.js.

class AskingSentinel(redis.sentinel.Sentinel):
    """Finds the master as redis-client (Ruby) and ioredis do, with SENTINEL GET-MASTER-ADDR-BY-NAME; redis-py's
    own SENTINEL MASTERS is a command Mastodon never sends, which the sentinels' Mastodon user may not run."""

    def discover_master(self, service_name):
        for index, sentinel in enumerate(self.sentinels):
            try:
                address = sentinel.sentinel_get_master_addr_by_name(service_name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if address:
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                host, port = address
                return host.decode() if isinstance(host, bytes) else host, int(port)
        raise redis.sentinel.MasterNotFoundError("No sentinel names a master for %r" % service_name)


def redis_client(prefix="", fallback=True, node=False, **options):
    """The client of one of Mastodon's Redis configurations: *_URL wins, then sentinels, then *_HOST;
    SIDEKIQ_ and CACHE_ fall back to the base configuration when none of those is given. A rediss:// URL is TLS
    with the certificate and the name dialled checked, as redis-client (Ruby) and ioredis (``node``) do."""
    env, name = os.environ, prefix + "REDIS_"
    if env.get(name + "URL"):
        if env[name + "URL"].startswith("rediss://"):
            options.update(ssl_cert_reqs="required", ssl_check_hostname=True,
                           ssl_ca_certs=node_ca_file() if node else ruby_ca_file())
        return redis.Redis.from_url(env[name + "URL"], **options)
    password, user = env.get(name + "PASSWORD"), env.get(name + "USER")
    if env.get(name + "SENTINELS") and env.get(name + "SENTINEL_MASTER"):
        default_port = int(env.get(name + "SENTINEL_PORT", 26379))
        sentinels = [(item.split(":")[0], int(item.split(":")[1]) if ":" in item else default_port)
                     for item in env[name + "SENTINELS"].split(",")]
        # The sentinels' login falls back to the master's user and password (Ruby and Node alike).
        sentinel = AskingSentinel(sentinels, sentinel_kwargs={
            "username": env.get(name + "SENTINEL_USERNAME", user),
            "password": env.get(name + "SENTINEL_PASSWORD", password)})
        return sentinel.master_for(env[name + "SENTINEL_MASTER"], username=user, password=password, **options)
    if prefix and not env.get(name + "HOST"):
        return redis_client("", node=node, **options)
    return redis.Redis(host=env.get(name + "HOST", "localhost"), port=int(env.get(name + "PORT", 6379)),
                       db=int(env.get(name + "DB", 0)), username=env.get(name + "USER"), password=password, **options)


# Media: Paperclip's storage, chosen and addressed by the environment only.

def store_media(key, body):
    env = os.environ
    if env.get("S3_ENABLED") != "true":
        root = env.get("PAPERCLIP_ROOT_PATH") or os.path.join(os.getcwd(), "public", "system")
        path = os.path.join(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as media:
            media.write(body)
        return "/system/" + key
    bucket, protocol = env["S3_BUCKET"], env.get("S3_PROTOCOL", "https")
    region = env.get("S3_REGION", "us-east-1")
    if env.get("S3_ENDPOINT"):
        endpoint = urllib.parse.urlsplit(env["S3_ENDPOINT"])
        if env.get("S3_OVERRIDE_PATH_STYLE") == "true":
            target = "%s://%s.%s/%s" % (endpoint.scheme, bucket, endpoint.netloc, key)
        else:
            target = "%s://%s/%s/%s" % (endpoint.scheme, endpoint.netloc, bucket, key)
    else:
        target = "https://%s.s3.%s.amazonaws.com/%s" % (bucket, region, key)
    # Not a real signature: what an S3 server checks first, the access key the request claims.
    headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=%s/%s/%s/s3/aws4_request"
                                % (env.get("AWS_ACCESS_KEY_ID", ""), time.strftime("%Y%m%d"), region),
               "Cache-Control": "public, max-age=315576000, immutable"}
    if env.get("S3_PERMISSION", "public-read"):
        headers["x-amz-acl"] = env.get("S3_PERMISSION", "public-read")
    request = urllib.request.Request(target, data=body, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=int(env.get("S3_OPEN_TIMEOUT", 5))) as response:
        response.read()
    if env.get("S3_ALIAS_HOST"):
        return "%s://%s/%s" % (protocol, env["S3_ALIAS_HOST"], key)
    return target


# Puma

class Web(BaseHTTPRequestHandler):
    pools = {}

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/health":
            return self.answer(200, "text/plain", b"OK")
        query = urllib.parse.parse_qs(url.query)
        seconds = float(query.get("seconds", ["0"])[0]) if url.path == "/stand-in/hold" else 0
        pool = self.pools["replica" if query.get("role") == ["reading"] and "replica" in self.pools else "primary"]
        try:
            pool.run("SELECT pg_sleep(%s)", (seconds,))
        except Exception as error:  # Rails answers 500 and keeps serving
            return self.answer(500, "text/plain", ("%s: %s" % (type(error).__name__, error)).encode())
        body = {"service": "web", "path": self.path, "worker": os.getpid(),
                "address": "%s:%d" % self.connection.getsockname()[:2],
                "pools": {name: item.state() for name, item in self.pools.items()}}
        self.answer(200, "application/json", json.dumps(body).encode())

    def do_POST(self):
        """POST /api/v2/media: the body becomes a media file where Paperclip would put it, from the environment
        alone (config/initializers/paperclip.rb), and the answer is its URL as Mastodon would link it."""
        if urllib.parse.urlsplit(self.path).path != "/api/v2/media":
            return self.answer(404, "text/plain", b"not found")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        number = "%09d" % random.randrange(10 ** 9)
        key = "media_attachments/files/%s/%s/%s/original/upload.bin" % (number[:3], number[3:6], number[6:])
        try:
            url = store_media(key, body)
        except Exception as error:  # Rails answers 500 when the upload fails
            return self.answer(500, "text/plain", ("%s: %s" % (type(error).__name__, error)).encode())
        self.answer(200, "application/json", json.dumps({"url": url}).encode())

    def answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def puma_worker(listener, threads, pool_size):
    """One worker: `threads` threads accept on the shared socket; a busy worker accepts nothing. TERM stops the
    accepting and lets the requests in progress finish (Puma's graceful stop), for up to 30 s."""
    Web.pools = rails_pools(pool_size)
    stopping = threading.Event()
    serving, lock = [0], threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_signal: stopping.set())

    def serve():
        while not stopping.is_set():
            try:
                connection, address = listener.accept()
            except OSError:
                continue
            with lock:
                serving[0] += 1
            try:
                Web(connection, address, None)
            except Exception as error:
                log("request failed: %s" % error)
            finally:
                connection.close()
                with lock:
                    serving[0] -= 1

    for _number in range(threads):
        threading.Thread(target=serve, daemon=True).start()
    while not stopping.wait(1):
        pass
    deadline = time.monotonic() + 30
    while serving[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(0)


def puma():
    threads = int(os.environ.get("MAX_THREADS", 5))
    workers = int(os.environ.get("WEB_CONCURRENCY", 2))
    pool_size = int(os.environ.get("DB_POOL") or os.environ.get("MAX_THREADS") or 5)
    listener = socket.create_server((os.environ.get("BIND", "127.0.0.1"), int(os.environ.get("PORT", 3000))),
                                    backlog=1024)
    listener.settimeout(1)
    log("Puma stand-in: %d workers x %d threads, pool %d per worker, on %s:%s"
        % (workers, threads, pool_size, *listener.getsockname()[:2]))
    if workers == 0:
        puma_worker(listener, threads, pool_size)
    children = set()

    def spawn():
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            puma_worker(listener, threads, pool_size)
        children.add(pid)

    def stop(*_signal):
        for pid in list(children):
            os.kill(pid, signal.SIGTERM)
        for pid in list(children):
            os.waitpid(pid, 0)
        os._exit(0)

    restart = threading.Event()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda *_signal: restart.set())  # phased restart: one worker after the other
    for _number in range(workers):
        spawn()
    while True:
        if restart.wait(1):
            restart.clear()
            for pid in list(children):
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
                children.discard(pid)
                spawn()
        for pid in list(children):  # Puma replaces a worker that died
            if os.waitpid(pid, os.WNOHANG)[0]:
                children.discard(pid)
                spawn()


# Sidekiq

def sidekiq(args):
    concurrency, queues, timeout = int(os.environ.get("SIDEKIQ_CONCURRENCY", 5)), [], 25
    while args:
        flag = args.pop(0)
        if flag in ("-c", "--concurrency"):
            concurrency = int(args.pop(0))
        elif flag in ("-q", "--queue"):
            name, _comma, weight = args.pop(0).partition(",")
            queues.append((name, int(weight or 1)))
        elif flag in ("-t", "--timeout"):
            timeout = int(args.pop(0))
    queues = queues or SIDEKIQ_QUEUES
    pool = rails_pools(int(os.environ.get("DB_POOL") or concurrency))["primary"]
    identity = "%s:%d:%s" % (socket.gethostname(), os.getpid(), os.urandom(6).hex())
    # Sidekiq names its connections (redis-client's HELLO ... SETNAME) and reads INFO at boot for the server's
    # version and maxmemory-policy: both must stay allowed to Mastodon's Redis user.
    client = redis_client("SIDEKIQ_", max_connections=concurrency + 5, socket_timeout=10,
                          client_name="sidekiq-" + identity.replace(":", "-"))
    server = client.info("server")
    log("Sidekiq stand-in: Redis %s" % server.get("redis_version", "?"))
    quiet, stopping, lock = threading.Event(), threading.Event(), threading.Lock()
    running = {}  # thread id -> (queue, payload, started)
    info = json.dumps({"hostname": socket.gethostname(), "started_at": time.time(), "pid": os.getpid(), "tag": "",
                       "concurrency": concurrency, "queues": [name for name, _weight in queues], "labels": [],
                       "weights": [dict(queues)], "identity": identity, "version": "stand-in"})
    log("Sidekiq stand-in %s: %d threads on %s, pool %d, shutdown timeout %d s"
        % (identity, concurrency, ",".join(name for name, _weight in queues), pool.size, timeout))

    def order():
        """Weighted queues are tried in a random order drawn by weight, as Sidekiq's fetcher does."""
        if len({weight for _name, weight in queues}) == 1:
            return ["queue:" + name for name, _weight in queues]
        pending, drawn = list(queues), []
        while pending:
            pick = random.choices(pending, [weight for _name, weight in pending])[0]
            pending.remove(pick)
            drawn.append("queue:" + pick[0])
        return drawn

    def work():
        me = threading.get_ident()
        while not quiet.is_set():
            try:
                fetched = client.brpop(order(), timeout=2)
            except redis.RedisError as error:
                log("fetch failed: %s" % error)
                time.sleep(1)
                continue
            if not fetched:
                continue
            key, payload = fetched[0].decode(), fetched[1].decode()
            with lock:
                running[me] = (key, payload, time.time())
            # Sidekiq's Processor#fetch: a job fetched after the process was quieted or told to stop goes back
            # to its queue at once, unrun.
            if quiet.is_set():
                client.rpush(key, payload)
                log("returned %s to %s: fetched while stopping" % (json.loads(payload).get("jid"), key))
                with lock:
                    running.pop(me, None)
                break
            try:
                perform(pool, json.loads(payload))
                client.incr("stat:processed")
            except Exception as error:
                log("job failed: %s: %s" % (type(error).__name__, error))
                client.incr("stat:failed")
            finally:
                with lock:
                    running.pop(me, None)

    def heartbeat():
        while not stopping.is_set():
            with lock:
                busy = dict(running)
            with client.pipeline() as pipe:
                pipe.sadd("processes", identity)
                pipe.hset(identity, mapping={"info": info, "busy": len(busy), "beat": time.time(),
                                             "quiet": str(quiet.is_set()).lower()})
                pipe.expire(identity, 60)
                pipe.delete(identity + ":work")
                for tid, (key, payload, started) in busy.items():
                    pipe.hset(identity + ":work", str(tid), json.dumps(
                        {"queue": key[6:], "payload": payload, "run_at": int(started)}))
                pipe.expire(identity + ":work", 60)
                pipe.execute()
            stopping.wait(5)

    signal.signal(signal.SIGTSTP, lambda *_signal: quiet.set())
    signal.signal(signal.SIGTERM, lambda *_signal: stopping.set())
    signal.signal(signal.SIGINT, lambda *_signal: stopping.set())
    client.ping()  # Sidekiq fails at boot when Redis is out of reach
    workers = [threading.Thread(target=work, daemon=True) for _number in range(concurrency)]
    for worker in workers:
        worker.start()
    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    stopping.wait()
    beating.join(5)  # its last beat must not land after the process left the set
    quiet.set()
    # Until every thread has left, not only until none runs a job: one still waiting in BRPOP may yet fetch one.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(worker.is_alive() for worker in workers):
        time.sleep(0.2)
    with lock:
        unfinished = list(running.values())
    for key, payload, _started in unfinished:  # Sidekiq's BasicFetch#bulk_requeue: back to the head of the queue
        client.rpush(key, payload)
        log("pushed back %s to %s" % (json.loads(payload).get("jid"), key))
    if unfinished:
        pool.cancel_running()
    client.srem("processes", identity)
    client.delete(identity, identity + ":work")
    os._exit(0)


def perform(pool, job):
    """Small SQL work in one transaction: a job interrupted before its commit leaves nothing behind."""
    seconds = float(job["args"][0]) if job.get("class") == "StandIn::HoldJob" and job.get("args") else 0
    pool.transaction([("SELECT pg_sleep(%s)", (seconds,)),
                      ("INSERT INTO stand_in_jobs (jid, queue, class) VALUES (%s, %s, %s) "
                       "ON CONFLICT (jid) DO UPDATE SET runs = stand_in_jobs.runs + 1, finished_at = now()",
                       (job.get("jid"), job.get("queue"), job.get("class")))])


# Streaming

class Streaming(BaseHTTPRequestHandler):
    pool = None
    subscriber = None

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/api/v1/streaming/health":
            body = b"OK"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        query = urllib.parse.parse_qs(url.query)
        try:  # the access token check, on one pooled connection
            self.pool.run("SELECT pg_sleep(%s)", (float(query.get("stand_in_hold", ["0"])[0]),))
        except Exception as error:
            self.send_error(503, "%s: %s" % (type(error).__name__, error))
            return
        channel = "timeline:" + (url.path.rsplit("/", 1)[-1] or "public")
        events = self.subscriber.listen(channel)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            self.wfile.write(b":)\n")
            self.wfile.flush()
            while True:
                try:
                    message = events.get(timeout=15)
                    self.wfile.write(b"event: update\ndata: " + message + b"\n\n")
                except Exception:
                    self.wfile.write(b":thump\n")  # the streaming server's heartbeat
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.subscriber.forget(channel, events)

    def log_message(self, *args):
        pass


class Subscriber:
    """One Redis connection subscribed to every channel a client listens to, as streaming/redis.js has."""

    def __init__(self):
        import queue
        self.queue_type, self.listeners, self.lock = queue.Queue, {}, threading.Lock()
        self.pubsub = redis_client(node=True).pubsub()
        self.pubsub.subscribe("stand-in:alive")
        threading.Thread(target=self._dispatch, daemon=True).start()

    def listen(self, channel):
        events = self.queue_type()
        with self.lock:
            if channel not in self.listeners:
                self.pubsub.subscribe(channel)
            self.listeners.setdefault(channel, []).append(events)
        return events

    def forget(self, channel, events):
        with self.lock:
            self.listeners[channel].remove(events)
            if not self.listeners[channel]:
                del self.listeners[channel]
                self.pubsub.unsubscribe(channel)

    def _dispatch(self):
        while True:
            message = self.pubsub.get_message(timeout=1)
            if message and message["type"] == "message":
                with self.lock:
                    for events in self.listeners.get(message["channel"].decode(), []):
                        events.put(message["data"])


def streaming():
    Streaming.pool = Pool("streaming", database_settings(node=True), int(os.environ.get("DB_POOL") or 10), 10)
    Streaming.subscriber = Subscriber()
    server = ThreadingHTTPServer((os.environ.get("BIND", "127.0.0.1"), int(os.environ.get("PORT", 4000))), Streaming)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_signal: os._exit(0))
    log("streaming stand-in: pool %d on %s:%s" % (Streaming.pool.size, *server.server_address[:2]))
    server.serve_forever()


# Admin commands: direct connections (migrations.env)

STAND_IN_SCHEMA = """
CREATE TABLE IF NOT EXISTS stand_in_jobs (
    jid text PRIMARY KEY, queue text, class text, runs integer NOT NULL DEFAULT 1,
    finished_at timestamptz NOT NULL DEFAULT now())
"""


def migrate():
    """rails db:migrate: Rails takes its migration advisory lock on a connection of its own."""
    settings = database_settings()
    conninfo = settings.pop("conninfo", "")
    with psycopg.connect(conninfo, autocommit=True, **settings) as lock, \
            psycopg.connect(conninfo, autocommit=True, **settings) as migration:
        lock.execute("SELECT pg_advisory_lock(%s)", (7_133_461_009_143_000_000,))
        migration.execute(STAND_IN_SCHEMA)
        migration.execute("SELECT pg_sleep(%s)", (float(os.environ.get("STAND_IN_MIGRATION_SECONDS", 0)),))
        lock.execute("SELECT pg_advisory_unlock(%s)", (7_133_461_009_143_000_000,))
    log("migrated")


def tootctl(args):
    """tootctl resets the pool to --concurrency + 1; its threads and the main thread each hold one."""
    concurrency = int(args[args.index("--concurrency") + 1]) if "--concurrency" in args else 5
    seconds = float(args[args.index("--stand-in-hold") + 1]) if "--stand-in-hold" in args else 0
    pool = Pool("tootctl", database_settings(), concurrency + 1, 300)
    workers = [threading.Thread(target=pool.run, args=("SELECT pg_sleep(%s)", (seconds,)))
               for _number in range(concurrency + 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    log("tootctl %s: %d connections" % (" ".join(args), pool.state()["open"]))


def main():
    load_dotenv()
    command, args = sys.argv[1], sys.argv[2:]
    if command == "puma":
        puma()
    elif command == "sidekiq":
        sidekiq(args)
    elif command == "streaming":
        streaming()
    elif command == "rails" and args[:1] == ["db:migrate"]:
        migrate()
    elif command == "tootctl":
        tootctl(args)
    else:
        sys.exit("stand-in: %s %s is not stood in for" % (command, " ".join(args)))


if __name__ == "__main__":
    main()
