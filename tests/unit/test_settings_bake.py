"""The settings the AWS bake, test-ami and sweep add: [bake] and ami.ssm_parameter, and a Nextcloud image that
build-ami pins on the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from render.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def example(**overrides):
    return load_settings(ROOT, "example", environ={}, overrides=overrides).settings


def test_a_versioned_tag_is_accepted_for_aws_build_ami_pins_it():
    assert example(**{"nextcloud.image": "nextcloud:34.0.3-apache"}).nextcloud.image == "nextcloud:34.0.3-apache"
    ecr = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/docker-hub/library/nextcloud:34.0.3-apache"
    assert example(**{"nextcloud.image": ecr}).nextcloud.image == ecr


@pytest.mark.parametrize("image", ["nextcloud:34.0.3-apache\n", "nextcloud:stable", "nextcloud"])
def test_unpinnable_or_floating_references_are_refused(image):
    with pytest.raises(SettingsError, match="nextcloud.image"):
        example(**{"nextcloud.image": image})


def test_bake_defaults_and_the_example():
    s = example()
    assert s.bake.subnet_id == "subnet-0123456789abcdef0" and s.bake.ssh_interface == "public_ip"
    assert s.bake.ssh_source_cidrs == [] and s.bake.communicator == "ssh" and s.ami.ssm_parameter is None
    local = load_settings(ROOT, "local", environ={}).settings
    assert local.bake.subnet_id is None  # only AWS environments need one


@pytest.mark.parametrize(("key", "value", "message"), [
    ("bake.subnet_id", "subnet-0123456789abcdef0\n", "line feed (U+000A) at the end"),
    ("bake.subnet_id", "subnet-0123", "subnet id"),
    ("bake.ssh_source_cidrs", ["10.0.0.0/8"], "at most a /24"),
    ("bake.ssh_source_cidrs", ["::/0"], "at most a /24"),
    ("bake.instance_profile", "arn:aws:iam::123456789012:instance-profile/x", "not its ARN"),
    ("bake.communicator", "winrm", "bake.communicator"),
    ("ami.ssm_parameter", "nextcloud/ami", "starts with '/'"),
    ("ami.ssm_parameter", "/ssm/ami", "not under /aws or /ssm"),
    ("bake.ssh_interface", "session_manager", "needs bake.instance_profile"),
])
def test_bad_bake_settings_name_the_key_and_the_fix(key, value, message):
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")) as refusal:
        example(**{key: value})
    assert message in str(refusal.value)


def test_session_manager_is_refused_on_debians_images_which_carry_no_ssm_agent():
    """Debian's AMIs ship no SSM agent and the bake installs none: Session Manager could never reach the bake or
    the canary, so the choice is refused up front, naming the key; a base image of one's own may carry it."""
    chosen = {"bake.ssh_interface": "session_manager", "bake.instance_profile": "nextcloud-bake"}
    with pytest.raises(SettingsError, match=r"bake\.ssh_interface") as refusal:
        example(**chosen)
    assert "SSM agent" in str(refusal.value) and "'public_ip'" in str(refusal.value)
    own = example(**chosen, **{"base_image.owner": "123456789012"})
    assert own.bake.ssh_interface == "session_manager"
