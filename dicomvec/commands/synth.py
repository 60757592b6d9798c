"""``dicomvec synth``: write a synthetic MIMIC-CXR-layout DICOM sample (see dicomvec.synthetic)."""
from __future__ import annotations

import argparse
import collections

SYNTAXES = ("native", "j2k", "rle", "jpeg-lossless", "jpegls")  # = dicomvec.synthetic.SYNTAXES


def parse_size(text: str):
    """``"3056x2544"`` → (rows, columns) (``dicomvec.synthetic.parse_size``, imported only when
    used: it brings numpy and pydicom)."""
    from dicomvec import synthetic
    try:
        return synthetic.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate a synthetic MIMIC-layout DICOM sample",
        description="Write files/pXX/p<subject>/s<study>/<dicom_id>.dcm with MIMIC-size 16-bit "
                    "synthetic chest images (no real patient data) plus deliberately broken files.")
    parser.add_argument("--out", required=True, help="output directory (required)")
    parser.add_argument("--count", type=int, default=12, help="good images (default 12)")
    parser.add_argument("--size", default="3056x2544", type=parse_size,
                        help="ROWSxCOLUMNS (default 3056x2544, MIMIC-size)")
    parser.add_argument("--syntaxes", default="native,j2k,rle",
                        help=f"comma-separated, cycled: {','.join(SYNTAXES)} "
                             "(default native,j2k,rle)")
    parser.add_argument("--broken", type=int, default=2,
                        help="extra broken files: truncated pixel data / not DICOM (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    parser.set_defaults(func=run)


def run(args, extra=None) -> int:
    import logging

    from dicomvec import synthetic
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # per-tile INFO lines
    syntaxes = [s.strip() for s in args.syntaxes.split(",") if s.strip()]
    files = synthetic.generate(args.out, args.count, args.size, syntaxes, args.broken, args.seed)
    kinds = collections.Counter(f.broken or f.syntax for f in files)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"wrote {len(files)} files under {args.out}/files ({summary}); "
          f"manifest {args.out}/{synthetic.MANIFEST}")
    return 0
