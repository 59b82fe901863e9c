# Sourced by the benchmark scripts: installs the Debian packages whose commands are missing.
#
#   install_missing <who> <command>:<package> ...
#
# e.g. `install_missing bench-peer.sh wrk:wrk node:nodejs npm:npm` installs only what `command
# -v` does not find, with one `apt-get update`, as root or through sudo; a failed install
# stops the script (set -e), since the benchmark cannot run without it.
install_missing() {
  local who=$1
  shift
  local sudo="" missing=() pair
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "$who: installing ${missing[*]} (Debian's packages)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
