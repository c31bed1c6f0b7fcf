"""The boot chain the benchmark records: systemd's and the container's own timestamps, parsed as they come."""

import json
import subprocess

from infra.bench import bootchain

SHOW = """Id=cloud-init.service
InactiveExitTimestampMonotonic=9123456
ActiveEnterTimestampMonotonic=31250000

Id=nextcloud-secrets.service
InactiveExitTimestampMonotonic=31300000
ActiveEnterTimestampMonotonic=34049999

Id=nextcloud.service
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=0
"""


def journal(*entries):
    return "\n".join(json.dumps({"MESSAGE": m, "__MONOTONIC_TIMESTAMP": str(t)}) for m, t in entries)


def test_units_give_start_and_active_seconds_and_none_for_what_did_not_happen():
    units = bootchain.parse_units(SHOW)
    assert units["cloud-init.service"] == {"started_s": 9.1, "active_s": 31.2}
    assert units["nextcloud-secrets.service"]["active_s"] == 34.0
    assert units["nextcloud.service"] == {"started_s": None, "active_s": None}


def test_container_milestones_are_the_first_matching_line_each():
    lines = journal(
        ("nextcloud-cluster-entrypoint: loaded runtime settings from /run/secrets/nextcloud-runtime.env", 40_100_000),
        ("AH00163: Apache configured -- resuming normal operations", 44_000_000),
        ("cluster-init: waiting for database 10.0.2.2:55432", 44_500_000),
        ("cluster-init: ready: cluster oc123 at 34.0.3.1", 47_300_000),
        ("cluster-init: ready: cluster oc123 at 34.0.3.1", 99_000_000),
    ).splitlines() + ["not json", json.dumps({"MESSAGE": [1, 2], "__MONOTONIC_TIMESTAMP": "5"})]
    found = bootchain.parse_journal(lines)
    assert found == {"entrypoint_started": 40.1, "apache_started": 44.0, "cluster_ready": 47.3}


def test_a_container_that_never_got_ready_says_so():
    found = bootchain.parse_journal(journal(("nextcloud-cluster-entrypoint: loaded runtime settings", 40_000_000))
                                    .splitlines())
    assert found["cluster_ready"] is None and found["entrypoint_started"] == 40.0


def test_whole_output_and_summary_in_time_order():
    out = SHOW + "--journal--\n" + journal(("AH00163: Apache configured -- resuming normal operations", 44_000_000))
    chain = bootchain.parse(out)
    assert chain["container"]["apache_started"] == 44.0
    assert bootchain.summary(chain) == "cloud-init up 31.2, nextcloud-secrets up 34.0, apache started 44.0"


def test_the_command_asks_for_every_unit_and_the_containers_journal():
    cmd = bootchain.command()
    for unit in bootchain.UNITS:
        assert unit in cmd
    assert "journalctl" in cmd and "-u nextcloud.service" in cmd and "-o json" in cmd


class _RestartingSshd:
    """Stands in for an Instance whose sshd is being restarted by cloud-init's config stage: ssh (OpenSSH's
    client) exits 255 on a refused or reset connection, then the login works."""

    def __init__(self, failures: int, output: str):
        self.failures, self.output, self.calls = failures, output, 0

    def ssh(self, command: str, timeout: float = 60):
        self.calls += 1
        if self.calls <= self.failures:
            return subprocess.CompletedProcess(["ssh"], 255, "", "kex_exchange_identification: Connection reset")
        return subprocess.CompletedProcess(["ssh"], 0, self.output, "")


def test_read_tries_again_while_sshd_restarts(monkeypatch):
    monkeypatch.setattr(bootchain, "SSH_RETRY_S", 0)
    inst = _RestartingSshd(failures=2, output=SHOW + "--journal--\n")
    chain = bootchain.read(inst)
    assert "error" not in chain and chain["units"]["cloud-init.service"]["active_s"] == 31.2
    assert inst.calls == 3


def test_read_gives_up_and_says_why(monkeypatch):
    monkeypatch.setattr(bootchain, "SSH_RETRY_S", 0)
    inst = _RestartingSshd(failures=99, output="")
    chain = bootchain.read(inst)
    assert chain["error"].startswith("reading the boot chain failed (255): kex_exchange_identification")
    assert inst.calls == bootchain.SSH_ATTEMPTS
