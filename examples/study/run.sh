#!/usr/bin/env bash
# The founding study (README: "The founding study"): each comparison config of examples/study/
# in turn, SmolLM2-135M first. Resumable: rerun after a stop or a kill and every finished
# (variant, seed) run is skipped, an unfinished one runs again.
#   examples/study/run.sh                                   both models
#   examples/study/run.sh examples/study/smollm2-135m.yaml  one of them
# TUNELAB: the tunelab command (default: tunelab on PATH; `make study` sets the venv's).
set -euo pipefail
configs=()
for config in "$@"; do
  configs+=("$(realpath "$config")")
done
cd "$(dirname "$0")/../.."  # the configs' data paths are relative to the repository root
if [ ${#configs[@]} -eq 0 ]; then
  configs=(examples/study/smollm2-135m.yaml examples/study/gemma3-270m.yaml)
fi
for config in "${configs[@]}"; do
  echo "== tunelab compare $config" >&2
  "${TUNELAB:-tunelab}" compare "$config"
done
