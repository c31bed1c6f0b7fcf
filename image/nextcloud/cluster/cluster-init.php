<?php
/*
 * Cluster init: run once per container start (by nextcloud-cluster-entrypoint, beside Apache).
 *
 *   1. validate the cluster config (cluster.config.php) - a missing variable is a terminal failure;
 *   2. wait for PostgreSQL and Redis (exponential backoff, capped delay, overall deadline);
 *   3. take the cluster-wide lock (session-level PostgreSQL advisory lock on a dedicated connection) and
 *      decide from the database alone:
 *        empty DB             -> install exactly once (NEXTCLOUD_ALLOW_INSTALL=1), record the cluster state;
 *                                otherwise wait for a node that may install;
 *        same version         -> join, writing nothing;
 *        code newer than DB   -> upgrade exactly once (NEXTCLOUD_ALLOW_UPGRADE=1); otherwise wait, writing
 *                                nothing;
 *        other identity       -> not ready, "identity mismatch" (terminal);
 *        install/upgrade left half-way by a node that died (row still 'installing'/'upgrading', lock free,
 *        heartbeat stale) -> exactly one node that may act takes over: redo the install from an empty schema,
 *        or resume the upgrade;
 *   4. publish the outcome in state.json on tmpfs (read by cluster.config.php and /readyz).
 *
 * While occ installs or upgrades, the node holding the lock writes a heartbeat (updated_at) on the lock
 * connection every NEXTCLOUD_INIT_HEARTBEAT seconds; if that fails (the lock may be gone) it kills occ at once.
 * A row whose heartbeat is older than NEXTCLOUD_INIT_STALE_AFTER seconds belongs to a dead node.
 * Passwords never appear in a command line: occ gets the DB and admin passwords on its standard input, and the
 * admin password is fetched from the host (NEXTCLOUD_ADMIN_PASSWORD_SOCKET) only by the node that installs. Once the
 * cluster is installed, a node that may install asks the host to seal it (NEXTCLOUD_ADMIN_SEAL_SOCKET): from then on
 * no member can read it.
 *
 * Exit codes: 0 joined; 1 terminal failure (state.json says why, the container keeps answering 503);
 * 75 gave up waiting (NEXTCLOUD_INIT_WAIT_TIMEOUT): the entrypoint stops the container so it is restarted.
 *
 * Also: `cluster-init.php --write-php-ini` writes the PHP session settings (Redis, with its password) to the
 * tmpfs state dir before Apache starts (init/php-ini.php); occ itself runs through init/occ-runner.php.
 */

declare(strict_types=1);

namespace NextcloudCluster;

require_once __DIR__ . '/lib.php';
require_once __DIR__ . '/init/occ-runner.php';
require_once __DIR__ . '/init/php-ini.php';

const EXIT_FAILED = 1;
const EXIT_GAVE_UP = 75;

final class Outcome {
	public function __construct(
		public readonly string $kind, // ready | wait | fail
		public readonly string $code,
		public readonly string $reason = '',
		public readonly array $row = [],
	) {
	}
}

final class Init {
	private float $deadline;
	private int $attempt = 0;
	private OccRunner $occ;

	public function __construct(private array $config) {
		$this->occ = new OccRunner($config, self::log(...));
		$timeout = (float)envOr('NEXTCLOUD_INIT_WAIT_TIMEOUT', '600');
		$this->deadline = $timeout > 0 ? microtime(true) + $timeout : INF;
	}

	public static function log(string $msg): void {
		fwrite(STDERR, 'nextcloud-cluster-init[' . getmypid() . ']: ' . redact($msg) . "\n");
	}

	public static function state(string $phase, string $code, string $reason, array $extra = []): void {
		writeState($extra + ['phase' => $phase, 'code' => $code, 'reason' => redact($reason), 'installed' => false]);
	}

	/** Sleep with exponential backoff (capped, jittered); false once the overall deadline has passed. */
	private function backoff(string $phase, string $code, string $reason): bool {
		$initial = (float)envOr('NEXTCLOUD_INIT_BACKOFF_INITIAL', '1');
		$cap = (float)envOr('NEXTCLOUD_INIT_BACKOFF_MAX', '30');
		$delay = min($cap, $initial * (2 ** min($this->attempt, 20)));
		$delay *= 0.8 + 0.4 * mt_rand() / mt_getrandmax();
		$this->attempt++;
		if (microtime(true) + $delay > $this->deadline) {
			self::state('failed', $code, "gave up after NEXTCLOUD_INIT_WAIT_TIMEOUT: $reason");
			self::log("gave up waiting: $reason");
			return false;
		}
		self::state($phase, $code, sprintf('%s (attempt %d, retrying in %.1fs)', $reason, $this->attempt, $delay));
		self::log(sprintf('%s; retrying in %.1fs', $reason, $delay));
		usleep((int)($delay * 1e6));
		return true;
	}

	public function run(): int {
		$dbWhere = sprintf('%s:%d', ...dbAddress($this->config));
		while (true) {
			try {
				$pdo = pgConnect($this->config);
				$pdo = null;
				break;
			} catch (\Throwable $e) {
				if (!$this->backoff('waiting', 'db_unreachable', "waiting for database $dbWhere: " . $e->getMessage())) {
					return EXIT_GAVE_UP;
				}
			}
		}
		$this->attempt = 0;
		while (true) {
			try {
				redisPing($this->config);
				break;
			} catch (\Throwable $e) {
				if (!$this->backoff('waiting', 'redis_unreachable', 'waiting for redis ' . $e->getMessage())) {
					return EXIT_GAVE_UP;
				}
			}
		}
		$this->attempt = 0;
		while (true) {
			try {
				$outcome = $this->underLock();
			} catch (\Throwable $e) {
				$outcome = new Outcome('wait', 'db_unreachable', "database error during cluster init ($dbWhere): "
					. ($e instanceof \PDOException ? describePdoError($e) : $e->getMessage()));
			}
			if ($outcome->kind === 'ready') {
				$row = $outcome->row;
				try {
					[$serverid, $node] = allocateServerId($this->config);
				} catch (\Throwable $e) {
					if (!$this->backoff('waiting', 'db_unreachable', 'cannot allocate a serverid: '
						. ($e instanceof \PDOException ? describePdoError($e) : $e->getMessage()))) {
						return EXIT_GAVE_UP;
					}
					continue;
				}
				self::state('ready', 'ready', '', [
					'installed' => true, 'version' => $row['version'], 'versionstring' => $row['versionstring'],
					'instanceid' => $row['instanceid'], 'serverid' => $serverid, 'node' => $node,
				]);
				self::log("ready: cluster {$row['instanceid']} at {$row['version']}, serverid $serverid");
				// Installed (the row says so: no takeover can need the password any more), by this node just now or
				// earlier - a node that died between its install and the seal is made good by the next that may install.
				if (envOr('NEXTCLOUD_ALLOW_INSTALL', '0') === '1') {
					sealAdminPassword();
				}
				return 0;
			}
			if ($outcome->kind === 'fail') {
				self::state('failed', $outcome->code, $outcome->reason);
				self::log("not ready: {$outcome->reason}");
				return EXIT_FAILED;
			}
			if (!$this->backoff('waiting', $outcome->code, $outcome->reason)) {
				return EXIT_GAVE_UP;
			}
		}
	}

	/** Take the cluster lock on its own connection, decide and act, always release the lock. */
	private function underLock(): Outcome {
		$lock = pgConnect($this->config);
		// A node that dies while holding the lock must release it soon: let the server probe the client.
		$lock->exec("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; SET lock_timeout = '5s'");
		try {
			$lock->query('SELECT pg_advisory_lock(' . LOCK_KEY . ')');
		} catch (\PDOException $e) {
			if (($e->errorInfo[0] ?? '') === '55P03') {
				return new Outcome('wait', 'lock_wait', 'waiting for the cluster lock: another node is installing or upgrading');
			}
			throw $e;
		}
		try {
			return $this->decide($lock);
		} finally {
			try {
				$lock->query('SELECT pg_advisory_unlock(' . LOCK_KEY . ')');
			} catch (\Throwable) {
				// Closing the session releases it anyway.
			}
			$lock = null;
		}
	}

	private function decide(\PDO $pdo): Outcome {
		$code = codeVersion();
		$row = clusterRow($pdo);
		if ($row === null) {
			$prefix = (string)($this->config['dbtableprefix'] ?? 'oc_');
			$tables = prefixTables($pdo, $prefix);
			if ($tables !== []) {
				return new Outcome('fail', 'foreign_install', "the database already holds Nextcloud tables ({$tables[0]}"
					. (count($tables) > 1 ? ' and ' . (count($tables) - 1) . ' more' : '') . ') '
					. 'but no cluster state (table ' . STATE_TABLE . '); refusing to install over it or join it - see the image README, '
					. '"Adopting an existing installation"');
			}
			if (envOr('NEXTCLOUD_ALLOW_INSTALL', '0') !== '1') {
				return new Outcome('wait', 'not_installed', 'not installed: the database is empty and this node may not install '
					. '(NEXTCLOUD_ALLOW_INSTALL is not 1); waiting for a node that may');
			}
			return $this->install($pdo, $code);
		}
		if ($row['instanceid'] !== $this->config['instanceid'] || $row['identity_digest'] !== identityDigest($this->config)) {
			return new Outcome('fail', 'identity_mismatch', "identity mismatch: the database belongs to instanceid {$row['instanceid']}, "
				. "this node is {$this->config['instanceid']} (or its passwordsalt/secret differ); fix the node's secrets");
		}
		// We hold the lock, so a row still 'installing'/'upgrading' means its node died or failed half-way - or lost
		// its lock connection and has not noticed yet: take over only once its heartbeat is stale.
		if ($row['state'] === 'installing' || $row['state'] === 'upgrading') {
			$age = (float)$pdo->query('SELECT extract(epoch FROM now() - updated_at) AS age FROM ' . STATE_TABLE . ' WHERE id = 1')
				->fetch()['age'];
			$staleAfter = (float)envOr('NEXTCLOUD_INIT_STALE_AFTER', '30');
			$what = $row['state'] === 'installing' ? "the install of {$row['target_version']}" : "the upgrade from {$row['version']} to {$row['target_version']}";
			if ($age < $staleAfter) {
				return new Outcome('wait', $row['state'] === 'installing' ? 'install_interrupted' : 'upgrade_pending',
					sprintf("%s by %s stopped without releasing the cluster state; taking over once its heartbeat is %.0fs old (now %.0fs)",
						$what, $row['updated_by'], $staleAfter, $age));
			}
		}
		if ($row['state'] === 'installing') {
			if (envOr('NEXTCLOUD_ALLOW_INSTALL', '0') !== '1') {
				return new Outcome('wait', 'install_interrupted', "$what by {$row['updated_by']} did not finish; waiting for a node that may "
					. 'install (NEXTCLOUD_ALLOW_INSTALL=1) to redo it');
			}
			self::log("$what by {$row['updated_by']} (last heartbeat {$row['updated_at']}) did not finish: taking over");
			return $this->install($pdo, $code, $row);
		}
		$mayUpgrade = envOr('NEXTCLOUD_ALLOW_UPGRADE', '0') === '1';
		if ($row['state'] === 'upgrading') {
			// The upgrader died half-way; occ upgrade resumes from where the schema is.
			if ($mayUpgrade && $code['version'] === $row['target_version']) {
				self::log("$what by {$row['updated_by']} (last heartbeat {$row['updated_at']}) did not finish: resuming it");
				return $this->upgrade($pdo, $code, $row);
			}
			return new Outcome('wait', 'upgrade_pending', "an upgrade from {$row['version']} to {$row['target_version']} by "
				. "{$row['updated_by']} did not finish; waiting for a node with {$row['target_version']} that may upgrade "
				. '(NEXTCLOUD_ALLOW_UPGRADE=1)');
		}
		$cmp = version_compare($code['version'], $row['version']);
		if ($cmp === 0) {
			return new Outcome('ready', 'ready', '', $row);
		}
		if ($cmp < 0) {
			return new Outcome('fail', 'code_older', "code {$code['version']} is older than the cluster ({$row['version']}): "
				. 'downgrades are not supported, run an image with Nextcloud >= ' . $row['version']);
		}
		if (!$mayUpgrade) {
			return new Outcome('wait', 'upgrade_pending', "upgrade pending: code {$code['version']} is newer than the cluster "
				. "({$row['version']}) and this node may not upgrade (NEXTCLOUD_ALLOW_UPGRADE is not 1); waiting for a node that may");
		}
		return $this->upgrade($pdo, $code, $row);
	}

	/**
	 * Install once: on an empty database, or (takeover) redo the install a dead node left half-way. The row was
	 * committed as 'installing' before occ ran, when the schema held no Nextcloud table (checked under the
	 * lock), and no node serves until it says 'installed': every table with the prefix is that install's
	 * debris, so dropping them returns the database to where the first install started.
	 */
	private function install(\PDO $pdo, array $code, ?array $takeover = null): Outcome {
		$c = $this->config;
		$admin = getenv('NEXTCLOUD_ADMIN_USER');
		if (!$admin) {
			return new Outcome('fail', 'config_error', 'cannot install: NEXTCLOUD_ADMIN_USER must be set on the installing node');
		}
		foreach (['NEXTCLOUD_DB_PASSWORD' => $c['dbpassword']] as $name => $value) {
			if (trim((string)$value) !== (string)$value) {
				return new Outcome('fail', 'config_error', "cannot install: $name has leading or trailing whitespace, which occ's "
					. 'password prompt would strip; store it without');
			}
		}
		try {
			$adminPass = fetchAdminPassword();
		} catch (\Throwable $e) {
			return new Outcome('wait', 'admin_password_unavailable', 'cannot install yet: ' . $e->getMessage());
		}
		if (trim($adminPass) !== $adminPass) {
			return new Outcome('fail', 'config_error', "cannot install: the admin password has leading or trailing whitespace, which "
				. "occ's password prompt would strip; store it without");
		}
		$verb = $takeover === null ? 'installing' : 'redoing the interrupted install of';
		self::state('installing', 'installing', "$verb Nextcloud {$code['version']} (this node holds the cluster lock)");
		// Recorded (committed) before occ runs, so an install that dies half-way is recognised as such.
		$pdo->beginTransaction();
		if ($takeover === null) {
			self::log("database is empty: installing Nextcloud {$code['version']}");
			$pdo->exec('CREATE TABLE IF NOT EXISTS ' . STATE_TABLE . " (
				id smallint PRIMARY KEY CHECK (id = 1),
				state text NOT NULL CHECK (state IN ('installing', 'installed', 'upgrading')),
				instanceid text NOT NULL,
				identity_digest text NOT NULL,
				version text NOT NULL,
				versionstring text NOT NULL,
				target_version text,
				installed_at timestamptz NOT NULL DEFAULT now(),
				updated_at timestamptz NOT NULL DEFAULT now(),
				updated_by text NOT NULL)");
			$pdo->prepare('INSERT INTO ' . STATE_TABLE . " (id, state, instanceid, identity_digest, version, versionstring, target_version,
				updated_by) VALUES (1, 'installing', ?, ?, '', '', ?, ?)")
				->execute([$c['instanceid'], identityDigest($c), $code['version'], gethostname()]);
		} else {
			$debris = prefixTables($pdo, (string)($c['dbtableprefix'] ?? 'oc_'));
			foreach ($debris as $table) {
				$pdo->exec('DROP TABLE IF EXISTS ' . quoteIdent($table) . ' CASCADE');
			}
			self::log('dropped ' . count($debris) . " table(s) the interrupted install left; installing Nextcloud {$code['version']} again");
			$pdo->prepare('UPDATE ' . STATE_TABLE . " SET target_version = ?, updated_at = now(), updated_by = ? WHERE id = 1")
				->execute([$code['version'], gethostname()]);
		}
		$pdo->commit();
		$scratch = $this->occ->scratchConfig(null);
		try {
			// No --database-pass / --admin-pass: occ asks for both (in this order) and reads the answers from its
			// standard input (SHELL_INTERACTIVE keeps Symfony's console interactive without a terminal).
			[$rc, $out] = $this->occ->run($scratch, ['maintenance:install', '--database=pgsql',
				'--database-host=' . dbAddress($c)[0], '--database-port=' . dbAddress($c)[1], '--database-name=' . $c['dbname'],
				'--database-user=' . $c['dbuser'], '--admin-user=' . $admin, '--data-dir=' . $c['datadirectory']],
				$c['dbpassword'] . "\n" . $adminPass . "\n", $pdo, ['SHELL_INTERACTIVE' => '1']);
			$adminPass = null;
			if ($rc !== 0) {
				return new Outcome('fail', 'install_failed', "occ maintenance:install failed (exit $rc): " . lastLine($out));
			}
			$status = $this->occ->status($scratch);
			if (($status['installed'] ?? false) !== true || !is_string($status['version'] ?? null)) {
				return new Outcome('fail', 'install_failed', 'occ maintenance:install succeeded but occ status does not report an installation');
			}
			// The admin manual's background-jobs mode for anything but a single user: the host's timer runs cron.php.
			[$rc, $out] = $this->occ->run($scratch, ['background:cron'], null, $pdo);
			if ($rc !== 0) {
				return new Outcome('fail', 'install_failed', "occ background:cron failed (exit $rc): " . lastLine($out));
			}
		} finally {
			removeTree($scratch);
		}
		// installed_at = updated_at: the row as the install left it; any later change shows as updated_at > installed_at.
		$pdo->prepare('UPDATE ' . STATE_TABLE . " SET state = 'installed', version = ?, versionstring = ?, target_version = NULL,
			installed_at = now(), updated_at = now(), updated_by = ? WHERE id = 1")
			->execute([$status['version'], (string)($status['versionstring'] ?? ''), gethostname()]);
		self::log("installed Nextcloud {$status['version']} as cluster {$c['instanceid']} (background jobs: cron)");
		return new Outcome('ready', 'ready', '', clusterRow($pdo));
	}

	private function upgrade(\PDO $pdo, array $code, array $row): Outcome {
		self::state('upgrading', 'upgrading', "upgrading the cluster from {$row['version']} to {$code['version']} (this node holds the cluster lock)");
		self::log("upgrading the cluster from {$row['version']} to {$code['version']}");
		// Recorded before occ runs: serving nodes see the cluster busy, and an interrupted upgrade is resumed.
		$pdo->prepare('UPDATE ' . STATE_TABLE . " SET state = 'upgrading', target_version = ?, updated_at = now(), updated_by = ?
			WHERE id = 1")->execute([$code['version'], gethostname()]);
		$scratch = $this->occ->scratchConfig(['installed' => true, 'version' => $row['version'], 'maintenance' => false]);
		try {
			[$rc, $out] = $this->occ->run($scratch, ['upgrade', '--no-interaction'], null, $pdo);
			if ($rc !== 0) {
				return new Outcome('fail', 'upgrade_failed', "occ upgrade from {$row['version']} failed (exit $rc): " . lastLine($out));
			}
			$status = $this->occ->status($scratch);
		} finally {
			removeTree($scratch);
		}
		if (($status['needsDbUpgrade'] ?? true) !== false || ($status['version'] ?? null) !== $code['version']) {
			return new Outcome('fail', 'upgrade_failed', 'occ upgrade finished but occ status still reports version '
				. ($status['version'] ?? '?') . ' / needsDbUpgrade');
		}
		$upd = $pdo->prepare('UPDATE ' . STATE_TABLE . " SET state = 'installed', version = ?, versionstring = ?, target_version = NULL,
			updated_at = now(), updated_by = ? WHERE id = 1");
		$upd->execute([$status['version'], (string)($status['versionstring'] ?? ''), gethostname()]);
		self::log("upgraded the cluster to {$status['version']}");
		return new Outcome('ready', 'ready', '', clusterRow($pdo));
	}
}

/** Tables in the public schema whose name starts with the Nextcloud table prefix (literally: '_' is no wildcard). */
function prefixTables(\PDO $pdo, string $prefix): array {
	$st = $pdo->prepare("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND left(tablename, ?) = ? ORDER BY 1");
	$st->execute([strlen($prefix), $prefix]);
	return array_column($st->fetchAll(), 'tablename');
}

function quoteIdent(string $name): string {
	return '"' . str_replace('"', '""', $name) . '"';
}

/**
 * The admin password, from the host, for this install only: nextcloud-admin-password.socket resolves its reference
 * when (and only when) the installing node connects, so no other node ever fetches or holds it. Kept in memory.
 */
function fetchAdminPassword(): string {
	$path = envOr('NEXTCLOUD_ADMIN_PASSWORD_SOCKET', '/run/nextcloud-admin/password.sock');
	$timeout = (float)envOr('NEXTCLOUD_ADMIN_PASSWORD_TIMEOUT', '120');
	$sock = @stream_socket_client('unix://' . $path, $errno, $errstr, 10);
	if ($sock === false) {
		throw new \RuntimeException("the admin password socket $path does not answer ($errstr)");
	}
	stream_set_timeout($sock, (int)ceil($timeout));
	$value = stream_get_contents($sock);
	$meta = stream_get_meta_data($sock);
	fclose($sock);
	if ($meta['timed_out']) {
		throw new \RuntimeException("no admin password from $path within {$timeout}s");
	}
	if (!is_string($value) || $value === '') {
		throw new \RuntimeException("the host could not resolve the admin password (socket $path gave nothing; journalctl -u "
			. "'nextcloud-admin-password@*' says why)");
	}
	rememberSecret($value);
	return $value;
}

/**
 * Seal the admin password once the cluster is installed: nextcloud-admin-seal.socket removes its secret's install tag,
 * after which the stack's member role cannot read it (infra/stack/nextcloud.yaml). Best effort: a failure is logged
 * loudly and changes nothing else - the cluster is installed, this node is ready, and the next start of a node that
 * may install tries again.
 */
function sealAdminPassword(): void {
	$path = envOr('NEXTCLOUD_ADMIN_SEAL_SOCKET', '/run/nextcloud-admin/seal.sock');
	$timeout = (float)envOr('NEXTCLOUD_ADMIN_SEAL_TIMEOUT', '120');
	$failed = "WARNING: could not seal the admin password: every member can still read it until a node that may install "
		. "seals it at its next start (journalctl -u 'nextcloud-admin-seal@*' says why)";
	try {
		$sock = @stream_socket_client('unix://' . $path, $errno, $errstr, 10);
		if ($sock === false) {
			Init::log("$failed; the socket $path does not answer ($errstr)");
			return;
		}
		stream_set_timeout($sock, (int)ceil($timeout));
		$reply = stream_get_contents($sock);
		$meta = stream_get_meta_data($sock);
		fclose($sock);
		$line = trim(preg_replace('/[^\x20-\x7e]+/', ' ', is_string($reply) ? substr($reply, 0, 1000) : ''));
		if ($meta['timed_out'] || $line === '') {
			Init::log($failed . ($meta['timed_out'] ? "; no answer from $path within {$timeout}s" : "; $path gave nothing"));
			return;
		}
		Init::log($line);
	} catch (\Throwable $e) {
		Init::log("$failed; " . $e->getMessage());
	}
}

/**
 * Give this node a serverid (Nextcloud's Snowflake ID node part, 1..511) no other live node of the cluster holds:
 * the lowest free one, under a transaction-level hold of the cluster lock. Leases nobody renewed for
 * NEXTCLOUD_SERVERID_STALE_AFTER seconds (readiness renews them) belong to nodes that are gone and are freed first.
 * Returns [serverid, node token].
 */
function allocateServerId(array $config): array {
	$pdo = pgConnect($config);
	$node = gethostname() . '/' . bin2hex(random_bytes(8));
	$pdo->beginTransaction();
	$pdo->query('SELECT pg_advisory_xact_lock(' . LOCK_KEY . ')');
	$pdo->exec('CREATE TABLE IF NOT EXISTS ' . NODES_TABLE . ' (
		serverid smallint PRIMARY KEY CHECK (serverid BETWEEN 1 AND 511),
		node text NOT NULL UNIQUE,
		joined_at timestamptz NOT NULL DEFAULT now(),
		seen_at timestamptz NOT NULL DEFAULT now())');
	$pdo->prepare('DELETE FROM ' . NODES_TABLE . ' WHERE seen_at < now() - make_interval(secs => ?)')
		->execute([serverIdStaleSeconds()]);
	$free = $pdo->query('SELECT min(s) AS s FROM generate_series(1, 511) s WHERE s NOT IN (SELECT serverid FROM '
		. NODES_TABLE . ')')->fetch();
	if ($free['s'] === null) {
		$pdo->rollBack();
		throw new \RuntimeException('all 511 serverids are held by live nodes');
	}
	$pdo->prepare('INSERT INTO ' . NODES_TABLE . ' (serverid, node) VALUES (?, ?)')->execute([(int)$free['s'], $node]);
	$pdo->commit();
	return [(int)$free['s'], $node];
}

/** --release-serverid: the node is draining; free its serverid at once (the container stop calls this). */
function releaseServerId(): int {
	$state = readState();
	if (!isset($state['serverid'], $state['node'])) {
		return 0;
	}
	try {
		$pdo = pgConnect(loadConfig(webroot() . '/config'), 2);
		$st = $pdo->prepare('DELETE FROM ' . NODES_TABLE . ' WHERE serverid = ? AND node = ?');
		$st->execute([(int)$state['serverid'], (string)$state['node']]);
		Init::log("released serverid {$state['serverid']}" . ($st->rowCount() === 1 ? '' : ' (it was no longer held)'));
		return 0;
	} catch (\Throwable $e) {
		Init::log("could not release serverid {$state['serverid']} (it expires after " . serverIdStaleSeconds() . ' s): '
			. ($e instanceof \PDOException ? describePdoError($e) : $e->getMessage()));
		return 1;
	}
}

function main(array $argv): int {
	if (in_array('--release-serverid', $argv, true)) {
		return releaseServerId();
	}
	$dir = stateDir();
	if (!is_dir($dir) && !mkdir($dir, 0755, true)) {
		fwrite(STDERR, "nextcloud-cluster-init: cannot create state dir $dir (NEXTCLOUD_CLUSTER_STATE_DIR)\n");
		return EXIT_FAILED;
	}
	if (in_array('--write-php-ini', $argv, true)) {
		writePhpIni();
		return 0;
	}
	Init::state('starting', 'init_pending', 'cluster init starting');
	try {
		$config = loadConfig(webroot() . '/config');
	} catch (\Throwable $e) {
		Init::state('failed', 'config_error', 'configuration error: ' . $e->getMessage());
		Init::log('configuration error: ' . $e->getMessage());
		return EXIT_FAILED;
	}
	try {
		codeVersion();
	} catch (\Throwable $e) {
		Init::state('failed', 'code_missing', $e->getMessage());
		return EXIT_FAILED;
	}
	return (new Init($config))->run();
}

exit(main($argv));
