<?php
// TEST FIXTURE (stand-in Nextcloud code tree, see ../README.md): where Nextcloud ships its sample config.
$CONFIG = [];
