<?php
// TEST FIXTURE (stand-in Nextcloud code tree, see README.md): the same variables as Nextcloud's version.php.
$OC_Version = array(34, 0, 3, 1);
$OC_VersionString = '34.0.3';
$OC_Edition = '';
$OC_Channel = 'stable';
$OC_VersionCanBeUpgradedFrom = array(
	'nextcloud' => array('33.0' => true, '34.0' => true),
	'owncloud' => array('10.13' => true),
);
$OC_Build = 'stand-in test fixture, no Nextcloud code';
$vendor = 'nextcloud';
