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

// One verdict per NEXTCLOUD_READYZ_CACHE_SECONDS (5) for all of Apache's workers (APCu, shared): every load
// balancer node probes every target, and each verdict costs a database and a Redis session and a status.php run, so
// the probe traffic to the shared services grows with the number of nodes, not the number of probes. One worker
// computes (apcu_add claims it); probes that arrive meanwhile get the previous verdict. Not apcu_entry: it holds
// APCu's lock while computing, and the status.php request the verdict makes needs APCu in another worker.
$result = \NextcloudCluster\cachedReadiness((int)\NextcloudCluster\envOr('NEXTCLOUD_READYZ_CACHE_SECONDS', '5'));
\NextcloudCluster\respondHealth('ready', $result, $result['ready']);
