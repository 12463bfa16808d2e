#!/usr/bin/env bash
# Install learn2learn 0.2.0 (the l2l extra: fewshot_l2l.interop) into the environment of PYTHON (first argument, or
# $PYTHON, or .venv/bin/python); `make setup` runs it, so `make test` and CI have it. Idempotent: nothing is done
# when that interpreter already imports learn2learn 0.2.0.
#
# Why a script: 0.2.0, the newest release, ships only as a source archive whose generated C files include
# longintrepr.h and do not compile on Python 3.11 (learnables/learn2learn#413), so `pip install learn2learn` fails.
# The recipe: download the archive from the package index, regenerate the C sources of its three Cython modules
# with Cython 3, build it without build isolation, then install the runtime dependencies that fewshot_l2l's use of
# it needs. Its declared dependencies are deliberately NOT resolved by pip: qpth pins numpy<2 (the project runs
# numpy 2), and gsutil / qpth serve only parts of learn2learn that fewshot_l2l does not use. About 30 s.
set -euo pipefail
L2L_VERSION=0.2.0
# Versions tested with the project's requirements.txt (torch 2.14.1, numpy 2.4). Build tools: Cython 3 writes C that
# compiles on 3.11; a fresh venv's setuptools (65) has no bdist_wheel. Runtime: `import learn2learn` needs gym,
# requests and scipy.
BUILD_PINS=("cython==3.3.1" "setuptools==84.2.1")
RUNTIME_PINS=("gym==0.26.2" "requests==2.34.2" "scipy==1.17.1")

PY=${1:-${PYTHON:-$(dirname "$0")/../.venv/bin/python}}
say() { echo "install_learn2learn: $*"; }
fail() { echo "install_learn2learn: FAILED: $*" >&2; exit 1; }
"$PY" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null || fail "no Python >= 3.10 at $PY (pass the interpreter to install into)"
PY=$("$PY" -c 'import sys; print(sys.executable)')  # absolute: the checks below run from another folder

WORK=$(mktemp -d "${TMPDIR:-/tmp}/install-learn2learn.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Checked from an empty folder: imported from inside a learn2learn source tree, learn2learn fails (circular import).
installed() { (cd "$WORK" && "$PY" -W ignore -c "import learn2learn; assert learn2learn.__version__ == '$L2L_VERSION'") >/dev/null 2>&1; }
if installed; then
    say "learn2learn $L2L_VERSION is already installed for $PY"
    exit 0
fi
index_hint="is the package index reachable from this machine? (pip's message above; set PIP_INDEX_URL for a mirror)"

say "installing the build tools ${BUILD_PINS[*]} into $PY"
"$PY" -m pip install -q "${BUILD_PINS[@]}" || fail "installing ${BUILD_PINS[*]}: $index_hint"
say "downloading the learn2learn $L2L_VERSION source archive"
# --no-binary for learn2learn alone: with :all:, pip's metadata step would also build its build tools (Cython) from source.
"$PY" -m pip download -q --no-deps --no-binary learn2learn -d "$WORK" "learn2learn==$L2L_VERSION" \
    || fail "downloading learn2learn==$L2L_VERSION: $index_hint"
tar xzf "$WORK/learn2learn-$L2L_VERSION.tar.gz" -C "$WORK" || fail "unpacking $WORK/learn2learn-$L2L_VERSION.tar.gz"
SRC="$WORK/learn2learn-$L2L_VERSION"
rm -rf "$SRC/.eggs"  # bundled Cython 0.29 eggs, which setup_requires would otherwise pick up
for module in task_dataset meta_dataset transforms; do  # regenerate learn2learn/data/<module>.c
    "$PY" -m cython -3 "$SRC/learn2learn/data/$module.pyx" || fail "cython on learn2learn/data/$module.pyx"
done
say "building and installing learn2learn $L2L_VERSION (C extensions regenerated with $("$PY" -m cython --version 2>&1))"
"$PY" -m pip install -q --no-deps --no-build-isolation "$SRC" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log" >&2; fail "building learn2learn $L2L_VERSION (build log above)"; }
say "installing its runtime dependencies ${RUNTIME_PINS[*]}"
"$PY" -m pip install -q --no-warn-conflicts "${RUNTIME_PINS[@]}" || fail "installing ${RUNTIME_PINS[*]}: $index_hint"
installed || { (cd "$WORK" && "$PY" -c "import learn2learn; print(learn2learn.__version__)"); fail "learn2learn was installed but does not import as version $L2L_VERSION (error above)"; }
say "done: learn2learn $L2L_VERSION imports in $PY"
