"""``python -m dicomvec.reports.samples FILES_DIR``."""
import sys

from dicomvec.reports.samples import main

sys.exit(main(sys.argv[1:]))
