"""One definition of a secret reference (render/secret_refs.py), used by render and by the image's resolver.

The resolver that runs here is the file baked into the image; the contract it reads is the file `inv render`
writes. On a corpus of references both must agree, and every reference that passes render must pass the resolver
at boot (the user data render writes, checked by the resolver's own --validate-only).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from render.outputs import SECRET_REFERENCES, render_all, render_nextcloud_env, render_user_data
from render.secret_refs import SECRET_VARIABLES, InvalidReference, classify, render_contract
from render.settings import Secrets, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "image" / "rootfs" / "usr" / "local" / "libexec" / "nextcloud-image" / "resolve-secrets"
INSTALL_UNITS = ROOT / "image" / "scripts" / "install-units.sh"
TEMPLATE = ROOT / "packer" / "nextcloud.pkr.hcl"
ACCOUNT = "123456789012"

VALID = [
    f"arn:aws:secretsmanager:eu-central-1:{ACCOUNT}:secret:nextcloud/db-password-AbCdEf",
    f"arn:aws:secretsmanager:eu-central-1:{ACCOUNT}:secret:a+b=c.d@e-f_g/h",
    f"arn:aws-cn:secretsmanager:cn-north-1:{ACCOUNT}:secret:nextcloud",
    f"arn:aws-us-gov:secretsmanager:us-gov-west-1:{ACCOUNT}:secret:nextcloud",
    f"arn:aws-iso-b:ssm:us-isob-east-1:{ACCOUNT}:parameter/nextcloud/secret",
    f"arn:aws-eusc:secretsmanager:eusc-de-east-1:{ACCOUNT}:secret:nextcloud",
    f"arn:aws:secretsmanager:ap-southeast-5:{ACCOUNT}:secret:" + "n" * 512,
    f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/nextcloud/prod/secret",
    f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/plain",
    "ssm:/nextcloud/prod/secret",
    "ssm:/a",
    "ssm:/a.b_c-d/e",
    "ssm:/aws/reference/secretsmanager/nextcloud-db",
    "ssm:/" + "/".join(["l"] * 15),
    "ssm:/" + "a" * 1010,
    "literal:x",
    "literal:  spaced = 'quoted' $HOME",
]
INVALID = [
    "",
    "hunter2",
    "LITERAL:x",
    " literal:x",
    "vault:kv/nextcloud#db",
    "ssm:nextcloud/secret",
    "ssm:",
    "ssm:/",
    "ssm://nextcloud",
    "ssm:/nextcloud/",
    "ssm:/nextcloud//secret",
    "ssm:/next cloud",
    "ssm:/" + "/".join(["l"] * 16),
    "ssm:/" + "a" * 1011,
    "arn:aws:secretsmanager:eu-west-1:secret:nextcloud/db",
    "arn:aws:secretsmanager:eu-west-1:12345678901:secret:x",
    f"arn:aws:secretsmanager:Frankfurt:{ACCOUNT}:secret:x",
    f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:",
    f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:db!password",
    f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:" + "n" * 513,
    f"arn:azure:secretsmanager:eu-west-1:{ACCOUNT}:secret:x",
    f"arn:aws:ssm:eu-west-1:{ACCOUNT}:document/x",
    f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter//x",
    f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/x/",
    f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:x\n",
    "ssm:/nextcloud/secret\n",
]


@pytest.fixture(scope="module")
def resolver_module():
    """The resolver script itself, imported (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("resolve_secrets_under_test", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # its dataclasses look their module up
    try:
        loader.exec_module(module)
        yield module
    finally:
        del sys.modules[loader.name]


@pytest.fixture(scope="module")
def contract_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("contract") / SECRET_REFERENCES
    path.write_text(render_contract())
    return path


def render_view(ref: str) -> tuple[str, str, str | None] | None:
    try:
        r = classify(ref)
    except InvalidReference:
        return None
    return (r.kind, r.target, r.region)


def boot_view(module, contract, ref: str) -> tuple[str, str, str | None] | None:
    try:
        r = module.parse_ref("NEXTCLOUD_SECRET", ref, contract)
    except module.InvalidInstanceJson:
        return None
    return (r.kind, r.target, r.region)


@pytest.mark.parametrize("ref", VALID + INVALID, ids=[f"ref{i}" for i in range(len(VALID + INVALID))])
def test_render_and_the_resolver_read_every_reference_alike(resolver_module, contract_file, ref):
    contract = resolver_module.load_contract(str(contract_file))
    assert render_view(ref) == boot_view(resolver_module, contract, ref)
    assert (render_view(ref) is not None) == (ref in VALID), "the corpus says which references are valid"


def test_the_corpus_covers_every_form():
    kinds = {classify(ref).kind for ref in VALID}
    assert kinds == {"literal", "secretsmanager", "ssm"}
    assert {classify(ref).region for ref in VALID if ref.startswith("ssm:")} == {None}


def run_validate_only(instance_json: Path, contract: Path, image_env: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT), "--validate-only", "--instance-json", str(instance_json),
         "--references", str(contract), "--output", str(instance_json.parent / "runtime.env"),
         "--image-env", str(image_env)],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("ref", [r for r in VALID if not r.startswith("literal:")] + ["literal:x"])
def test_what_passes_render_passes_the_resolver_at_boot(tmp_path, contract_file, ref):
    settings = load_settings(ROOT, "local", environ={}, overrides={"secrets.db_password": ref}).settings
    cloud_config = yaml.safe_load(render_user_data(settings))
    (doc,) = [f["content"] for f in cloud_config["write_files"] if f["path"] == "/etc/nextcloud/instance.json"]
    instance_json = tmp_path / "instance.json"
    instance_json.write_text(doc)
    instance_json.chmod(0o600)
    # The nextcloud.env the same settings bake into the image: it says whether literals are allowed.
    image_env = tmp_path / "nextcloud.env"
    image_env.write_text(render_nextcloud_env(settings))
    proc = run_validate_only(instance_json, contract_file, image_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(doc)["secrets"]["NEXTCLOUD_DB_PASSWORD"] == ref


@pytest.mark.parametrize("ref", INVALID[:12])
def test_what_the_resolver_refuses_render_refuses_first(ref):
    with pytest.raises(SettingsError) as exc:
        load_settings(ROOT, "local", environ={}, overrides={"secrets.db_password": ref})
    assert "secrets.db_password" in str(exc.value)


def test_the_contract_names_every_secret_setting():
    assert set(SECRET_VARIABLES) == set(Secrets.model_fields)


def test_the_contract_is_a_build_input_and_so_part_of_the_fingerprint():
    settings = load_settings(ROOT, "local", environ={}).settings
    files = render_all(ROOT, settings)
    assert files[SECRET_REFERENCES] == render_contract()
    assert json.loads(files[SECRET_REFERENCES])["variables"] == SECRET_VARIABLES


def test_the_bake_installs_the_contract_where_the_resolver_reads_it(resolver_module):
    template = TEMPLATE.read_text()
    assert '"${var.build_dir}/secret-references.json"' in template
    script = INSTALL_UNITS.read_text()
    assert f'"${{contract}}" {resolver_module.DEFAULT_CONTRACT}' in script


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("{not json", "cannot read"), ('{"schema": 2}', "schema 2"),
     ('{"schema": 1}', "not a secret reference contract")],
    ids=["missing", "not-json", "other-schema", "incomplete"],
)
def test_an_image_without_a_usable_contract_refuses_clearly(tmp_path, contract_file, content, message):
    settings = load_settings(ROOT, "local", environ={}).settings
    cloud_config = yaml.safe_load(render_user_data(settings))
    (doc,) = [f["content"] for f in cloud_config["write_files"] if f["path"] == "/etc/nextcloud/instance.json"]
    instance_json = tmp_path / "instance.json"
    instance_json.write_text(doc)
    instance_json.chmod(0o600)
    contract = tmp_path / "secret-references.json"
    if content is not None:
        contract.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), "--instance-json", str(instance_json), "--references", str(contract),
         "--output", str(tmp_path / "runtime.env")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and str(contract) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runtime.env").exists()


@pytest.mark.parametrize(("environment", "allowed"), [("local", True), ("example", False)])
def test_the_resolver_allows_literals_exactly_where_render_does(tmp_path, resolver_module, environment, allowed):
    # render allows literal secrets only for builder "local"; the resolver reads that from the nextcloud.env the
    # same settings bake (NEXTCLOUD_LOG_DESTINATION, derived from the builder alone), never from user data.
    settings = load_settings(ROOT, environment, environ={}).settings
    assert (settings.builder == "local") == allowed
    image_env = tmp_path / "nextcloud.env"
    image_env.write_text(render_nextcloud_env(settings))
    ok, why = resolver_module.literals_allowed(str(image_env))
    assert ok == allowed, why
    if not allowed:
        with pytest.raises(SettingsError, match="literal secrets are only allowed in the local environment"):
            load_settings(ROOT, environment, environ={}, overrides={"secrets.db_password": "literal:x"})
