"""The instance-refresh double: Amazon EC2 Auto Scaling's instance refresh, on top of the emulator's group.

Stands in for StartInstanceRefresh, DescribeInstanceRefreshes, CancelInstanceRefresh and RollbackInstanceRefresh,
which moto 5.2.5 does not implement (all four answer NotImplemented). It drives the emulator's real group through
moto's own API: instances are launched from the pinned launch template version (RunInstances + AttachInstances)
and old ones terminated (TerminateInstanceInAutoScalingGroup), so the group's instances really change image; on
success the group is updated to the desired configuration, as AWS does. Time is virtual (virtual_clock.py).

The rules it follows, each from AWS's documentation (API reference pages and the EC2 Auto Scaling user guide):

  R1  One active refresh per group: a second StartInstanceRefresh fails with InstanceRefreshInProgress
      (API_StartInstanceRefresh, Errors).
  R2  Statuses: Pending -> InProgress -> Successful | Failed | Cancelling -> Cancelled | RollbackInProgress ->
      RollbackSuccessful | RollbackFailed; Baking while the bake time runs (API_InstanceRefresh, Status; the user
      guide's "Monitor an instance refresh": Pending while it initialises, then InProgress).
  R3  AutoRollback is refused without a DesiredConfiguration (ValidationError, AWS's own message as quoted in
      terraform-provider-aws#29830) and when the desired configuration or the group uses $Latest/$Default
      (API_RefreshPreferences AutoRollback; user guide "Undo changes with a manual or auto rollback").
  R4  RollbackInstanceRefresh: ActiveInstanceRefreshNotFound without an active refresh; IrreversibleInstanceRefresh
      when the refresh has no desired configuration or the group uses $Latest/$Default
      (API_RollbackInstanceRefresh; IrreversibleInstanceRefreshFault).
  R5  CancelInstanceRefresh: ActiveInstanceRefreshNotFound without one; Cancelling, then Cancelled; what was
      replaced stays replaced (API_CancelInstanceRefresh).
  R6  Checkpoints: after the share of new instances reaches each checkpoint below 100 the refresh pauses for
      CheckpointDelay (3600 s when only percentages are given); replacements never overshoot the next checkpoint;
      CheckpointDelay without CheckpointPercentages is invalid (user guide "Add checkpoints to an instance
      refresh"; API_RefreshPreferences).
  R7  Min/max healthy: at least MinHealthyPercentage (default 90) of the desired capacity stays in service and
      healthy, at most MaxHealthyPercentage in service or pending; MaxHealthyPercentage needs
      MinHealthyPercentage and may exceed it by at most 100; without it an instance is terminated and its
      replacement launched together, with it and no room left one is launched before one is terminated
      (API_RefreshPreferences).
  R8  An instance counts as updated once it is healthy and its warm-up has passed (InstanceWarmup, else the
      group's HealthCheckGracePeriod) (API_InstanceRefresh PercentageComplete; API_RefreshPreferences).
  R9  SkipMatching skips instances already on the desired launch template version (API_RefreshPreferences).
  R10 ScaleInProtectedInstances Refresh | Ignore | Wait and StandbyInstances Terminate | Ignore | Wait; Wait (the
      default) waits an hour, then the refresh fails (API_RefreshPreferences).
  R11 An alarm of the AlarmSpecification in ALARM fails the refresh, and with AutoRollback rolls it back
      (API_RefreshPreferences; user guide "Undo changes..."). The double watches them while Baking too.
  R12 Replacements that keep failing health checks are retried for an hour; then the refresh fails (and rolls
      back with AutoRollback) (user guide "Start an instance refresh with auto rollback").
  R13 A rollback replaces the instances deployed so far with the configuration the group had before the refresh;
      PercentageComplete goes back down to zero; RollbackDetails records why and from where (user guide;
      API_InstanceRefresh, API_RollbackDetails).
  R14 BakeTime: after the last replacement the refresh is Baking for BakeTime seconds before it is Successful
      (API_RefreshPreferences BakeTime; API_InstanceRefresh Status).
  R15 When a refresh with a desired configuration succeeds, the group is updated to it
      (API_StartInstanceRefresh, DesiredConfiguration).

Not modelled (the production code does not use them): warm pools, mixed instances policies, the ReplaceRootVolume
strategy, lifecycle hooks. The StatusReason texts are the double's own words, and how it sizes batches within the
documented bounds is its own choice (AWS does not document it). It never grows the group past MaxSize (moto
refuses to attach beyond it), so with no room it terminates before it launches.

Test controls: ``unhealthy_images`` (instances from these AMIs fail their health checks: the new image's service
never comes up), ``alarm_at_percent`` (alarm name -> percentage at which the double puts it into ALARM: stands in
for CloudWatch evaluating the errors the new instances produce).
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3
from virtual_clock import VirtualClock

ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking")
HOUR = 3600.0
AUTO_ROLLBACK_WITHOUT_DESIRED = (
    "The request isn't valid. The AutoRollback parameter cannot be set to true when the DesiredConfiguration "
    "parameter is empty. Set AutoRollback to false or specify a desired configuration and try again."
)


class RefreshError(Exception):
    """An error answer: the AWS error code, its message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Replacement:
    new_id: str
    old_id: str | None
    launched_at: float
    terminate_old_after: bool


@dataclass
class Refresh:
    id: str
    region: str
    group: str
    preferences: dict[str, Any]
    desired: dict[str, Any] | None
    original: dict[str, Any]
    started_at: float
    status: str = "Pending"
    reason: str = ""
    ended_at: float | None = None
    capacity: int = 0  # the group's desired capacity when the refresh began: what a rollback restores
    total: int = 0
    updated: int = 0
    to_replace: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # instance -> "Standby" | "protected"
    batch: list[Replacement] = field(default_factory=list)
    new_ids: set[str] = field(default_factory=set)
    checkpoint_until: float | None = None
    passed_checkpoints: set[int] = field(default_factory=set)
    bake_until: float | None = None
    waiting_since: float | None = None
    failing_since: float | None = None
    rollback: dict[str, Any] | None = None
    rollback_total: int = 0
    history: list[tuple[float, str, int]] = field(default_factory=list)  # (time, status, percent) as observed

    @property
    def percent(self) -> int:
        if self.status == "Pending":
            return 0
        if self.rollback is not None:
            start = self.rollback["PercentageCompleteOnRollback"]
            left = len(self.new_ids)
            return 0 if not self.rollback_total else math.floor(start * left / self.rollback_total)
        return 100 if not self.total else math.floor(100 * self.updated / self.total)


class InstanceRefreshDouble:
    """Instance refresh for the emulator's groups (see the module docstring for the rules and their sources)."""

    def __init__(self, moto_url: str, clock: VirtualClock):
        self.moto_url = moto_url
        self.clock = clock
        self.refreshes: list[Refresh] = []
        self.versions: dict[tuple[str, str], tuple[str, str]] = {}  # (region, instance) -> (lt id, version)
        self.unhealthy_images: set[str] = set()
        self.alarm_at_percent: dict[str, int] = {}
        self.lock = threading.RLock()
        self._clients: dict[tuple[str, str], Any] = {}
        self._groups: dict[tuple[str, str], dict[str, Any]] = {}  # read once per step, dropped on every change
        self._alarms_seen_at: dict[str, float] = {}

    # ---- the emulator, through its own API ------------------------------------------------------------------
    def client(self, service: str, region: str):
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = boto3.client(
                service, region_name=region, endpoint_url=self.moto_url,
                aws_access_key_id="refresh-double", aws_secret_access_key="refresh-double",
            )
        return self._clients[key]

    def _group(self, region: str, name: str) -> dict[str, Any] | None:
        key = (region, name)
        if key not in self._groups:
            groups = self.client("autoscaling", region).describe_auto_scaling_groups(AutoScalingGroupNames=[name])
            found = (groups["AutoScalingGroups"] or [None])[0]
            if found is None:
                return None
            self._groups[key] = found
        return self._groups[key]

    def _changed(self) -> None:
        self._groups.clear()

    def observe_group(self, region: str, group: dict[str, Any]) -> None:
        """Remember which launch template version each instance came from: instances the group launched itself
        came from the group's configuration at the time the double first saw them."""
        spec = group.get("LaunchTemplate") or {}
        for inst in group.get("Instances", []):
            key = (region, inst["InstanceId"])
            if key not in self.versions and spec:
                self.versions[key] = (spec["LaunchTemplateId"], spec.get("Version") or "$Default")

    def _resolve(self, region: str, spec: dict[str, Any]) -> tuple[str, int]:
        ec2 = self.client("ec2", region)
        if spec.get("LaunchTemplateId"):
            found = ec2.describe_launch_templates(LaunchTemplateIds=[spec["LaunchTemplateId"]])["LaunchTemplates"]
        else:
            found = ec2.describe_launch_templates(LaunchTemplateNames=[spec["LaunchTemplateName"]])["LaunchTemplates"]
        lt = found[0]
        version = spec.get("Version") or "$Default"
        if version == "$Latest":
            return lt["LaunchTemplateId"], lt["LatestVersionNumber"]
        if version == "$Default":
            return lt["LaunchTemplateId"], lt["DefaultVersionNumber"]
        number = int(version)
        if not 1 <= number <= lt["LatestVersionNumber"]:
            raise ValueError(version)
        return lt["LaunchTemplateId"], number

    def _image_of(self, region: str, instance_ids: list[str]) -> dict[str, str]:
        if not instance_ids:
            return {}
        found = self.client("ec2", region).describe_instances(InstanceIds=instance_ids)
        return {i["InstanceId"]: i["ImageId"] for r in found["Reservations"] for i in r["Instances"]}

    def _launch(self, r: Refresh, group: dict[str, Any], spec: dict[str, Any], count: int) -> list[str]:
        lt_id, number = self._resolve(r.region, spec)
        subnets = [s for s in (group.get("VPCZoneIdentifier") or "").split(",") if s]
        tags = [{"Key": t["Key"], "Value": t["Value"]} for t in group.get("Tags", []) if t.get("PropagateAtLaunch")]
        ids = []
        for i in range(count):
            kwargs: dict[str, Any] = {
                "LaunchTemplate": {"LaunchTemplateId": lt_id, "Version": str(number)}, "MinCount": 1, "MaxCount": 1,
            }
            if subnets:
                kwargs["SubnetId"] = subnets[(len(self.versions) + i) % len(subnets)]
            if tags:
                kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
            ids.append(self.client("ec2", r.region).run_instances(**kwargs)["Instances"][0]["InstanceId"])
        desired = self._group(r.region, r.group)["DesiredCapacity"]
        asg = self.client("autoscaling", r.region)
        asg.attach_instances(AutoScalingGroupName=r.group, InstanceIds=ids)
        # AWS adds the attached instances to the desired capacity; moto adds them to the count of all instances,
        # Standby ones included: put the desired capacity where AWS would have it.
        asg.set_desired_capacity(AutoScalingGroupName=r.group, DesiredCapacity=desired + len(ids))
        self._changed()
        for iid in ids:
            self.versions[(r.region, iid)] = (lt_id, spec.get("Version") or "$Default")
        return ids

    def _terminate(self, r: Refresh, instance_id: str, decrement: bool = True) -> None:
        self.client("autoscaling", r.region).terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=decrement
        )
        self._changed()

    # ---- the API ------------------------------------------------------------------------------------------
    def _active(self, region: str, group: str) -> Refresh | None:
        return next((r for r in self.refreshes if (r.region, r.group) == (region, group) and r.status in ACTIVE), None)

    def start(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            name = params["AutoScalingGroupName"]
            group = self._group(region, name)
            if group is None:
                raise RefreshError("ValidationError",
                                   f"AutoScalingGroup name not found - AutoScalingGroup {name} not found")
            self.observe_group(region, group)
            if self._active(region, name):  # R1
                raise RefreshError(
                    "InstanceRefreshInProgress",
                    "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.",
                )
            if params.get("Strategy", "Rolling") != "Rolling":
                raise RefreshError("ValidationError", "the double implements the Rolling strategy only")
            prefs = dict(params.get("Preferences") or {})
            desired = params.get("DesiredConfiguration")
            self._validate(region, group, prefs, desired)
            effective = {
                "MinHealthyPercentage": 90, "SkipMatching": False, "AutoRollback": False,
                "ScaleInProtectedInstances": "Wait", "StandbyInstances": "Wait", **prefs,
            }
            if prefs.get("CheckpointPercentages") and "CheckpointDelay" not in prefs:
                effective["CheckpointDelay"] = 3600  # R6
            refresh = Refresh(
                id=str(uuid.uuid4()), region=region, group=name, preferences=effective, desired=desired,
                original=dict(group["LaunchTemplate"]), started_at=self.clock.now,
            )
            self.refreshes.append(refresh)
            self._note(refresh)
            return {"InstanceRefreshId": refresh.id}

    def _validate(self, region: str, group: dict[str, Any], prefs: dict[str, Any], desired: dict[str, Any] | None):
        if "CheckpointDelay" in prefs and not prefs.get("CheckpointPercentages"):
            raise RefreshError("ValidationError", "CheckpointDelay requires CheckpointPercentages")  # R6
        cps = prefs.get("CheckpointPercentages") or []
        if cps != sorted(set(cps)):
            raise RefreshError("ValidationError", "CheckpointPercentages must be unique and in ascending order")
        if "MaxHealthyPercentage" in prefs:  # R7
            if "MinHealthyPercentage" not in prefs:
                raise RefreshError("ValidationError", "MaxHealthyPercentage requires MinHealthyPercentage")
            if prefs["MaxHealthyPercentage"] - prefs["MinHealthyPercentage"] > 100:
                raise RefreshError(
                    "ValidationError", "The difference between MaxHealthyPercentage and MinHealthyPercentage "
                    "cannot be greater than 100"
                )
        alarms = (prefs.get("AlarmSpecification") or {}).get("Alarms") or []
        if len(alarms) > 10:
            raise RefreshError("ValidationError", "You can specify up to 10 alarms")
        group_version = (group.get("LaunchTemplate") or {}).get("Version") or "$Default"
        if desired is not None:
            spec = desired.get("LaunchTemplate")
            if spec is None:
                raise RefreshError("ValidationError", "the double supports a LaunchTemplate desired configuration only")
            try:
                self._resolve(region, spec)
            except (ValueError, IndexError, KeyError, self.client("ec2", region).exceptions.ClientError):
                raise RefreshError(
                    "ValidationError", f"The launch template version {spec.get('Version')} does not exist"
                ) from None
        if prefs.get("AutoRollback"):  # R3
            if desired is None:
                raise RefreshError("ValidationError", AUTO_ROLLBACK_WITHOUT_DESIRED)
            if (desired["LaunchTemplate"].get("Version") or "$Default") in ("$Latest", "$Default"):
                raise RefreshError(
                    "ValidationError", "AutoRollback is not supported with the $Latest or $Default launch template "
                    "version in the desired configuration: specify a version number"
                )
            if not group.get("LaunchTemplate") or group_version in ("$Latest", "$Default"):
                raise RefreshError(
                    "ValidationError", "AutoRollback is not supported when the Auto Scaling group uses the $Latest or "
                    "$Default launch template version"
                )

    def describe(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.clock.tick()
            self.advance_all()
            name = params["AutoScalingGroupName"]
            wanted = set(params.get("InstanceRefreshIds") or [])
            found = [r for r in reversed(self.refreshes) if (r.region, r.group) == (region, name)]
            found = [r for r in found if not wanted or r.id in wanted][: params.get("MaxRecords") or 50]
            return {"InstanceRefreshes": [self._view(r) for r in found]}

    def cancel(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            name = params["AutoScalingGroupName"]
            r = self._active(region, name)
            if r is None or r.status == "Cancelling":  # R5
                raise RefreshError(
                    "ActiveInstanceRefreshNotFound", f"No in progress or pending Instance Refresh found for {name}"
                )
            r.status, r.reason = "Cancelling", "Cancelling at the user's request"
            self._note(r)
            return {"InstanceRefreshId": r.id}

    def rollback_refresh(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            name = params["AutoScalingGroupName"]
            r = self._active(region, name)
            if r is None or r.status in ("Cancelling", "RollbackInProgress"):  # R4
                raise RefreshError(
                    "ActiveInstanceRefreshNotFound", f"No in progress or pending Instance Refresh found for {name}"
                )
            if r.desired is None or (r.original.get("Version") or "$Default") in ("$Latest", "$Default"):
                raise RefreshError(
                    "IrreversibleInstanceRefresh",
                    "The instance refresh can't be rolled back: it has no desired configuration, or the group uses "
                    "the $Latest or $Default launch template version",
                )
            self._start_rollback(r, "Manual rollback requested (RollbackInstanceRefresh)")
            return {"InstanceRefreshId": r.id}

    def _view(self, r: Refresh) -> dict[str, Any]:
        to_update = (
            r.rollback["InstancesToUpdateOnRollback"] if r.rollback is not None else max(r.total - r.updated, 0)
        )
        view: dict[str, Any] = {
            "InstanceRefreshId": r.id, "AutoScalingGroupName": r.group, "Status": r.status,
            "StartTime": self.clock.timestamp(r.started_at), "PercentageComplete": r.percent,
            "InstancesToUpdate": to_update,
            "ProgressDetails": {"LivePoolProgress": {"PercentageComplete": r.percent, "InstancesToUpdate": to_update}},
            "Preferences": r.preferences, "Strategy": "Rolling",
        }
        if r.reason:
            view["StatusReason"] = r.reason[:1023]
        if r.ended_at is not None:
            view["EndTime"] = self.clock.timestamp(r.ended_at)
        if r.desired is not None:
            view["DesiredConfiguration"] = r.desired
        if r.rollback is not None:
            view["RollbackDetails"] = r.rollback
        return view

    # ---- progress -----------------------------------------------------------------------------------------
    def advance_all(self) -> None:
        with self.lock:
            for r in self.refreshes:
                if r.status not in ACTIVE:
                    continue
                self._changed()
                for _ in range(1000):
                    before = (r.status, r.updated, len(r.batch), len(r.new_ids), r.checkpoint_until, r.reason)
                    self._step(r)
                    self._note(r)
                    if (r.status, r.updated, len(r.batch), len(r.new_ids), r.checkpoint_until, r.reason) == before:
                        break
                self._note(r)

    def _note(self, r: Refresh) -> None:
        if not r.history or r.history[-1][1:] != (r.status, r.percent):
            r.history.append((self.clock.now, r.status, r.percent))

    def _step(self, r: Refresh) -> None:
        if r.status == "Pending":
            self._begin(r)
        elif r.status == "InProgress":
            self._forward(r)
        elif r.status == "Baking":
            if self._alarm_check(r):
                return
            if self.clock.now >= (r.bake_until or 0):
                self._succeed(r)
        elif r.status == "Cancelling":
            r.status, r.reason, r.ended_at = "Cancelled", "Cancelled at the user's request", self.clock.now
            r.batch = []
        elif r.status == "RollbackInProgress":
            self._backward(r)

    def _begin(self, r: Refresh) -> None:
        group = self._group(r.region, r.group)
        self.observe_group(r.region, group)
        prefs = r.preferences
        target = r.desired["LaunchTemplate"] if r.desired else group["LaunchTemplate"]
        target_id, target_number = self._resolve(r.region, target)
        for inst in group["Instances"]:
            iid = inst["InstanceId"]
            if inst["LifecycleState"].startswith("Standby"):
                choice = prefs["StandbyInstances"]  # R10
                if choice == "Ignore":
                    continue
                if choice == "Terminate":
                    self._terminate(r, iid, decrement=False)
                    continue
                r.blocked[iid] = "Standby"
            elif inst.get("ProtectedFromScaleIn"):
                choice = prefs["ScaleInProtectedInstances"]
                if choice == "Ignore":
                    continue
                if choice == "Wait":
                    r.blocked[iid] = "protected"
            if prefs.get("SkipMatching"):  # R9
                lt_id, version = self.versions.get((r.region, iid), ("", ""))
                try:
                    matches = (lt_id, self._resolve(r.region, {"LaunchTemplateId": lt_id, "Version": version})[1]) == (
                        target_id, target_number
                    )
                except (ValueError, IndexError, KeyError):
                    matches = False
                if matches:
                    r.blocked.pop(iid, None)
                    continue
            r.to_replace.append(iid)
        r.total = len(r.to_replace)
        r.capacity = self._group(r.region, r.group)["DesiredCapacity"]
        r.status, r.reason = "InProgress", ""

    def _alarm_check(self, r: Refresh) -> bool:
        alarms = (r.preferences.get("AlarmSpecification") or {}).get("Alarms") or []
        cw = self.client("cloudwatch", r.region)
        for name, percent in list(self.alarm_at_percent.items()):
            if name in alarms and r.percent >= percent and r.rollback is None:
                cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason=f"errors at {percent}% (double)")
                del self.alarm_at_percent[name]
        if not alarms or self._alarms_seen_at.get(r.id) == self.clock.now:
            return False
        self._alarms_seen_at[r.id] = self.clock.now
        found = cw.describe_alarms(AlarmNames=alarms)
        firing = [a["AlarmName"] for a in found.get("MetricAlarms", []) + found.get("CompositeAlarms", [])
                  if a["StateValue"] == "ALARM"]
        if firing:  # R11
            self._fail(r, f"CloudWatch alarm {', '.join(firing)} went into ALARM state")
            return True
        return False

    def _fail(self, r: Refresh, reason: str) -> None:
        if r.preferences.get("AutoRollback"):
            self._start_rollback(r, f"Automatic rollback: {reason}")
        else:
            r.status, r.reason, r.ended_at = "Failed", reason, self.clock.now
            r.batch = []

    def _start_rollback(self, r: Refresh, reason: str) -> None:  # R13
        r.rollback = {
            "RollbackReason": reason, "RollbackStartTime": self.clock.timestamp(),
            "PercentageCompleteOnRollback": r.percent, "InstancesToUpdateOnRollback": max(r.total - r.updated, 0),
        }
        r.status, r.reason = "RollbackInProgress", reason
        r.batch, r.checkpoint_until, r.bake_until, r.failing_since = [], None, None, None
        group = self._group(r.region, r.group)
        present = {i["InstanceId"] for i in group["Instances"]}
        r.new_ids &= present
        r.rollback_total = len(r.new_ids)

    def _succeed(self, r: Refresh) -> None:  # R15
        if r.desired is not None:
            self.client("autoscaling", r.region).update_auto_scaling_group(
                AutoScalingGroupName=r.group, LaunchTemplate=r.desired["LaunchTemplate"]
            )
            self._changed()
        r.status, r.reason, r.ended_at = "Successful", "", self.clock.now

    def _health(self, r: Refresh, group: dict[str, Any], ids: list[str]) -> dict[str, bool]:
        """Healthy or not, as the group's health checks would find it; failing ones are marked Unhealthy."""
        images = self._image_of(r.region, ids)
        states = {i["InstanceId"]: i for i in group["Instances"]}
        result = {}
        for iid in ids:
            bad = images.get(iid) in self.unhealthy_images
            if bad and states.get(iid, {}).get("HealthStatus") == "Healthy":
                self.client("autoscaling", r.region).set_instance_health(InstanceId=iid, HealthStatus="Unhealthy")
                self._changed()
            result[iid] = iid in states and not bad and states[iid]["LifecycleState"] == "InService"
        return result

    def _warmup(self, r: Refresh, group: dict[str, Any]) -> float:
        if "InstanceWarmup" in r.preferences:
            return float(r.preferences["InstanceWarmup"])
        return float(group.get("HealthCheckGracePeriod") or 0)  # R8

    def _batch_size(self, r: Refresh, group: dict[str, Any], wanted: int) -> tuple[int, int]:
        """(terminate first, launch first) for a batch of up to ``wanted`` replacements (R7)."""
        prefs = r.preferences
        desired = group["DesiredCapacity"]
        in_service = [i for i in group["Instances"] if i["LifecycleState"] == "InService"]
        healthy = [i for i in in_service if i["HealthStatus"] == "Healthy"]
        keep = math.ceil(desired * prefs["MinHealthyPercentage"] / 100)
        can_stop = max(len(healthy) - keep, 0)
        if "MaxHealthyPercentage" in prefs:
            ceiling = min(math.floor(desired * prefs["MaxHealthyPercentage"] / 100), group["MaxSize"])
            pending = [i for i in group["Instances"] if i["LifecycleState"].startswith("Pending")]
            room = max(ceiling - len(in_service) - len(pending), 0)
            k = min(wanted, can_stop + room) or 1
            launch_first = min(k, room)
            if k == 1 and can_stop == 0 and room == 0 and len(group["Instances"]) < group["MaxSize"]:
                launch_first = 1  # nothing fits: launch one before terminating one
            return k - launch_first, launch_first
        k = min(wanted, can_stop) or 1
        return k, 0

    def _forward(self, r: Refresh) -> None:
        if self._alarm_check(r):
            return
        group = self._group(r.region, r.group)
        now = self.clock.now
        if r.batch:
            self._progress_batch(r, group, r.desired["LaunchTemplate"] if r.desired else r.original, forward=True)
            return
        if r.checkpoint_until is not None:
            if now < r.checkpoint_until:
                return
            r.checkpoint_until, r.reason = None, ""
        present = {i["InstanceId"]: i for i in group["Instances"]}
        remaining = [iid for iid in r.to_replace if iid in present]
        r.to_replace = remaining
        if not remaining:
            r.blocked.clear()
            bake = r.preferences.get("BakeTime") or 0
            if bake:  # R14
                r.status, r.bake_until, r.reason = "Baking", now + bake, f"Baking for {bake} seconds"
            else:
                self._succeed(r)
            return
        for iid in list(r.blocked):
            inst = present.get(iid)
            if inst is None or (r.blocked[iid] == "Standby" and inst["LifecycleState"] == "InService") or (
                r.blocked[iid] == "protected" and not inst.get("ProtectedFromScaleIn")
            ):
                del r.blocked[iid]
        candidates = [iid for iid in remaining if iid not in r.blocked]
        if not candidates:  # R10: waiting for Standby / scale-in protected instances
            r.waiting_since = r.waiting_since if r.waiting_since is not None else now
            kinds = sorted(set(r.blocked.values()))
            r.reason = f"Waiting for {len(r.blocked)} instance(s) ({', '.join(kinds)}) to be replaceable"
            if now - r.waiting_since >= HOUR:
                self._fail(r, f"{len(r.blocked)} instance(s) stayed {' or '.join(kinds)} for an hour")
            return
        r.waiting_since = None
        wanted = len(candidates)
        cps = [cp for cp in r.preferences.get("CheckpointPercentages") or [] if cp not in r.passed_checkpoints]
        if cps and r.total:  # R6: never overshoot the next checkpoint
            wanted = min(wanted, max(math.ceil(cps[0] * r.total / 100) - r.updated, 1))
        stop_first, launch_first = self._batch_size(r, group, wanted)
        olds = candidates[: stop_first + launch_first]
        for old in olds[:stop_first]:
            self._terminate(r, old)
        spec = r.desired["LaunchTemplate"] if r.desired else r.original
        new = self._launch(r, group, spec, len(olds))
        r.new_ids.update(new)
        r.batch = [Replacement(n, o, now, i >= stop_first) for i, (n, o) in enumerate(zip(new, olds, strict=True))]
        r.to_replace = [iid for iid in r.to_replace if iid not in olds]
        r.reason = ""

    def _progress_batch(self, r: Refresh, group: dict[str, Any], spec: dict[str, Any], forward: bool) -> None:
        now = self.clock.now
        health = self._health(r, group, [b.new_id for b in r.batch])
        grace = float(group.get("HealthCheckGracePeriod") or 0)
        # The group checks an instance's health once its grace period has passed, and replaces it if it fails.
        failing = [b for b in r.batch if not health[b.new_id] and now - b.launched_at >= grace]
        if any(not health[b.new_id] for b in r.batch) and not failing:
            r.failing_since = r.failing_since if r.failing_since is not None else now
            r.reason = "Waiting for new instance(s) to pass their health checks"
            return
        for b in failing:  # R12: the group replaces an instance that fails its health checks
            r.failing_since = r.failing_since if r.failing_since is not None else now
            self._terminate(r, b.new_id)
            (r.new_ids if forward else set()).discard(b.new_id)
            b.new_id = self._launch(r, self._group(r.region, r.group), spec, 1)[0]
            b.launched_at = now
            if forward:
                r.new_ids.add(b.new_id)
        if failing:
            images = sorted(set(self._image_of(r.region, [b.new_id for b in failing]).values()))
            r.reason = f"{len(failing)} new instance(s) from {', '.join(images)} failed their health checks"
            if now - r.failing_since >= HOUR:
                what = f"instances from {', '.join(images)} kept failing their health checks for an hour"
                if forward:
                    self._fail(r, what)
                else:
                    r.status, r.reason, r.ended_at = "RollbackFailed", f"Rollback failed: {what}", now
                return
            return
        r.failing_since = None
        warmup = self._warmup(r, group)
        if any(now - b.launched_at < warmup for b in r.batch):
            r.reason = f"Waiting for {len(r.batch)} instance(s) to warm up"
            return
        for b in r.batch:
            if b.terminate_old_after and b.old_id:
                self._terminate(r, b.old_id)
            if not forward and b.old_id:
                r.new_ids.discard(b.old_id)
        if forward:
            r.updated += len(r.batch)
            for cp in r.preferences.get("CheckpointPercentages") or []:
                if cp < 100 and cp not in r.passed_checkpoints and r.percent >= cp:
                    r.passed_checkpoints.add(cp)
                    r.checkpoint_until = now + r.preferences.get("CheckpointDelay", 3600)
                    r.reason = f"Checkpoint {cp}% reached: waiting {r.checkpoint_until - now:.0f} seconds"
        r.batch = []

    def _backward(self, r: Refresh) -> None:
        """R13: replace what the refresh deployed with the group's previous configuration, back to its capacity."""
        group = self._group(r.region, r.group)
        present = {i["InstanceId"]: i for i in group["Instances"]}
        r.new_ids &= set(present)
        if r.batch:
            self._progress_batch(r, group, r.original, forward=False)
            return
        on_original = [i for i, st in present.items() if i not in r.new_ids and st["LifecycleState"] == "InService"]
        needed = max(r.capacity - len(on_original), 0)
        if not r.new_ids and not needed:
            r.status, r.ended_at = "RollbackSuccessful", self.clock.now
            r.reason = f"{r.rollback['RollbackReason']}; the group runs its previous configuration again"
            return
        if not needed:  # what the refresh launched was surplus: take it away
            for iid in sorted(r.new_ids):
                self._terminate(r, iid)
            r.new_ids.clear()
            return
        stop_first, launch_first = self._batch_size(r, group, min(needed, len(r.new_ids)) or needed)
        count = stop_first + launch_first
        removable = sorted(r.new_ids)[:count]
        for old in removable[:stop_first]:
            self._terminate(r, old)
            r.new_ids.discard(old)
        new = self._launch(r, self._group(r.region, r.group), r.original, count)
        pairs = [(n, removable[i] if i < len(removable) else None) for i, n in enumerate(new)]
        r.batch = [Replacement(n, o, self.clock.now, i >= stop_first) for i, (n, o) in enumerate(pairs)]
