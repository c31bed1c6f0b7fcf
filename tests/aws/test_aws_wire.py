"""The doubles' wire layer: what botocore serializes is decoded back exactly, what the doubles answer is what a
botocore client reads, and an answer the service model forbids is never sent."""

from __future__ import annotations

import datetime as dt
import urllib.parse

import aws_wire as wire
import botocore.serialize
import pytest


@pytest.mark.parametrize(("service", "operation", "params"), [
    ("autoscaling", "StartInstanceRefresh", {
        "AutoScalingGroupName": "g", "Strategy": "Rolling",
        "DesiredConfiguration": {"LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "3"}},
        "Preferences": {"MinHealthyPercentage": 90, "MaxHealthyPercentage": 150, "CheckpointPercentages": [50, 100],
                        "CheckpointDelay": 300, "AutoRollback": True, "SkipMatching": False, "BakeTime": 0,
                        "AlarmSpecification": {"Alarms": ["a", "b"]}, "ScaleInProtectedInstances": "Refresh",
                        "StandbyInstances": "Ignore"}}),
    ("autoscaling", "DescribeInstanceRefreshes", {"AutoScalingGroupName": "g", "InstanceRefreshIds": []}),
    ("ec2", "CreateLaunchTemplateVersion", {
        "LaunchTemplateId": "lt-1", "SourceVersion": "1", "VersionDescription": "x",
        "LaunchTemplateData": {"ImageId": "ami-1", "SecurityGroupIds": ["sg-1", "sg-2"],
                               "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
                               "TagSpecifications": [{"ResourceType": "instance",
                                                      "Tags": [{"Key": "k", "Value": "v"}]}],
                               "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}}}),
    ("elbv2", "CreateRule", {
        "ListenerArn": "arn:l", "Priority": 1, "Conditions": [{"Field": "path-pattern", "PathPatternConfig": {
            "Values": ["/*"]}}], "Actions": [{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503"}}],
        "Tags": [{"Key": "k", "Value": "v"}]}),
])
def test_what_botocore_serializes_decodes_back_exactly(service, operation, params):
    op = wire.operation(service, operation)
    request = botocore.serialize.create_serializer(op.service_model.protocol).serialize_to_request(params, op)
    body = urllib.parse.urlencode(request["body"]).encode()
    decoded_op, decoded = wire.decode_request(service, body)
    assert decoded_op.name == operation
    expected = {k: v for k, v in params.items() if v != [] or op.service_model.protocol == "query"}
    assert decoded == expected
    assert wire.check_shape(decoded, op.input_shape, "request") == []


def test_an_answer_is_read_back_by_botocore_as_it_was_built():
    op = wire.operation("autoscaling", "DescribeInstanceRefreshes")
    answer = {"InstanceRefreshes": [{
        "InstanceRefreshId": "r-1", "AutoScalingGroupName": "g", "Status": "RollbackSuccessful",
        "StartTime": dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC), "PercentageComplete": 0,
        "Preferences": {"CheckpointPercentages": [50, 100], "AlarmSpecification": {"Alarms": ["a"]}},
        "RollbackDetails": {"RollbackReason": "an <alarm> & more", "PercentageCompleteOnRollback": 50},
    }]}
    status, headers, body = wire.encode_result(op, answer)
    assert status == 200
    parsed = wire.parse_response(op, status, headers, body)
    parsed.pop("ResponseMetadata")
    assert parsed == answer


@pytest.mark.parametrize(("answer", "problem"), [
    ({"InstanceRefreshes": [{"PercentageComplete": 150}]}, "above the model's maximum 100"),
    ({"InstanceRefreshes": [{"Status": "Sleeping"}]}, "is not one of"),
    ({"InstanceRefreshes": [{"Progress": 1}]}, "not a member"),
])
def test_an_answer_the_model_forbids_is_never_sent(answer, problem):
    with pytest.raises(AssertionError, match=problem):
        wire.encode_result(wire.operation("autoscaling", "DescribeInstanceRefreshes"), answer)


def test_errors_are_read_by_botocore_with_their_code():
    op = wire.operation("autoscaling", "StartInstanceRefresh")
    status, headers, body = wire.encode_error("autoscaling", "InstanceRefreshInProgress", "busy")
    parsed = wire.parse_response(op, status, headers, body)
    assert parsed["Error"]["Code"] == "InstanceRefreshInProgress" and status == 400
