"""Environment settings: load one TOML file per environment, layer overrides, validate into a typed model.

Layering, lowest to highest precedence:
  1. built-in defaults (the field defaults of the section models),
  2. the environment file ``environments/<name>.toml``,
  3. the stack's outputs, ``build/<name>/stack-outputs.json`` as ``inv deploy-stack`` records them (endpoints,
     bucket, secret ARNs, names; the table is render/stack_outputs.py). Where the file sets the same key, both
     must agree: a different value is an error naming both (no stale hand-copied value ever wins silently),
  4. environment variables ``NCIMAGE_<SECTION>__<KEY>`` (values parsed as TOML when they parse, else strings),
  5. command-line flags ``--set section.key=value`` (same value parsing).

Every error names the field (as a dotted path), where the bad value came from, and how to fix it; none quotes a
secret. Rules every field inherits (a new section gets them by subclassing ``render.sections.Section``, here
``_Section``): no control characters in any string, anywhere; no unknown keys; no type coercion. Cross-field rules
raise ``FieldProblems`` so each problem still names its own key.

The rooms: ``image`` (what is baked and how), ``service`` (what an instance serves and talks to), ``fleet`` (launch
template, group, rollout, upgrade), ``model`` (the whole environment and its rules across sections), ``loading``
(the layering above), ``explain`` (pydantic's errors as one line each), ``common`` (what they share). Import from
``render.settings``; the rooms may move.
"""

from render.sections import Section as _Section
from render.settings.common import ENV_PREFIX, SecretRef, SettingsError, secret_ref_kind
from render.settings.fleet import Autoscaling, LaunchTemplate, Rollout, Upgrade
from render.settings.image import Ami, Bake, BaseImage, Docker, Nextcloud
from render.settings.loading import (
    ENVIRONMENTS_DIR,
    Loaded,
    available_environments,
    env_overrides,
    environment_path,
    flag_overrides,
    load_settings,
    parse_value,
)
from render.settings.model import Settings, has_setting
from render.settings.service import S3, Cluster, Database, Logs, PostgresName, Redis, Secrets, Site, Web

__all__ = [
    "ENVIRONMENTS_DIR",
    "ENV_PREFIX",
    "S3",
    "Ami",
    "Autoscaling",
    "Bake",
    "BaseImage",
    "Cluster",
    "Database",
    "Docker",
    "LaunchTemplate",
    "Loaded",
    "Logs",
    "Nextcloud",
    "PostgresName",
    "Redis",
    "Rollout",
    "SecretRef",
    "Secrets",
    "Settings",
    "SettingsError",
    "Site",
    "Upgrade",
    "Web",
    "_Section",
    "available_environments",
    "env_overrides",
    "environment_path",
    "flag_overrides",
    "has_setting",
    "load_settings",
    "parse_value",
    "secret_ref_kind",
]
