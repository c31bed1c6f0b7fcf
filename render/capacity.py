"""Capacity: how many Apache workers an instance runs, what PHP may take, and the database connection budget.

Pure arithmetic on settings values (no I/O, no AWS), shared by the settings validation (render/settings/), the
rendered container environment (render/outputs.py), the stack parameters (infra/stack/template.py) and the
saturation drill. The boot-time half of the worker sizing is image/nextcloud/bin/nextcloud-size-workers, which
implements :func:`size_workers` in shell (tests/unit/test_capacity.py holds the two to the same answers).
docs/capacity.md explains every figure below and where it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings imports this module; the type is only for readers and checkers
    from render.settings import Settings

# ---- worker sizing -----------------------------------------------------------------------------------------------
# The per-worker figure: what one busy Apache prefork child running a Nextcloud request through mod_php holds
# (resident, not counting the opcache shared by all children). Measured PHP-FPM workers of Nextcloud hold 50-60 MB
# (nextcloud/nextcloudpi#406); nextcloud/vm sizes PHP-FPM with 50 MB per process (nextcloud/vm#943); nextcloudpi
# gives one worker per 100 MB of memory (nextcloud/nextcloudpi#1738). A prefork child carries Apache's own memory
# on top of PHP's, so the higher figure. PHP's memory_limit (512M in the official image) is a per-request ceiling,
# not a per-worker figure: sizing by it would give 6 workers on a 4 GiB instance.
WORKER_MEMORY_MIB = 100
# What stays outside the workers: the OS, Docker, the host agents (journal shipper, liveness watchdog) and the page
# cache, and the room for a few requests running above the typical figure up to PHP's ceiling.
RESERVE_FLOOR_MIB = 1024
RESERVE_DIVISOR = 4  # a quarter of the memory, at least the floor
MIN_WORKERS = 2
MAX_WORKERS = 256  # beyond this a prefork Nextcloud node is bound by CPU, not memory
PHP_MEMORY_LIMIT_CEILING_MIB = 512  # the official image's PHP_MEMORY_LIMIT, and what Nextcloud recommends
PHP_MEMORY_LIMIT_FLOOR_MIB = 128
PHP_MEMORY_LIMIT_STEP_MIB = 32

# EC2 instance type -> memory (GiB), from AWS's instance type pages (https://aws.amazon.com/ec2/instance-types/):
# burstable t3/t3a/t4g from nano to 2xlarge; general purpose (4 GiB per vCPU), compute optimized (2 GiB per vCPU) and
# memory optimized (8 GiB per vCPU) families from large to 4xlarge, and medium (1 vCPU) where Graviton offers it.
# A type outside this table is accepted; the budget then needs web.max_workers (the boot-time sizing still caps it).
_BURSTABLE = {"nano": 0.5, "micro": 1, "small": 2, "medium": 4, "large": 8, "xlarge": 16, "2xlarge": 32}
_VCPUS = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16}
_GIB_PER_VCPU = {
    **dict.fromkeys(("m5", "m5a", "m6i", "m6a", "m6g", "m7i", "m7a", "m7g"), 4),
    **dict.fromkeys(("c5", "c5a", "c6i", "c6a", "c6g", "c7i", "c7a", "c7g"), 2),
    **dict.fromkeys(("r5", "r5a", "r6i", "r6a", "r6g", "r7i", "r7a", "r7g"), 8),
}


def _instance_memory() -> dict[str, int]:
    table = {f"{family}.{size}": int(gib * 1024) for family in ("t3", "t3a", "t4g") for size, gib in _BURSTABLE.items()}
    for family, per_vcpu in _GIB_PER_VCPU.items():
        table |= {f"{family}.{size}": vcpus * per_vcpu * 1024 for size, vcpus in _VCPUS.items()}
        if family.endswith("g"):
            table[f"{family}.medium"] = per_vcpu * 1024
    return dict(sorted(table.items()))


INSTANCE_MEMORY_MIB: Mapping[str, int] = _instance_memory()


@dataclass(frozen=True)
class WorkerSizing:
    """What one instance runs: Apache prefork workers and PHP's memory_limit, from its memory."""

    memory_mib: int
    reserve_mib: int
    workers: int
    php_memory_limit_mib: int

    @property
    def php_memory_limit(self) -> str:
        """PHP's spelling, as PHP_MEMORY_LIMIT takes it (e.g. 512M)."""
        return f"{self.php_memory_limit_mib}M"


def size_workers(memory_mib: int, *, worker_memory_mib: int = WORKER_MEMORY_MIB,
                 max_workers: int | None = None) -> WorkerSizing:
    """Workers and PHP memory_limit for an instance with ``memory_mib`` of memory.

    The reserve is a quarter of the memory, at least RESERVE_FLOOR_MIB; the rest (the pool) holds every worker at
    ``worker_memory_mib``. memory_limit is a quarter of the pool in steps of 32 MiB, between 128M and 512M: one
    request may grow to it while the others stay typical and the excess still fits in the reserve.
    ``max_workers`` (web.max_workers) can only lower the count. The shell twin is nextcloud-size-workers.
    """
    if memory_mib < 1 or worker_memory_mib < 1:
        raise ValueError("memory_mib and worker_memory_mib must be positive")
    reserve = max(RESERVE_FLOOR_MIB, memory_mib // RESERVE_DIVISOR)
    pool = max(0, memory_mib - reserve)
    workers = min(MAX_WORKERS, max(MIN_WORKERS, pool // worker_memory_mib))
    if max_workers is not None:
        workers = max(MIN_WORKERS, min(workers, max_workers))
    limit = pool // 4 // PHP_MEMORY_LIMIT_STEP_MIB * PHP_MEMORY_LIMIT_STEP_MIB
    limit = min(PHP_MEMORY_LIMIT_CEILING_MIB, max(PHP_MEMORY_LIMIT_FLOOR_MIB, limit))
    return WorkerSizing(memory_mib=memory_mib, reserve_mib=reserve, workers=workers, php_memory_limit_mib=limit)


# ---- the database ------------------------------------------------------------------------------------------------
# RDS PostgreSQL's default max_connections is LEAST({DBInstanceClassMemory/9531392}, 5000) (RDS User Guide, "Quotas
# and constraints", Maximum number of database connections). DBInstanceClassMemory is the class's memory minus what
# the OS and RDS's own processes reserve; AWS says it is "somewhat lower" without saying by how much. Defaults seen
# on real instances (2 GiB: 198, 4 GiB: 413, 8 GiB: 856, 15.25 GiB: 1660) put that reserve at 250-530 MiB. The stack
# sets max_connections itself (DatabaseMaxConnections), from an estimate below every one of those: 96 % of the
# memory minus 384 MiB.
RDS_BYTES_PER_CONNECTION = 9531392
RDS_MAX_CONNECTIONS_CEILING = 5000
_RDS_USABLE_PERCENT = 96
_RDS_RESERVED_MIB = 384

# DB instance class -> memory (GiB), from the RDS User Guide's "Hardware specifications for DB instance classes".
_DB_BURSTABLE = {"micro": 1, "small": 2, "medium": 4, "large": 8, "xlarge": 16, "2xlarge": 32}
_DB_VCPUS = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16}
_DB_GIB_PER_VCPU = {
    **dict.fromkeys(("m5", "m6g", "m6i", "m7g"), 4),
    **dict.fromkeys(("r5", "r6g", "r6i", "r7g"), 8),
}


def _db_class_memory() -> dict[str, int]:
    table = {f"db.{family}.{size}": gib for family in ("t3", "t4g") for size, gib in _DB_BURSTABLE.items()}
    for family, per_vcpu in _DB_GIB_PER_VCPU.items():
        table |= {f"db.{family}.{size}": vcpus * per_vcpu for size, vcpus in _DB_VCPUS.items()}
    return dict(sorted(table.items(), key=lambda kv: (kv[1], kv[0])))


DB_CLASS_MEMORY_GIB: Mapping[str, int] = _db_class_memory()


def default_max_connections(memory_gib: int) -> int:
    """max_connections the stack sets for a class with ``memory_gib``: RDS's formula on a conservative estimate of
    DBInstanceClassMemory, never above what RDS itself would allow."""
    usable_mib = memory_gib * 1024 * _RDS_USABLE_PERCENT // 100 - _RDS_RESERVED_MIB
    return min(RDS_MAX_CONNECTIONS_CEILING, max(0, usable_mib) * 1024 * 1024 // RDS_BYTES_PER_CONNECTION)


# ---- the budget ----------------------------------------------------------------------------------------------------
# Launch before terminate: the group's InstanceMaintenancePolicy lets replacements (an unhealthy instance, a
# rebalance, an instance refresh without its own preference) take the group to this percentage of its size. The
# stack takes the number from here (parameter InstanceMaxHealthyPercentage); the settings' own refresh preferences
# (rollout/upgrade.max_healthy_percentage) are at most 200 too, and the budget takes the largest of them.
MAINTENANCE_MAX_HEALTHY_PERCENTAGE = 200
# Connections an instance holds besides its workers: the background jobs (nextcloud-cron runs one cron.php at a
# time, under a lock) and the readiness check's own database check.
CRON_CONNECTIONS = 1
HEALTH_CHECK_CONNECTIONS = 1
# Connections that must stay free for others than the fleet's application role.
RESERVE: Mapping[str, int] = {
    "PostgreSQL's superuser_reserved_connections (default 3)": 3,
    "RDS's rds.rds_superuser_reserved_connections (default 2)": 2,
    "operators (psql, occ by hand)": 3,
    "the database bootstrap (inv bootstrap-db)": 1,
}
# RDS Proxy: how long a client waits for a database connection from the proxy's pool before its connect fails
# (ConnectionBorrowTimeout). Longer than the load balancer's patience would only hold workers for nothing.
PROXY_BORROW_TIMEOUT_SECONDS = 30


def reserve_connections() -> int:
    return sum(RESERVE.values())


def proxy_max_connections_percent(max_connections: int) -> int:
    """RDS Proxy's MaxConnectionsPercent: the largest share of max_connections that leaves the reserve free."""
    return max(1, (max_connections - reserve_connections()) * 100 // max_connections)


@dataclass(frozen=True)
class Budget:
    """The fleet's connections at its largest against the database's max_connections."""

    max_size: int
    surge_percent: int
    workers: int
    max_connections: int
    proxy: bool = False

    @property
    def instances(self) -> int:
        """Instances at the fleet's peak: max_size during a launch-before-terminate replacement (rounded up)."""
        return -(-self.max_size * self.surge_percent // 100)

    @property
    def per_instance(self) -> int:
        return self.workers + CRON_CONNECTIONS + HEALTH_CHECK_CONNECTIONS

    @property
    def fleet(self) -> int:
        """Connections the fleet may open at its peak."""
        return self.instances * self.per_instance

    @property
    def reserve(self) -> int:
        return reserve_connections()

    @property
    def proxy_pool(self) -> int:
        """With RDS Proxy: the database connections the proxy may open (its MaxConnectionsPercent)."""
        return self.max_connections * proxy_max_connections_percent(self.max_connections) // 100

    @property
    def needed(self) -> int:
        """Connections the database must accept: the fleet (or the proxy's pool) plus the reserve."""
        return (self.proxy_pool if self.proxy else self.fleet) + self.reserve

    @property
    def fits(self) -> bool:
        return self.needed <= self.max_connections

    def largest_max_size(self) -> int:
        """The largest max_size that fits without the proxy (0: not even one instance)."""
        room = self.max_connections - self.reserve
        size = room * 100 // (self.surge_percent * self.per_instance) if room > 0 else 0
        while size > 0 and Budget(size, self.surge_percent, self.workers, self.max_connections).needed \
                > self.max_connections:
            size -= 1
        return size

    def largest_workers(self) -> int:
        """The most workers per instance that fit at this max_size without the proxy (< MIN_WORKERS: none do)."""
        room = self.max_connections - self.reserve
        return room // self.instances - CRON_CONNECTIONS - HEALTH_CHECK_CONNECTIONS if room > 0 else 0


def smallest_class_that_fits(needed: int, like: str | None = None) -> str | None:
    """The DB class with the least memory whose max_connections reaches ``needed``; of the family of ``like`` when
    one of that family does."""
    fitting = [c for c, gib in DB_CLASS_MEMORY_GIB.items() if default_max_connections(gib) >= needed]
    family = like.rsplit(".", 1)[0] + "." if like else None
    same = [c for c in fitting if family and c.startswith(family)]
    return (same or fitting or [None])[0]


# ---- the settings' view --------------------------------------------------------------------------------------------
# Keys named in messages (dotted settings keys).
K_INSTANCE_TYPE = "instance_type"
K_WORKER_MEMORY = "web.worker_memory_mb"
K_MAX_WORKERS = "web.max_workers"
K_MAX_SIZE = "stack.max_size"
K_DB_CLASS = "stack.database.instance_class"
K_MAX_CONNECTIONS = "stack.database.max_connections"
K_PROXY = "stack.database.proxy"


def instance_sizing(s: Settings) -> WorkerSizing | None:
    """The sizing of the settings' instance type (None: its memory is not in INSTANCE_MEMORY_MIB)."""
    memory = INSTANCE_MEMORY_MIB.get(s.instance_type)
    if memory is None:
        return None
    return size_workers(memory, worker_memory_mib=s.web.worker_memory_mb, max_workers=s.web.max_workers)


def planned_workers(s: Settings) -> int | None:
    """Workers per instance the budget counts: the instance type's sizing, else web.max_workers (boot caps both)."""
    sizing = instance_sizing(s)
    return sizing.workers if sizing else s.web.max_workers


def planned_max_connections(s: Settings) -> int | None:
    """max_connections the stack sets: stack.database.max_connections, else the class's (None: class unknown)."""
    db = s.stack.database
    if db.max_connections is not None:
        return db.max_connections
    gib = DB_CLASS_MEMORY_GIB.get(db.instance_class)
    return None if gib is None else default_max_connections(gib)


def surge_percent(s: Settings) -> int:
    """The largest MaxHealthyPercentage any replacement of the group may use."""
    return max(MAINTENANCE_MAX_HEALTHY_PERCENTAGE, s.rollout.max_healthy_percentage, s.upgrade.max_healthy_percentage)


def fleet_budget(s: Settings) -> Budget | None:
    """The settings' connection budget (None when the instance type's or DB class's size is unknown)."""
    workers, max_connections = planned_workers(s), planned_max_connections(s)
    if workers is None or max_connections is None:
        return None
    return Budget(max_size=s.stack.max_size, surge_percent=surge_percent(s), workers=workers,
                  max_connections=max_connections, proxy=s.stack.database.proxy)


def budget_problems(s: Settings) -> list[tuple[str, str]]:
    """(dotted key, message with the fixes) for a fleet that could exhaust the database; [] when it fits."""
    problems: list[tuple[str, str]] = []
    if planned_workers(s) is None:
        problems.append((K_INSTANCE_TYPE, (
            f"the memory of {s.instance_type!r} is not in render/capacity.py's table, so the connection budget "
            f"cannot count its Apache workers; set {K_MAX_WORKERS} (the most workers an instance runs; the boot-time "
            "sizing from the machine's memory still lowers it), or add the type with its memory from AWS's "
            "instance type page")))
    if planned_max_connections(s) is None:
        problems.append((K_DB_CLASS, (
            f"the memory of {s.stack.database.instance_class!r} is not in render/capacity.py's table, so the stack "
            f"cannot derive max_connections; set {K_MAX_CONNECTIONS} (the stack puts it in the parameter group), or "
            "add the class with its memory from the RDS User Guide's DB instance class table")))
    budget = fleet_budget(s)
    if budget is None or budget.fits:
        return problems
    return [(K_MAX_SIZE, _over_budget(s, budget))]


def _over_budget(s: Settings, b: Budget) -> str:
    db = s.stack.database
    source = (f"{K_MAX_CONNECTIONS} = {b.max_connections}" if db.max_connections is not None
              else f"{K_DB_CLASS} {db.instance_class!r} (RDS's formula on its memory)")
    sized = (f"{b.workers} Apache workers ({K_INSTANCE_TYPE} {s.instance_type!r} at {K_WORKER_MEMORY} = "
             f"{s.web.worker_memory_mb}" + (f", {K_MAX_WORKERS} = {s.web.max_workers}" if s.web.max_workers else "")
             + ")")
    fixes = []
    largest = b.largest_max_size()
    if largest >= max(1, s.stack.min_size):
        fixes.append(f"{K_MAX_SIZE} = {largest} or less")
    workers = b.largest_workers()
    if workers >= MIN_WORKERS:
        fixes.append(f"{K_MAX_WORKERS} = {workers} or less (fewer concurrent requests per instance)")
    bigger = smallest_class_that_fits(b.needed, like=db.instance_class)
    if bigger and db.max_connections is None:
        fixes.append(f"{K_DB_CLASS} = {bigger!r} or larger")
    elif not bigger:
        fixes.append(f"no DB class in the table reaches {b.needed} connections (RDS caps the formula at "
                     f"{RDS_MAX_CONNECTIONS_CEILING})")
    fixes.append(f"{K_PROXY} = true (RDS Proxy holds at most {b.proxy_pool} database connections and queues the "
                 "rest)")
    return (
        f"the fleet can open more database connections than the database accepts: {b.instances} instances "
        f"({K_MAX_SIZE} {b.max_size} x {b.surge_percent} % while replacements launch before terminating) x "
        f"{b.per_instance} connections ({sized} + {CRON_CONNECTIONS} cron + {HEALTH_CHECK_CONNECTIONS} health check) "
        f"+ {b.reserve} reserved = {b.needed} > max_connections {b.max_connections} from {source}. "
        f"Fix one of: {'; '.join(fixes)}. See docs/capacity.md"
    )
