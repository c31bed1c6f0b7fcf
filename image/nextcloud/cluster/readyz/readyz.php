<?php
/*
 * GET /readyz — the load balancer's readiness check (Apache Alias; lives outside the webroot so Nextcloud's
 * integrity check never sees it): may this node take traffic now? 200 only when installed, identity matches, not
 * in maintenance, no upgrade pending, DB and Redis reachable; otherwise 503. A local caller (loopback, no proxy
 * header) gets {"ready": ..., "code": ..., "reason": ...}; a caller through the load balancer only
 * {"ready": false, "code": "db_unreachable"}. The reason goes to the journal.
 * From the command line (cron runner, tests): prints the full JSON, exit 0 when ready, else 1.
 */

declare(strict_types=1);

require_once dirname(__DIR__) . '/lib.php';

$result = \NextcloudCluster\readiness();
\NextcloudCluster\respondHealth('ready', $result, $result['ready']);
