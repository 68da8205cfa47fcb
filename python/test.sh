#!/usr/bin/env bash
# The Python package's tests, on a fresh machine too:
#
#   python/test.sh [pytest arguments]
#
# Makes a virtualenv (target/venv, or $SHMFLOW_VENV), installs maturin, numpy, pytest and
# mpire into it from PyPI, installs this package with `pip install ./python`, builds the
# `shmflow` command (the interop tests run it), and runs pytest on python/tests.
# SHMFLOW_NUMPY="numpy<2" (any pip requirement) tests against another numpy; .ci/run runs
# the suite with numpy 2 and with numpy 1.x.
set -euo pipefail
venv=${SHMFLOW_VENV:-}
[[ -z $venv || $venv == /* ]] || venv=$PWD/$venv
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd .. && pwd)
venv=${venv:-$root/target/venv}
python=${PYTHON:-python3}

if [[ ! -x $venv/bin/python ]]; then
    echo "=== python: creating $venv"
    "$python" -m venv "$venv"
fi
export PATH="$venv/bin:$PATH"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-test.txt \
    ${SHMFLOW_NUMPY:+"$SHMFLOW_NUMPY"}
"$venv/bin/python" -c 'import numpy, sys; print("=== python", sys.version.split()[0], "numpy", numpy.__version__)'
# --no-build-isolation: build with the maturin just installed (no second download).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
    --force-reinstall --no-deps .
cargo build --quiet --release -p shmflow-cli
export SHMFLOW_BIN=${SHMFLOW_BIN:-$root/target/release/shmflow}
# `pytest`, not `python -m pytest`: the latter puts python/ on sys.path, and `import shmflow`
# would find the source folder instead of the installed package.
exec "$venv/bin/pytest" -q tests "$@"
