"""cache-nextcloud-image.sh's registry login: an ECR reference (private repository or pull-through cache) is pulled
with the bake instance's role through amazon-ecr-credential-helper, configured only for the pull; Docker Hub and
other registries are pulled anonymously. ``docker`` and ``apt-get`` are doubles on PATH (the real ones would
change this machine and reach the network); they record what they were asked and what the login config said."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "image" / "scripts" / "cache-nextcloud-image.sh"
DIGEST = "@sha256:" + "c" * 64
ECR = "123456789012.dkr.ecr.eu-central-1.amazonaws.com"


def doubles(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    # `docker image inspect` after a pull answers like the real one: the pulled reference's repository@digest.
    (bin_dir / "docker").write_text(
        "#!/usr/bin/env bash\n"
        "if [[ \"$1 $2\" == \"image inspect\" ]]; then ref=\"${*: -1}\"; repo=\"${ref%@*}\";"
        " echo \"${repo%:*}@${ref##*@}\"; exit 0; fi\n"
        f"echo \"docker $*\" >> {record}\n"
        "if [[ -n \"${DOCKER_CONFIG:-}\" ]]; then\n"
        f"  echo \"config $(cat \"$DOCKER_CONFIG/config.json\")\" >> {record}\n"
        f"  echo \"config_dir $DOCKER_CONFIG\" >> {record}\n"
        "fi\n")
    (bin_dir / "apt-get").write_text(f"#!/usr/bin/env bash\necho \"apt-get $*\" >> {record}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return bin_dir, record


def run(tmp_path: Path, image: str) -> list[str]:
    bin_dir, record = doubles(tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NEXTCLOUD_IMAGE": image, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return record.read_text().splitlines()


@pytest.mark.parametrize("repository", [f"{ECR}/nextcloud", f"{ECR}/docker-hub/library/nextcloud"])
def test_ecr_is_pulled_with_the_instance_role_and_the_login_does_not_stay(tmp_path, repository):
    image = f"{repository}:29.0.7-apache{DIGEST}"
    calls = run(tmp_path, image)
    assert calls[0] == "apt-get install -y -qq --no-install-recommends amazon-ecr-credential-helper"
    assert calls[1] == f"docker pull --quiet {image}"
    assert calls[2] == f'config {{"credHelpers": {{"{ECR}": "ecr-login"}}}}'
    config_dir = Path(calls[3].removeprefix("config_dir "))
    assert not config_dir.exists(), "the throwaway DOCKER_CONFIG must be gone after the pull"
    assert calls[-1] == "apt-get purge -y -qq amazon-ecr-credential-helper"


@pytest.mark.parametrize("image", ["nextcloud:29.0.7-apache", "registry.example.com/nc/nextcloud:29.0.7-apache",
                                   "123456789012.dkr.ecr.eu-central-1.amazonaws.com.evil.example/nc:29.0.7-apache"])
def test_other_registries_are_pulled_without_a_login(tmp_path, image):
    assert run(tmp_path, image + DIGEST) == [f"docker pull --quiet {image}{DIGEST}"]

