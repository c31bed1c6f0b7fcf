"""Where the instance's logs go: the journal, each line once; on AWS environments also CloudWatch Logs."""

from __future__ import annotations

import json
import secrets

import pytest
from image_suite_support import decode_on_target

pytestmark = [pytest.mark.nextcloud, pytest.mark.live]


def _env(host) -> dict[str, str]:
    text = host.file("/etc/nextcloud/nextcloud.env").content_string
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_nextcloud_log_reaches_the_journal_once_as_json(host):
    # What Nextcloud's syslog writer does (log_type syslog, syslog_tag nextcloud-app), from the web user in the
    # container. The marker is built on the target so that no command line (which sudo logs) carries it.
    marker = decode_on_target(f"probe-{secrets.token_hex(6)}")
    php = ("openlog('nextcloud-app', LOG_PID | LOG_CONS, LOG_USER); "
           "syslog(LOG_WARNING, json_encode(['reqId' => '$m', 'level' => 2, 'app' => 'test']));")
    out = host.run(f'm={marker}; docker exec -u www-data nextcloud php -r "{php}"')
    assert out.rc == 0, out.stderr
    got = ""
    for _ in range(10):
        got = host.run(f"m={marker}; journalctl --no-pager -o json SYSLOG_IDENTIFIER=nextcloud-app | grep -F \"$m\"; "
                       f"echo ---; journalctl --no-pager -o cat | grep -cF \"$m\"").stdout
        if got.split("---")[0].strip():
            break
        host.run("sleep 1")
    tagged, _, everywhere = got.partition("---")
    entries = [json.loads(line) for line in tagged.splitlines() if line.strip()]
    assert len(entries) == 1, f"Nextcloud's log line is in the journal {len(entries)} times as nextcloud-app"
    assert json.loads(entries[0]["MESSAGE"])["level"] == 2  # a JSON line, parseable as such
    assert everywhere.strip() == "1", f"the line is in the journal {everywhere.strip()} times in all"


def test_journal_forwarder_matches_the_environment(host):
    env = _env(host)
    props = dict(line.split("=", 1) for line in host.check_output(
        "systemctl show nextcloud-logs.service -p ActiveState -p Result -p ExecMainStatus").splitlines())
    if env.get("NEXTCLOUD_LOG_DESTINATION") == "cloudwatch":
        assert env.get("NEXTCLOUD_LOG_GROUP", "").startswith("/"), env
        assert props["ActiveState"] == "active", f"nextcloud-logs.service is not shipping: {props}"
    else:
        # The local twin: logs stay in the journal; the forwarder said so and stopped cleanly.
        assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), props
        log = host.run("journalctl -b --no-pager -o cat -u nextcloud-logs.service").stdout
        assert "the logs stay in the journal" in log, log
