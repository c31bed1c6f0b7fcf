<?php
/*
 * GET /livez — liveness, what the Auto Scaling group follows (through the host's liveness watchdog): is this node
 * broken in a way a replacement would fix? Apache serves PHP (this answer), the runtime secrets are in its
 * environment, the code and the state dir are there. Never touches PostgreSQL or Redis: a database failover takes
 * nodes out of the load balancer (readiness) but never gets the fleet replaced. Same detail rules as /readyz.
 */

declare(strict_types=1);

require_once dirname(__DIR__) . '/lib.php';

$result = \NextcloudCluster\liveness();
\NextcloudCluster\respondHealth('live', $result, $result['live']);
