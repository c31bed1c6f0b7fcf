"""The local twin's measurements and trials: the boot benchmark, the real-Nextcloud lane, load and fault drills."""

from __future__ import annotations

from infra.errors import Refusal
from infra.verdict import Verdict
from tasks.cli import ENV_HELP, ROOT, SET_HELP, Duration, Number, console, load, pipeline_task

TORN_DOWN = "stopped by Ctrl-C; everything was torn down"


@pipeline_task(
    iterable=["only"],
    help={
        "env": ENV_HELP,
        "runs": "boots of each kind (bare and baked take turns) and no-op rebuilds (default 3); the paired boot "
                "verdict needs 3 joining pairs, so --runs 4 at least (the first baked boot installs the cluster)",
        "only": "run just this measurement (repeatable): bare, baked, seed, noop, bake, footprint, serving",
        "full_bake": "also time a fresh forced bake instead of reading the last bake's record",
        "seed_runs": "boots for the seed-style measurement (default: --runs; each takes about 10 minutes)",
        "timeout": "how long one boot may take before it counts as failed: seconds or 40m (default 40m)",
        "quiet_wait": "how long each boot waits for other QEMU processes to end before it starts anyway (the sample "
                      "records them): seconds or 10m (default 30m)",
        "port_wait": "how long to wait for the PostgreSQL/Redis ports while another run (test-ami) holds them: "
                     "seconds or 10m (default 30m)",
        "show": "measure nothing: print the table of the last build/bench/results.json",
        "markdown": "measure nothing: print the last results as Markdown (for docs/benchmarks.md)",
    },
    types={"runs": Number(1, 100, whole=True), "seed_runs": Number(1, 100, whole=True),
           "timeout": Duration(1, 86400), "quiet_wait": Duration(0, 86400), "port_wait": Duration(0, 86400)},
    exit_codes={0: "measured (or shown); the verdict line says whether the boot target was met, missed or is "
                   "undecided: a missed target is reported, not a failure"},
    interrupted=TORN_DOWN,
)
def bench(c, env=None, runs=None, only=None, full_bake=False, seed_runs=None, timeout=None, quiet_wait=None,
          port_wait=None, show=False, markdown=False):
    """Measure readiness after boot (bare, baked, seed-style), no-op rebuild, bake steps and footprint."""
    from infra.bench import run
    from infra.bench.table import headline

    if show or markdown:
        run.show(ROOT, markdown=markdown)
        return None
    loaded = load(c, env, None)
    if loaded.settings.builder != "local":
        raise Refusal(f"bench measures the local twin; {loaded.settings.name} is {loaded.settings.builder}")
    waits = {"timeout_s": timeout, "quiet_wait_s": quiet_wait, "port_wait_s": port_wait}
    doc = run.run_bench(ROOT, loaded.settings, runs=runs or int(c.config.pipeline.bench_runs), only=only or None,
                        full_bake=full_bake, seed_runs=seed_runs, **{k: v for k, v in waits.items() if v is not None})
    return Verdict("measured", headline(doc))


@pipeline_task(
    help={
        "env": ENV_HELP + "; an AWS environment's nextcloud.image is the base, the local one's is the stand-in",
        "set": SET_HELP,
        "base": "build on this image instead (repo:tag[@sha256:...]), e.g. the digest-pinned official image",
        "upgrade_from": "the release the upgrade check starts from (default: the base's previous patch tag)",
    },
    exit_codes={1: "a lane test failed (pytest's own codes 1-5 are passed on)"},
    interrupted=TORN_DOWN,
)
def lane(c, env=None, set_=None, base=None, upgrade_from=None):
    """Real-Nextcloud test lane: two containers of the derived image on PostgreSQL, Redis (TLS) and S3."""
    from infra.lane.lane import lane_base, run_lane

    loaded = load(c, env, set_)
    code = run_lane(lane_base(loaded.settings, base), upgrade_from)
    if code:
        return Verdict("failed", f"the lane's tests ended with pytest exit code {code} (see above)", code)
    return Verdict("passed", "the lane's tests passed")


@pipeline_task(
    iterable=["scenario", "set_"],
    help={
        "env": ENV_HELP + "; the drills run on the local twin only",
        "set": SET_HELP,
        "scenario": "run only this scenario (repeatable): boot_storm, database, cache, broken, rolling, saturation "
                    "(default: all)",
        "duration": "how long the database or the cache stays away: seconds or 2m (default 60)",
        "rate": "requests per second through the balancer (default 5); saturation: the ramp's first rate (default 0.1)",
        "instances": "fleet size for the failovers, the broken instance and the saturation drill (default 2)",
        "max_rate": "saturation: the ramp stops here if the fleet is still not saturated, in requests per second "
                    "(default 400, at most 1000)",
        "hold": "saturation: how long the overload (1.5 x the measured capacity) is held: seconds or 2m (default 60)",
        "deregistration_delay": "how long a deregistered target may drain, in seconds (default: the stack's, 60); "
                                "shorter for quick runs, and the record says so",
        "grace": "the group's health check grace period in seconds (default: the stack's, at least 600 on the "
                 "twin, whose boots take minutes); the record says which",
    },
    types={"duration": Duration(1, 3600), "rate": Number(0.1, 200), "instances": Number(2, 3, whole=True),
           "deregistration_delay": Duration(0, 3600), "grace": Duration(0, 7200), "max_rate": Number(1, 1000),
           "hold": Duration(5, 3600)},
    interrupted="stopped by Ctrl-C; everything was torn down (the record so far is in build/drill/)",
)
def drill(c, env=None, set_=None, scenario=None, duration=None, rate=None, instances=None,
          deregistration_delay=None, grace=None, max_rate=None, hold=None):
    """Load, fault and saturation drills on the twin: HAProxy as the balancer, a group stand-in, an open-loop load."""
    from infra.drill.run import choose, print_table, run_drills
    from infra.drill.scenarios import Options

    loaded = load(c, env, set_)
    if loaded.settings.builder != "local":
        raise Refusal(f"drill runs on the local twin; {loaded.settings.name} is {loaded.settings.builder}")
    names = choose(scenario)
    opts = Options()
    opts.outage_s = duration or opts.outage_s
    opts.rate = rate or opts.rate
    opts.start_rate = rate or opts.start_rate
    opts.instances = instances or opts.instances
    opts.max_rate = max_rate or opts.max_rate
    opts.hold_s = hold or opts.hold_s
    results, path = run_drills(ROOT, loaded.settings, scenarios=names, opts=opts,
                               deregistration_delay_s=deregistration_delay, grace_s=grace)
    print_table(results)
    console.print(f"wrote {path.relative_to(ROOT)}")
    missed = [r.name for r in results if not r.passed]
    if missed:
        return Verdict("missed", f"drill target missed in {', '.join(missed)}", 1)
    return Verdict("met", f"every drill target met ({', '.join(r.name for r in results)})")
