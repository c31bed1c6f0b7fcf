"""The Nextcloud cluster double: what the image does on the emulated fleet, which runs nothing.

Stands in for Nextcloud's own code and the image's cluster init on each emulated instance (image/nextcloud/
cluster/cluster-init.php, lib.php's readiness(), the table in image/nextcloud/README.md), so that the parts of
AWS that look at a running instance can be answered:

- EC2 console output: what the image's upgrade-readiness-console prints there on an instance whose role allows
  the upgrade (image/rootfs/usr/local/libexec/nextcloud-image/, nextcloud-upgrade-readiness.service): one marked
  line with its /readyz answer each time the console is read, kept like a console keeps it; the lines are made by
  that script's own functions. moto's GetConsoleOutput answers a fixed text for every instance.
- ELBv2 target health: the load balancer's health check is /readyz, so an instance target is healthy exactly when
  its readiness is; moto reports every target healthy at once.

What each instance is comes from the emulator, not from the test: its code version is the Nextcloud version tag of
the AMI it runs, its role (allow_upgrade) is read from the user data it was launched with (the instance.json
that render/ writes). The shared database is one state row like ``nextcloud_cluster_state``: version, state
(installed | upgrading), target. The decisions are cluster-init's: same version -> join; newer code with
allow_upgrade -> upgrade once under the cluster lock (``upgrade_seconds`` of virtual time), newer without ->
wait (upgrade_pending); older -> code_older; while the row says upgrading every other node is cluster_busy; after
an upgrade a node that joined at the old version is cluster_changed until it is replaced. An upgrade that fails
(``fail_upgrade``) leaves the row 'upgrading', as an interrupted occ upgrade does; a later upgrader resumes it.

``upgrades`` records every completed upgrade: the proof that it ran exactly once.
"""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from virtual_clock import VirtualClock

from render import tags as T

REPORTER = (Path(__file__).resolve().parents[2] / "image" / "rootfs" / "usr" / "local" / "libexec" / "nextcloud-image"
            / "upgrade-readiness-console")


def _load_reporter() -> Any:
    """The image's readiness reporter as a module (a script without .py), for its line format."""
    loader = importlib.machinery.SourceFileLoader("upgrade_readiness_console", str(REPORTER))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


_REPORTER = _load_reporter()


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


@dataclass
class Node:
    code: str | None
    allow_upgrade: bool
    joined: str | None = None
    outcome: dict[str, Any] | None = None


@dataclass
class Database:
    version: str | None = None
    state: str = "installed"
    target: str | None = None
    upgrader: str | None = None
    done_at: float | None = None


@dataclass
class NextcloudClusterDouble:
    moto_url: str
    clock: VirtualClock
    region: str
    db: Database = field(default_factory=Database)
    upgrade_seconds: float = 120.0
    fail_upgrade: bool = False
    db_unreachable: bool = False  # no new node reaches the database (a security group, a failover...)
    upgrades: list[tuple[str, str, str]] = field(default_factory=list)  # (instance, from, to)
    nodes: dict[str, Node] = field(default_factory=dict)
    consoles: dict[str, str] = field(default_factory=dict)  # instance -> what it printed on its console
    lock: threading.RLock = field(default_factory=threading.RLock)

    clients: dict[str, Any] = field(default_factory=dict)

    def _client(self, service: str):
        if service not in self.clients:
            self.clients[service] = boto3.client(
                service, region_name=self.region, endpoint_url=self.moto_url,
                aws_access_key_id="nextcloud-double", aws_secret_access_key="nextcloud-double")
        return self.clients[service]

    # ---- what the instance is, read from the emulator --------------------------------------------------------
    def _node(self, instance_id: str) -> Node | None:
        if instance_id in self.nodes:
            return self.nodes[instance_id]
        ec2 = self._client("ec2")
        try:
            found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ec2.exceptions.ClientError:
            return None
        inst = found[0]["Instances"][0] if found else None
        if inst is None or inst["State"]["Name"] not in ("pending", "running"):
            return None
        images = ec2.describe_images(ImageIds=[inst["ImageId"]])["Images"]
        tags = {t["Key"]: t["Value"] for t in (images[0].get("Tags", []) if images else [])}
        raw = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData").get("UserData", {})
        node = Node(code=tags.get(T.NEXTCLOUD_VERSION), allow_upgrade=_allow_upgrade(raw.get("Value")))
        self.nodes[instance_id] = node
        return node

    # ---- cluster-init's decisions ---------------------------------------------------------------------------
    def readiness(self, instance_id: str) -> dict[str, Any]:
        with self.lock:
            self._finish_upgrade()
            node = self._node(instance_id)
            if node is None:
                return {"ready": False, "code": "unreachable", "reason": "the instance is not running"}
            if node.outcome is not None and node.outcome["code"] in ("upgrade_failed", "code_older"):
                return node.outcome
            if node.code is None:
                return {"ready": False, "code": "code_missing", "reason": "the AMI carries no Nextcloud version"}
            db = self.db
            if db.state == "upgrading" and db.upgrader == instance_id:
                return {"ready": False, "code": "upgrading", "phase": "upgrading",
                        "reason": f"upgrading the cluster from {db.version} to {db.target}"}
            if self.db_unreachable and node.joined is None:
                return {"ready": False, "code": "db_unreachable", "phase": "waiting",
                        "reason": "waiting for database nextcloud.db:5432: connection timed out"}
            if node.joined is not None:
                if db.state == "upgrading":
                    return {"ready": False, "code": "cluster_busy",
                            "reason": f"the cluster is upgrading to {db.target}"}
                if node.joined != db.version:
                    return {"ready": False, "code": "cluster_changed",
                            "reason": f"cluster is now at {db.version}, this node joined at {node.joined}: restart it"}
                return {"ready": True, "code": "ready", "reason": "", "version": node.joined}
            return self._decide(instance_id, node)

    def _decide(self, instance_id: str, node: Node) -> dict[str, Any]:
        db = self.db
        if db.version is None:
            return {"ready": False, "code": "not_installed", "reason": "not installed: the database is empty"}
        if db.state == "upgrading":
            if node.allow_upgrade and node.code == db.target:  # the upgrader died half-way: resume
                self._begin_upgrade(instance_id)
                return self.readiness(instance_id)
            return {"ready": False, "code": "upgrade_pending",
                    "reason": f"an upgrade to {db.target} did not finish; waiting for a node that may upgrade"}
        code, cluster = _version_tuple(node.code), _version_tuple(db.version)
        cmp = (code > cluster) - (code < cluster)
        if cmp == 0:
            node.joined = db.version
            return {"ready": True, "code": "ready", "reason": "", "version": db.version}
        if cmp < 0:
            node.outcome = {"ready": False, "code": "code_older",
                            "reason": f"code {node.code} is older than the cluster ({db.version})"}
            return node.outcome
        if not node.allow_upgrade:
            return {"ready": False, "code": "upgrade_pending",
                    "reason": f"upgrade pending: code {node.code} is newer than the cluster ({db.version}) and this "
                              "node may not upgrade (NEXTCLOUD_ALLOW_UPGRADE is not 1)"}
        db.target = node.code
        self._begin_upgrade(instance_id)
        return self.readiness(instance_id)

    def _begin_upgrade(self, instance_id: str) -> None:
        self.db.state, self.db.upgrader = "upgrading", instance_id
        self.db.done_at = self.clock.now + self.upgrade_seconds

    def _finish_upgrade(self) -> None:
        db = self.db
        if db.state != "upgrading" or db.upgrader is None or self.clock.now < (db.done_at or 0):
            return
        upgrader = db.upgrader
        node = self.nodes.get(upgrader)
        if self.fail_upgrade:
            if node is not None:
                node.outcome = {"ready": False, "code": "upgrade_failed",
                                "reason": f"occ upgrade from {db.version} failed (exit 1): simulated failure"}
            db.upgrader = None  # the row stays 'upgrading', as after a failed occ upgrade
            return
        self.upgrades.append((upgrader, db.version, db.target))
        db.version, db.state, db.target, db.upgrader = db.target, "installed", None, None
        if node is not None:
            node.joined = db.version

    def join(self, instance_ids: list[str]) -> None:
        """The fleet that was already serving: each of these nodes joined the cluster at its version."""
        for iid in instance_ids:
            self.readiness(iid)

    # ---- EC2 console output ---------------------------------------------------------------------------------
    def console(self, instance_id: str) -> str:
        """The console text the instance has printed by now: on the upgrade instance one more marked readiness line
        (its reporter prints every few seconds; each read is one such moment), on any other nothing."""
        with self.lock:
            self.clock.tick()
            node = self._node(instance_id)
            if node is not None and node.allow_upgrade:
                answer = self.readiness(instance_id)
                small = {k: answer[k] for k in _REPORTER.KEYS if isinstance(answer.get(k), (bool, str))}
                self.consoles[instance_id] = self.consoles.get(instance_id, "") + _REPORTER.line(small)
            return self.consoles.get(instance_id, "")


def _allow_upgrade(user_data_b64: str | None) -> bool:
    """role.allow_upgrade from the cloud-config render/ writes (instance.json inside write_files)."""
    if not user_data_b64:
        return False
    try:
        doc = yaml.safe_load(base64.b64decode(user_data_b64))
        for entry in doc.get("write_files", []):
            if entry.get("path") == "/etc/nextcloud/instance.json":
                return bool(json.loads(entry["content"])["role"]["allow_upgrade"])
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return False
    return False
