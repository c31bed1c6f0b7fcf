<?php
/*
 * TEST DOUBLE of Nextcloud's remote.php (see README.md next to this file), for the saturation drill
 * (infra/drill/saturation.py): NOT Nextcloud. It answers the one request the drill sends, a WebDAV PROPFIND of
 * /remote.php/dav/files/<user>/ with basic auth, and holds a database connection as long as a real request does:
 *   - the connection is opened first, as Nextcloud's bootstrap opens it, and kept to the end of the request (Nextcloud
 *     opens one per request and closes it when the request ends: dbpersistent is off);
 *   - the basic-auth password is checked against the user's hash in oc_users (written by the occ double's
 *     maintenance:install), as every request without a session does in Nextcloud: 401 when it does not match;
 *   - the connection is then held REQUEST_HOLD_SECONDS in the database (SELECT pg_sleep), then 207 Multi-Status.
 * 500 when the database refuses or fails (as status.php); 503 for an installed Nextcloud whose data directory
 * lacks its marker, or one not installed.
 */

declare(strict_types=1);

const ROOT = __DIR__;
require ROOT . '/lib/standin.php';

/*
 * How long a typical Nextcloud request holds its database connection: 0.1 s. A PROPFIND of a small folder on an idle
 * server is of that order; nextcloud/server#8977 measured 280 ms for a folder of 365 subfolders (47 queries), and a
 * small folder runs a fraction of those queries. The real figure is the request's whole duration (the connection is
 * open from the bootstrap to the end): on a real release the drill measures it instead of assuming it.
 */
const REQUEST_HOLD_SECONDS = 0.1;

try {
	$config = loadConfig();
	if (serverErrors($config) !== [] || !boolValue(effective($config, 'installed', false))) {
		http_response_code(503);
		exit;
	}
	$pdo = pdoFromConfig($config);
	if ($pdo === null) {
		throw new RuntimeException('no database in the config');
	}
	if (!preg_match('#^/dav/files/([^/]+)/?$#', $_SERVER['PATH_INFO'] ?? '', $m)) {
		http_response_code(404);
		exit;
	}
	if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'PROPFIND') {
		http_response_code(405);
		header('Allow: PROPFIND');
		exit;
	}
	$user = (string)($_SERVER['PHP_AUTH_USER'] ?? '');
	$row = $pdo->prepare('SELECT password FROM oc_users WHERE uid = ?');
	$row->execute([$user]);
	$hash = $row->fetchColumn();
	if ($hash === false || !password_verify((string)($_SERVER['PHP_AUTH_PW'] ?? ''), (string)$hash)
		|| rawurldecode($m[1]) !== $user) {
		http_response_code(401);
		header('WWW-Authenticate: Basic realm="Nextcloud", charset="UTF-8"');
		exit;
	}
	$pdo->query('SELECT pg_sleep(' . REQUEST_HOLD_SECONDS . ')');
	$href = htmlspecialchars('/remote.php/dav/files/' . rawurlencode($user) . '/', ENT_XML1);
	http_response_code(207);
	header('Content-Type: application/xml; charset=utf-8');
	echo '<?xml version="1.0"?>' . "\n"
		. '<d:multistatus xmlns:d="DAV:"><d:response><d:href>' . $href . '</d:href><d:propstat><d:prop>'
		. '<d:resourcetype><d:collection/></d:resourcetype></d:prop><d:status>HTTP/1.1 200 OK</d:status>'
		. '</d:propstat></d:response></d:multistatus>' . "\n";
} catch (Throwable $e) {
	http_response_code(500);
}
