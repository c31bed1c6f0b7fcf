# shellcheck shell=bash
# Sourced by nextcloud-occ and nextcloud-cron: run PHP as the web server user - the owner of the data directory, the
# one part of the code tree it may write - the way Nextcloud's console and cron.php insist on (the user that owns
# config.php). The image's config dir is root-owned, so PHP
# gets a private config dir on tmpfs (NEXTCLOUD_CONFIG_DIR) that links the cluster config; the cluster config
# keeps it read-only, so nothing run this way can write config (every setting comes from the environment).
#   run_php_as_web_user WEBROOT PHP-ARGS...
run_php_as_web_user() {
	local webroot=$1 owner scratch f status=0
	shift
	owner=$(stat -c %U "$webroot/data")
	scratch=$(mktemp -d /dev/shm/nextcloud-occ.XXXXXX)
	# shellcheck disable=SC2064 # expand now: the path is this call's
	trap "rm -rf '$scratch'" EXIT
	for f in "$webroot"/config/*.config.php; do
		[[ -e $f ]] && ln -s "$f" "$scratch/"
	done
	# shellcheck disable=SC2016 # a literal PHP variable, not a shell expansion
	printf '<?php\n$CONFIG = [];\n' >"$scratch/config.php"
	chmod 0640 "$scratch/config.php"
	if [[ $(id -u) == 0 ]]; then
		chown -R "$owner:" "$scratch"
	fi
	export NEXTCLOUD_CONFIG_DIR=$scratch
	if [[ $(id -un) == "$owner" ]]; then
		php "$@" || status=$?
	else
		runuser -u "$owner" -- env NEXTCLOUD_CONFIG_DIR="$scratch" php "$@" || status=$?
	fi
	rm -rf "$scratch"
	trap - EXIT
	return "$status"
}
