#!/usr/bin/env python3
"""The CIFAR-10 format fixture: the first 20 CIFAR-10 test images, as shipped (PNG) in the
foolbox 3.3.4 wheel, re-encoded as a CIFAR-10 binary batch (tests/fixtures/cifar10/test_batch.bin:
per record one label byte, then 1024 red, 1024 green, 1024 blue bytes, rows top to bottom), plus
reference values read straight from the PNGs (tests/fixtures/cifar10/reference.json) that the
Rust tests compare onnxsam's reader against.

Usage: python3 tools/make_cifar_sample.py [--wheel foolbox-3.3.4-py3-none-any.whl]
Without --wheel it runs `pip download foolbox==3.3.4 --no-deps`. Standard library only (its own
PNG decoder: 8-bit RGB/RGBA, non-interlaced, as those files are).
"""
import argparse
import glob
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "cifar10")


def decode_png(data):
    """Returns (width, height, rows) with rows[y][x] = (r, g, b)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    w, h, depth, color, _, _, interlace = hdr
    if depth != 8 or color not in (2, 6) or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, color type {color}, interlace {interlace}")
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
            elif f != 0:
                raise ValueError(f"bad PNG filter {f}")
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = a.wheel
        if not wheel:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "foolbox==3.3.4", "-d", tmp],
                           check=True)
            wheel = glob.glob(os.path.join(tmp, "foolbox-*.whl"))[0]
        z = zipfile.ZipFile(wheel)
        names = sorted(n for n in z.namelist() if re.fullmatch(r"foolbox/data/cifar10_\d+_\d+\.png", n))
        records, ref = bytearray(), {"source": "foolbox 3.3.4 wheel, foolbox/data/cifar10_*.png", "images": []}
        for n in names:
            idx, label = map(int, re.fullmatch(r".*cifar10_(\d+)_(\d+)\.png", n).groups())
            w, h, rows = decode_png(z.read(n))
            assert (w, h) == (32, 32) and idx == len(ref["images"]), n
            planes = [bytes(rows[y][x][c] for y in range(32) for x in range(32)) for c in range(3)]
            records += bytes([label]) + b"".join(planes)
            ref["images"].append({
                "file": os.path.basename(n),
                "label": label,
                "channel_means": [sum(p) / 1024 for p in planes],
                # (channel, row, column) → value 0..255: catches swapped axes or planes
                "probes": [[c, y, x, rows[y][x][c]] for (c, y, x) in [(0, 0, 0), (1, 5, 17), (2, 31, 3), (0, 12, 30)]],
            })
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "test_batch.bin"), "wb") as f:
        f.write(records)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(f"wrote {len(ref['images'])} images to {OUT}/test_batch.bin ({len(records)} bytes) and reference.json")


if __name__ == "__main__":
    main()
