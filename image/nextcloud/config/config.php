<?php
/*
 * Intentionally empty. All settings come from cluster.config.php (environment + cluster state); nodes never
 * write their config (config_is_read_only). The file exists because occ must run as the owner of config.php.
 */
$CONFIG = [];
