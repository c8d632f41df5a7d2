"""Clients that prepare statements the way Rails' PostgreSQL adapter does, and what they meet.

Rails (ActiveRecord's PostgreSQL adapter, under Mastodon's PREPARED_STATEMENTS
unset or true) calls libpq through the pg gem: PQprepare with names a1, a2, ...
(a protocol-level Parse), PQexecPrepared, and, when its per-connection
statement cache is full (statement_limit, 1000 by default), the SQL statement
"DEALLOCATE aN" for the oldest entry, sent with PQexec while the connection
may be inside a transaction, its error ignored. This script makes the same
libpq calls through psycopg's libpq wrapper, with a small statement limit so
that the cache evicts within seconds, from many clients at once.

    python3 rails_like_client.py CONNINFO [--clients 30] [--seconds 10] [--statement-limit 8]

Prints JSON: transactions that committed, and the errors met, by kind.
"""

import argparse
import collections
import json
import re
import threading
import time

from psycopg import pq

DISTINCT_STATEMENTS = 20


def error_kind(result) -> str:
    message = (result.error_message or b"").decode(errors="replace").strip().splitlines()[0]
    return re.sub(r'"[a-zA-Z_]*\d+"', '"<name>"', message)


class RailsLikeConnection:
    """One ActiveRecord connection: a statement cache of ``limit`` entries, evicted oldest first."""

    def __init__(self, conninfo: str, limit: int):
        self.pgconn = pq.PGconn.connect(conninfo.encode())
        if self.pgconn.status != pq.ConnStatus.OK:
            raise SystemExit(self.pgconn.error_message.decode())
        self.limit = limit
        self.statements = collections.OrderedDict()
        self.counter = 0

    def command(self, sql: bytes):
        return self.pgconn.exec_(sql)

    def prepared(self, sql: bytes):
        """The statement's name, prepared on first use (ActiveRecord's prepare_statement)."""
        name = self.statements.get(sql)
        if name is not None:
            return name, None
        self.counter += 1
        name = b"a%d" % self.counter
        result = self.pgconn.prepare(name, sql)
        if result.status != pq.ExecStatus.COMMAND_OK:
            return None, result
        # StatementPool#[]=: evict the oldest before adding, with SQL DEALLOCATE, rescuing PG::Error.
        while len(self.statements) >= self.limit:
            _sql, oldest = self.statements.popitem(last=False)
            self.command(b"DEALLOCATE " + oldest)
        self.statements[sql] = name
        return name, None

    def transaction(self, number: int) -> str:
        """A write-like transaction (BEGIN, one statement, COMMIT) or a read outside one, as Mastodon runs both."""
        in_transaction = number % 2 == 0
        sql = b"SELECT $1::int + %d" % (number % DISTINCT_STATEMENTS)
        if in_transaction:
            self.command(b"BEGIN")
        name, failure = self.prepared(sql)
        result = failure or self.pgconn.exec_prepared(name, [b"1"])
        outcome = "ok" if result.status == pq.ExecStatus.TUPLES_OK else error_kind(result)
        if in_transaction:
            self.command(b"COMMIT" if outcome == "ok" else b"ROLLBACK")
        return outcome


def run(conninfo: str, clients: int, seconds: float, limit: int) -> dict:
    outcomes = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = RailsLikeConnection(conninfo, limit)
        number = 0
        local = collections.Counter()
        while time.monotonic() < deadline:
            local[connection.transaction(number)] += 1
            number += 1
        with lock:
            outcomes.update(local)

    threads = [threading.Thread(target=client) for _number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = outcomes.pop("ok", 0)
    return {"ok": ok, "failed": sum(outcomes.values()), "errors": dict(outcomes.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conninfo")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--statement-limit", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.conninfo, args.clients, args.seconds, args.statement_limit)))


if __name__ == "__main__":
    main()
