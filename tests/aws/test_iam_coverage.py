"""The IAM coverage check itself: it must fail for a call no policy allows, or it proves nothing."""

from __future__ import annotations

import pytest
from iam_coverage import allowed, assert_allowed, iam_action, missing

STATEMENTS = [
    {"Effect": "Allow", "Action": ["ec2:Describe*", "autoscaling:StartInstanceRefresh"], "Resource": "*"},
    {"Effect": "Deny", "Action": "ec2:DescribeKeyPairs", "Resource": "*"},
]


def test_actions_are_named_as_iam_authorises_them():
    assert iam_action("elbv2", "DescribeTargetHealth") == "elasticloadbalancing:DescribeTargetHealth"
    assert iam_action("s3", "HeadBucket") == "s3:ListBucket"
    assert iam_action("cloudwatch", "DescribeAlarms") == "cloudwatch:DescribeAlarms"


def test_wildcards_allow_and_an_unconditional_deny_wins():
    assert allowed("ec2:DescribeImages", STATEMENTS)
    assert not allowed("ec2:DescribeKeyPairs", STATEMENTS)
    assert not allowed("ec2:RunInstances", STATEMENTS)
    assert missing([("ec2", "RunInstances"), ("autoscaling", "StartInstanceRefresh")], STATEMENTS) == [
        "ec2:RunInstances"
    ]


def test_a_call_outside_the_repository_policies_fails():
    with pytest.raises(AssertionError, match="iam:CreateUser"):
        assert_allowed([("iam", "CreateUser")])
    assert_allowed([("sts", "GetCallerIdentity")])
