# Sourced by the install scripts: `apt_install WHAT HINT PACKAGE...` installs Debian packages as
# root or through sudo, or says what to install by hand (HINT) where there is no apt-get or no root.
apt_install() {
  local what="$1" hint="$2"
  shift 2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$what is missing: $hint" >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "$what is missing and installing it needs root: apt-get install $*" >&2
      return 1
    fi
  fi
  echo "installing $what (Debian package) ..." >&2
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}
