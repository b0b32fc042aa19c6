# Sourced by scripts/test and bench/run.sh: makes sure the outside programs they run are
# present, installing only what is missing, then puts the local installs on PATH.
#
#   require_tools "deb:promtool=prometheus" "pip:jwt=pyjwt" "npm:oidc-provider=oidc-provider@9" ...
#
#   deb:COMMAND=PACKAGE   a command from a Debian package: apt-get when root (or password-less
#                         sudo), else stop with the exact command to run
#   pip:NAME=PACKAGE      a Python package, into .tools/venv (ignored by git); NAME is the
#                         module it provides or the command it installs
#   npm:NAME=SPEC         a node package, into .tools/node (ignored by git); SPEC may pin a
#                         version (oidc-provider@9.13.3)
#
# Everything is checked before anything is installed, so a second run installs nothing and
# says so. CCGATE_TOOLS_DIR moves the local folder (default .tools beside this repo).

CCGATE_TOOLS_DIR=${CCGATE_TOOLS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools}
export CCGATE_TOOLS_DIR

_tools_log() { echo "${TOOLS_WHO:-tools}: $*" >&2; }

_tools_apt() {
  local run=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      run=(sudo -n)
    else
      _tools_log "missing Debian packages: $*"
      _tools_log "install them with:  sudo apt-get update && sudo apt-get install -y --no-install-recommends $*"
      _tools_log "(or run this script as root, which installs them itself)"
      return 1
    fi
  fi
  _tools_log "installing Debian packages: $*"
  "${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${run[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

require_tools() {
  local spec kind name pkg venv="$CCGATE_TOOLS_DIR/venv" node="$CCGATE_TOOLS_DIR/node"
  local debs=() pips=() npms=() present=()
  for spec in "$@"; do
    kind=${spec%%:*}
    name=${spec#*:}
    pkg=${name#*=}
    name=${name%%=*}
    case $kind in
      deb)
        if command -v "$name" >/dev/null 2>&1; then present+=("$name"); else debs+=("$pkg"); fi ;;
      pip)
        if [ -x "$venv/bin/$name" ] \
          || { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $name" 2>/dev/null; }; then
          present+=("$pkg"); else pips+=("$pkg"); fi ;;
      npm)
        if [ -f "$node/node_modules/$name/package.json" ]; then present+=("$name"); else npms+=("$pkg"); fi ;;
      *)
        _tools_log "unknown tool spec '$spec'"; return 2 ;;
    esac
  done
  # The local installs need their own runtimes; ask for them in the same apt-get call.
  if [ ${#pips[@]} -gt 0 ] && [ ! -x "$venv/bin/python" ]; then
    command -v python3 >/dev/null 2>&1 || debs+=(python3)
    python3 -c 'import ensurepip' 2>/dev/null || debs+=(python3-venv)
  fi
  if [ ${#npms[@]} -gt 0 ]; then
    command -v node >/dev/null 2>&1 || debs+=(nodejs)
    command -v npm >/dev/null 2>&1 || debs+=(npm)
  fi

  if [ ${#debs[@]} -gt 0 ]; then
    # Several commands may come from one package; ask for each package once.
    mapfile -t debs < <(printf '%s\n' "${debs[@]}" | sort -u)
    _tools_apt "${debs[@]}" || return 1
  fi
  if [ ${#pips[@]} -gt 0 ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    _tools_log "installing into $venv: ${pips[*]}"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pips[@]}"
  fi
  if [ ${#npms[@]} -gt 0 ]; then
    _tools_log "installing into $node: ${npms[*]}"
    mkdir -p "$node"
    npm install --prefix "$node" --no-audit --no-fund --silent "${npms[@]}"
  fi
  if [ ${#debs[@]} -eq 0 ] && [ ${#pips[@]} -eq 0 ] && [ ${#npms[@]} -eq 0 ]; then
    _tools_log "nothing to install (${present[*]} present)"
  fi

  [ -d "$venv/bin" ] && PATH="$venv/bin:$PATH"
  [ -d "$node/node_modules/.bin" ] && PATH="$node/node_modules/.bin:$PATH"
  [ -d "$node/node_modules" ] && export NODE_PATH="$node/node_modules"
  export PATH
  return 0
}
