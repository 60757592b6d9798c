"""Put one entry first on a jar's manifest Class-Path (idempotent), keeping every other entry
and the manifest's 72-byte line folding. Usage: python classpath_first.py LAUNCHER.jar ENTRY"""
import sys
import zipfile
from pathlib import Path

MANIFEST = "META-INF/MANIFEST.MF"


def unfold(text: str) -> list:
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(" ") and lines:
            lines[-1] += line[1:]
        elif line:
            lines.append(line)
    return lines


def fold(line: str) -> str:
    data = line.encode()
    out, first = [], True
    while data:
        width = 72 if first else 71
        out.append((b"" if first else b" ") + data[:width])
        data, first = data[width:], False
    return "\r\n".join(part.decode() for part in out)


def main(jar: str, entry: str) -> None:
    path = Path(jar)
    with zipfile.ZipFile(path) as zin:
        items = [(info, zin.read(info.filename)) for info in zin.infolist()]
    out = []
    for line in unfold(dict((i.filename, d) for i, d in items)[MANIFEST].decode()):
        if line.startswith("Class-Path: "):
            entries = [e for e in line[len("Class-Path: "):].split() if e != entry]
            line = "Class-Path: " + " ".join([entry, *entries])
        out.append(fold(line))
    manifest = ("\r\n".join(out) + "\r\n\r\n").encode()
    partial = path.with_suffix(".jar.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zout:
        for info, data in items:
            zout.writestr(info, manifest if info.filename == MANIFEST else data)
    partial.replace(path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
