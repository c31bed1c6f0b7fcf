"""The instance refresh preferences: built here and only here, from the settings ([rollout], [upgrade]).

Every value is sent explicitly, so AWS's defaults (90 % healthy, Wait one hour for protected and standby
instances, no rollback) never decide silently. Two purposes:

- ``rollout``: checkpoints with their delay, auto rollback, the stack's alarms, a bake time during which the alarms
  are still watched, skip matching, and the settings' handling of scale-in protected and standby instances;
- ``upgrade``: the refresh after the database was upgraded, while the cluster is in maintenance. No auto rollback
  (the previous image is older than the database now and could never serve again), no alarms (the maintenance page
  answers 503, which would fire them), no checkpoints and no bake time (pausing only prolongs the maintenance);
  healthy percentages from [upgrade] (by default the whole fleet is replaced at once: nobody is being served).
"""

from __future__ import annotations

from typing import Any, Literal

Purpose = Literal["rollout", "upgrade"]


def refresh_preferences(settings: Any, purpose: Purpose = "rollout") -> dict[str, Any]:
    """StartInstanceRefresh ``Preferences`` for ``settings`` and ``purpose``."""
    r = settings.rollout
    prefs: dict[str, Any] = {
        "InstanceWarmup": r.instance_warmup_seconds,
        "SkipMatching": r.skip_matching,
        "ScaleInProtectedInstances": r.scale_in_protected_instances,
        "StandbyInstances": r.standby_instances,
    }
    if purpose == "upgrade":
        u = settings.upgrade
        prefs.update(MinHealthyPercentage=u.min_healthy_percentage, MaxHealthyPercentage=u.max_healthy_percentage,
                     AutoRollback=False, BakeTime=0)
        return prefs
    prefs.update(MinHealthyPercentage=r.min_healthy_percentage, MaxHealthyPercentage=r.max_healthy_percentage,
                 AutoRollback=r.auto_rollback, BakeTime=r.bake_time_seconds)
    if r.checkpoint_percentages:
        prefs["CheckpointPercentages"] = list(r.checkpoint_percentages)
        prefs["CheckpointDelay"] = r.checkpoint_delay_seconds
    if r.alarm_names:
        prefs["AlarmSpecification"] = {"Alarms": list(r.alarm_names)}
    return prefs


def describe_preferences(prefs: dict[str, Any]) -> str:
    """The preferences in one line for a plan: healthy 90-150 %, warm-up 120 s, checkpoints 50 %, 100 % (300 s)..."""
    parts = [f"healthy {prefs.get('MinHealthyPercentage', 90)}-{prefs.get('MaxHealthyPercentage', 100)} %",
             f"warm-up {prefs.get('InstanceWarmup', 0)} s"]
    if prefs.get("CheckpointPercentages"):
        cps = ", ".join(f"{c} %" for c in prefs["CheckpointPercentages"])
        parts.append(f"checkpoints {cps} (pause {prefs.get('CheckpointDelay', 3600)} s)")
    parts.append("auto rollback" if prefs.get("AutoRollback") else "no auto rollback")
    alarms = (prefs.get("AlarmSpecification") or {}).get("Alarms") or []
    parts.append(f"alarms {', '.join(alarms)}" if alarms else "no alarms")
    parts += [f"bake {prefs.get('BakeTime', 0)} s", "skip matching" if prefs.get("SkipMatching") else "replace all",
              f"protected: {prefs.get('ScaleInProtectedInstances', 'Wait')}",
              f"standby: {prefs.get('StandbyInstances', 'Wait')}"]
    return "; ".join(parts)
