"""Differential check of the gateway's read classification.

Runs every statement of a JSON list through the gateway as a read-only
principal, each in its own transaction: BEGIN; statement; SELECT
pg_current_xact_id_if_assigned(); ROLLBACK. A statement the gateway allowed
that left the transaction with an id wrote something: a violation. Even
statements go over the extended protocol, odd ones over the simple one.
Prints one JSON object: counts and the violating statements.
"""
import json
import os
import sys

import psycopg
from psycopg import pq

CHECK = b"select pg_current_xact_id_if_assigned()"
REFUSED_HINT = b"Portcullis refused"
UNPARSEABLE = b"the gateway could not parse"


def connect():
    conn = psycopg.connect(os.environ["DSN"], autocommit=True)
    run(conn.pgconn, b"set statement_timeout = '2s'", simple=True)
    return conn


def run(pgconn, sql, simple):
    """Runs one statement; returns (ok, refused_by_gateway, first value)."""
    res = pgconn.exec_(sql) if simple else pgconn.exec_params(sql, [])
    finish_copy(pgconn, res)
    if res.status == pq.ExecStatus.FATAL_ERROR:
        hint = res.error_field(pq.DiagnosticField.MESSAGE_HINT) or b""
        message = res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b""
        refused = REFUSED_HINT in hint or UNPARSEABLE in message
        return False, refused, None
    value = res.get_value(0, 0) if res.ntuples and res.nfields else None
    return True, False, value


def finish_copy(pgconn, res):
    """Leaves COPY mode so the connection takes the next query."""
    if res.status == pq.ExecStatus.COPY_IN:
        pgconn.put_copy_end(b"differential test sends no data")
    elif res.status == pq.ExecStatus.COPY_OUT:
        while pgconn.get_copy_data(0)[0] >= 0:
            pass
    else:
        return
    while pgconn.get_result() is not None:
        pass


def main():
    statements = json.load(open(sys.argv[1]))
    counts = {"generated": len(statements), "allowed": 0, "refused": 0,
              "server_errors": 0, "checked": 0, "violations": 0}
    violations = []
    conn = connect()
    for i, text in enumerate(statements):
        simple = i % 2 == 1
        if conn.pgconn.status != pq.ConnStatus.OK:
            conn = connect()
        pg = conn.pgconn
        run(pg, b"begin", simple)
        ok, refused, _ = run(pg, text.encode(), simple)
        if refused:
            counts["refused"] += 1
        else:
            counts["allowed"] += 1
        if ok:
            checked, _, xid = run(pg, CHECK, simple)
            if checked:
                counts["checked"] += 1
                if xid is not None:
                    counts["violations"] += 1
                    violations.append(text)
            else:
                counts["server_errors"] += 1
        elif not refused:
            counts["server_errors"] += 1
        run(pg, b"rollback", simple)
    print(json.dumps({"counts": counts, "violations": violations}))


main()
