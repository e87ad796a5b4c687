#!/usr/bin/env python3
"""Writes a small torchvision ImageFolder from MNIST's IDX files, for tests of onnxsam's
image-folder reader (src/data/image_folder.rs):

    OUT/train/<digit>/NNNNN.png   the first K train images of each digit (NNNNN = index in the IDX file)
    OUT/test/<digit>/NNNNN.png    the first K test images of each digit
    OUT/labels.npz                y_train, y_test (int64) in the order torchvision.datasets.ImageFolder
                                  lists the files (class folders sorted, files sorted), and
                                  x_train, x_test (uint8 [N, C, S, S]) the pixels as written

Usage:
    python3 tools/make_imagefolder.py --out /tmp/mnist_folder
    python3 tools/make_imagefolder.py --out /tmp/mnist_rgb64 --size 64 --rgb --per-class-train 3

Options: --mnist DIR (default data/mnist; train-/t10k- files, raw or .gz), --per-class-train K
(default 5), --per-class-test K (default 2), --size S (upscale bilinear to S×S; default 28 = as is),
--rgb (3-channel PNGs, the gray value in R, G and B). Uses PIL when installed, else writes PNGs
with zlib (and resizes with its own bilinear). labels.npz is written without numpy.
"""
import argparse
import gzip
import io
import os
import struct
import sys
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    from PIL import Image
except ImportError:
    Image = None


def read_idx(folder, name):
    """(dims, bytes) of an unsigned-byte IDX file `name` or `name.gz` in `folder`."""
    for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            if data[:3] != b"\x00\x00\x08":
                sys.exit(f"{path}: not an unsigned-byte IDX file")
            nd = data[3]
            dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
            return dims, data[4 + 4 * nd:]
    sys.exit(f"{folder}: no {name} (or {name}.gz); fetch MNIST with tools/fetch-data.sh")


def first_per_class(labels, k):
    """Indices of the first k samples of each class, by class then index."""
    picked = {}
    for i, y in enumerate(labels):
        if len(picked.setdefault(y, [])) < k:
            picked[y].append(i)
    return picked


def bilinear(px, w, h, size):
    """Rows of bytes `px` (w×h) resized to size×size, half-pixel centers (PIL's BILINEAR upscale)."""
    out = bytearray(size * size)
    for oy in range(size):
        sy = min(max((oy + 0.5) * h / size - 0.5, 0.0), h - 1.0)
        y0 = int(sy)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for ox in range(size):
            sx = min(max((ox + 0.5) * w / size - 0.5, 0.0), w - 1.0)
            x0 = int(sx)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = px[y0 * w + x0] * (1 - fx) + px[y0 * w + x1] * fx
            bottom = px[y1 * w + x0] * (1 - fx) + px[y1 * w + x1] * fx
            out[oy * size + ox] = int(top * (1 - fy) + bottom * fy + 0.5)
    return bytes(out)


def png_bytes(px, size, channels):
    """A non-interlaced 8-bit PNG (gray or RGB) of size×size pixels `px` (HWC bytes)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    color = 0 if channels == 1 else 2
    row = size * channels
    raw = b"".join(b"\x00" + px[y * row:(y + 1) * row] for y in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def image_bytes(gray, side, size, rgb):
    """(HWC bytes as saved, PNG file bytes) of one side×side grayscale image."""
    if Image is not None:
        img = Image.frombytes("L", (side, side), gray)
        if size != side:
            img = img.resize((size, size), Image.BILINEAR)
        if rgb:
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return img.tobytes(), buf.getvalue()
    px = gray if size == side else bilinear(gray, side, side, size)
    if rgb:
        px = bytes(v for p in px for v in (p, p, p))
    return px, png_bytes(px, size, 3 if rgb else 1)


def npy_bytes(shape, dtype, data):
    """A version-1.0 .npy file: dtype '<i8' or '|u1', C order."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        dtype, "".join(f"{d}, " for d in shape) if len(shape) != 1 else f"{shape[0]},")
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def write_split(out, split, images, labels, side, k, size, rgb):
    """Writes OUT/split/<digit>/NNNNN.png; returns (y, x) in ImageFolder order."""
    ys, xs = [], []
    picked = first_per_class(labels, k)
    # torchvision: class folders sorted by name ("0" < "1" < … < "9"), then file names sorted.
    for cls, digit in enumerate(sorted(picked, key=str)):
        folder = os.path.join(out, split, str(digit))
        os.makedirs(folder, exist_ok=True)
        for i in sorted(picked[digit], key=lambda i: f"{i:05d}.png"):
            hwc, png = image_bytes(images[i * side * side:(i + 1) * side * side], side, size, rgb)
            with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                f.write(png)
            c = 3 if rgb else 1
            xs.append(bytes(hwc[p * c + ch] for ch in range(c) for p in range(size * size)))
            ys.append(cls)
    return ys, xs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (train/, test/, labels.npz)")
    ap.add_argument("--mnist", default=os.path.join(ROOT, "data", "mnist"), help="folder with the MNIST IDX files")
    ap.add_argument("--per-class-train", type=int, default=5, metavar="K")
    ap.add_argument("--per-class-test", type=int, default=2, metavar="K")
    ap.add_argument("--size", type=int, default=28, metavar="S", help="upscale (bilinear) to S×S")
    ap.add_argument("--rgb", action="store_true", help="save 3-channel PNGs")
    a = ap.parse_args()
    if a.per_class_train < 1 or a.per_class_test < 1:
        sys.exit("--per-class-train and --per-class-test must be at least 1 (ImageFolder refuses empty classes)")
    if a.size < 1:
        sys.exit("--size must be positive")

    arrays = {}
    for split, prefix, k in (("train", "train", a.per_class_train), ("test", "t10k", a.per_class_test)):
        dims, images = read_idx(a.mnist, f"{prefix}-images-idx3-ubyte")
        _, labels = read_idx(a.mnist, f"{prefix}-labels-idx1-ubyte")
        if len(dims) != 3 or dims[1] != dims[2]:
            sys.exit(f"{a.mnist}: {prefix} images have dimensions {dims}, expected [N, 28, 28]")
        ys, xs = write_split(a.out, split, images, list(labels), dims[1], k, a.size, a.rgb)
        c = 3 if a.rgb else 1
        arrays[f"y_{split}"] = npy_bytes([len(ys)], "<i8", b"".join(struct.pack("<q", y) for y in ys))
        arrays[f"x_{split}"] = npy_bytes([len(xs), c, a.size, a.size], "|u1", b"".join(xs))
        print(f"{os.path.join(a.out, split)}: {len(ys)} images, {c}×{a.size}×{a.size}")
    with zipfile.ZipFile(os.path.join(a.out, "labels.npz"), "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in arrays.items():
            z.writestr(name + ".npy", data)
    print(f"{os.path.join(a.out, 'labels.npz')}: {', '.join(arrays)} ({'PIL' if Image else 'zlib'} PNGs)")


if __name__ == "__main__":
    main()
