<?php
/*
 * TEST DOUBLE of Nextcloud's status.php (see README.md next to this file). It is NOT Nextcloud: it answers as the
 * real one does on 34.0.1 (checked against the release, and held to it by tests/integration/test_nextcloud_lane.py):
 *   - 503 with an error page when base.php's server checks fail (an installed Nextcloud whose data directory lacks
 *     .ncdata: "Your data directory is invalid");
 *   - 500 when the bootstrap throws (an installed Nextcloud whose database, at dbhost's host:port, is unreachable);
 *   - else 200 JSON: installed, maintenance, needsDbUpgrade, version, versionstring, edition, productname,
 *     extendedSupport.
 */

declare(strict_types=1);

const ROOT = __DIR__;
require ROOT . '/lib/standin.php';

try {
	$config = loadConfig();
	// Like the real bootstrap, which reads its local cache (memcache.local: APCu) on every request: a caller that
	// holds APCu's lock while it waits for this page would wait for ever here too.
	if (function_exists('apcu_fetch') && apcu_enabled()) {
		apcu_fetch('nextcloud-standin-status');
	}
	if (($errors = serverErrors($config)) !== []) {
		http_response_code(503);
		header('Content-Type: text/html; charset=utf-8');
		echo '<!DOCTYPE html><html><head><title>Nextcloud</title></head><body><ul>';
		foreach ($errors as $error) {
			echo '<li>' . nl2br(htmlspecialchars($error)) . '</li>';
		}
		echo '</ul></body></html>';
		exit;
	}
	$installed = boolValue(effective($config, 'installed', false));
	[$code, $string] = codeVersion();
	if ($installed) {
		pdoFromConfig($config);
	}
	header('Access-Control-Allow-Origin: *');
	header('Content-Type: application/json');
	echo json_encode([
		'installed' => $installed,
		'maintenance' => boolValue(effective($config, 'maintenance', false)),
		'needsDbUpgrade' => $installed && version_compare($code, (string)effective($config, 'version', '0.0.0'), '>'),
		'version' => $code,
		'versionstring' => $string,
		'edition' => '',
		'productname' => 'Nextcloud',
		'extendedSupport' => false,
	]);
} catch (Throwable $e) {
	http_response_code(500);
}
