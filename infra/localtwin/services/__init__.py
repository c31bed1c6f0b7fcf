"""Throwaway PostgreSQL 15 and Redis servers on loopback, for tests and for the local twin.

They stand in for RDS and ElastiCache. Each server lives in its own temporary directory, listens on the
port you give it (127.0.0.1 by default) and is stopped and removed when the context manager exits, even
after a failure. Tests that need "the database goes away, then comes back" call ``stop()`` / ``start()``.

    from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis

    with ThrowawayPostgres(port=55432, password="s3cret") as pg, ThrowawayRedis(port=56379) as rd:
        pg.dsn            # "host=127.0.0.1 port=55432 dbname=nextcloud user=nextcloud password=s3cret"
        pg.psql("SELECT 1")  # runs SQL as the superuser over the private Unix socket, returns stdout
        pg.stop(); pg.start()
        rd.url            # "redis://127.0.0.1:56379/0"

``python -m infra.localtwin.services`` runs both in the foreground (see __main__.py).
"""

from infra.localtwin.services.base import ServiceError
from infra.localtwin.services.postgres import ThrowawayPostgres
from infra.localtwin.services.redis import ThrowawayRedis

__all__ = ["ServiceError", "ThrowawayPostgres", "ThrowawayRedis"]
