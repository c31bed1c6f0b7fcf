"""``python -m infra.localtwin.services``: PostgreSQL and Redis in the foreground, for trying the local twin by hand."""

from __future__ import annotations

import argparse
import os
import signal
import time

from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis


def main() -> None:
    """Run both services in the foreground until SIGINT/SIGTERM (for trying the local twin by hand).

    Passwords come from THROWAWAY_PG_PASSWORD / THROWAWAY_REDIS_PASSWORD, never from argv.
    """
    ap = argparse.ArgumentParser(prog="python -m infra.localtwin.services", description=main.__doc__)
    ap.add_argument("--pg-port", type=int, default=55432)
    ap.add_argument("--redis-port", type=int, default=56379)
    args = ap.parse_args()
    pg_password = os.environ.get("THROWAWAY_PG_PASSWORD")
    if not pg_password:
        raise SystemExit("THROWAWAY_PG_PASSWORD is not set: export the database password to use")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with (
        ThrowawayPostgres(args.pg_port, pg_password) as pg,
        ThrowawayRedis(args.redis_port, os.environ.get("THROWAWAY_REDIS_PASSWORD")) as rd,
    ):
        print(
            f"PostgreSQL on {pg.host}:{pg.port} (db {pg.dbname}, user {pg.user}); "
            f"Redis on {rd.host}:{rd.port}"
        )
        print("Ctrl-C to stop and remove both.", flush=True)
        while not stop:
            time.sleep(0.5)


if __name__ == "__main__":
    main()
