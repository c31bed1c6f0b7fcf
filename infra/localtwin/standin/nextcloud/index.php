<?php
// TEST FIXTURE (stand-in Nextcloud code tree, see README.md): not Nextcloud, only a page that says so.
header('Content-Type: text/plain');
echo "Nextcloud stand-in (test fixture): this image carries no Nextcloud code.\n";
