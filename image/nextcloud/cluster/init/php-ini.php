<?php
/*
 * `cluster-init.php --write-php-ini`: the PHP session settings (Redis, with its password) written to the tmpfs state
 * dir before Apache starts; PHP_INI_SCAN_DIR includes that dir.
 */

declare(strict_types=1);

namespace NextcloudCluster;

require_once dirname(__DIR__) . '/lib.php';

/** PHP session settings for Redis (phpredis handler); tls:// scheme when NEXTCLOUD_REDIS_TLS=1. */
function writePhpIni(): void {
	$dir = stateDir() . '/php';
	if (!is_dir($dir) && !mkdir($dir, 0700, true)) {
		throw new \RuntimeException("cannot create $dir");
	}
	$host = (string)getenv('NEXTCLOUD_REDIS_HOST');
	$port = envOr('NEXTCLOUD_REDIS_PORT', '6379');
	if ($host === '' || !preg_match('/^[A-Za-z0-9.:\[\]-]+$/', $host) || !ctype_digit($port)) {
		// cluster.config.php reports the missing/invalid variable; sessions stay on PHP's default meanwhile.
		@unlink("$dir/zz-nextcloud-cluster-session.ini");
		return;
	}
	$scheme = envOr('NEXTCLOUD_REDIS_TLS', '0') === '1' ? 'tls' : 'tcp';
	$path = "$scheme://$host:$port";
	$pass = (string)getenv('NEXTCLOUD_REDIS_PASSWORD');
	if ($pass !== '') {
		$path .= '?auth=' . rawurlencode($pass);
	}
	$ini = "; Written at container start by cluster-init.php; on tmpfs because it holds the Redis password.\n"
		. "session.save_handler = redis\n"
		. "session.save_path = \"$path\"\n"
		. "redis.session.locking_enabled = 1\n"
		. "redis.session.lock_retries = -1\n"
		. "redis.session.lock_wait_time = 10000\n";
	atomicWrite("$dir/zz-nextcloud-cluster-session.ini", $ini, 0600);
}
