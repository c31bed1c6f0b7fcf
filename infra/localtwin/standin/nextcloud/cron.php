<?php
/*
 * TEST DOUBLE of Nextcloud's cron.php (see README.md next to this file). It is NOT Nextcloud: it follows the real
 * script's observable behaviour when run from the command line and records each run in occ_double_calls
 * (verb 'cron.php') so tests can see when background jobs ran:
 *   - an installed Nextcloud whose data directory lacks .ncdata prints base.php's errors and exits 1;
 *   - must run as the owner of config.php (else "Console has to be executed with the user that owns the file
 *     config/config.php", exit 1);
 *   - not installed, an upgrade pending or maintenance mode: exits 0 without running any job;
 *   - from the command line it sets the background-jobs mode to 'cron' when it is something else, runs the jobs
 *     (NEXTCLOUD_CRON_DOUBLE_DELAY seconds, default 0, stand in for their time) and sets core/lastcron.
 */

declare(strict_types=1);

const ROOT = __DIR__;
require ROOT . '/lib/standin.php';

if (@fileowner(configDir() . '/config.php') !== posix_getuid()) {
	echo "Console has to be executed with the user that owns the file config/config.php\n";
	exit(1);
}
$config = loadConfig();
// base.php's OC_Util::checkServer: an installed Nextcloud without its data directory marker runs nothing.
if (($errors = serverErrors($config)) !== []) {
	echo implode("\n", $errors) . "\n";
	exit(1);
}
[$code] = codeVersion();
if (!boolValue(effective($config, 'installed', false)) || boolValue(effective($config, 'maintenance', false))
	|| version_compare($code, (string)effective($config, 'version', '0'), '>')) {
	exit(0);
}
$pdo = pdoFromConfig($config);
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
