"""The bake's package pinning, for real and without a network: image/scripts/lib/apt-pins.sh against a local apt
repository (real apt, pointed at private state with APT_CONFIG) and against locally generated OpenPGP keys.

- a pinned version the repository does not have fails the bake before anything is installed, naming the package,
  the pin and what is available;
- a repository key whose fingerprint is not the known one is refused before apt trusts the repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "image" / "scripts" / "lib" / "apt-pins.sh"
DOCKER_FINGERPRINT = "9DC8 5822 9FC7 DD38 854A  E2D8 8D81 803C 0EBF CD88"

pytestmark = pytest.mark.integration


def _package_stanza(name: str, version: str, filename: str, data: bytes) -> str:
    return (
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: test <test@example.invalid>\n"
        f"Filename: {filename}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        f"Description: test package\n\n"
    )


@pytest.fixture
def local_apt(tmp_path: Path) -> dict[str, str]:
    """A flat apt repository holding docker-ce 5:1.0-1 and containerd.io 1.0-1 (index only: nothing is downloaded
    on the paths under test), and an APT_CONFIG that makes apt see only it, with a private empty dpkg status."""
    if shutil.which("apt-get") is None:
        pytest.skip("apt not available")
    repo = tmp_path / "repo"
    repo.mkdir()
    stanzas = ""
    for name, version in (("docker-ce", "5:1.0-1"), ("containerd.io", "1.0-1")):
        data = f"placeholder {name} {version}".encode()
        filename = f"{name}_{version.replace(':', '%3a')}_all.deb"
        (repo / filename).write_bytes(data)
        stanzas += _package_stanza(name, version, f"./{filename}", data)
    (repo / "Packages").write_text(stanzas)
    state = tmp_path / "state"
    for d in ("lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d",
              "etc/apt.conf.d", "log"):
        (state / d).mkdir(parents=True)
    (state / "status").write_text("")
    (state / "etc/sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
    config = tmp_path / "apt.conf"
    config.write_text("\n".join([
        f'Dir::State "{state}";', f'Dir::State::Lists "{state}/lists";', f'Dir::State::status "{state}/status";',
        f'Dir::Cache "{state}/cache";', f'Dir::Etc "{state}/etc";', f'Dir::Log "{state}/log";',
        'APT::Architecture "amd64";', 'Debug::NoLocking "true";', 'Acquire::AllowInsecureRepositories "true";',
        'APT::Get::AllowUnauthenticated "true";',
    ]) + "\n")
    env = {"PATH": os.environ["PATH"], "APT_CONFIG": str(config), "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
    return {**env, "STATUS": str(state / "status")}


def run_lib(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f'set -o errexit -o nounset -o pipefail; . "{LIB}"; {script}'],
                          env=env, capture_output=True, text=True, timeout=120)


def test_a_pinned_version_the_repository_lacks_fails_before_installing(local_apt):
    proc = run_lib('install_pinned "docker-ce=5:9.9-1 containerd.io=1.0-1"', local_apt)
    assert proc.returncode != 0
    assert "docker-ce=5:9.9-1: not available; available: 5:1.0-1" in proc.stderr, proc.stderr
    assert "nothing was installed" in proc.stderr
    assert "containerd.io" not in proc.stderr, "the available pin must not be reported as missing"
    assert Path(local_apt["STATUS"]).read_text() == "", "dpkg's status changed: something was installed"


def test_a_package_no_repository_has_fails_and_says_so(local_apt):
    proc = run_lib('install_pinned "docker-ce=5:1.0-1 docker-buildx-plugin=0.17.1-1"', local_apt)
    assert proc.returncode != 0
    assert "docker-buildx-plugin: not in any configured repository" in proc.stderr, proc.stderr


def test_available_pins_pass_the_check(local_apt):
    # The check only: apt's resolver is asked to simulate, so nothing is written to the private dpkg status.
    simulate = 'apt-get() { [[ " $* " == *" install "* ]] && command apt-get --simulate "$@" || command apt-get "$@"; }'
    proc = run_lib(f'{simulate}; apt-mark() {{ :; }}; install_pinned "docker-ce=5:1.0-1 containerd.io=1.0-1"',
                   local_apt)
    assert proc.returncode == 0, proc.stderr
    assert "Inst docker-ce (5:1.0-1" in proc.stdout and "Inst containerd.io (1.0-1" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def generated_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh OpenPGP key (armored public key file, its fingerprint), made locally."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Test Repo <repo@example.invalid>",
                    "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
    out = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys"], env=env, check=True,
                         capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    key = home / "repo.asc"
    key.write_bytes(subprocess.run(["gpg", "--batch", "--armor", "--export", fpr], env=env, check=True,
                                   capture_output=True).stdout)
    return key, fpr


def test_the_known_fingerprint_is_accepted(generated_key):
    key, fpr = generated_key
    spaced = " ".join(fpr[i:i + 4] for i in range(0, 40, 4)).lower()
    proc = run_lib(f'verify_key_fingerprint "{key}" "{spaced}"', {"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr


def test_a_key_with_another_fingerprint_is_refused(generated_key):
    key, fpr = generated_key
    proc = run_lib(f'verify_key_fingerprint "{key}" "{DOCKER_FINGERPRINT}"', {"PATH": os.environ["PATH"]})
    assert proc.returncode == 1
    assert fpr in proc.stderr and "refusing to trust the repository" in proc.stderr, proc.stderr


def test_install_docker_checks_the_key_before_trusting_the_repository():
    script = (ROOT / "image" / "scripts" / "install-docker.sh").read_text()
    verify, trust = script.index("verify_key_fingerprint "), script.index("/etc/apt/sources.list.d/docker.list")
    assert verify < trust, "the repository is configured before its key is verified"
    assert DOCKER_FINGERPRINT in script
