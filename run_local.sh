#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine, offline:
# sets up the venv, makes a small synthetic MIMIC-layout sample, runs the pipeline on the
# DirectRunner with the non-semantic thumbnail provider into an SQLite file, prints the summary.
# Extra arguments go to `dicomvec run` (e.g. --direct_num_workers 2).
set -euo pipefail
cd "$(dirname "$0")"
VENV=$(scripts/setup_env.sh)
OUT="${DICOMVEC_OUT:-out}"
SAMPLE="$OUT/sample"
if [ ! -d "$SAMPLE/files" ]; then
  "$VENV/bin/dicomvec" synth --out "$SAMPLE" --count 12 --broken 2 --seed 7
fi
"$VENV/bin/dicomvec" run \
  --input "$SAMPLE/files/**/*.dcm" \
  --sink "sqlite:///$OUT/dicomvec.db" \
  --dead-letter "$OUT/dead_letter" \
  --provider thumbnail "$@"
echo
echo "outputs:"
echo "  vectors       $OUT/dicomvec.db (table MIMICCXRImages)"
echo "  dead letters  $OUT/dead_letter/run=*/  (Parquet)"
echo "  sample        $SAMPLE/files"
