"""Bad environment files: each one is refused with a message naming the field and the fix, a non-zero exit,
and nothing written under build/.

Every case is checked in-process, through render.settings.load_settings, the function `inv render` calls first and
whose SettingsError is the refusal (3 ms a case instead of a second's interpreter start). A handful, one of each
way a bad value comes in (file, bytes, NCIMAGE_* variable, --set flag, parser depth), also run through the real
`inv render` in a scratch copy of the project: the same message, the verdict line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from render.settings import SettingsError, load_settings

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
    ("not-toml", "name = \n[[[", {}, [], "not valid TOML", "strings need quotes"),
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
    ("floating-latest", aws("nextcloud:34.0.3-apache" + DIGEST, "nextcloud:latest"), {}, [], "nextcloud.image",
     "floating tag 'latest'"),
    ("floating-tag-without-digest", aws("nextcloud:34.0.3-apache" + DIGEST, "nextcloud:apache"), {}, [],
     "nextcloud.image", "floating tag 'apache'"),
    ("no-tag-no-digest", aws("nextcloud:34.0.3-apache" + DIGEST, "nextcloud"), {}, [],
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
    ("latest-with-digest", aws("nextcloud:34.0.3-apache" + DIGEST, "nextcloud:latest" + DIGEST), {}, [],
     "nextcloud.image", "floating tag 'latest'"),
    ("not-an-image-ref", aws("nextcloud:34.0.3-apache" + DIGEST, "Next Cloud!"), {}, [], "nextcloud.image",
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
     {}, [], "secrets.instanceid", "ssm:/<name>"),
    ("plain-secret-value", local('db_password = "literal:local-only-db-password"', 'db_password = "hunter2"'),
     {}, [], "secrets.db_password", "literal:<value>"),
    ("invalid-builder", aws('builder = "aws"', 'builder = "gcp"'), {}, [], "builder", "'local' or 'aws'"),
    ("invalid-instance-type", aws('instance_type = "t3.medium"', 'instance_type = "huge"'), {}, [],
     "instance_type", "such as t3.medium"),
    ("invalid-bucket", aws('bucket = "example-nextcloud-primary"', 'bucket = "My_Bucket"'), {}, [], "s3.bucket",
     "valid S3 bucket name"),
    ("aws-without-bucket", aws('bucket = "example-nextcloud-primary"', ""), {}, [], "s3.bucket",
     "primary object storage"),
    ("aws-docker-debian", aws('version = "5:27.3.1-1~debian.12~bookworm"', 'version = "debian"')
     .replace('containerd_version = "1.7.22-1"', ""), {}, [],
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
    ("short-version", aws('version = "34.0.3"', 'version = "29"'), {}, [], "nextcloud.version", "such as 34.0.3"),
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

DEEP = 3000  # far past any real setting, and past the depth at which Python's TOML parser runs out of stack


def deep_array(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def deep_table(depth: int = DEEP) -> str:
    return "{a = " * depth + "1" + "}" * depth


# Each class of hole found by trying malformed files as a new user would (issue 10 §4). The whole class is fixed,
# so each has several members, in the file, in NCIMAGE_* variables and in --set flags.
CONTROL_CHARACTERS = [
    ("newline-end-of-domain", aws('domain = "cloud.example.com"', 'domain = "cloud.example.com\\n"'), {}, [],
     "site.domain", "line feed (U+000A) at the end"),
    ("newline-end-of-version", aws('version = "34.0.3"', 'version = "34.0.3\\n"'), {}, [], "nextcloud.version",
     "remove it"),
    ("newline-end-of-bucket", aws('bucket = "example-nextcloud-primary"', 'bucket = "example-nextcloud-primary\\n"'),
     {}, [], "s3.bucket", "line feed"),
    ("newline-end-of-name-prefix", aws('name_prefix = "nextcloud-example"', 'name_prefix = "nextcloud-example\\n"'),
     {}, [], "ami.name_prefix", "remove it"),
    ("multiline-string-domain", aws('domain = "cloud.example.com"', 'domain = """cloud.example.com\n"""'), {}, [],
     "site.domain", "line feed"),
    ("carriage-return-in-host", aws('.euc1.cache.amazonaws.com"', '.euc1.cache.amazonaws.com\\r"'), {}, [],
     "redis.host", "carriage return"),
    ("tab-in-tag-value", aws('owner = "platform-team"', 'owner = "platform\\tteam"'), {}, [], "tags.owner:", "tab"),
    ("newline-in-spaced-tag-value", aws('owner = "platform-team"', '"cost center" = "a\\nb"'), {}, [],
     'tags."cost center":', "line feed"),
    ("escape-in-db-user", aws('user = "nextcloud"', 'user = "nextcloud\\u001b[31m"'), {}, [], "database.user",
     "escape"),
    ("nul-escape-in-domain", aws('domain = "cloud.example.com"', 'domain = "cloud\\u0000.example.com"'), {}, [],
     "site.domain", "NUL"),
    ("line-separator-in-filter", aws('name_filter = "debian-12-amd64-*"', 'name_filter = "debian-12-amd64-*\\u2028"'),
     {}, [], "base_image.name_filter", "U+2028"),
    ("newline-in-proxy-item", aws('["10.0.0.0/16"]', '["10.0.0.0/16\\n"]'), {}, [], "site.trusted_proxies",
     "item 1"),
    ("newline-in-secret-reference", aws('instanceid = "ssm:/nextcloud/example/instanceid"',
                                        'instanceid = "ssm:/nextcloud/example/instanceid\\n"'), {}, [],
     "secrets.instanceid", "remove it"),
    ("newline-in-literal-secret", local('admin_password = "literal:local-only-admin-password"',
                                        'admin_password = "literal:local-only-admin-password\\n"'), {}, [],
     "secrets.admin_password", "line feed"),
    ("newline-in-stack-section", aws('# name = "nextcloud-example"', 'name = "nextcloud-example\\n"'), {}, [],
     "stack.name", "line feed"),
    ("newline-in-bake-section", aws('subnet_id = "subnet-0123456789abcdef0"',
                                    'subnet_id = "subnet-0123456789abcdef0\\n"'), {}, [], "bake.subnet_id",
     "line feed"),
    ("newline-in-stack-output-override", EXAMPLE, {"NCIMAGE_STACK__DATABASE__INSTANCE_CLASS": "db.t4g.medium\n"}, [],
     "stack.database.instance_class", "line feed"),
    ("env-var-trailing-newline", EXAMPLE, {"NCIMAGE_SITE__DOMAIN": "cloud.example.com\n"}, [],
     "site.domain (from NCIMAGE_SITE__DOMAIN)", "line feed"),
    ("flag-trailing-newline", EXAMPLE, {}, ["redis.host=cache.example.com\n"], "redis.host (from --set redis.host)",
     "line feed"),
]

S3_BUCKET_NAMES = [
    (f"bucket-{label}", aws('bucket = "example-nextcloud-primary"', f'bucket = "{name}"'), {}, [], "s3.bucket", why)
    for label, name, why in [
        ("ip-address", "192.168.5.4", "IP address"),
        ("xn-prefix", "xn--nextcloud", "xn--"),
        ("sthree-prefix", "sthree-nextcloud", "sthree-"),
        ("amzn-demo-prefix", "amzn-s3-demo-nextcloud", "amzn-s3-demo-"),
        ("s3alias-suffix", "nextcloud-s3alias", "-s3alias"),
        ("ol-s3-suffix", "nextcloud--ol-s3", "--ol-s3"),
        ("mrap-suffix", "nextcloud.mrap", ".mrap"),
        ("directory-suffix", "nextcloud--usw2-az1--x-s3", "--x-s3"),
        ("table-suffix", "nextcloud--table-s3", "--table-s3"),
        ("adjacent-periods", "nextcloud..primary", "two adjacent periods"),
        ("hyphen-before-period", "nextcloud-.primary", "next to a period"),
        ("period-before-hyphen", "nextcloud.-primary", "next to a period"),
        ("too-long", "n" * 64, "3 to 63"),
        ("too-short", "nc", "3 to 63"),
        ("ends-with-hyphen", "nextcloud-", "begin and end"),
        ("underscore", "nextcloud_primary", "lowercase letters"),
    ]
]

TRUSTED_PROXIES = [
    (f"proxy-{label}", aws('["10.0.0.0/16"]', f'["{cidr}"]'), {}, [], "site.trusted_proxies", why)
    for label, cidr, why in [
        ("whole-internet-v4", "0.0.0.0/0", "X-Forwarded-For"),
        ("whole-internet-v6", "::/0", "X-Forwarded-For"),
        ("half-the-internet", "0.0.0.0/1", "public"),
        ("public-range", "52.0.0.0/8", "public"),
        ("public-host", "8.8.8.8", "10.0.0.0/16"),
        ("ipv4-mapped-everything", "::ffff:0:0/96", "public"),
        ("public-v6-wider-than-a-vpc", "2600::/16", "/48"),
        ("link-local", "169.254.0.0/16", "public"),
    ]
] + [
    ("proxy-whole-internet-from-flag", LOCAL, {}, ["site.trusted_proxies=['0.0.0.0/0']"],
     "site.trusted_proxies (from --set site.trusted_proxies)", "public"),
]

SECRET_REFERENCES = [
    ("empty-literal-local", local('db_password = "literal:local-only-db-password"', 'db_password = "literal:"'),
     {}, [], "secrets.db_password", "empty"),
    ("empty-literal-aws", aws('db_password = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:'
                              'nextcloud/db-password-AbCdEf"', 'db_password = "literal:"'), {}, [],
     "secrets.db_password", "empty"),
    ("empty-secret-string", aws('instanceid = "ssm:/nextcloud/example/instanceid"', 'instanceid = ""'), {}, [],
     "secrets.instanceid", "ssm:/<name>"),
    ("ssm-double-slash", aws('instanceid = "ssm:/nextcloud/example/instanceid"', 'instanceid = "ssm://nextcloud/x"'),
     {}, [], "secrets.instanceid", "ssm:/<name>"),
    ("ssm-trailing-slash", aws('instanceid = "ssm:/nextcloud/example/instanceid"',
                               'instanceid = "ssm:/nextcloud/example/"'), {}, [], "secrets.instanceid", "ssm:/<name>"),
    ("arn-short-account", aws("eu-central-1:123456789012:secret:nextcloud/db-password",
                              "eu-central-1:12345678901:secret:nextcloud/db-password"), {}, [],
     "secrets.db_password", "12-digit account"),
    ("arn-bad-secret-name", aws("secret:nextcloud/db-password-AbCdEf", "secret:nextcloud/db!password"), {}, [],
     "secrets.db_password", "Secrets Manager ARN"),
    ("secret-as-number", aws('instanceid = "ssm:/nextcloud/example/instanceid"', "instanceid = 12345"), {}, [],
     "secrets.instanceid", "ssm:/<name>"),
]

IMAGE_AND_VERSION = [
    ("tag-disagrees-with-version", aws('"nextcloud:34.0.3-apache', '"nextcloud:33.0.2-apache'), {}, [],
     "nextcloud.image", "make them agree"),
    ("version-disagrees-with-tag", aws('version = "34.0.3"', 'version = "34.0.4"'), {}, [], "nextcloud.image",
     "make them agree"),
    ("version-from-env-disagrees", EXAMPLE, {"NCIMAGE_NEXTCLOUD__VERSION": "33.0.2"}, [], "nextcloud.image",
     "make them agree"),
    ("local-tag-disagrees", local("nextcloud-standin:34.0.3-apache", "nextcloud-standin:33.0.2-apache"), {}, [],
     "nextcloud.image", "make them agree"),
    ("release-line-tag", aws('"nextcloud:34.0.3-apache', '"nextcloud:34-apache'), {}, [], "nextcloud.image",
     "full version tag"),
    ("fpm-variant", aws('"nextcloud:34.0.3-apache', '"nextcloud:34.0.3-fpm'), {}, [], "nextcloud.image",
     "apache variant"),
    ("digest-without-tag", aws("nextcloud:34.0.3-apache" + DIGEST, "nextcloud" + DIGEST), {}, [], "nextcloud.image",
     "has no tag"),
    ("short-digest", aws(DIGEST, "@sha256:" + "0" * 63), {}, [], "nextcloud.image", "64 hex"),
]

FILE_AND_PARSER = [
    ("deeply-nested-array", aws("regions = []", f"regions = {deep_array()}"), {}, [], "ami.regions", "nested"),
    ("deeply-nested-inline-table", aws('project = "nextcloud"', f"project = {deep_table()}"), {}, [],
     "tags.project", "nested"),
    ("deeply-nested-env-var", LOCAL, {"NCIMAGE_AMI__REGIONS": deep_array()}, [],
     "ami.regions (from NCIMAGE_AMI__REGIONS)", "nested"),
    ("deeply-nested-flag", LOCAL, {}, [f"ami.regions={deep_array()}"], "ami.regions (from --set ami.regions)",
     "nested"),
    ("deep-dotted-key", aws("[tags]", "[tags]\n" + ".".join(["x"] * DEEP) + " = 1"), {}, [], "tags.x",
     "remove it"),
    ("duplicate-key", aws("port = 5432", "port = 5432\nport = 5433"), {}, [], "database.port", "set twice"),
    ("duplicate-table", aws("[redis]", "[redis]\ntls = true\n[redis]"), {}, [], "[redis]", "appears twice"),
    ("raw-nul-byte", aws("port = 5432", "port = 54\x0032"), {}, [], "database.port", "NUL"),
    ("raw-bell-after-value", aws("port = 5432", "port = 5432  # \x07"), {}, [], "database.port", "delete it"),
    ("lone-carriage-return", aws("port = 5432", "port = 5432\r # old Mac line end"), {}, [], "database.port",
     "carriage return"),
    ("utf8-bom", "\ufeff" + EXAMPLE, {}, [], "BOM", "without BOM"),
    ("utf16-file", EXAMPLE.encode("utf-16"), {}, [], "UTF-16", "save it as UTF-8"),
    ("latin1-value", EXAMPLE.encode().replace(b'domain = "cloud.example.com"', b'domain = "caf\xe9.example.com"', 1),
     {}, [], "site.domain", "UTF-8"),
    ("huge-file", EXAMPLE + "#" * (2 * 1024 * 1024), {}, [], "MiB", "right file"),
    ("unquoted-string", aws('domain = "cloud.example.com"', "domain = cloud.example.com"), {}, [], "site.domain",
     "strings need quotes"),
    ("missing-equals", aws('domain = "cloud.example.com"', 'domain "cloud.example.com"'), {}, [], "site.domain",
     "key = value"),
    ("name-is-a-list", aws('name = "example"', 'name = ["example"]'), {}, [], "name", "must be a valid string"),
]

OVERRIDES = [
    ("env-var-single-underscore", LOCAL, {"NCIMAGE_DATABASE_PORT": "5433"}, [], "NCIMAGE_DATABASE_PORT",
     "NCIMAGE_DATABASE__PORT"),
    ("env-var-empty-key", LOCAL, {"NCIMAGE_DATABASE__": "5433"}, [], "NCIMAGE_DATABASE__", "NCIMAGE_SECTION__KEY"),
    ("env-var-number-for-string", EXAMPLE, {"NCIMAGE_NEXTCLOUD__VERSION": "34.0"}, [],
     "nextcloud.version (from NCIMAGE_NEXTCLOUD__VERSION)", "quote it"),
    ("flag-empty-key-segment", LOCAL, {}, ["database..port=1"], "database..port", "section.key=value"),
    ("flag-into-a-value", LOCAL, {}, ["site.domain.name=x"], "site.domain", "not a section"),
    ("flag-number-for-string", LOCAL, {}, ["redis.host=10"], "redis.host (from --set redis.host)", "quote it"),
]

PRODUCTION = 'production = true              # '
OTHER_VALUES = [
    ("production-without-access-logs", aws("production = false              # ", PRODUCTION), {}, [],
     "stack.access_logs_bucket", "required with stack.production = true"),
    ("production-with-the-web-acl-off", aws("production = false              # ", PRODUCTION)
     + '\n', {}, ["stack.access_logs_bucket=example-alb-logs", "stack.waf.enabled=false"], "stack.waf.enabled",
     "remove the line"),
    ("login-limit-below-what-waf-accepts", aws("# login_limit = 100", "login_limit = 5"), {}, [],
     "stack.waf.login_limit", "greater than or equal to 10"),
    ("webdav-limit-above-what-waf-accepts", aws("# webdav_limit = 20000", "webdav_limit = 3000000000"), {}, [],
     "stack.waf.webdav_limit", "less than or equal to 2000000000"),
    ("maintenance-rule-on-the-probes-priority", aws("maintenance_rule_priority = 1", "maintenance_rule_priority = 2"),
     {}, [], "upgrade.maintenance_rule_priority", "choose another free priority"),
    ("endpoint-port-too-big", aws("path_style = false", 'path_style = false\nendpoint = "https://s3.example.com:99999"'),
     {}, [], "s3.endpoint", "port 1-65535"),
    ("trusted-domain-port-too-big", aws('trusted_domains = ["cloud.example.com"]',
                                        'trusted_domains = ["cloud.example.com:99999"]'), {}, [],
     "site.trusted_domains", "port 1-65535"),
    ("empty-tag-key", aws('project = "nextcloud"', '"" = "nextcloud"'), {}, [], "tags", "1 to 128"),
    ("tag-value-too-long", aws('project = "nextcloud"', f'project = "{"x" * 300}"'), {}, [], "tags.project:",
     "shorten it"),
    ("region-listed-twice", aws("regions = []", 'regions = ["eu-west-1", "eu-west-1"]'), {}, [], "ami.regions",
     "list each region once"),
    ("account-id-as-number", aws('instance_type = "t3.medium"', 'instance_type = "t3.medium"\n'
                                 "account_id = 123456789012"), {}, [], "account_id",
     'account_id = "123456789012"'),
    ("list-item-wrong-type", aws("regions = []", 'regions = ["eu-west-1", 5]'), {}, [], "ami.regions (item 2)",
     'quote it'),
]

CASES += CONTROL_CHARACTERS + S3_BUCKET_NAMES + TRUSTED_PROXIES + SECRET_REFERENCES + IMAGE_AND_VERSION
CASES += FILE_AND_PARSER + OVERRIDES + OTHER_VALUES


def make_project(root: Path) -> Path:
    """A copy of the project's front door with its own environments/ and build/, so bad files touch nothing real."""
    root.mkdir(parents=True)
    shutil.copytree(ROOT / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for tree in ("render", "image", "packer", "infra"):
        if (ROOT / tree).exists():
            (root / tree).symlink_to(ROOT / tree)
    (root / "environments").mkdir()
    return root


@pytest.fixture(scope="module")
def scratch_project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("scratch") / "project")


def content_of(case: tuple) -> str | bytes:
    name, content = case[:2]
    return content.encode("latin-1") if name == "not-utf8" else content


@pytest.fixture(scope="module")
def refusals(scratch_project) -> dict[str, Rendered]:
    """Every case in-process, one after another in one scratch project."""
    return {case[0]: load_in(scratch_project, content_of(case), case[2], case[3]) for case in CASES}


# One of each way a bad value arrives, through the real command line.
THROUGH_INV = ["port-not-int", "not-utf8", "env-var-bad-port", "flag-bad-cidr", "tab-in-tag-value",
               "deeply-nested-flag"]


@pytest.fixture(scope="module")
def inv_refusals(tmp_path_factory) -> dict[str, Rendered]:
    """THROUGH_INV via `inv render`, each in its own scratch project, side by side (it is mostly the interpreter
    starting)."""
    base = tmp_path_factory.mktemp("cases")
    cases = [c for c in CASES if c[0] in THROUGH_INV]

    def run(case: tuple) -> tuple[str, Rendered]:
        return case[0], render_in(make_project(base / case[0]), content_of(case), case[2], case[3])

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(run, cases))


def test_there_are_cases_of_every_class():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)
    for group in (CONTROL_CHARACTERS, S3_BUCKET_NAMES, TRUSTED_PROXIES, SECRET_REFERENCES, IMAGE_AND_VERSION,
                  FILE_AND_PARSER, OVERRIDES, OTHER_VALUES):
        assert len(group) >= 5
    assert set(THROUGH_INV) <= {c[0] for c in CASES}


@dataclass
class Rendered:
    returncode: int
    message: str
    wrote: bool


def _write_environment(project: Path, content: str | bytes) -> tuple[str, Path]:
    is_local = content is LOCAL or (isinstance(content, str) and 'builder = "local"' in content)
    env_name = "local" if is_local else "example"
    env_file = project / "environments" / f"{env_name}.toml"
    env_file.write_bytes(content if isinstance(content, bytes) else content.encode())
    return env_name, env_file


def load_in(project: Path, content: str | bytes, environ: dict[str, str], sets: list[str]) -> Rendered:
    """``content`` as the environment file, loaded in-process as `inv render` loads it: a SettingsError is the
    refusal (exit 2 at the front door); any other exception would be a traceback there, so it is reported as one."""
    env_name, env_file = _write_environment(project, content)
    try:
        load_settings(project, env_name, environ=environ, sets=sets)
        result = Rendered(0, "", False)
    except SettingsError as exc:
        result = Rendered(2, str(exc), False)
    except Exception:  # any other error would be a traceback at the front door: shown as one
        result = Rendered(1, traceback.format_exc(), False)
    finally:
        env_file.unlink()
    result.wrote = (project / "build").exists()
    return result


def render_in(project: Path, content: str | bytes, environ: dict[str, str], sets: list[str]) -> Rendered:
    """Write ``content`` as the environment file and run `inv render` on it the way a user would; whatever it
    wrote is recorded, then removed, so one accepted case cannot spoil the next."""
    env_name, env_file = _write_environment(project, content)
    cmd = [sys.executable, "-m", "invoke", "render", "--env", env_name]
    for item in sets:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCIMAGE_")} | environ
    try:
        proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env, timeout=60)
    finally:
        env_file.unlink()
    wrote = (project / "build").exists()
    shutil.rmtree(project / "build", ignore_errors=True)
    return Rendered(proc.returncode, proc.stdout + proc.stderr, wrote)


@pytest.mark.parametrize(("case", "field", "fix"), [(c[0], c[4], c[5]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_environment_is_refused(refusals, case, field, fix):
    result = refusals[case]
    message = result.message
    assert result.returncode == 2, message
    assert field in message, message
    assert fix in message, message
    assert "Traceback" not in message, message
    assert len(message) < 4000, "a refusal is a few lines, not a dump of the value"
    assert not result.wrote, "a refused environment must not write anything"


@pytest.mark.parametrize("case", THROUGH_INV)
def test_inv_render_refuses_with_the_same_message_a_verdict_line_and_exit_2(refusals, inv_refusals, case):
    result = inv_refusals[case]
    assert result.returncode == 2, result.message
    assert f"verdict: refused - {refusals[case].message}" in result.message, result.message
    assert "Nothing was written." in result.message and "Traceback" not in result.message
    assert not result.wrote, "a refused environment must not write anything"


def test_a_digest_pinned_reference_without_a_tag_is_not_called_unpinned(scratch_project):
    result = load_in(scratch_project, aws("nextcloud:34.0.3-apache" + DIGEST, "nextcloud" + DIGEST), {}, [])
    assert result.returncode != 0
    assert "not pinned by digest" not in result.message
    assert "nextcloud:34.0.3-apache" + DIGEST in result.message, "the fix is the reference to write"


def test_a_bom_is_named_as_such(scratch_project):
    result = load_in(scratch_project, "\ufeff" + EXAMPLE, {}, [])
    assert result.returncode != 0
    assert "byte-order mark (BOM)" in result.message and "Invalid statement" not in result.message


@pytest.mark.parametrize("secret", ["hunter2-canary-7f3a", "literal:hunter2-canary-7f3a\n"])
def test_refusals_never_echo_a_secret_value(scratch_project, secret):
    content = aws('instanceid = "ssm:/nextcloud/example/instanceid"', f"instanceid = {json.dumps(secret)}")
    for environ, sets in (({}, []), ({"NCIMAGE_SECRETS__ADMIN_PASSWORD": secret}, []),
                          ({}, [f"secrets.passwordsalt={secret}"])):
        result = load_in(scratch_project, content, environ, sets)
        assert result.returncode != 0 and "secrets.instanceid" in result.message, result.message
        assert "hunter2" not in result.message, result.message
    # And through the front door, whose output adds nothing of the value either.
    result = render_in(scratch_project, content, {"NCIMAGE_SECRETS__ADMIN_PASSWORD": secret}, [])
    assert result.returncode == 2 and "secrets.instanceid" in result.message, result.message
    assert "hunter2" not in result.message, result.message


def test_a_duplicate_key_names_its_line_and_key(scratch_project):
    content = aws("port = 5432", "port = 5432\nport = 5433")
    line = next(i for i, text in enumerate(content.splitlines(), start=1) if text.startswith("port = 5433"))
    assert f"line {line}" in load_in(scratch_project, content, {}, []).message
