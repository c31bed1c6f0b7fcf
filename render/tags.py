"""Tag keys: the one definition every producer (the bake, test-ami, the stack) and consumer (reuse, rollout,
prune, sweep, status) of AWS tags imports. Namespaced, so they never collide with an organisation's own tags
(an account-wide ``environment`` tag, say).

On an AMI and each of its snapshots, in every region:
  MANAGED        "true": made by this project; nothing without it is ever changed or deleted
  ENVIRONMENT    the environment name (environments/<env>.toml)
  FINGERPRINT    the build fingerprint (render/outputs.py): same value = same image
  GIT_SHA, BUILD_TIME, SOURCE_AMI (+ SOURCE_AMI_NAME), NEXTCLOUD_IMAGE (digest-pinned), NEXTCLOUD_VERSION,
  DOCKER_VERSION     provenance, the same values as the image's /etc/nextcloud-image/version-info.json
  TEST_VERDICT       written by test-ami: "passed" or "failed"; TESTED_AT its time (RFC 3339 UTC), TEST_RUN its run id
  RUN                the bake run that made it
On the throwaway resources of a bake or a canary (instances, volumes, key pairs, security groups):
  MANAGED, ENVIRONMENT, PURPOSE ("bake" | "canary"), RUN (one id per run: how sweep finds what a run left;
  it starts with the run's UTC start time, YYYYMMDDTHHMMSSZ-xxxxxx)
While a bake runs, its AMIs and snapshots carry PURPOSE=bake too; the bake removes it when every step is done
(IMDSv2 and every tag on every copy). An AMI that still has PURPOSE never completed: never reuse, test, roll
out or keep it (sweep removes it).
On what `inv upgrade` creates: the one-off upgrade instance (PURPOSE "upgrade") and the load balancer's maintenance
rule (PURPOSE "maintenance"), both with MANAGED, ENVIRONMENT and RUN (the upgrade's id): how a resumed upgrade
finds them again.
"""

from __future__ import annotations

PREFIX = "nextcloud-image:"

MANAGED = f"{PREFIX}managed"
ENVIRONMENT = f"{PREFIX}environment"
FINGERPRINT = f"{PREFIX}fingerprint"
GIT_SHA = f"{PREFIX}git-sha"
BUILD_TIME = f"{PREFIX}build-time"
SOURCE_AMI = f"{PREFIX}source-ami"
SOURCE_AMI_NAME = f"{PREFIX}source-ami-name"
NEXTCLOUD_IMAGE = f"{PREFIX}nextcloud-image"
NEXTCLOUD_VERSION = f"{PREFIX}nextcloud-version"
DOCKER_VERSION = f"{PREFIX}docker-version"
TEST_VERDICT = f"{PREFIX}test-verdict"
TESTED_AT = f"{PREFIX}tested-at"
TEST_RUN = f"{PREFIX}test-run"
PURPOSE = f"{PREFIX}purpose"
RUN = f"{PREFIX}run"

PURPOSE_BAKE = "bake"
PURPOSE_CANARY = "canary"
PURPOSE_UPGRADE = "upgrade"
PURPOSE_MAINTENANCE = "maintenance"
VERDICT_PASSED = "passed"
VERDICT_FAILED = "failed"
