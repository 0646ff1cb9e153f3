#!/usr/bin/env bash
# Set up cem-node on a new machine: Debian packages used by the tests and the
# demo, a virtual environment in .venv, and every Python package.
# Idempotent and quick when nothing changed (a stamp keyed on the inputs).
#
#   scripts/setup.sh          # everything (tests and demo)
#   CEM_NODE_SKIP_APT=1 ...   # do not touch Debian packages
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

# Tested versions of the packages whose resolution is fragile (see
# ../shared/docs/ARCHITECTURE.md, "Installing here").
TORCH_SPEC="torch==2.15.0"
TORCHVISION_SPEC="torchvision==0.29.2"
PYRADIOMICS_SPEC="pyradiomics==3.0.1"

# Debian packages: dcmtk (storescu/echoscu/storescp), dicom3tools (dciodvfy),
# PixelMed (DicomSRValidator, DicomInstanceValidator).
APT_PACKAGES=(dcmtk dicom3tools pixelmed-apps libpixelmed-java orthanc)
# The browser test (tests/e2e): Orthanc's DICOMweb plugin, Chromium, and
# Node.js with npm when none is installed (any Node.js >= 18 will do).
APT_PACKAGES+=(orthanc-dicomweb chromium)
command -v node >/dev/null || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null || APT_PACKAGES+=(npm)
# OHIF's prebuilt viewer for the browser test (tests/e2e/conftest.py: OHIF_VERSION).
OHIF_VERSION="3.13.2"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

install_apt() {
    [ "${CEM_NODE_SKIP_APT:-0}" = 1 ] && { log "skipping Debian packages (CEM_NODE_SKIP_APT=1)"; return; }
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && { log "Debian packages present"; return; }
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            log "WARNING: cannot install Debian packages ${missing[*]} (not root, no sudo);"
            log "         tests that need them will be skipped. Install them and re-run."
            return
        fi
    fi
    log "installing Debian packages: ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

check_python() {
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
        echo "cem-node needs Python >= 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
        exit 3
    }
}

install_python() {
    local stamp="$VENV/.cem-node-setup"
    local key
    key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && "$VENV/bin/python" -c 'import cem_node' 2>/dev/null; then
        log "Python environment up to date ($VENV)"
        return
    fi
    [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install --upgrade pip setuptools wheel
    # torchvision's wheels need the CUDA build of torch (it runs on CPU too);
    # a CPU-only torch cannot load torchvision::nms.
    log "installing $TORCH_SPEC $TORCHVISION_SPEC (large, first time only)"
    "${pip[@]}" install "$TORCH_SPEC" "$TORCHVISION_SPEC"
    # pyradiomics' sdist does not declare its build requirements.
    log "installing $PYRADIOMICS_SPEC (built without isolation)"
    "${pip[@]}" install numpy versioneer setuptools wheel
    "${pip[@]}" install --no-build-isolation "$PYRADIOMICS_SPEC"
    log "installing cem-node and its dependencies"
    "${pip[@]}" install -e ".[all]" "$TORCH_SPEC" "$TORCHVISION_SPEC"
    "$VENV/bin/python" - <<'PY'
import torch, torchvision, radiomics, xgboost, pydicom, pynetdicom, highdicom  # noqa
from torchvision.ops import nms
nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)  # fails on a CPU-only torch build
print(f"[setup] torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"torchvision {torchvision.__version__}, pyradiomics {radiomics.__version__}, "
      f"pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__}, highdicom {highdicom.__version__}")
PY
    echo "$key" > "$stamp"
}

install_viewer_test() {
    # puppeteer-core into tests/e2e/node_modules (it downloads no browser: the
    # test drives Debian's chromium), and OHIF's prebuilt viewer: only the
    # dist/ folder of the npm package @ohif/app, into .cache/ohif/VERSION/.
    command -v npm >/dev/null || { log "WARNING: no npm: the browser test (tests/e2e) cannot run"; return; }
    local e2e="$ROOT/tests/e2e" stamp="$ROOT/tests/e2e/node_modules/.cem-node-lock"
    if [ -f "$stamp" ] && cmp -s "$stamp" "$e2e/package-lock.json"; then
        log "puppeteer-core present (tests/e2e/node_modules)"
    else
        log "installing puppeteer-core (npm ci in tests/e2e)"
        if (cd "$e2e" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
            cp "$e2e/package-lock.json" "$stamp"
        else
            log "WARNING: npm ci failed in tests/e2e: the browser test cannot run"
        fi
    fi
    local cache="$ROOT/.cache/ohif" dist="$ROOT/.cache/ohif/$OHIF_VERSION/dist" tmp
    if [ -f "$dist/index.html" ]; then
        log "OHIF $OHIF_VERSION present ($dist)"
        return
    fi
    log "fetching OHIF $OHIF_VERSION (npm pack @ohif/app, 48 MB, first time only)"
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.pack-XXXXXX")
    if (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null) \
        && tar -xzf "$tmp"/ohif-app-*.tgz -C "$tmp" package/dist; then
        rm -rf "$cache/$OHIF_VERSION"
        mkdir -p "$cache/$OHIF_VERSION"
        mv "$tmp/package/dist" "$dist"
    else
        log "WARNING: could not fetch @ohif/app@$OHIF_VERSION: the browser test cannot run"
    fi
    rm -rf "$tmp"
}

install_apt
check_python
install_python
install_viewer_test
log "done: activate with 'source .venv/bin/activate' or call .venv/bin/cem-node"
