"""`inv test-ami` on AWS against the emulator: the canary's whole lifecycle is production code (launch like the
group's instances, wait, verdict on the AMI, remove everything); only what would reach into the instance is a
double (``InstanceDouble``), because an emulated instance's address belongs to nobody."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from bake_support import (
    BUILD_HOST,
    COPY_REGION,
    REGION,
    ROOT,
    emulator_state,
    make_group,
    register_ami,
    registered_targets,
    settings_for,
)

from infra.aws import canary
from infra.aws.session import AwsError
from infra.host_keys import HostKey
from render import tags as T


def _public_key(private) -> str:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()


def _canary_keys() -> list[str]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    return [_public_key(ec.generate_private_key(ec.SECP256R1())), _public_key(ed25519.Ed25519PrivateKey.generate())]


# What cloud-init's write-ssh-key-fingerprints adds to a console (moto's GetConsoleOutput has a fixed text without).
CANARY_KEYS = _canary_keys()
KEYS_ON_CONSOLE = ("-----BEGIN SSH HOST KEY KEYS-----\r\n"
                   + "".join(f"{k} root@ip-10-0-1-23\r\n" for k in CANARY_KEYS)
                   + "-----END SSH HOST KEY KEYS-----\r\n")


@pytest.fixture(autouse=True)
def console(monkeypatch):
    """The canary's console as the emulator returns it (GetConsoleOutput is really called), plus ``extra``: by
    default the host key block cloud-init prints; a test sets ``console.extra = ""`` for a console without."""

    class Console:
        extra = KEYS_ON_CONSOLE
        calls = 0

    real = canary._console_text

    def text(ec2, instance_id, latest):
        Console.calls += 1
        return real(ec2, instance_id, latest) + Console.extra

    monkeypatch.setattr(canary, "_console_text", text)
    return Console


class InstanceDouble:
    """Stands in for everything test-ami reaches *inside* a real canary, which the emulator cannot give (its
    instances have addresses that belong to nobody): sshd accepting the run's key, ``GET /readyz`` answered as
    the image's readyz.php answers it (200 ``{"ready": true}``, or 503 with ``code``/``reason``), and the exit
    code of the testinfra run. While "the suite runs" it also records what the emulator says about the canary,
    so the test can check how it was launched."""

    def __init__(self, aws: Any, answers: list[tuple[int, dict]], suite_exit: int = 0, raise_in_suite=None):
        self.aws, self.answers, self.suite_exit, self.raise_in_suite = aws, list(answers), suite_exit, raise_in_suite
        self.target: canary.Target | None = None
        self.contacted = False
        self.deselected: list[str] | None = None
        self.seen: dict[str, Any] = {}
        self.closed = False

    def __call__(self, target: canary.Target) -> InstanceDouble:  # the access factory
        self.target = target
        return self

    def wait_ssh(self, deadline: float) -> None:
        assert self.target is not None and self.target.key_file.is_file()
        self.contacted = True

    def readyz(self) -> tuple[int, dict]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def run_suite(self, root: Path, *, deselect, keep_going: bool) -> int:
        self.deselected = list(deselect)
        ec2 = self.aws.client("ec2")
        instance = ec2.describe_instances(InstanceIds=[self.target.instance_id])["Reservations"][0]["Instances"][0]
        user_data = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        self.seen = {
            "instance": instance,
            "user_data": base64.b64decode(user_data["UserData"]["Value"]).decode(),
            "key_pairs": ec2.describe_key_pairs()["KeyPairs"],
            "groups": ec2.describe_security_groups(
                GroupIds=[g["GroupId"] for g in instance["NetworkInterfaces"][0]["Groups"]])["SecurityGroups"],
        }
        if self.raise_in_suite:
            raise self.raise_in_suite
        return self.suite_exit

    def close(self) -> None:
        self.closed = True


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def live(state: dict) -> dict:
    """The state without what terminated instances leave visible for a while (as on AWS)."""
    return {region: {**kinds, "instances": {i: v for i, v in kinds["instances"].items() if v[0] != "terminated"}}
            for region, kinds in state.items()}


def without_image_tags(state: dict) -> dict:
    return {region: {k: v for k, v in kinds.items() if k != "images"} for region, kinds in state.items()}


@pytest.fixture
def environment(aws):
    settings = settings_for(aws, ami__regions=[COPY_REGION])
    amis = register_ami(aws, settings)
    group = make_group(aws, settings, amis[REGION])
    return settings, amis, group


def run(settings, double, lines, **kwargs):
    return canary.test_aws_image(ROOT, settings, ami=kwargs.pop("ami", None), access_factory=double,
                                 log=lines.append, poll_s=0.05, **kwargs)


def test_a_passing_canary_is_launched_like_the_group_and_leaves_nothing(aws, environment):
    settings, amis, group = environment
    before = live(emulator_state(aws))
    targets_before = registered_targets(aws, group["target_group"])
    double = InstanceDouble(aws, [(503, {"ready": False, "code": "db_unreachable", "reason": "waiting"}),
                                  (200, {"ready": True})])
    lines: list[str] = []
    verdict = run(settings, double, lines, ami=amis[REGION])
    assert verdict.word == "passed" and verdict.ok, (verdict.line(), lines)

    seen = double.seen
    instance = seen["instance"]
    assert instance["ImageId"] == amis[REGION] and instance["SubnetId"] == group["subnet"]
    assert instance["IamInstanceProfile"]["Arn"] == group["profile_arn"]
    assert instance["InstanceType"] == "t3.small"  # the launch template's, not the settings' t3.medium
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    tags = tags_of(instance)
    assert tags[T.PURPOSE] == T.PURPOSE_CANARY and tags[T.MANAGED] == "true" and tags[T.RUN]
    groups = {g["GroupId"]: g for g in seen["groups"]}
    assert group["security_group"] in groups and len(groups) == 2
    (own,) = [g for g in groups.values() if g["GroupId"] != group["security_group"]]
    assert [(p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in own["IpPermissions"]] == [(22, [BUILD_HOST])]
    document = json.loads(seen["user_data"].split("content: |", 1)[1])
    assert settings.cluster.allow_install is True
    assert document["role"] == {"allow_install": False, "allow_upgrade": False}
    assert document["secrets"]["NEXTCLOUD_DB_PASSWORD"] == settings.secrets.db_password
    # Not in the load balancer: the group's target group holds only the group's own instances.
    assert instance["InstanceId"] not in registered_targets(aws, group["target_group"])
    assert registered_targets(aws, group["target_group"]) == targets_before
    assert double.deselected == [] and double.closed
    # SSH trusts exactly the host keys the canary's console showed, read before the first contact.
    assert double.target.host_keys == tuple(HostKey(*k.split()[:2]) for k in CANARY_KEYS)
    assert any(line == "  host keys from the console: ecdsa-sha2-nistp256, ssh-ed25519" for line in lines)

    for region, image_id in amis.items():
        image_tags = tags_of(aws.client("ec2", region).describe_images(ImageIds=[image_id])["Images"][0])
        assert image_tags[T.TEST_VERDICT] == T.VERDICT_PASSED and image_tags[T.TESTED_AT].endswith("Z")
        assert image_tags[T.TEST_RUN] == tags[T.RUN]
    assert without_image_tags(live(emulator_state(aws))) == without_image_tags(before)
    created = next(line for line in lines if line.startswith("  created: "))
    removed = next(line for line in lines if line.startswith("  removed: "))
    for kind in ("key-pair", "security-group", "instance"):
        assert kind in created and kind in removed


@pytest.mark.parametrize("case", ["suite fails", "never ready (timeout)", "Ctrl-C during the suite"])
def test_a_failing_timed_out_or_interrupted_canary_leaves_nothing(aws, environment, case):
    settings, amis, _ = environment
    before = live(emulator_state(aws))
    ready = (200, {"ready": True})
    double = {
        "suite fails": InstanceDouble(aws, [ready], suite_exit=1),
        "never ready (timeout)": InstanceDouble(aws, [(503, {"ready": False, "code": "db_unreachable"})]),
        "Ctrl-C during the suite": InstanceDouble(aws, [ready], raise_in_suite=KeyboardInterrupt()),
    }[case]
    lines: list[str] = []
    if case == "Ctrl-C during the suite":
        with pytest.raises(KeyboardInterrupt):
            run(settings, double, lines, ami=amis[REGION], timeout_s=5)
    else:
        verdict = run(settings, double, lines, ami=amis[REGION], timeout_s=2)
        assert verdict.word == "failed" and verdict.exit_code == 1
        assert ("pytest exit 1" if case == "suite fails" else "not ready before the timeout") in verdict.detail
    image_tags = tags_of(aws.client("ec2").describe_images(ImageIds=[amis[REGION]])["Images"][0])
    expected = None if case == "Ctrl-C during the suite" else T.VERDICT_FAILED
    assert image_tags.get(T.TEST_VERDICT) == expected
    assert without_image_tags(live(emulator_state(aws))) == without_image_tags(before), lines
    assert any(line.startswith("  removed: ") and "instance" in line for line in lines)


def test_an_empty_cluster_database_is_said_and_checked_up_to_the_install(aws, environment):
    settings, amis, _ = environment
    double = InstanceDouble(aws, [(503, {"ready": False, "code": "not_installed", "reason": "no cluster yet"})])
    lines: list[str] = []
    verdict = run(settings, double, lines, ami=amis[REGION])
    assert verdict.word == "passed" and "database is empty" in verdict.detail
    assert double.deselected == list(canary.NEEDS_READY)
    assert any("database is empty" in line for line in lines)


def refused_without_change(aws, settings, expected: str, **kwargs):
    before = emulator_state(aws)
    with pytest.raises(AwsError, match=expected):
        canary.test_aws_image(ROOT, settings, access_factory=InstanceDouble(aws, [(200, {})]), log=lambda _m: None,
                              **kwargs)
    assert emulator_state(aws) == before


def test_refusals_change_nothing(aws, environment, tmp_path):
    settings, amis, _ = environment
    refused_without_change(aws, settings, "does not exist", ami="ami-0123456789abcdef0")
    other = register_ami(aws, settings, env="staging")[REGION]
    refused_without_change(aws, settings, "not an AMI of environment example", ami=other)
    incomplete = register_ami(aws, settings, complete=False)[REGION]
    refused_without_change(aws, settings, "bake never completed", ami=incomplete)
    unknown_group = settings.model_copy(update={"autoscaling": settings.autoscaling.model_copy(
        update={"group_name": "no-such-group"})})
    refused_without_change(aws, unknown_group, "autoscaling.group_name = 'no-such-group'", ami=amis[REGION])


def test_dry_run_plans_and_changes_nothing(aws, environment):
    settings, amis, _ = environment
    before = emulator_state(aws)
    lines: list[str] = []
    verdict = run(settings, InstanceDouble(aws, [(200, {})]), lines, ami=amis[REGION], dry_run=True)
    assert verdict.word == "dry run" and "nothing was changed" in verdict.detail
    assert any(line.startswith("would create: a key pair, a security group") for line in lines)
    assert any("SSH only to the host keys its console output shows" in line for line in lines)
    assert emulator_state(aws) == before
    assert not {op for _, op in aws.calls if not op.startswith(("Describe", "Get"))}


def test_no_host_keys_on_the_console_is_refused_before_any_contact(aws, environment, console):
    settings, amis, _ = environment
    console.extra = ""  # moto's console text alone: a kernel banner, no keys
    before = live(emulator_state(aws))
    double = InstanceDouble(aws, [(200, {"ready": True})])
    lines: list[str] = []
    with pytest.raises(AwsError, match="showed no SSH host keys on its console output") as refused:
        run(settings, double, lines, ami=amis[REGION], timeout_s=0.5)
    assert refused.value.exit_code == 1
    assert "--accept-new-host-key" in str(refused.value) and "no verdict recorded" in str(refused.value)
    assert console.calls >= 1 and double.target is None and not double.contacted
    image_tags = tags_of(aws.client("ec2").describe_images(ImageIds=[amis[REGION]])["Images"][0])
    assert T.TEST_VERDICT not in image_tags
    assert without_image_tags(live(emulator_state(aws))) == without_image_tags(before), lines
    assert any(line.startswith("  removed: ") and "instance" in line for line in lines)


def test_accept_new_host_key_is_an_explicit_weaker_choice(aws, environment, console, monkeypatch):
    settings, amis, _ = environment
    console.extra = ""
    monkeypatch.setattr(canary, "ACCEPT_NEW_AFTER_S", 0.2)
    double = InstanceDouble(aws, [(200, {"ready": True})])
    lines: list[str] = []
    verdict = run(settings, double, lines, ami=amis[REGION], accept_new_host_key=True)
    assert verdict.word == "passed", (verdict.line(), lines)
    assert double.target.host_keys == () and double.contacted
    assert any("trusting the key it presents on first contact (--accept-new-host-key)" in line for line in lines)
