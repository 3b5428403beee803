#!/usr/bin/env bash
# Create .venv and install imagine with its test tools.
#   IMAGINE_TORCH=cpu  (default) the CPU build of PyTorch 2.13.0
#   IMAGINE_TORCH=skip keep whatever torch is already installed (e.g. a CUDA build you installed yourself)
#   PYTHON=python3.11  the interpreter to use (3.11 or 3.12; stability-sdk's grpcio has no 3.13 wheel)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH=${IMAGINE_TORCH:-cpu}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip

case "$TORCH" in
  cpu)
    # Pinned: an unpinned torch resolves to a multi-GB CUDA build. Where the CPU wheel is not on
    # the default index, set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index first.
    .venv/bin/pip install --quiet "torch==2.13.0"
    ;;
  skip) ;;
  *) echo "IMAGINE_TORCH must be cpu or skip" >&2; exit 2 ;;
esac

.venv/bin/pip install --quiet -e ".[dev]"
echo "imagine is installed in .venv: try .venv/bin/imagine --help"
