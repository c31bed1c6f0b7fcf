<?php
/*
 * TEST DOUBLE of Nextcloud's cron.php (see README.md next to this file). It is NOT Nextcloud: it follows the real
 * script's observable behaviour when run from the command line and records each run in occ_double_calls
 * (verb 'cron.php') so tests can see when background jobs ran:
 *   - must run as the owner of config.php (else "Console has to be executed with the user that owns the file
 *     config/config.php", exit 1);
 *   - not installed, an upgrade pending or maintenance mode: exits 0 without running any job;
 *   - from the command line it sets the background-jobs mode to 'cron' when it is something else, runs the jobs
 *     (NEXTCLOUD_CRON_DOUBLE_DELAY seconds, default 0, stand in for their time) and sets core/lastcron.
 */

declare(strict_types=1);

$configDir = rtrim((string)(getenv('NEXTCLOUD_CONFIG_DIR') ?: __DIR__ . '/config'), '/');
if (@fileowner("$configDir/config.php") !== posix_getuid()) {
	echo "Console has to be executed with the user that owns the file config/config.php\n";
	exit(1);
}
$files = glob("$configDir/*.config.php") ?: [];
natsort($files);
$config = [];
foreach (array_merge(["$configDir/config.php"], array_values($files)) as $f) {
	if (is_file($f)) {
		$config = array_merge($config, (static function (string $__f): array {
			include $__f;
			return isset($CONFIG) && is_array($CONFIG) ? $CONFIG : [];
		})($f));
	}
}
$value = static function (string $key, $default = null) use ($config) {
	$env = getenv('NC_' . $key);
	return $env !== false ? $env : ($config[$key] ?? $default);
};
$bool = static fn ($v): bool => is_string($v) ? in_array(strtolower($v), ['1', 'true', 'yes', 'on'], true) : (bool)$v;
include __DIR__ . '/version.php';
if (!$bool($value('installed', false)) || $bool($value('maintenance', false))
	|| version_compare(implode('.', $OC_Version), (string)$value('version', '0'), '>')) {
	exit(0);
}
$pdo = new PDO(sprintf('pgsql:host=%s;port=%d;dbname=%s;connect_timeout=3', $value('dbhost'), (int)$value('dbport', 5432),
	$value('dbname')), (string)$value('dbuser'), (string)$value('dbpassword', ''), [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$st = $pdo->prepare('INSERT INTO occ_double_calls (verb, argv, host, pid) VALUES (?, ?, ?, ?) RETURNING id');
$st->execute(['cron.php', json_encode($argv), gethostname(), getmypid()]);
$id = (int)$st->fetchColumn();
$set = $pdo->prepare("INSERT INTO oc_appconfig (appid, configkey, configvalue) VALUES ('core', ?, ?)
	ON CONFLICT (appid, configkey) DO UPDATE SET configvalue = EXCLUDED.configvalue");
$set->execute(['backgroundjobs_mode', 'cron']);
usleep((int)(1e6 * (float)(getenv('NEXTCLOUD_CRON_DOUBLE_DELAY') ?: '0')));
$set->execute(['lastcron', (string)time()]);
$pdo->prepare('UPDATE occ_double_calls SET exit_code = 0, note = ? WHERE id = ?')->execute(['jobs run', $id]);
exit(0);
