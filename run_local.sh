#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine, offline:
# sets up the venv, makes a small synthetic MIMIC-layout sample, runs the pipeline on the
# DirectRunner with the non-semantic thumbnail provider into an SQLite file, prints the summary.
# Extra arguments go to `dicomvec run` (e.g. --direct_num_workers 2).
# Outputs go to ./out (or $DICOMVEC_OUT) relative to the current directory: run it from the
# repository root as the README says, or from any folder to keep the demo there.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=$("$HERE/scripts/setup_env.sh")
case "$VENV" in /*) ;; *) VENV="$HERE/$VENV" ;; esac
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
# reports and search: sample MIMIC-format reports beside the studies, embedded into the reports
# table, then an image → image search (the thumbnail descriptor has no text side)
"$VENV/bin/python" -m dicomvec.reports.samples "$SAMPLE/files"
"$VENV/bin/dicomvec" reports --input "$SAMPLE/files/**/s*.txt" \
  --sink "sqlite:///$OUT/dicomvec.db" --dead-letter "$OUT/dead_letter" --provider thumbnail
QUERY=$(awk -F, 'NR > 1 { sub(/\r$/, "") } NR > 1 && $NF == "" { print $1; exit }' "$SAMPLE/synthetic-manifest.csv")
echo
"$VENV/bin/dicomvec" search --image "$QUERY" --sink "sqlite:///$OUT/dicomvec.db" \
  --provider thumbnail --k 5 --with-reports --contact-sheet "$OUT/search.png"
echo
echo "outputs:"
echo "  vectors       $OUT/dicomvec.db (table MIMICCXRImages)"
echo "  dead letters  $OUT/dead_letter/run=*/  (Parquet)"
echo "  sample        $SAMPLE/files"
echo "  contact sheet $OUT/search.png"
