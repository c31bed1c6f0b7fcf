"""Capacity: worker sizing (render/capacity.py and its shell twin nextcloud-size-workers) and the connection budget.

Expected values are worked out by hand in the comments next to them, never taken from the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack.template import evaluate_conditions, load_template, planned_resources, stack_parameters
from render import capacity
from render.capacity import Budget, default_max_connections, size_workers
from render.outputs import nextcloud_environment
from render.settings import SettingsError, load_settings
from render.stack_outputs import stack_layer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "image" / "nextcloud" / "bin" / "nextcloud-size-workers"
T = load_template()

# memory MiB -> (workers, memory_limit MiB), by hand: reserve = max(1024, memory/4), pool = memory - reserve,
# workers = pool // 100 within [2, 256], limit = (pool // 4) rounded down to 32 within [128, 512].
SIZING = [
    (1024, 2, 128),    # t3.micro: pool 0 -> the floor of 2 workers, limit floor 128
    (1536, 5, 128),    # pool 512 -> 5; 512/4 = 128
    (1700, 6, 160),    # pool 676 -> 6; 676/4 = 169 -> 160 (32 MiB steps)
    (2048, 10, 256),   # t3.small: pool 1024 -> 10; 256
    (3871, 28, 512),   # a t3.medium's MemTotal (3964732 kB): reserve 1024 (967 < 1024), pool 2847 -> 28; 711 -> 512
    (4096, 30, 512),   # t3.medium nominal: pool 3072 -> 30; 768 -> 512
    (8192, 61, 512),   # t3.large: reserve 2048, pool 6144 -> 61
    (65536, 256, 512),  # m6i.4xlarge: reserve 16384, pool 49152 -> 491 -> the ceiling of 256
]


@pytest.mark.parametrize(("memory", "workers", "limit"), SIZING)
def test_workers_and_php_memory_limit_follow_the_memory(memory, workers, limit):
    sizing = size_workers(memory)
    assert (sizing.workers, sizing.php_memory_limit_mib) == (workers, limit)
    assert sizing.php_memory_limit == f"{limit}M"


def test_the_workers_fit_beside_the_reserve_and_one_request_at_its_ceiling_still_fits():
    for memory, _, _ in SIZING[3:-1]:  # from 2 GiB up, below the 256 ceiling
        s = size_workers(memory)
        assert s.workers * capacity.WORKER_MEMORY_MIB <= memory - s.reserve_mib
        assert s.php_memory_limit_mib - capacity.WORKER_MEMORY_MIB < s.reserve_mib


def test_web_settings_can_lower_the_count_or_change_the_per_worker_figure_but_never_raise_it_past_memory():
    assert size_workers(4096, max_workers=12).workers == 12
    assert size_workers(4096, max_workers=500).workers == 30
    assert size_workers(4096, worker_memory_mib=50).workers == 61  # 3072 / 50
    with pytest.raises(ValueError):
        size_workers(0)


# ---- the boot-time twin: the same answers from /proc/meminfo ---------------------------------------------------------
def run_script(tmp_path: Path, memtotal_kb: int | None, env: dict[str, str] | None = None, *args: str,
               cgroup: str | None = None) -> subprocess.CompletedProcess[str]:
    meminfo = tmp_path / "meminfo"
    lines = ["MemFree:          123456 kB"] + ([f"MemTotal:       {memtotal_kb} kB"] if memtotal_kb else [])
    meminfo.write_text("\n".join(lines) + "\n")
    cg = tmp_path / "memory.max"
    if cgroup is not None:
        cg.write_text(cgroup + "\n")
    base = {k: v for k, v in os.environ.items()
            if k not in ("NEXTCLOUD_APACHE_MAX_WORKERS", "PHP_MEMORY_LIMIT", "NEXTCLOUD_WORKER_MEMORY_MB")}
    return subprocess.run([str(SCRIPT), "--meminfo", str(meminfo), "--cgroup-memory-max", str(cg), *args],
                          env=base | (env or {}), capture_output=True, text=True, timeout=30)


def parsed(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines())


@pytest.mark.parametrize(("memory", "workers", "limit"), SIZING)
def test_the_boot_script_gives_the_same_answers_from_meminfo(tmp_path, memory, workers, limit):
    out = parsed(run_script(tmp_path, memory * 1024))
    assert out == {"NEXTCLOUD_APACHE_MAX_WORKERS": str(workers), "PHP_MEMORY_LIMIT": f"{limit}M"}


def test_the_boot_script_and_the_renderer_agree_everywhere_in_between(tmp_path):
    for memory in range(900, 30000, 733):
        s = size_workers(memory, worker_memory_mib=80)
        out = parsed(run_script(tmp_path, memory * 1024 + 1023, {"NEXTCLOUD_WORKER_MEMORY_MB": "80"}))
        assert out == {"NEXTCLOUD_APACHE_MAX_WORKERS": str(s.workers), "PHP_MEMORY_LIMIT": s.php_memory_limit}, memory


def test_rendered_values_are_ceilings_the_machine_can_only_lower(tmp_path):
    # Rendered for a t3.large (61, 512M), booted on a t3.small's 2048 MiB: the machine's 10 and 256M win.
    rendered = {"NEXTCLOUD_APACHE_MAX_WORKERS": "61", "PHP_MEMORY_LIMIT": "512M"}
    assert parsed(run_script(tmp_path, 2048 * 1024, rendered)) == {
        "NEXTCLOUD_APACHE_MAX_WORKERS": "10", "PHP_MEMORY_LIMIT": "256M"}
    # Lower rendered values win over a larger machine; PHP's shorthand in G, K and bytes; -1 is no ceiling.
    cases = [({"NEXTCLOUD_APACHE_MAX_WORKERS": "12", "PHP_MEMORY_LIMIT": "256M"}, ("12", "256M")),
             ({"PHP_MEMORY_LIMIT": "1G"}, ("30", "512M")),
             ({"PHP_MEMORY_LIMIT": "262144K"}, ("30", "256M")),
             ({"PHP_MEMORY_LIMIT": "268435456"}, ("30", "256M")),
             ({"PHP_MEMORY_LIMIT": "-1"}, ("30", "512M")),
             ({"NEXTCLOUD_APACHE_MAX_WORKERS": ""}, ("30", "512M"))]
    for env, (workers, limit) in cases:
        out = parsed(run_script(tmp_path, 4096 * 1024, env))
        assert (out["NEXTCLOUD_APACHE_MAX_WORKERS"], out["PHP_MEMORY_LIMIT"]) == (workers, limit), env
    # Running it again on its own output changes nothing.
    once = parsed(run_script(tmp_path, 3871 * 1024))
    assert parsed(run_script(tmp_path, 3871 * 1024, once)) == once


def test_a_container_memory_limit_smaller_than_the_machine_counts(tmp_path):
    # The limit holds the workers and 512 MiB of headroom; the OS and Docker are outside it: (2048 - 512) / 100.
    assert parsed(run_script(tmp_path, 8192 * 1024, cgroup=str(2048 * 1024 * 1024)))["NEXTCLOUD_APACHE_MAX_WORKERS"] \
        == "15"
    assert parsed(run_script(tmp_path, 8192 * 1024, cgroup=str(600 * 1024 * 1024)))["NEXTCLOUD_APACHE_MAX_WORKERS"] \
        == "2"
    assert parsed(run_script(tmp_path, 4096 * 1024, cgroup="max"))["NEXTCLOUD_APACHE_MAX_WORKERS"] == "30"
    assert parsed(run_script(tmp_path, 4096 * 1024, cgroup=str(64 * 1024**3)))["NEXTCLOUD_APACHE_MAX_WORKERS"] == "30"


@pytest.mark.parametrize(("memtotal", "env", "args", "named"), [
    (None, {}, (), "MemTotal"),
    (4194304, {"PHP_MEMORY_LIMIT": "lots"}, (), "PHP_MEMORY_LIMIT"),
    (4194304, {"PHP_MEMORY_LIMIT": "0M"}, (), "PHP_MEMORY_LIMIT"),
    (4194304, {"NEXTCLOUD_APACHE_MAX_WORKERS": "ten"}, (), "NEXTCLOUD_APACHE_MAX_WORKERS"),
    (4194304, {"NEXTCLOUD_APACHE_MAX_WORKERS": "030"}, (), "NEXTCLOUD_APACHE_MAX_WORKERS"),
    (4194304, {"NEXTCLOUD_WORKER_MEMORY_MB": "0"}, (), "NEXTCLOUD_WORKER_MEMORY_MB"),
    (4194304, {}, ("--workers", "9"), "unknown argument"),
])
def test_the_boot_script_refuses_bad_input_naming_it(tmp_path, memtotal, env, args, named):
    proc = run_script(tmp_path, memtotal, env, *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert named in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_the_boot_script_is_shellcheck_clean():
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert os.access(SCRIPT, os.X_OK)


def test_the_apache_conf_reads_the_variable_the_script_prints():
    conf = (ROOT / "image" / "nextcloud" / "apache" / "mpm-workers.conf").read_text()
    assert "MaxRequestWorkers       ${NEXTCLOUD_APACHE_MAX_WORKERS}" in conf
    assert "ServerLimit             ${NEXTCLOUD_APACHE_MAX_WORKERS}" in conf
    assert "<IfModule mpm_prefork_module>" in conf


# ---- max_connections ---------------------------------------------------------------------------------------------
def test_max_connections_stays_below_what_rds_gives_each_size():
    # By hand: 96 % of the memory minus 384 MiB, x 1 MiB / 9531392 bytes.
    # 2 GiB: 1966 - 384 = 1582 MiB -> 174; 4 GiB: 3932 - 384 = 3548 -> 390; 8 GiB: 7864 - 384 = 7480 -> 822.
    assert [default_max_connections(g) for g in (2, 4, 8)] == [174, 390, 822]
    # RDS's own defaults seen on instances of those sizes: 198, 413, 856 (docs/capacity.md).
    assert all(ours < rds for ours, rds in zip([174, 390, 822], [198, 413, 856], strict=True))
    assert default_max_connections(64) == 5000  # the formula's ceiling
    assert capacity.DB_CLASS_MEMORY_GIB["db.t4g.medium"] == 4 and capacity.DB_CLASS_MEMORY_GIB["db.r6g.large"] == 16
    assert capacity.INSTANCE_MEMORY_MIB["t3.medium"] == 4096 and capacity.INSTANCE_MEMORY_MIB["c6g.medium"] == 2048


# ---- the budget ----------------------------------------------------------------------------------------------------
def test_the_budget_of_the_default_settings():
    b = Budget(max_size=4, surge_percent=200, workers=30, max_connections=390)
    # 4 x 200 % = 8 instances; 30 workers + 1 cron + 1 health check = 32; 8 x 32 = 256; + 9 reserved = 265 <= 390.
    assert (b.instances, b.per_instance, b.fleet, b.reserve, b.needed, b.fits) == (8, 32, 256, 9, 265, True)
    # 5: 10 x 32 + 9 = 329 fits; 6: 12 x 32 + 9 = 393 does not.
    assert b.largest_max_size() == 5
    # 6 instances at 150 %: ceil(9) = 9; 3 at 150 %: ceil(4.5) = 5.
    assert Budget(6, 150, 30, 390).instances == 9 and Budget(3, 150, 30, 390).instances == 5


def test_with_the_proxy_the_database_sees_the_proxys_pool_plus_the_reserve():
    b = Budget(max_size=100, surge_percent=200, workers=30, max_connections=390, proxy=True)
    # MaxConnectionsPercent = floor((390 - 9) x 100 / 390) = floor(97.69) = 97; pool = floor(390 x 0.97) = 378.
    assert capacity.proxy_max_connections_percent(390) == 97
    assert (b.proxy_pool, b.needed, b.fits) == (378, 387, True)
    assert b.fleet == 6400  # 200 instances x 32: they queue at the proxy instead of being refused


def load(env: str = "example", *sets: str):
    return load_settings(ROOT, env, sets=sets, environ={}).settings


def test_the_default_settings_fit_and_the_stack_gets_the_budgets_numbers():
    s = load()
    assert capacity.fleet_budget(s) == Budget(max_size=4, surge_percent=200, workers=30, max_connections=390)
    params = stack_parameters(s, image_id="", user_data="")
    assert params["DatabaseMaxConnections"] == "390" and params["DatabaseProxyMaxConnectionsPercent"] == "97"
    assert params["DatabaseProxyEnabled"] == "false" and params["DatabaseUser"] == s.database.user
    assert params["InstanceMaxHealthyPercentage"] == "200"
    assert T["Resources"]["DatabaseParameters"]["Properties"]["Parameters"]["max_connections"] == {
        "Ref": "DatabaseMaxConnections"}


def refusal(*sets: str, env: str = "example") -> str:
    with pytest.raises(SettingsError) as err:
        load(env, *sets)
    return "\n".join(err.value.problems)


def test_max_size_100_on_a_db_t4g_medium_is_refused_naming_the_keys_and_the_fixes():
    text = refusal("stack.max_size=100")
    assert text.startswith("stack.max_size: ")
    for key in ("stack.max_size", "instance_type", "web.worker_memory_mb", "stack.database.instance_class",
                "stack.database.proxy"):
        assert key in text, key
    # 200 instances x 32 + 9 = 6409 > 390; only a smaller group or the proxy help (no class reaches 6409).
    assert "= 6409 > max_connections 390" in text
    assert "stack.max_size = 5 or less" in text and "stack.database.proxy = true" in text
    assert "no DB class in the table reaches 6409" in text


def test_a_near_miss_offers_fewer_workers_and_the_next_class():
    # max_size 6: 12 instances x 32 + 9 = 393 > 390. Workers: (390 - 9) // 12 - 2 = 29 (12 x 31 + 9 = 381 fits).
    # Class: 393 needs more than db.t4g.medium's 390; db.t4g.large gives 822.
    text = refusal("stack.max_size=6")
    assert "web.max_workers = 29 or less" in text and "stack.database.instance_class = 'db.t4g.large' or larger" in text
    assert load("example", "stack.max_size=6", "web.max_workers=29").stack.max_size == 6
    assert load("example", "stack.max_size=6", "stack.database.instance_class=db.t4g.large").stack.max_size == 6
    assert load("example", "stack.max_size=100", "stack.database.proxy=true").stack.database.proxy is True


def test_sizes_the_tables_do_not_know_need_the_figure_spelled_out():
    text = refusal("instance_type=x2iedn.xlarge")
    assert text.startswith("instance_type: ") and "set web.max_workers" in text
    assert capacity.fleet_budget(load("example", "instance_type=x2iedn.xlarge", "web.max_workers=40")).workers == 40
    text = refusal("stack.database.instance_class=db.x2g.large")
    assert text.startswith("stack.database.instance_class: ") and "set stack.database.max_connections" in text
    s = load("example", "stack.database.instance_class=db.x2g.large", "stack.database.max_connections=500")
    assert stack_parameters(s, image_id="", user_data="")["DatabaseMaxConnections"] == "500"


def test_the_refresh_preferences_count_when_they_surge_more():
    # rollout.max_healthy_percentage 150 < the maintenance policy's 200: still 200.
    assert capacity.surge_percent(load()) == 200


def test_the_local_twin_is_not_held_to_a_stack_it_does_not_have():
    assert load("local", "stack.max_size=100").stack.max_size == 100


# ---- rendered and deployed ---------------------------------------------------------------------------------------
def test_the_container_environment_carries_the_sizing_of_the_instance_type():
    env = dict(nextcloud_environment(load()))
    assert (env["NEXTCLOUD_APACHE_MAX_WORKERS"], env["PHP_MEMORY_LIMIT"], env["NEXTCLOUD_WORKER_MEMORY_MB"]) == (
        "30", "512M", "100")
    env = dict(nextcloud_environment(load("example", "instance_type=t3.small")))
    assert (env["NEXTCLOUD_APACHE_MAX_WORKERS"], env["PHP_MEMORY_LIMIT"]) == ("10", "256M")
    env = dict(nextcloud_environment(load("example", "instance_type=x2iedn.xlarge", "web.max_workers=40")))
    assert (env["NEXTCLOUD_APACHE_MAX_WORKERS"], env["PHP_MEMORY_LIMIT"]) == ("40", "512M")  # boot lowers them


def test_the_proxy_exists_only_when_asked_and_the_instances_follow_it():
    s = load()
    off = dict(planned_resources(T, stack_parameters(s, image_id="", user_data="")))
    assert not [k for k in off if "Proxy" in k]
    on_params = stack_parameters(load("example", "stack.database.proxy=true"), image_id="", user_data="")
    assert evaluate_conditions(T, on_params)["WithDatabaseProxy"]
    on = dict(planned_resources(T, on_params))
    assert on["DatabaseProxy"] == "AWS::RDS::DBProxy" and on["DatabaseProxyTargets"] == "AWS::RDS::DBProxyTargetGroup"
    proxy = T["Resources"]["DatabaseProxy"]["Properties"]
    assert proxy["RequireTLS"] is True and proxy["EngineFamily"] == "POSTGRESQL"
    assert proxy["Auth"] == [{"AuthScheme": "SECRETS", "SecretArn": {"Ref": "DatabaseProxySecret"},
                              "ClientPasswordAuthType": "POSTGRES_SCRAM_SHA_256"}]
    pool = T["Resources"]["DatabaseProxyTargets"]["Properties"]
    assert pool["DBInstanceIdentifiers"] == [{"Ref": "Database"}]
    assert pool["ConnectionPoolConfigurationInfo"]["MaxConnectionsPercent"] == {
        "Ref": "DatabaseProxyMaxConnectionsPercent"}
    statements = T["Resources"]["DatabaseProxyRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert [st["Resource"] for st in statements] == [{"Ref": "DatabaseProxySecret"}, {"Fn::GetAtt": ["DataKey", "Arn"]}]
    # The settings layer: the proxy's address, when the stack has one, is where the instances connect.
    outputs = {"DatabaseAddress": "db.example.internal", "DatabaseProxyAddress": "proxy.example.internal"}
    layer = stack_layer(outputs, {}, source="f", outputs_source="o", known=lambda k: True)
    assert [v for k, v, _ in layer if k == "database.host"][-1] == "proxy.example.internal"
    assert T["Outputs"]["DatabaseProxyAddress"]["Condition"] == "WithDatabaseProxy"


def test_the_stack_and_the_budget_share_the_replacement_ceiling():
    group = T["Resources"]["Group"]["Properties"]["InstanceMaintenancePolicy"]
    assert group["MaxHealthyPercentage"] == {"Ref": "InstanceMaxHealthyPercentage"}
    assert T["Parameters"]["InstanceMaxHealthyPercentage"]["MaxValue"] >= capacity.MAINTENANCE_MAX_HEALTHY_PERCENTAGE


def test_the_refusal_reaches_the_front_door_with_a_non_zero_exit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "invoke", "render", "--env", "example", "--set", "stack.max_size=100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("NCIMAGE_")})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "stack.max_size:" in out and "stack.database.instance_class" in out and "verdict: refused" in out


APACHE = Path("/usr/sbin/apache2")


@pytest.mark.skipif(not APACHE.exists(), reason="Debian's apache2-bin is not installed")
def test_apache_reads_the_worker_count_from_the_environment(tmp_path):
    # Debian's mpm_prefork.conf comes first (mods-enabled), ours after it (conf-enabled), as in the image.
    conf = tmp_path / "httpd.conf"
    conf.write_text(
        f"ServerRoot {tmp_path}\nServerName localhost\nPidFile {tmp_path}/httpd.pid\nErrorLog {tmp_path}/error.log\n"
        "Listen 127.0.0.1:18099\nLoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so\n"
        "<IfModule mpm_prefork_module>\n  MaxRequestWorkers 150\n</IfModule>\n"
        f"Include {ROOT / 'image' / 'nextcloud' / 'apache' / 'mpm-workers.conf'}\n")

    def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if k != "NEXTCLOUD_APACHE_MAX_WORKERS"}
        return subprocess.run([str(APACHE), "-f", str(conf), "-t"], env=base | env, capture_output=True, text=True,
                              timeout=30)

    good = check({"NEXTCLOUD_APACHE_MAX_WORKERS": "28"})
    assert good.returncode == 0 and "Syntax OK" in good.stderr and "AH00111" not in good.stderr, good.stderr
    # Unset, Apache only warns and runs ONE worker: the entrypoint must always export the script's output.
    unset = check({})
    assert "AH00111" in unset.stderr and "MaxRequestWorkers of 0 not allowed" in unset.stderr
