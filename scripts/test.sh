#!/usr/bin/env bash
# Set everything up (first run only) and run the whole test suite (unit + integration with real
# MediaPipe, ffmpeg, librosa, a local Ray cluster and a moto S3 server). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$code"
