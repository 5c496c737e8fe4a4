#!/bin/sh
# Retrain the bundled tiny zoo, one model after another (one torch thread each), into OUT
# (default: assets/models). Run from the repository root:
#
#     sh assets/models/retrain.sh [OUT] [MODEL ...]
#
# Each training writes OUT/<model>.safetensors and its entry in OUT/manifest.json; the recipe is
# train.py's defaults (the manifest's "command" spells every option out). Logs go to LOGDIR
# (default /tmp/attnviz-zoo-logs); set CACHE=DIR to share the generated images between the
# trainings (all use seed 0: same stream; the files do not change, only the time).
set -eu
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-assets/models}
[ $# -gt 0 ] && shift
MODELS=${*:-"plain_tiny se_tiny cbam_tiny gc_tiny nl_tiny nl_tiny_gaussian nl_tiny_dot nl_tiny_concat sa_tiny danet_tiny mix_tiny sk_tiny ion_tiny"}
LOGDIR=${LOGDIR:-/tmp/attnviz-zoo-logs}
mkdir -p "$OUT" "$LOGDIR"
for m in $MODELS; do
    echo "$(date +%T) training $m -> $LOGDIR/$m.log"
    nice -n 10 "$PYTHON" -m attnviz.models.train "$m" --threads 1 --out "$OUT" \
        ${CACHE:+--cache-dir "$CACHE"} >"$LOGDIR/$m.log" 2>&1
    tail -n 2 "$LOGDIR/$m.log"
done
