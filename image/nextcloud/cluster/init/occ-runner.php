<?php
/*
 * The cluster init's occ runner: occ as the webroot's owner, with a private config dir on tmpfs for each run,
 * passwords on its standard input (never in argv), a heartbeat on the lock connection while it runs, and occ
 * killed with the init. cluster-init.php runs occ only through it.
 */

declare(strict_types=1);

namespace NextcloudCluster;

require_once dirname(__DIR__) . '/lib.php';

final class OccRunner {
	/** @param \Closure(string): void $log where occ's output lines go (the init's log) */
	public function __construct(private array $config, private \Closure $log) {
	}

	/**
	 * A private config dir on tmpfs for one occ run (NEXTCLOUD_CONFIG_DIR): occ writes its config.php there
	 * (secrets included) instead of into the image's webroot, and it is removed afterwards. It links the
	 * webroot's *.config.php, so the cluster config still applies; only this occ process sees it writable.
	 */
	public function scratchConfig(?array $initial): string {
		$owner = occOwner();
		$dir = stateDir() . '/occ-config-' . getmypid();
		removeTree($dir);
		if (!mkdir($dir, 0700)) {
			throw new \RuntimeException("cannot create $dir");
		}
		chown($dir, $owner['uid']);
		foreach (glob(webroot() . '/config/*.config.php') ?: [] as $f) {
			symlink($f, $dir . '/' . basename($f));
		}
		// occ insists on being run by the owner of config.php, like the web server user in the image.
		$php = "<?php\n\$CONFIG = " . var_export($initial ?? [], true) . ";\n";
		atomicWrite($dir . '/config.php', $php, 0640, $owner['uid'], $owner['gid']);
		return $dir;
	}

	/**
	 * Run occ as the webroot's owner with the scratch config; returns [exit code, combined output].
	 * $stdin is written to occ's standard input (passwords: never in argv, which every local user can read in
	 * /proc/<pid>/cmdline). With $heartbeat, the cluster row's updated_at is refreshed on that (lock) connection
	 * every NEXTCLOUD_INIT_HEARTBEAT seconds while occ runs; a failed heartbeat kills occ at once. occ dies with
	 * this process too (parent-death signal), so a killed init never leaves an install running behind it.
	 */
	public function run(string $configDir, array $args, ?string $stdin = null, ?\PDO $heartbeat = null, array $extraEnv = []): array {
		$owner = occOwner();
		$cmd = ['setpriv', '--pdeathsig', 'KILL'];
		if (posix_geteuid() === 0 && $owner['uid'] !== 0) {
			$cmd = [...$cmd, '--reuid=' . $owner['uid'], '--regid=' . $owner['gid'], '--init-groups'];
		}
		$cmd = [...$cmd, '--', PHP_BINARY, '-d', 'apc.enable_cli=1', '-d', 'memory_limit=512M', webroot() . '/occ', ...$args];
		$env = getenv();
		$env['NEXTCLOUD_CONFIG_DIR'] = $configDir;
		$env['NEXTCLOUD_CLUSTER_OCC_RUN'] = '1';
		if ($owner['uid'] !== posix_geteuid()) {
			$env['HOME'] = $owner['home'];
			$env['USER'] = $env['LOGNAME'] = $owner['name'];
		}
		// Nextcloud's installer sets a fresh random passwordsalt/secret in its running config; NC_<key> values win
		// over that inside the occ process too (and are never written back), so the install runs with the
		// cluster identity from its first to its last step.
		foreach (['instanceid', 'passwordsalt', 'secret'] as $key) {
			$env['NC_' . $key] = (string)$this->config[$key];
		}
		$env = $extraEnv + $env;
		$stdinSpec = $stdin === null ? ['file', '/dev/null', 'r'] : ['pipe', 'r'];
		$proc = proc_open($cmd, [0 => $stdinSpec, 1 => ['pipe', 'w'], 2 => ['redirect', 1]], $pipes, webroot(), $env);
		if (!is_resource($proc)) {
			throw new \RuntimeException('cannot start occ');
		}
		if ($stdin !== null) {
			fwrite($pipes[0], $stdin);
			fclose($pipes[0]);
			$stdin = null;
		}
		$interval = max(0.2, (float)envOr('NEXTCLOUD_INIT_HEARTBEAT', '5'));
		$lastBeat = microtime(true);
		$out = '';
		stream_set_blocking($pipes[1], false);
		while (true) {
			$read = [$pipes[1]];
			$write = $except = null;
			$ready = @stream_select($read, $write, $except, 0, 200000);
			if ($ready) {
				$chunk = fread($pipes[1], 65536);
				if ($chunk === '' || $chunk === false) {
					if (feof($pipes[1])) {
						break;
					}
				} else {
					$out .= $chunk;
				}
			}
			if ($heartbeat !== null && microtime(true) - $lastBeat >= $interval) {
				try {
					$heartbeat->exec("SET statement_timeout = '5s'");
					$heartbeat->exec('UPDATE ' . STATE_TABLE . ' SET updated_at = now() WHERE id = 1');
					$lastBeat = microtime(true);
				} catch (\Throwable $e) {
					proc_terminate($proc, 9);
					fclose($pipes[1]);
					proc_close($proc);
					throw new \RuntimeException("lost the cluster lock connection during occ {$args[0]} (heartbeat failed: "
						. describePdoError($e) . '); killed occ so that no other node races it');
				}
			}
		}
		fclose($pipes[1]);
		$rc = proc_close($proc);
		foreach (explode("\n", trim($out)) as $line) {
			if ($line !== '' && $args[0] !== 'status') {
				($this->log)("occ {$args[0]}: $line");
			}
		}
		return [$rc, $out];
	}

	public function status(string $configDir): array {
		[$rc, $out] = $this->run($configDir, ['status', '--output=json']);
		$start = strpos($out, '{');
		$json = $start === false ? null : json_decode(substr($out, $start), true);
		if ($rc !== 0 || !is_array($json)) {
			throw new \RuntimeException("occ status failed (exit $rc): " . lastLine($out));
		}
		return $json;
	}
}

function lastLine(string $out): string {
	$lines = array_values(array_filter(array_map('trim', explode("\n", $out)), 'strlen'));
	return redact($lines === [] ? '(no output)' : substr(end($lines), 0, 300));
}

function removeTree(string $dir): void {
	if (!is_dir($dir) || is_link($dir)) {
		return;
	}
	foreach (scandir($dir) ?: [] as $f) {
		if ($f === '.' || $f === '..') {
			continue;
		}
		$p = "$dir/$f";
		is_dir($p) && !is_link($p) ? removeTree($p) : unlink($p);
	}
	rmdir($dir);
}

/**
 * occ runs as the owner of the data directory, the one part of the webroot the web server writes: www-data in the
 * image (the code itself is read-only for it), the test user on the host.
 */
function occOwner(): array {
	$uid = fileowner(webroot() . '/data');
	$pw = $uid === false ? false : posix_getpwuid($uid);
	if ($pw === false) {
		throw new \RuntimeException('cannot determine the owner of ' . webroot() . '/data');
	}
	return ['uid' => $pw['uid'], 'gid' => $pw['gid'], 'name' => $pw['name'], 'home' => $pw['dir']];
}
