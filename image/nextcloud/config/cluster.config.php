<?php
/*
 * The ONE cluster configuration of this image. Every cluster-wide setting comes from the environment at
 * runtime (names: image/nextcloud/README.md, "Runtime environment"; nextcloud.env + runtime secrets); nothing here is written by a node.
 *
 * Nextcloud includes this file after config.php (config/*.config.php, natural order, later wins), inside
 * OC\Config::readData(). Everything runs in a closure so no variable of that method is overwritten and no
 * function is declared twice when the file is included again.
 *
 * 'installed' and 'version' come from the cluster state that the cluster init read from the database
 * (state file on tmpfs, see image/nextcloud/README.md), never from per-node config writes.
 *
 * A missing or malformed required variable throws one exception naming every offending variable; Nextcloud
 * then refuses to serve, and /readyz and the cluster init report the message.
 */

$CONFIG = (static function (): array {
	$env = static function (string $name, ?string $default = null): ?string {
		$v = getenv($name);
		return ($v === false || $v === '') ? $default : $v;
	};
	$problems = [];
	$required = static function (string $name, string $why) use ($env, &$problems): string {
		$v = $env($name);
		if ($v === null) {
			$problems[] = "$name is not set ($why)";
			return '';
		}
		return $v;
	};
	$flag = static function (string $name) use ($env, &$problems): bool {
		$v = $env($name, '0');
		if ($v !== '0' && $v !== '1') {
			$problems[] = "$name must be 0 or 1, got '" . substr($v, 0, 20) . "'";
		}
		return $v === '1';
	};
	$port = static function (string $name, int $default) use ($env, &$problems): int {
		$v = $env($name, (string)$default);
		if (!ctype_digit($v) || (int)$v < 1 || (int)$v > 65535) {
			$problems[] = "$name must be a TCP port number, got '" . substr($v, 0, 20) . "'";
			return $default;
		}
		return (int)$v;
	};
	$words = static function (string $name) use ($env): array {
		return array_values(array_filter(preg_split('/\s+/', (string)$env($name, '')), 'strlen'));
	};

	$instanceid = $required('NEXTCLOUD_INSTANCEID', 'cluster identity, same on every node');
	if ($instanceid !== '' && !preg_match('/^[A-Za-z][A-Za-z0-9]{5,63}$/', $instanceid)) {
		$problems[] = 'NEXTCLOUD_INSTANCEID must be a letter followed by 5-63 letters/digits (it names cookies)';
	}
	$passwordsalt = $required('NEXTCLOUD_PASSWORDSALT', 'cluster identity, same on every node');
	$secret = $required('NEXTCLOUD_SECRET', 'cluster identity, same on every node');
	$dbHost = $required('NEXTCLOUD_DB_HOST', 'PostgreSQL endpoint');
	$dbName = $required('NEXTCLOUD_DB_NAME', 'PostgreSQL database');
	$dbUser = $required('NEXTCLOUD_DB_USER', 'PostgreSQL role');
	$dbPassword = $required('NEXTCLOUD_DB_PASSWORD', 'runtime secret');
	$dbPort = $port('NEXTCLOUD_DB_PORT', 5432);
	// TLS to PostgreSQL (libpq's sslmode/sslrootcert; Nextcloud's 'pgsql_ssl', ConnectionFactory). verify-full checks
	// the chain against NEXTCLOUD_DB_SSLROOTCERT (the RDS CA bundle on AWS) and the certificate's name against
	// NEXTCLOUD_DB_HOST. Unset: libpq's default (prefer: encrypted when offered, nothing verified).
	$dbSslMode = $env('NEXTCLOUD_DB_SSLMODE');
	$dbSslRootCert = $env('NEXTCLOUD_DB_SSLROOTCERT');
	if ($dbSslMode !== null && !in_array($dbSslMode, ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'], true)) {
		$problems[] = "NEXTCLOUD_DB_SSLMODE must be one of libpq's sslmode values (verify-full to verify the database's "
			. "certificate and name), got '" . substr($dbSslMode, 0, 20) . "'";
	} elseif (in_array($dbSslMode, ['verify-ca', 'verify-full'], true) && $dbSslRootCert === null) {
		$problems[] = "NEXTCLOUD_DB_SSLROOTCERT is not set (required with NEXTCLOUD_DB_SSLMODE=$dbSslMode: the CA bundle "
			. 'that signed the database\'s certificate, e.g. the RDS CA bundle the image carries)';
	}
	if ($dbSslRootCert !== null) {
		if ($dbSslMode === null) {
			$problems[] = 'NEXTCLOUD_DB_SSLROOTCERT is set without NEXTCLOUD_DB_SSLMODE (set it to verify-full to use it)';
		} elseif (!preg_match('#^/[A-Za-z0-9._/-]+$#', $dbSslRootCert)) {
			// It rides in a libpq connection string (lib.php's pgConnect, Doctrine's DSN): no spaces, quotes or ';'.
			$problems[] = 'NEXTCLOUD_DB_SSLROOTCERT must be an absolute path of letters, digits and ._/- characters';
		} elseif (!is_file($dbSslRootCert) || !is_readable($dbSslRootCert)) {
			$problems[] = "NEXTCLOUD_DB_SSLROOTCERT names $dbSslRootCert, which is not a readable file in the container";
		}
	}
	$redisHost = $required('NEXTCLOUD_REDIS_HOST', 'Redis endpoint for cache, locking and sessions');
	$redisPort = $port('NEXTCLOUD_REDIS_PORT', 6379);
	$redisTls = $flag('NEXTCLOUD_REDIS_TLS');
	$redisPassword = $env('NEXTCLOUD_REDIS_PASSWORD');
	$trustedDomains = $words('NEXTCLOUD_TRUSTED_DOMAINS');
	if ($trustedDomains === []) {
		$problems[] = 'NEXTCLOUD_TRUSTED_DOMAINS is not set (space-separated host names users reach Nextcloud by)';
	}
	$bucket = $env('NEXTCLOUD_S3_BUCKET');
	$s3Region = $env('NEXTCLOUD_S3_REGION');
	$s3Endpoint = $env('NEXTCLOUD_S3_ENDPOINT');
	$s3PathStyle = $flag('NEXTCLOUD_S3_PATH_STYLE');
	$s3Key = $env('NEXTCLOUD_S3_KEY');
	$s3Secret = $env('NEXTCLOUD_S3_SECRET');
	if ($bucket !== null && $s3Region === null) {
		$problems[] = 'NEXTCLOUD_S3_REGION is not set (required with NEXTCLOUD_S3_BUCKET)';
	}
	if (($s3Key === null) !== ($s3Secret === null)) {
		$problems[] = 'NEXTCLOUD_S3_KEY and NEXTCLOUD_S3_SECRET must be set together (or neither: instance role)';
	}
	$endpoint = null;
	if ($s3Endpoint !== null) {
		$endpoint = parse_url($s3Endpoint);
		if (!is_array($endpoint) || !isset($endpoint['host']) || !in_array($endpoint['scheme'] ?? '', ['http', 'https'], true)) {
			$problems[] = "NEXTCLOUD_S3_ENDPOINT must be an http(s) URL such as https://s3.example.com:9000";
			$endpoint = null;
		}
	}
	$overwriteProtocol = $env('NEXTCLOUD_OVERWRITE_PROTOCOL');
	if ($overwriteProtocol !== null && !in_array($overwriteProtocol, ['http', 'https'], true)) {
		$problems[] = 'NEXTCLOUD_OVERWRITE_PROTOCOL must be http or https';
	}
	$internet = $flag('NEXTCLOUD_HAS_INTERNET') || $env('NEXTCLOUD_HAS_INTERNET') === null;
	$loglevel = $env('NEXTCLOUD_LOGLEVEL', '2');
	if (!in_array($loglevel, ['0', '1', '2', '3', '4'], true)) {
		$problems[] = "NEXTCLOUD_LOGLEVEL must be 0 (debug) to 4 (fatal), got '" . substr($loglevel, 0, 20) . "'";
	}
	if ($problems !== []) {
		throw new \RuntimeException('Nextcloud cluster configuration (cluster.config.php): ' . implode('; ', $problems));
	}

	$webroot = rtrim($env('NEXTCLOUD_WEBROOT', '/var/www/html'), '/');
	$redisScheme = $redisTls ? 'tls://' : '';
	$redis = [
		'host' => $redisScheme . $redisHost,
		'port' => $redisPort,
		'timeout' => 1.5,
		'read_timeout' => 1.5,
		'dbindex' => 0,
	];
	if ($redisPassword !== null) {
		$redis['password'] = $redisPassword;
	}
	if ($redisTls) {
		// ElastiCache in-transit encryption: verify against the system CA bundle.
		$redis['ssl_context'] = ['verify_peer' => true, 'verify_peer_name' => true];
	}

	$config = [
		'instanceid' => $instanceid,
		'passwordsalt' => $passwordsalt,
		'secret' => $secret,
		'dbtype' => 'pgsql',
		// host:port, the only form Nextcloud reads the port from at run time (ConnectionFactory); 'dbport' is read
		// by its installer alone, so it is not set here (the cluster init hands the installer both).
		'dbhost' => (str_contains($dbHost, ':') && !str_starts_with($dbHost, '[') ? "[$dbHost]" : $dbHost) . ':' . $dbPort,
		'dbname' => $dbName,
		'dbuser' => $dbUser,
		'dbpassword' => $dbPassword,
		'dbtableprefix' => 'oc_',
		'setup_create_db_user' => false,
		'datadirectory' => $webroot . '/data',
		'apps_paths' => [
			['path' => $webroot . '/apps', 'url' => '/apps', 'writable' => false],
			['path' => $webroot . '/custom_apps', 'url' => '/custom_apps', 'writable' => false],
		],
		'appstoreenabled' => false,
		'upgrade.disable-web' => true,
		// No 'htaccess.RewriteBase' (pretty URLs): the installer writes the rewrite rules into its own node-local
		// .htaccess only, so pages generated there would link to URLs that 404 on every other node. Without
		// it every node generates the same index.php URLs.
		'memcache.local' => '\\OC\\Memcache\\APCu',
		'memcache.distributed' => '\\OC\\Memcache\\Redis',
		'memcache.locking' => '\\OC\\Memcache\\Redis',
		'redis' => $redis,
		'trusted_domains' => $trustedDomains,
		'trusted_proxies' => $words('NEXTCLOUD_TRUSTED_PROXIES'),
		// Nextcloud's own log: one JSON document per entry (its syslog writer), sent to /dev/log, which
		// nextcloud.service binds to the host journal's socket: the journal holds it once, as
		// SYSLOG_IDENTIFIER=nextcloud-app, beside the container's output (nextcloud), and ships with it to
		// CloudWatch Logs on AWS. No log file in the webroot or data dir; errorlog would wrap each entry in
		// Apache's prefix.
		'log_type' => 'syslog',
		'syslog_tag' => 'nextcloud-app',
		'loglevel' => (int)$loglevel,
		// Offline nodes (NEXTCLOUD_HAS_INTERNET=0): Nextcloud skips what needs the internet, such as the update
		// check cron.php otherwise waits minutes on.
		'has_internet_connection' => $internet,
	];
	foreach (['overwritehost' => 'NEXTCLOUD_OVERWRITE_HOST', 'overwriteprotocol' => 'NEXTCLOUD_OVERWRITE_PROTOCOL',
		'overwrite.cli.url' => 'NEXTCLOUD_OVERWRITE_CLI_URL'] as $key => $name) {
		if ($env($name) !== null) {
			$config[$key] = $env($name);
		}
	}
	if ($dbSslMode !== null) {
		// Nextcloud hands these to Doctrine's pdo_pgsql DSN; lib.php's pgConnect (cluster init, /readyz) reads the same.
		$config['pgsql_ssl'] = ['mode' => $dbSslMode, 'rootcert' => $dbSslRootCert ?? ''];
	}
	if ($bucket !== null) {
		$args = [
			'bucket' => $bucket,
			'region' => $s3Region,
			'autocreate' => false,
			'use_ssl' => true,
			'use_path_style' => $s3PathStyle,
		];
		if ($endpoint !== null) {
			$args['hostname'] = $endpoint['host'];
			$args['use_ssl'] = $endpoint['scheme'] === 'https';
			$args['port'] = $endpoint['port'] ?? ($args['use_ssl'] ? 443 : 80);
		}
		if ($s3Key !== null) {
			$args['key'] = $s3Key;
			$args['secret'] = $s3Secret;
		}
		// No key: the AWS SDK's default chain uses the instance role (IMDSv2).
		$config['objectstore'] = ['class' => '\\OC\\Files\\ObjectStore\\S3', 'arguments' => $args];
	}

	if (getenv('NEXTCLOUD_CLUSTER_OCC_RUN') === '1') {
		// Only the cluster init's own occ maintenance:install / upgrade run, against a scratch config dir on
		// tmpfs: occ manages 'installed'/'version' there and must be able to write.
		$config['config_is_read_only'] = false;
		return $config;
	}
	$config['config_is_read_only'] = true;
	$stateFile = rtrim($env('NEXTCLOUD_CLUSTER_STATE_DIR', '/dev/shm/nextcloud-cluster'), '/') . '/state.json';
	$state = is_file($stateFile) ? json_decode((string)@file_get_contents($stateFile), true) : null;
	if (is_array($state) && ($state['installed'] ?? false) === true && is_string($state['version'] ?? null)) {
		$config['installed'] = true;
		$config['version'] = $state['version'];
		// This node's own Snowflake node id, unique among the cluster's live nodes (the init allocates it).
		if (is_int($state['serverid'] ?? null)) {
			$config['serverid'] = $state['serverid'];
		}
	} else {
		$config['installed'] = false;
	}
	return $config;
})();
