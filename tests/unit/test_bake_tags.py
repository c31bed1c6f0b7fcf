"""Everything the AWS bake creates carries the tags infra/iam/bake.json's conditions need: Packer's amazon-ebs source
tags the instance and its volumes at launch with the run's throwaway tags, and the AMI and its snapshots with the
image's tags; and no untagged intermediate AMI exists (no encrypt_boot: the root volume is encrypted at launch)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from infra.aws import ami as amis
from render import tags as T
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "packer" / "nextcloud.pkr.hcl").read_text()
BAKE = json.loads((ROOT / "infra" / "iam" / "bake.json").read_text())


def amazon_ebs_source() -> dict[str, str]:
    """The amazon-ebs source's top-level attributes (name → expression), nested blocks left out."""
    body = re.search(r'^source "amazon-ebs" "nextcloud" \{\n(.*?)^\}', TEMPLATE, re.S | re.M).group(1)
    body = re.sub(r"^  [a-z_]+ \{\n.*?^  \}\n", "", body, flags=re.S | re.M)  # nested blocks
    return dict(re.findall(r"^  ([a-z_]+)\s*=\s*(.+?)\s*$", body, re.M))


def statement(sid: str) -> dict:
    (found,) = [s for s in BAKE["Statement"] if s.get("Sid") == sid]
    return found


def test_every_resource_packer_creates_is_tagged_and_the_projects_tags_win_over_extra_tags():
    source = amazon_ebs_source()
    # merge(): later maps win, so an operator's extra tag can never replace a tag a condition reads.
    assert source["run_tags"] == source["run_volume_tags"] == "merge(var.extra_tags, var.run_tags)"
    assert source["tags"] == source["snapshot_tags"] == "merge(var.extra_tags, var.ami_tags)"


def test_no_intermediate_untagged_ami_and_the_root_volume_is_encrypted_at_launch():
    assert "encrypt_boot" not in amazon_ebs_source()
    launch = re.search(r"launch_block_device_mappings \{\n(.*?)\n  \}", TEMPLATE, re.S).group(1)
    assert re.search(r"^\s*encrypted\s*=\s*true$", launch, re.M)
    assert re.search(r'^\s*device_name\s*=\s*"/dev/xvda"$', launch, re.M)  # Debian 12 AMIs' root device


def test_the_run_tags_satisfy_run_instances_tag_conditions():
    s = load_settings(ROOT, "example", environ={}).settings
    run_tags = amis.throwaway_tags(s, purpose=T.PURPOSE_BAKE, run_id="r1", name="nextcloud-bake-x")
    principal_env = s.name  # the role's nextcloud-image:environment tag is its environment's name
    condition = statement("LaunchOnlyThisEnvironmentsTaggedBakeAndCanaryInstancesWithItsProfiles")["Condition"]
    for key, wanted in condition["StringEquals"].items():
        tag = key.removeprefix("aws:RequestTag/")
        wanted = [principal_env if w.startswith("${aws:PrincipalTag/") else w
                  for w in (wanted if isinstance(wanted, list) else [wanted])]
        assert run_tags.get(tag) in wanted, (tag, run_tags.get(tag), wanted)
    removal = statement("StopAndRemoveOnlyThisEnvironmentsBakeAndCanaryInstancesAndVolumes")["Condition"]
    for key, wanted in removal["StringEquals"].items():
        tag = key.removeprefix("aws:ResourceTag/")
        wanted = [principal_env if w.startswith("${aws:PrincipalTag/") else w
                  for w in (wanted if isinstance(wanted, list) else [wanted])]
        assert run_tags.get(tag) in wanted, f"the bake could launch but not remove its instance: {tag}"
