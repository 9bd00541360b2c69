# Shared by the bench scripts (sourced): the tools they compare against.

# need COMMAND PACKAGE: installs PACKAGE from Debian's packages when
# COMMAND is missing.
need() {
  command -v "$1" >/dev/null 2>&1 && return
  echo "installing $2" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$2"; else sudo apt-get install -y -qq "$2"; fi
}

# rclone for the comparison, GNU time for wall time and peak RSS.
need rclone rclone
[ -x /usr/bin/time ] || need /usr/bin/time time
