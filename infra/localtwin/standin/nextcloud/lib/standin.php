<?php
/*
 * TEST DOUBLE helpers shared by the stand-in's occ, cron.php and status.php (see README.md one level up). Each
 * follows what real Nextcloud 34 does, checked against the 34.0.1 release: lib/private/Config.php (config files),
 * lib/private/DB/ConnectionFactory.php (the port comes from dbhost alone at run time), lib/private/legacy/OC_Util.php
 * (checkServer / checkDataDirectoryValidity) and lib/private/Setup.php (the marker's content).
 */

declare(strict_types=1);

/** The content Setup::install writes into data/.ncdata. */
const DATADIR_MARKER_CONTENT = "# Nextcloud data directory\n# Do not change this file";

if (!defined('ROOT')) {
	define('ROOT', dirname(__DIR__));
}

function configDir(): string {
	$d = getenv('NEXTCLOUD_CONFIG_DIR');
	return rtrim(($d !== false && $d !== '') ? $d : ROOT . '/config', '/');
}

function loadConfig(): array {
	$files = [configDir() . '/config.php'];
	$extra = glob(configDir() . '/*.config.php') ?: [];
	natsort($extra);
	$merged = [];
	foreach (array_merge($files, array_values($extra)) as $f) {
		if (!is_file($f)) {
			continue;
		}
		$merged = array_merge($merged, (static function (string $__f): array {
			include $__f;
			return isset($CONFIG) && is_array($CONFIG) ? $CONFIG : [];
		})($f));
	}
	return $merged;
}

function effective(array $config, string $key, $default = null) {
	$env = getenv('NC_' . $key);
	return $env !== false ? $env : ($config[$key] ?? $default);
}

function boolValue($v): bool {
	return is_string($v) ? in_array(strtolower($v), ['1', 'true', 'yes', 'on'], true) : (bool)$v;
}

function codeVersion(): array {
	include ROOT . '/version.php';
	return [implode('.', $OC_Version), $OC_VersionString];
}

function pdoFor(string $host, int $port, string $name, string $user, string $pass): PDO {
	return new PDO("pgsql:host=$host;port=$port;dbname=$name;connect_timeout=3", $user, $pass,
		[PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_DEFAULT_FETCH_MODE => PDO::FETCH_ASSOC]);
}

/** [host, port] as ConnectionFactory::splitHostFromPortAndSocket reads dbhost; 'dbport' is not read at run time. */
function dbAddress(string $dbhost): array {
	if (preg_match('/^(.*):([^\\]:]+)$/', $dbhost, $m) && ctype_digit($m[2])) {
		return [$m[1], (int)$m[2]];
	}
	return [$dbhost, 5432];
}

function pdoFromConfig(array $config): ?PDO {
	if (!isset($config['dbhost'], $config['dbname'], $config['dbuser'])) {
		return null;
	}
	[$host, $port] = dbAddress((string)effective($config, 'dbhost'));
	return pdoFor(trim($host, '[]'), $port, (string)effective($config, 'dbname'), (string)effective($config, 'dbuser'),
		(string)effective($config, 'dbpassword', ''));
}

/**
 * What OC_Util::checkServer says before anything runs (web, occ, cron): for an installed Nextcloud with no pending
 * upgrade, the data directory must be absolute and hold .ncdata (Nextcloud 30 on; .ocdata before).
 */
function serverErrors(array $config): array {
	if (!boolValue(effective($config, 'installed', false))) {
		return [];
	}
	[$code] = codeVersion();
	if (version_compare($code, (string)effective($config, 'version', '0.0.0'), '>')) {
		return [];
	}
	$dir = (string)effective($config, 'datadirectory', ROOT . '/data');
	$marker = (int)explode('.', $code)[0] >= 30 ? '.ncdata' : '.ocdata';
	$errors = [];
	if ($dir === '' || $dir[0] !== '/') {
		$errors[] = "Your data directory must be an absolute path.\nCheck the value of \"datadirectory\" in your configuration.";
	}
	if (!file_exists("$dir/$marker")) {
		$errors[] = "Your data directory is invalid.\nEnsure there is a file called \"$marker\" in the root of the data "
			. "directory. It should have the content: \"# Nextcloud data directory\"";
	}
	return $errors;
}


