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
 *
 * And, for the conformance suite (tests/integration/test_nextcloud_lane.py), PUT and GET of a file directly in the
 * user's folder, stored as Nextcloud 34 stores it (checked against the release: lib/private/Files/ObjectStore/):
 * with S3 primary storage ('objectstore' in the config) the content is one object named urn:oid:<fileid> in the
 * bucket, signed with AWS Signature V4 when the config carries a key (moto does not check the signature; the instance
 * role, used when there is no key, is not
 * emulated: then 500); without it, a file under <datadirectory>/<user>/files/. The file ids live in this double's own
 * table, standin_filecache (Nextcloud's oc_filecache, reduced to path and id). PUT answers 201 (new) or 204.
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
	$method = (string)($_SERVER['REQUEST_METHOD'] ?? '');
	$file = null;
	if (preg_match('#^/dav/files/([^/]+)/([^/]+)$#', $_SERVER['PATH_INFO'] ?? '', $f) && in_array($method, ['PUT', 'GET'], true)) {
		[$m, $file] = [[$f[0], $f[1]], rawurldecode($f[2])];
	} elseif (!preg_match('#^/dav/files/([^/]+)/?$#', $_SERVER['PATH_INFO'] ?? '', $m)) {
		http_response_code(404);
		exit;
	} elseif ($method !== 'PROPFIND') {
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
	if ($file !== null) {
		transferFile($config, $pdo, $user, $file, $method);
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


/** PUT or GET one file of $user's folder: the database keeps its id, the object store (or data dir) its content. */
function transferFile(array $config, PDO $pdo, string $user, string $name, string $method): void {
	$pdo->exec('CREATE TABLE IF NOT EXISTS standin_filecache (fileid bigserial PRIMARY KEY, path text UNIQUE NOT NULL,
		size bigint NOT NULL)');
	$path = "$user/files/$name";
	$find = $pdo->prepare('SELECT fileid FROM standin_filecache WHERE path = ?');
	$find->execute([$path]);
	$fileid = $find->fetchColumn();
	$store = effective($config, 'objectstore');
	if ($method === 'GET') {
		if ($fileid === false) {
			http_response_code(404);
			return;
		}
		$body = is_array($store) ? s3Request($store['arguments'], 'GET', "urn:oid:$fileid", '')
			: @file_get_contents(effective($config, 'datadirectory', ROOT . '/data') . "/$path");
		if ($body === false) {
			throw new RuntimeException("the content of file $fileid is gone");
		}
		header('Content-Type: application/octet-stream');
		echo $body;
		return;
	}
	$body = (string)file_get_contents('php://input');
	$new = $fileid === false;
	if ($new) {
		$add = $pdo->prepare('INSERT INTO standin_filecache (path, size) VALUES (?, ?) RETURNING fileid');
		$add->execute([$path, strlen($body)]);
		$fileid = $add->fetchColumn();
	}
	if (is_array($store)) {
		s3Request($store['arguments'], 'PUT', "urn:oid:$fileid", $body);
	} else {
		$target = effective($config, 'datadirectory', ROOT . '/data') . "/$path";
		@mkdir(dirname($target), 0770, true);
		if (file_put_contents($target, $body) === false) {
			throw new RuntimeException("cannot write $target");
		}
	}
	$pdo->prepare('UPDATE standin_filecache SET size = ? WHERE fileid = ?')->execute([strlen($body), $fileid]);
	http_response_code($new ? 201 : 204);
}

/** One S3 request (path style or virtual host, as the objectstore arguments say), AWS Signature V4; the body of a GET. */
function s3Request(array $a, string $method, string $key, string $body): string|false {
	if (!isset($a['key'], $a['secret'])) {
		throw new RuntimeException('the stand-in signs S3 requests with a key only (the instance role is not emulated)');
	}
	$ssl = (bool)($a['use_ssl'] ?? true);
	$host = (string)($a['hostname'] ?? "s3.{$a['region']}.amazonaws.com");
	$port = (int)($a['port'] ?? ($ssl ? 443 : 80));
	$hostHeader = $host . (($ssl && $port === 443) || (!$ssl && $port === 80) ? '' : ":$port");
	$pathStyle = (bool)($a['use_path_style'] ?? false);
	if (!$pathStyle) {
		$hostHeader = "{$a['bucket']}.$hostHeader";
	}
	$uri = ($pathStyle ? '/' . rawurlencode((string)$a['bucket']) : '') . '/' . rawurlencode($key);
	$now = gmdate('Ymd\THis\Z');
	$day = substr($now, 0, 8);
	$payload = hash('sha256', $body);
	$headers = ['host' => $hostHeader, 'x-amz-content-sha256' => $payload, 'x-amz-date' => $now];
	$signed = implode(';', array_keys($headers));
	$canonical = "$method\n$uri\n\n" . implode('', array_map(static fn ($k, $v) => "$k:$v\n", array_keys($headers), $headers))
		. "\n$signed\n$payload";
	$scope = "$day/{$a['region']}/s3/aws4_request";
	$toSign = "AWS4-HMAC-SHA256\n$now\n$scope\n" . hash('sha256', $canonical);
	$k = 'AWS4' . $a['secret'];
	foreach ([$day, (string)$a['region'], 's3', 'aws4_request'] as $part) {
		$k = hash_hmac('sha256', $part, $k, true);
	}
	$auth = "AWS4-HMAC-SHA256 Credential={$a['key']}/$scope, SignedHeaders=$signed, Signature=" . hash_hmac('sha256', $toSign, $k);
	$ctx = stream_context_create(['http' => [
		'method' => $method, 'content' => $body, 'ignore_errors' => true, 'timeout' => 30, 'protocol_version' => 1.1,
		'header' => ["Host: $hostHeader", "x-amz-content-sha256: $payload", "x-amz-date: $now", "Authorization: $auth",
			'Content-Type: application/octet-stream', 'Connection: close'],
	]]);
	$answer = @file_get_contents(($ssl ? 'https' : 'http') . "://$host:$port$uri", false, $ctx);
	$status = isset($http_response_header[0]) && preg_match('#^HTTP/\S+\s+(\d{3})#', $http_response_header[0], $st) ? (int)$st[1] : 0;
	if ($status === 404 && $method === 'GET') {
		return false;
	}
	if ($status < 200 || $status > 299) {
		throw new RuntimeException("S3 $method $uri answered $status");
	}
	return (string)$answer;
}
