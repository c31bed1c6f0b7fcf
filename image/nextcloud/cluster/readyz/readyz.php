<?php
/*
 * GET /readyz — the load balancer's readiness check (Apache Alias; lives outside the webroot so Nextcloud's
 * integrity check never sees it). 200 + {"ready": true, ...} only when installed, not in maintenance, no
 * upgrade pending, DB and Redis reachable; otherwise 503 + {"ready": false, "code": ..., "reason": ...}.
 * From the command line (Docker HEALTHCHECK, tests): prints the same JSON, exit 0 when ready, else 1.
 */

declare(strict_types=1);

require_once dirname(__DIR__) . '/lib.php';

$result = \NextcloudCluster\readiness();
$body = json_encode($result, JSON_UNESCAPED_SLASHES) . "\n";
if (PHP_SAPI === 'cli') {
	echo $body;
	exit($result['ready'] ? 0 : 1);
}
http_response_code($result['ready'] ? 200 : 503);
header('Content-Type: application/json');
header('Cache-Control: no-store');
echo $body;
