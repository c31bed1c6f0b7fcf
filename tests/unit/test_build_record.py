"""The build record (infra/build_record.py): one path, one reader, one writer, one git sha."""

from __future__ import annotations

import json
import subprocess

import pytest

from infra import build_record
from infra.localtwin import test_ami
from infra.rollout.amis import manifest_ami
from infra.rollout.outcome import Refused


def test_the_record_lives_in_build_env_or_under_the_given_build_root(tmp_path):
    assert build_record.manifest_path(tmp_path, "staging") == tmp_path / "build" / "staging" / "manifest.json"
    assert build_record.build_dir(tmp_path, "local", tmp_path / "elsewhere") == tmp_path / "elsewhere" / "local"


def test_a_written_record_reads_back_and_no_temporary_file_is_left(tmp_path):
    record = {"artifact_id": "eu-central-1:ami-0123", "fingerprint": "f" * 64, "b": 1, "a": 2}
    path = build_record.write(tmp_path / "example", record)
    assert build_record.read(path) == record and list(path.parent.iterdir()) == [path]
    assert list(json.loads(path.read_text())) == list(record)  # in the order given
    build_record.write(tmp_path / "example", record, sort_keys=True)
    assert list(json.loads(path.read_text())) == sorted(record)


@pytest.mark.parametrize(("text", "reason"), [("not json", "not JSON"), ("[1, 2]", "not a JSON object but list")])
def test_an_unreadable_record_says_why(tmp_path, text, reason):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(build_record.RecordError, match=reason) as caught:
        build_record.read(path)
    assert caught.value.path == path and caught.value.exit_code == 1


def test_no_record_is_none_for_the_reader_and_each_caller_names_the_fix(tmp_path):
    assert build_record.read(tmp_path / "manifest.json") is None
    with pytest.raises(test_ami.TestAmiError, match="bake the image first"):
        test_ami.read_record(tmp_path / "manifest.json")
    with pytest.raises(Refused, match=r"build/example/manifest.json not found: bake first"):
        manifest_ami(tmp_path, "example", "eu-central-1")


def test_a_record_that_is_not_an_object_is_refused_not_a_traceback(tmp_path):
    path = build_record.manifest_path(tmp_path, "example")
    path.parent.mkdir(parents=True)
    path.write_text('["ami-0123"]')
    with pytest.raises(Refused, match=r"is not a build manifest \(not a JSON object but list\)"):
        manifest_ami(tmp_path, "example", "eu-central-1")
    build_record.write(path.parent, {"amis": {"eu-central-1": "ami-0abc"}})
    assert manifest_ami(tmp_path, "example", "eu-central-1") == "ami-0abc"


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_sha_is_the_commit_and_dirty_only_when_the_image_sources_changed(tmp_path):
    assert build_record.git_sha(tmp_path) == "unknown"
    _git(tmp_path, "init", "-q")
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "a.sh").write_text("echo a\n")
    (tmp_path / "README.md").write_text("x\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert build_record.git_sha(tmp_path) == head
    (tmp_path / "README.md").write_text("changed, but not what the image is made of\n")
    assert build_record.git_sha(tmp_path) == head
    (tmp_path / "image" / "a.sh").write_text("echo b\n")
    assert build_record.git_sha(tmp_path) == f"{head}-dirty"
