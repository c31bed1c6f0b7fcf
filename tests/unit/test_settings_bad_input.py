"""Bad environment files: each one is refused with a message naming the field and the fix, a non-zero exit,
and nothing written under build/. Runs the real `inv render` front door in a scratch copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "environments" / "example.toml").read_text()
LOCAL = (ROOT / "environments" / "local.toml").read_text()


def aws(old: str, new: str) -> str:
    assert old in EXAMPLE, old
    return EXAMPLE.replace(old, new, 1)


def local(old: str, new: str) -> str:
    assert old in LOCAL, old
    return LOCAL.replace(old, new, 1)


DIGEST = "@sha256:" + "0" * 64
# (case id, file content, environment variables, --set flags, the field the message must name, a fix fragment)
CASES = [
    ("empty-file", "", {}, [], "empty", "example.toml"),
    ("whitespace-only", "  \n\n", {}, [], "empty", "example.toml"),
    ("not-toml", "name = \n[[[", {}, [], "not valid TOML", "fix the syntax"),
    ("not-utf8", b"name = '\xff\xfe'".decode("latin-1"), {}, [], "UTF-8", "save the file"),
    ("missing-name", aws('name = "example"\n', ""), {}, [], "name: required field is missing", "add `name"),
    ("missing-builder", aws('builder = "aws"', ""), {}, [], "builder: required field is missing", "add `builder"),
    ("missing-nextcloud-section", aws('[nextcloud]\n', "[nextcloud_typo]\n"), {}, [], "nextcloud", "remove it"),
    ("missing-db-host", aws('host = "nextcloud.abcdefghijkl', 'hostname = "nextcloud.abcdefghijkl'),
     {}, [], "database.host", "add `host"),
    ("port-not-int", aws("port = 5432", 'port = "abc"'), {}, [], "database.port", "valid integer"),
    ("port-out-of-range", aws("port = 5432", "port = 70000"), {}, [], "database.port", "less than or equal to 65535"),
    ("tls-not-bool", aws("tls = true", 'tls = "yes"'), {}, [], "redis.tls", "valid boolean"),
    ("unknown-top-key", aws('builder = "aws"', 'builder = "aws"\nbuidler = "aws"'), {}, [], "buidler",
     "did you mean 'builder'"),
    ("unknown-section-key", aws("tls = true", "tls = true\ntsl = true"), {}, [], "redis.tsl", "did you mean 'tls'"),
    ("floating-latest", aws("nextcloud:29.0.7-apache" + DIGEST, "nextcloud:latest"), {}, [], "nextcloud.image",
     "floating tag 'latest'"),
    ("floating-tag-without-digest", aws("nextcloud:29.0.7-apache" + DIGEST, "nextcloud:apache"), {}, [],
     "nextcloud.image", "floating tag 'apache'"),
    ("no-tag-no-digest", aws("nextcloud:29.0.7-apache" + DIGEST, "nextcloud"), {}, [],
     "nextcloud.image", "repo:tag@sha256"),
    ("bake-subnet-missing", aws('subnet_id = "subnet-0123456789abcdef0"', ""), {}, [], "bake.subnet_id",
     "BakeSubnetId"),
    ("bake-subnet-malformed", aws('subnet_id = "subnet-0123456789abcdef0"', 'subnet_id = "sn-1"'), {}, [],
     "bake.subnet_id", "subnet-0123456789abcdef0"),
    ("bake-ssh-from-everywhere", aws("ssh_source_cidrs = []", 'ssh_source_cidrs = ["0.0.0.0/0"]'), {}, [],
     "bake.ssh_source_cidrs", "build host (/32)"),
    ("bake-ssh-interface", aws('ssh_interface = "public_ip"', 'ssh_interface = "ssh"'), {}, [],
     "bake.ssh_interface", "public_ip"),
    ("ssm-parameter-reserved", aws('# ssm_parameter = "/nextcloud/example/ami-id"', 'ssm_parameter = "/aws/x"'),
     {}, [], "ami.ssm_parameter", "not under /aws"),
    ("latest-with-digest", aws("nextcloud:29.0.7-apache" + DIGEST, "nextcloud:latest" + DIGEST), {}, [],
     "nextcloud.image", "floating tag 'latest'"),
    ("not-an-image-ref", aws("nextcloud:29.0.7-apache" + DIGEST, "Next Cloud!"), {}, [], "nextcloud.image",
     "repo:tag@sha256"),
    ("invalid-region", aws('region = "eu-central-1"\n', 'region = "europe-middle"\n'), {}, [], "region",
     "such as eu-central-1"),
    ("bad-cidr", aws('["10.0.0.0/16"]', '["10.0.0.0/33"]'), {}, [], "site.trusted_proxies", "10.0.0.0/16"),
    ("cidr-host-bits", aws('["10.0.0.0/16"]', '["10.0.0.1/16"]'), {}, [], "site.trusted_proxies", "CIDR"),
    ("proxies-not-list", aws('["10.0.0.0/16"]', '"10.0.0.0/16"'), {}, [], "site.trusted_proxies", "valid list"),
    ("literal-secret-in-aws", aws('db_password = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:'
                                   'nextcloud/db-password-AbCdEf"', 'db_password = "literal:hunter2"'),
     {}, [], "secrets.db_password", "Secrets Manager"),
    ("unknown-secret-scheme", aws('instanceid = "ssm:/nextcloud/example/instanceid"', 'instanceid = "vault:x"'),
     {}, [], "secrets.instanceid", "ssm:/path/name"),
    ("plain-secret-value", local('db_password = "literal:local-only-db-password"', 'db_password = "hunter2"'),
     {}, [], "secrets.db_password", "literal:VALUE"),
    ("invalid-builder", aws('builder = "aws"', 'builder = "gcp"'), {}, [], "builder", "'local' or 'aws'"),
    ("invalid-instance-type", aws('instance_type = "t3.medium"', 'instance_type = "huge"'), {}, [],
     "instance_type", "such as t3.medium"),
    ("invalid-bucket", aws('bucket = "example-nextcloud-primary"', 'bucket = "My_Bucket"'), {}, [], "s3.bucket",
     "valid S3 bucket name"),
    ("aws-without-bucket", aws('bucket = "example-nextcloud-primary"', ""), {}, [], "s3.bucket",
     "primary object storage"),
    ("aws-docker-debian", aws('version = "5:27.3.1-1~debian.12~bookworm"', 'version = "debian"'), {}, [],
     "docker.version", "pins docker-ce"),
    ("docker-latest", aws('version = "5:27.3.1-1~debian.12~bookworm"', 'version = "latest"'), {}, [],
     "docker.version", "exact docker-ce apt version"),
    ("name-mismatch", aws('name = "example"', 'name = "production"'), {}, [], "name", "make them match"),
    ("checkpoints-unordered", aws("checkpoint_percentages = [50, 100]", "checkpoint_percentages = [100, 50]"),
     {}, [], "rollout.checkpoint_percentages", "end with 100"),
    ("healthy-window", aws("max_healthy_percentage = 150", "max_healthy_percentage = 200")
     .replace("min_healthy_percentage = 90", "min_healthy_percentage = 50"), {}, [], "rollout",
     "raise min_healthy_percentage"),
    ("retention-zero", aws("retention = 3", "retention = 0"), {}, [], "ami.retention", "greater than or equal to 1"),
    ("reserved-tag", aws('project = "nextcloud"', '"aws:project" = "nextcloud"'), {}, [], "tags", "rename it"),
    ("aws-without-owner", aws('owner = "136693071363"', ""), {}, [], "base_image.owner", "AMI owner"),
    ("bad-owner", aws('owner = "136693071363"', 'owner = "debian"'), {}, [], "base_image.owner",
     "12-digit AWS account id"),
    ("bad-endpoint", aws('path_style = false', 'path_style = false\nendpoint = "ftp://s3"'), {}, [], "s3.endpoint",
     "http(s) URL"),
    ("bad-domain", aws('domain = "cloud.example.com"', 'domain = "not a domain!"'), {}, [], "site.domain",
     "cloud.example.com"),
    ("short-version", aws('version = "29.0.7"', 'version = "29"'), {}, [], "nextcloud.version", "pattern"),
    ("aws-without-launch-template", aws('[launch_template]\nname = "nextcloud-example"', "[launch_template]"),
     {}, [], "launch_template.name", "launch template the rollout versions"),
    ("section-is-value", aws("[redis]", 'redis = "localhost"\n[redis_old]'), {}, [], "redis", "remove it"),
    ("env-var-bad-port", LOCAL, {"NCIMAGE_DATABASE__PORT": "abc"}, [], "database.port (from NCIMAGE_DATABASE__PORT)",
     "valid integer"),
    ("env-var-unknown-key", LOCAL, {"NCIMAGE_REDIS__HOTS": "x"}, [], "redis.hots", "did you mean 'host'"),
    ("flag-without-equals", LOCAL, {}, ["database.port"], "database.port", "section.key=value"),
    ("flag-bad-cidr", LOCAL, {}, ["site.trusted_proxies=['300.0.0.0/8']"], "site.trusted_proxies (from --set",
     "CIDR"),
]


@pytest.fixture(scope="module")
def scratch_project(tmp_path_factory) -> Path:
    """A copy of the project's front door with its own environments/ and build/, so bad files touch nothing real."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "tasks.py", root / "tasks.py")
    for tree in ("render", "image", "packer", "infra"):
        if (ROOT / tree).exists():
            (root / tree).symlink_to(ROOT / tree)
    (root / "environments").mkdir()
    return root


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "content", "environ", "sets", "field", "fix"), CASES, ids=[c[0] for c in CASES])
def test_bad_environment_is_refused(scratch_project, case, content, environ, sets, field, fix):
    env_name = "example" if content is not LOCAL and "builder = \"local\"" not in content else "local"
    env_file = scratch_project / "environments" / f"{env_name}.toml"
    env_file.write_bytes(content.encode("latin-1") if case == "not-utf8" else content.encode())
    cmd = [sys.executable, "-m", "invoke", "render", "--env", env_name]
    for item in sets:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCIMAGE_")} | environ
    try:
        proc = subprocess.run(cmd, cwd=scratch_project, capture_output=True, text=True, env=env, timeout=60)
    finally:
        env_file.unlink()
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0, message
    assert field in message, message
    assert fix in message, message
    assert "Traceback" not in message, message
    assert not (scratch_project / "build").exists(), "a refused environment must not write anything"
