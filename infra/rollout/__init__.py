"""Getting a new AMI into service on the Auto Scaling group, and back out, safely.

One module per concern, each named for what it does:

- ``group``: which launch template version and AMI the group launches now (``current_launch``: also what
  deploy-stack passes as the stack's image, so the stack never puts an old AMI back);
- ``amis``: reading AMIs and their tags, the checks an AMI must pass before it may be rolled out, the manifest;
- ``launch_template``: a new version from the group's version with only the image changed (``SourceVersion``),
  verified before it is used; the default version following a successful rollout;
- ``preferences``: the one function that builds the instance refresh preferences from the settings;
- ``refresh``: start, follow (bounded polling: AWS has no waiter), roll back an instance refresh; its verdicts;
- ``records``: the release record and the upgrade state, kept in SSM where any machine finds them;
- ``rollout`` / ``rollback`` / ``upgrade`` / ``prune`` / ``status``: the tasks' entry points;
- ``maintenance`` and ``upgrade_instance``: the cluster-wide maintenance switch and the one-off upgrade instance;
- ``report``: progress and plans on the console; ``outcome``: refusals and exit codes;
- ``versions``: Nextcloud versions and the one-major-at-a-time rule.
"""
