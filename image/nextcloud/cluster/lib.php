<?php
/*
 * Shared code of the cluster init (cluster-init.php) and the readiness endpoint (readyz/readyz.php).
 * It needs no Nextcloud code: it reads the config the way Nextcloud merges it, version.php, and talks to
 * PostgreSQL (PDO pgsql) and Redis (phpredis) itself, so it behaves the same on the official image and on
 * the stand-in base.
 *
 * Paths have container defaults and can be overridden by the environment, so tests run these very files
 * on the host: NEXTCLOUD_WEBROOT, NEXTCLOUD_CLUSTER_STATE_DIR, NEXTCLOUD_RUNTIME_ENV_FILE.
 */

declare(strict_types=1);

namespace NextcloudCluster;

/** Cluster-wide PostgreSQL advisory lock key ("NCCLUST" in ASCII): install/upgrade run under it. */
const LOCK_KEY = 0x4E43434C555354;
/** Our own table: the cluster state every node joins from (see README.md). */
const STATE_TABLE = 'nextcloud_cluster_state';

function envOr(string $name, string $default): string {
	$v = getenv($name);
	return ($v === false || $v === '') ? $default : $v;
}

function webroot(): string {
	return rtrim(envOr('NEXTCLOUD_WEBROOT', '/var/www/html'), '/');
}

function stateDir(): string {
	return rtrim(envOr('NEXTCLOUD_CLUSTER_STATE_DIR', '/dev/shm/nextcloud-cluster'), '/');
}

function configDir(): string {
	return rtrim(envOr('NEXTCLOUD_CONFIG_DIR', webroot() . '/config'), '/');
}

/**
 * The config as Nextcloud sees it: config.php, then every config/*.config.php in natural order (later
 * keys win, top-level merge like array_merge), then NC_<key> environment overrides (strings).
 * Throws whatever a config file throws (e.g. cluster.config.php naming a missing variable).
 */
function loadConfig(?string $dir = null): array {
	$dir = $dir ?? configDir();
	$files = [$dir . '/config.php'];
	$extra = glob($dir . '/*.config.php');
	if (is_array($extra)) {
		natsort($extra);
		$files = array_merge($files, array_values($extra));
	}
	$merged = [];
	foreach ($files as $file) {
		if (!is_file($file)) {
			continue;
		}
		// Like OC\Config: a config file edited at runtime must be seen now, not after opcache's revalidate_freq.
		if (function_exists('opcache_invalidate')) {
			@opcache_invalidate($file, false);
		}
		$one = (static function (string $__file) {
			include $__file;
			return isset($CONFIG) && is_array($CONFIG) ? $CONFIG : [];
		})($file);
		$merged = array_merge($merged, $one);
	}
	foreach (getenv() as $name => $value) {
		if (str_starts_with((string)$name, 'NC_')) {
			$merged[substr((string)$name, 3)] = $value;
		}
	}
	return $merged;
}

/** Truthiness the way Nextcloud's getSystemValueBool() treats config and NC_ strings. */
function configBool(array $config, string $key): bool {
	$v = $config[$key] ?? false;
	if (is_string($v)) {
		return in_array(strtolower($v), ['1', 'true', 'yes', 'on'], true);
	}
	return (bool)$v;
}

/** Code version from version.php: ['version' => '34.0.3.1', 'versionstring' => '34.0.3']. */
function codeVersion(?string $webroot = null): array {
	$file = ($webroot ?? webroot()) . '/version.php';
	if (!is_file($file)) {
		throw new \RuntimeException("no Nextcloud code: $file is missing");
	}
	if (function_exists('opcache_invalidate')) {
		@opcache_invalidate($file, false);
	}
	[$v, $s] = (static function (string $__file): array {
		include $__file;
		return [$OC_Version ?? null, $OC_VersionString ?? null];
	})($file);
	if (!is_array($v) || $v === []) {
		throw new \RuntimeException("$file does not define \$OC_Version");
	}
	return ['version' => implode('.', $v), 'versionstring' => (string)($s ?? implode('.', array_slice($v, 0, 3)))];
}

function readState(?string $dir = null): ?array {
	$file = ($dir ?? stateDir()) . '/state.json';
	$raw = @file_get_contents($file);
	if ($raw === false) {
		return null;
	}
	$state = json_decode($raw, true);
	return is_array($state) ? $state : null;
}

/** Write-then-rename in the same directory: readers see the old or the new file, never a partial one. */
function atomicWrite(string $path, string $content, int $mode = 0644, ?int $uid = null, ?int $gid = null): void {
	$tmp = $path . '.tmp.' . getmypid() . '.' . bin2hex(random_bytes(4));
	$fh = fopen($tmp, 'x');
	if ($fh === false) {
		throw new \RuntimeException("cannot create $tmp");
	}
	try {
		chmod($tmp, $mode);
		if ($uid !== null) {
			chown($tmp, $uid);
			chgrp($tmp, $gid ?? $uid);
		}
		if (fwrite($fh, $content) !== strlen($content) || !fflush($fh)) {
			throw new \RuntimeException("short write to $tmp");
		}
	} catch (\Throwable $e) {
		fclose($fh);
		@unlink($tmp);
		throw $e;
	}
	fclose($fh);
	if (!rename($tmp, $path)) {
		@unlink($tmp);
		throw new \RuntimeException("cannot rename $tmp to $path");
	}
}

function writeState(array $state, ?string $dir = null): void {
	$dir = $dir ?? stateDir();
	$state['updated_at'] = gmdate('Y-m-d\TH:i:s\Z');
	$state['host'] = gethostname();
	atomicWrite($dir . '/state.json', json_encode($state, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES) . "\n", 0644);
}

/** Secrets held in memory only (e.g. the admin password fetched for an install), scrubbed like the env ones. */
function rememberSecret(string $value): void {
	$GLOBALS['nextcloudClusterSecrets'][] = $value;
}

/** Every secret value in the environment, longest first, to scrub from anything we log or report. */
function secretValues(): array {
	$out = [];
	$values = [];
	foreach (['NEXTCLOUD_DB_PASSWORD', 'NEXTCLOUD_REDIS_PASSWORD', 'NEXTCLOUD_PASSWORDSALT', 'NEXTCLOUD_SECRET',
		'NEXTCLOUD_ADMIN_PASSWORD', 'NEXTCLOUD_S3_SECRET'] as $name) {
		$values[] = getenv($name);
	}
	foreach (array_merge($values, $GLOBALS['nextcloudClusterSecrets'] ?? []) as $v) {
		if (is_string($v) && strlen($v) >= 3) {
			$out[] = $v;
			$out[] = rawurlencode($v);
		}
	}
	usort($out, static fn ($a, $b) => strlen($b) <=> strlen($a));
	return array_unique($out);
}

function redact(string $text): string {
	foreach (secretValues() as $v) {
		$text = str_replace($v, '***', $text);
	}
	return $text;
}

/**
 * [host, port] of the database as Nextcloud reads them at run time: from 'dbhost' alone, written host:port
 * (OC\DB\ConnectionFactory::splitHostFromPortAndSocket); 'dbport' is read by the installer only. Without a port,
 * PostgreSQL's default.
 */
function dbAddress(array $config): array {
	$host = (string)($config['dbhost'] ?? '');
	if (preg_match('/^(.*):([^\]:]+)$/', $host, $m) && ctype_digit($m[2])) {
		return [trim($m[1], '[]'), (int)$m[2]];
	}
	return [trim($host, '[]'), 5432];
}

/** PDO connection to the cluster database from the merged config, with a short connect timeout. */
function pgConnect(array $config, int $timeoutSeconds = 3): \PDO {
	[$host, $port] = dbAddress($config);
	$dsn = sprintf(
		'pgsql:host=%s;port=%d;dbname=%s;connect_timeout=%d;application_name=nextcloud-cluster',
		$host, $port, $config['dbname'] ?? '', max(2, $timeoutSeconds)
	);
	// The TLS Nextcloud itself uses ('pgsql_ssl', from cluster.config.php, which checked both values): the init and
	// /readyz verify the database exactly as the web requests do.
	$ssl = $config['pgsql_ssl'] ?? null;
	if (is_array($ssl) && ($ssl['mode'] ?? '') !== '') {
		$dsn .= ';sslmode=' . $ssl['mode'];
		if (($ssl['rootcert'] ?? '') !== '') {
			$dsn .= ';sslrootcert=' . $ssl['rootcert'];
		}
	}
	try {
		return new \PDO($dsn, (string)($config['dbuser'] ?? ''), (string)($config['dbpassword'] ?? ''), [
			\PDO::ATTR_ERRMODE => \PDO::ERRMODE_EXCEPTION,
			\PDO::ATTR_DEFAULT_FETCH_MODE => \PDO::FETCH_ASSOC,
		]);
	} catch (\PDOException $e) {
		throw new \RuntimeException(describePdoError($e), 0, $e);
	}
}

/** One readable line from a PDO error (libpq messages span several lines), secrets scrubbed. */
function describePdoError(\Throwable $e): string {
	$msg = preg_replace('/^SQLSTATE\[[^\]]*\]\s*(\[[^\]]*\]\s*)?/', '', $e->getMessage());
	$lines = array_values(array_filter(array_map('trim', explode("\n", (string)$msg)), 'strlen'));
	return redact(implode(' / ', array_slice($lines, 0, 2)));
}

/** The recorded cluster state row, or null when the table does not exist (not installed by us). */
function clusterRow(\PDO $pdo): ?array {
	$exists = $pdo->query("SELECT to_regclass('public." . STATE_TABLE . "') IS NOT NULL AS e")->fetch();
	if (!$exists['e']) {
		return null;
	}
	$row = $pdo->query('SELECT state, instanceid, identity_digest, version, versionstring, target_version, installed_at,
		updated_at, updated_by FROM ' . STATE_TABLE . ' WHERE id = 1')->fetch();
	return $row === false ? null : $row;
}

/** What ties a node to a cluster: all three identity values, hashed (the salt and secret are not stored). */
function identityDigest(array $config): string {
	return hash('sha256', "nextcloud-cluster-identity\0" . ($config['instanceid'] ?? '') . "\0"
		. ($config['passwordsalt'] ?? '') . "\0" . ($config['secret'] ?? ''));
}

/** Connect to Redis like Nextcloud does from the 'redis' config (tls:// host, ssl_context, password). */
function redisPing(array $config, float $timeout = 1.5): void {
	if (!class_exists('Redis')) {
		throw new \RuntimeException('the PHP redis extension is not loaded');
	}
	$rc = $config['redis'] ?? [];
	$r = new \Redis();
	$ctx = isset($rc['ssl_context']) ? ['stream' => $rc['ssl_context']] : [];
	try {
		$ok = @$r->connect((string)($rc['host'] ?? ''), (int)($rc['port'] ?? 6379), $timeout, null, 0, $timeout, $ctx);
		if (!$ok) {
			throw new \RuntimeException('connection failed');
		}
		if (isset($rc['password']) && $rc['password'] !== '' && !$r->auth($rc['password'])) {
			throw new \RuntimeException('authentication failed');
		}
		$pong = $r->ping();
		if ($pong !== true && $pong !== '+PONG' && $pong !== 'PONG') {
			throw new \RuntimeException('unexpected PING answer');
		}
	} catch (\Throwable $e) {
		throw new \RuntimeException(sprintf('%s:%d: %s', $rc['host'] ?? '?', $rc['port'] ?? 0, redact($e->getMessage())), 0, $e);
	} finally {
		try {
			$r->close();
		} catch (\Throwable) {
		}
	}
}

/**
 * The readiness verdict: ['ready' => bool, 'code' => string, 'reason' => string, ...].
 * Order: config, cluster init state, installed, maintenance, upgrade pending, DB (and cluster row), Redis.
 */
function readiness(): array {
	$notReady = static fn (string $code, string $reason, array $extra = []) => ['ready' => false, 'code' => $code, 'reason' => $reason] + $extra;
	try {
		$config = loadConfig();
	} catch (\Throwable $e) {
		return $notReady('config_error', 'configuration error: ' . redact($e->getMessage()));
	}
	$state = readState();
	if ($state === null) {
		return $notReady('init_pending', 'cluster init has not reported yet (no ' . stateDir() . '/state.json)');
	}
	if (($state['phase'] ?? '') !== 'ready') {
		return $notReady((string)($state['code'] ?? 'init_pending'), (string)($state['reason'] ?? 'cluster init in progress'),
			['phase' => $state['phase'] ?? null]);
	}
	if (!configBool($config, 'installed')) {
		return $notReady('not_installed', 'not installed (config says installed=false)');
	}
	if (configBool($config, 'maintenance')) {
		return $notReady('maintenance', 'maintenance mode is on');
	}
	try {
		$code = codeVersion();
	} catch (\Throwable $e) {
		return $notReady('code_missing', $e->getMessage());
	}
	$installed = (string)($config['version'] ?? '');
	if (version_compare($code['version'], $installed, '>')) {
		return $notReady('upgrade_pending', "upgrade pending: code {$code['version']} is newer than installed $installed");
	}
	if (version_compare($code['version'], $installed, '<')) {
		return $notReady('code_older', "code {$code['version']} is older than installed $installed (downgrade is not supported)");
	}
	$datadir = dataDirectoryProblem($config, $code['version']);
	if ($datadir !== null) {
		return $notReady('datadir_invalid', $datadir);
	}
	try {
		$pdo = pgConnect($config, 2);
		$row = clusterRow($pdo);
	} catch (\Throwable $e) {
		$msg = $e instanceof \PDOException ? describePdoError($e) : redact($e->getMessage());
		return $notReady('db_unreachable', sprintf('database unreachable (%s:%d): %s', ...[...dbAddress($config), $msg]));
	}
	if ($row === null) {
		return $notReady('not_installed', 'not installed: the database holds no cluster state');
	}
	if ($row['instanceid'] !== ($config['instanceid'] ?? null) || $row['identity_digest'] !== identityDigest($config)) {
		return $notReady('identity_mismatch', "identity mismatch: the database belongs to instanceid {$row['instanceid']}, this node is "
			. ($config['instanceid'] ?? '?') . ' (or its passwordsalt/secret differ)');
	}
	if ($row['state'] !== 'installed') {
		return $notReady('cluster_busy', "the cluster is {$row['state']} to {$row['target_version']} (started by {$row['updated_by']} at {$row['updated_at']})");
	}
	if ($row['version'] !== $installed) {
		return $notReady('cluster_changed', "cluster is now at {$row['version']}, this node joined at $installed: restart it");
	}
	try {
		$lease = renewServerId($pdo, $state);
	} catch (\Throwable $e) {
		return $notReady('db_unreachable', 'database error renewing this node\'s serverid: ' . describePdoError($e));
	}
	$pdo = null;
	if ($lease !== null) {
		return $notReady('serverid_lost', $lease);
	}
	try {
		redisPing($config);
	} catch (\Throwable $e) {
		return $notReady('redis_unreachable', 'redis unreachable: ' . $e->getMessage());
	}
	$nextcloud = nextcloudStatusProblem($config);
	if ($nextcloud !== null) {
		return $notReady('nextcloud_unavailable', $nextcloud);
	}
	return ['ready' => true, 'code' => 'ready', 'reason' => '', 'version' => $installed, 'versionstring' => $code['versionstring']];
}


/** readiness(), at most once per $ttl seconds per node under a web server (see readyz.php); fresh on the CLI. */
function cachedReadiness(int $ttl): array {
	if (PHP_SAPI === 'cli' || $ttl <= 0 || !function_exists('apcu_fetch') || !apcu_enabled()) {
		return readiness();
	}
	$key = 'nextcloud-readyz-verdict';
	$cached = apcu_fetch($key, $hit);
	$now = microtime(true);
	if ($hit && is_array($cached) && $now - $cached['at'] < $ttl) {
		return $cached['result'];
	}
	if (!apcu_add("$key-computing", 1, $ttl + 10)) {
		if ($hit && is_array($cached)) {
			return $cached['result']; // another worker is computing the next one
		}
		return readiness();
	}
	try {
		$result = readiness();
		apcu_store($key, ['at' => microtime(true), 'result' => $result], $ttl * 4);
		return $result;
	} finally {
		apcu_delete("$key-computing");
	}
}

/**
 * The data directory as Nextcloud checks it before it serves anything (OC_Util::checkServer): an absolute path
 * holding the marker its installer writes (.ncdata from Nextcloud 30 on, .ocdata before), readable and writable.
 * Null when valid, else the reason.
 */
function dataDirectoryProblem(array $config, string $codeVersion): ?string {
	$dir = (string)($config['datadirectory'] ?? webroot() . '/data');
	$marker = (int)explode('.', $codeVersion)[0] >= 30 ? '.ncdata' : '.ocdata';
	if ($dir === '' || $dir[0] !== '/') {
		return "data directory '$dir' is not an absolute path: Nextcloud refuses to serve";
	}
	if (!is_file("$dir/$marker")) {
		return "data directory $dir has no $marker: Nextcloud refuses every request, occ and cron (\"Your data directory is invalid\")";
	}
	if (PHP_SAPI !== 'cli' && (!is_readable($dir) || !is_writable($dir))) {
		return "data directory $dir is not readable and writable by the web server";
	}
	return null;
}

/**
 * Nextcloud's own verdict: status.php on this node through the local web server (NEXTCLOUD_STATUS_URL). It runs
 * Nextcloud's bootstrap and server checks: 200 with installed, no maintenance, no database upgrade needed, or it
 * is a request Nextcloud would not serve. Null when Nextcloud agrees, else the reason.
 */
function nextcloudStatusProblem(array $config, float $timeout = 5.0): ?string {
	$url = envOr('NEXTCLOUD_STATUS_URL', 'http://127.0.0.1/status.php');
	$domains = $config['trusted_domains'] ?? [];
	$host = is_array($domains) && $domains !== [] ? (string)reset($domains) : 'localhost';
	$ctx = stream_context_create(['http' => [
		'timeout' => $timeout, 'ignore_errors' => true, 'follow_location' => 0,
		'header' => "Host: $host\r\nUser-Agent: nextcloud-cluster-readiness\r\n",
	]]);
	$body = @file_get_contents($url, false, $ctx);
	$statusLine = isset($http_response_header[0]) ? (string)$http_response_header[0] : '';
	if ($body === false || !preg_match('#^HTTP/\S+\s+(\d{3})#', $statusLine, $m)) {
		return "Nextcloud's status.php did not answer at $url";
	}
	$code = (int)$m[1];
	$json = json_decode((string)$body, true);
	if ($code !== 200 || !is_array($json)) {
		$text = trim(preg_replace('/\s+/', ' ', strip_tags(preg_replace('#<(script|style|head)\b.*?</\1>#si', '', (string)$body))));
		return "Nextcloud's status.php answers $code" . ($text !== '' ? ': ' . redact(substr($text, 0, 300)) : '');
	}
	if (($json['installed'] ?? false) !== true) {
		return "Nextcloud's status.php says it is not installed";
	}
	if (($json['maintenance'] ?? false) === true) {
		return "Nextcloud's status.php says maintenance mode is on";
	}
	if (($json['needsDbUpgrade'] ?? false) === true) {
		return "Nextcloud's status.php says a database upgrade is needed (an app or the core)";
	}
	return null;
}

/** Our serverid table: one row per live node (Nextcloud's 'serverid', 1..511, unique among them). */
const NODES_TABLE = 'nextcloud_cluster_nodes';
/** A lease nobody renewed for this long belongs to a node that is gone; its serverid may be taken again. */
function serverIdStaleSeconds(): int {
	return max(60, (int)envOr('NEXTCLOUD_SERVERID_STALE_AFTER', '900'));
}

/** Renew this node's serverid lease (readiness does, so a serving node keeps it). Null when held, else why not. */
function renewServerId(\PDO $pdo, array $state): ?string {
	if (!isset($state['serverid'], $state['node'])) {
		return 'this node has no serverid (the cluster init did not allocate one): restart it';
	}
	$st = $pdo->prepare('UPDATE ' . NODES_TABLE . ' SET seen_at = now() WHERE serverid = ? AND node = ?');
	$st->execute([(int)$state['serverid'], (string)$state['node']]);
	if ($st->rowCount() !== 1) {
		return "serverid {$state['serverid']} is no longer this node's (its lease expired and was taken): restart it";
	}
	return null;
}

/**
 * Liveness: is THIS node broken in a way a replacement would fix? Never touches PostgreSQL or Redis, so a
 * shared-service outage cannot fail it on every node at once. PHP answering (Apache serving it, for /livez)
 * is the first half; the second: the runtime secrets reached this process and the code is there.
 */
function liveness(): array {
	$missing = [];
	foreach (['NEXTCLOUD_INSTANCEID', 'NEXTCLOUD_PASSWORDSALT', 'NEXTCLOUD_SECRET', 'NEXTCLOUD_DB_PASSWORD'] as $name) {
		$v = getenv($name);
		if ($v === false || $v === '') {
			$missing[] = $name;
		}
	}
	if ($missing !== []) {
		return ['live' => false, 'code' => 'secrets_missing',
			'reason' => 'runtime secrets missing from the web server environment: ' . implode(', ', $missing)
				. ' (is ' . envOr('NEXTCLOUD_RUNTIME_ENV_FILE', '/run/secrets/nextcloud-runtime.env') . ' mounted?)'];
	}
	try {
		codeVersion();
	} catch (\Throwable $e) {
		return ['live' => false, 'code' => 'code_missing', 'reason' => $e->getMessage()];
	}
	if (!is_dir(stateDir())) {
		return ['live' => false, 'code' => 'state_missing', 'reason' => 'no cluster state dir ' . stateDir() . ' (the entrypoint did not run)'];
	}
	return ['live' => true, 'code' => 'live', 'reason' => ''];
}

function isLoopback(string $address): bool {
	$address = preg_replace('/^::ffff:/i', '', trim($address, '[]'));
	if (filter_var($address, FILTER_VALIDATE_IP, FILTER_FLAG_IPV4)) {
		return str_starts_with($address, '127.');
	}
	return $address === '::1';
}

/**
 * May this HTTP caller see the details (hosts, ports, instance id, error text)? Only a caller on this machine
 * that did not come through a proxy: the TCP peer is loopback and no forwarding header is present. Under
 * Apache the peer is the connection's own address (CONN_REMOTE_ADDR, set by nextcloud-health.conf), never
 * REMOTE_ADDR, which mod_remoteip rewrites from a client-supplied header. Fails closed.
 */
function callerMaySeeDetails(array $server, string $sapi = PHP_SAPI): bool {
	if ($sapi === 'cli') {
		return true;
	}
	foreach (['HTTP_X_FORWARDED_FOR', 'HTTP_X_REAL_IP', 'HTTP_FORWARDED', 'HTTP_CLIENT_IP', 'HTTP_TRUE_CLIENT_IP'] as $header) {
		if (isset($server[$header])) {
			return false;
		}
	}
	if ($sapi === 'apache2handler') {
		return ($server['NEXTCLOUD_HEALTH_PEER_LOOPBACK'] ?? '') === '1';
	}
	return isLoopback((string)($server['REMOTE_ADDR'] ?? ''));
}

/**
 * Answer a health request: full JSON for the CLI and local callers, status + one code word for everyone else.
 * A not-ready/not-live answer is also written to the error log (the journal) with its reason, once per change
 * of code and at most every 60 s (APCu, shared by Apache's workers), so the details are where an operator looks.
 */
function respondHealth(string $kind, array $result, bool $ok): void {
	$short = [$kind => $ok] + ($ok ? [] : ['code' => $result['code']]);
	if (PHP_SAPI === 'cli') {
		echo json_encode($result, JSON_UNESCAPED_SLASHES) . "\n";
		exit($ok ? 0 : 1);
	}
	if (!$ok) {
		$key = "nextcloud-health-$kind";
		$now = time();
		$last = function_exists('apcu_fetch') ? apcu_fetch($key) : false;
		if (!is_array($last) || $last['code'] !== $result['code'] || $now - $last['at'] >= 60) {
			error_log("nextcloud-health: $kind: {$result['code']}: " . redact((string)$result['reason']));
			if (function_exists('apcu_store')) {
				apcu_store($key, ['code' => $result['code'], 'at' => $now]);
			}
		}
	}
	$body = callerMaySeeDetails($_SERVER) ? $result : $short;
	http_response_code($ok ? 200 : 503);
	header('Content-Type: application/json');
	header('Cache-Control: no-store');
	echo json_encode($body, JSON_UNESCAPED_SLASHES) . "\n";
}
