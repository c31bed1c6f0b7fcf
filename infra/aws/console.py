"""An instance's console output, as EC2 keeps it (GetConsoleOutput): the hypervisor's record of what the instance
printed on its serial console, readable without any agent on the instance or a network path to it.

Used for the canary's SSH host keys (infra/host_keys.py) and the upgrade instance's readiness
(infra/rollout/upgrade_instance.py)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError


def console_text(ec2: Any, instance_id: str, latest: list[bool]) -> str:
    """The instance's console output as text. ``Latest`` (the live buffer) only exists on Nitro instances; others
    answer UnsupportedOperation and get the buffer AWS posts after each state change (``latest`` remembers)."""
    while True:
        try:
            answer = ec2.get_console_output(InstanceId=instance_id, **({"Latest": True} if latest[0] else {}))
            break
        except ClientError as exc:
            if not latest[0] or exc.response.get("Error", {}).get("Code") != "UnsupportedOperation":
                raise
            latest[0] = False
    # base64 on the wire; botocore decodes it already (its after-call handler for ec2.GetConsoleOutput,
    # decode_console_output), so what arrives here is the text. Decoding it again gives garbage or nothing.
    output = answer.get("Output")
    return output if isinstance(output, str) else ""
