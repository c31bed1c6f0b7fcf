# shellcheck shell=bash
# Sourced by nextcloud-cluster-entrypoint and nextcloud-occ: load a docker env-file into the environment.
#
# Docker's env-file rules: leading whitespace trimmed, '#' comments and blank lines skipped, NAME=value split
# at the first '=', the value taken verbatim (no quotes, no expansion, never eval'd). A bare NAME keeps the
# current value. Values are never printed.
load_env_file() {
	local file=$1 line name n=0
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		line=${line#"${line%%[![:space:]]*}"}
		[[ -z $line || $line == '#'* ]] && continue
		name=${line%%=*}
		if [[ ! $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
			printf '%s line %d: invalid variable name (expected NAME=value)\n' "$file" "$n" >&2
			return 1
		fi
		[[ $line == *=* ]] || continue
		export "$name=${line#*=}"
	done <"$file"
}
