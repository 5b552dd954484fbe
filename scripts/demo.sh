#!/usr/bin/env bash
# Set everything up (first run only) and run the main job on the bundled demo corpus with an
# embedded local Ray: extract -> build -> train -> evaluate -> infer. Extra args go to `a2bs demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/a2bs demo "$@"
