#!/usr/bin/env python3
"""Small learnable datasets for the README's task examples (one per task family), written to
data/tasks/ (git-ignored). Needs numpy only:
    python3 tools/make_task_data.py [--out data/tasks]

  tokens.npz     ids [N, 16] int64 (vocabulary 64), y = ids[:, 0] % 10        models/transformer.onnx
  tagging.npz    ids [N, 16] int64, mask [N, 16] bool (lengths 4..16), y [N, 16] = ids % 5 on the
                 tokens, -100 on padding                                      tests/fixtures/tasks/tagger
  seg.npz        x [N, 3, 8, 8] float32, y [N, 8, 8] = the argmax channel     tests/fixtures/tasks/seg
  houses.csv     f0..f4 and price = x·w + noise (houses_test.csv beside it)   tests/fixtures/linreg
  own_loss.npz   x [N, 5], t [N] (the model returns its own squared error)   tests/fixtures/tasks/own_loss
Each .npz also holds the test split (arrays suffixed _test).
"""
import argparse
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "tasks"))
    ap.add_argument("--train", type=int, default=2048)
    ap.add_argument("--test", type=int, default=512)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(0)
    n = a.train + a.test

    def split(**arrays):
        out = {}
        for k, v in arrays.items():
            out[k] = v[: a.train]
            out[f"{k}_test"] = v[a.train:]
        return out

    ids = rng.integers(0, 64, (n, 16)).astype(np.int64)
    np.savez(os.path.join(a.out, "tokens.npz"), **split(ids=ids, y=(ids[:, 0] % 10).astype(np.int64)))

    ids = rng.integers(0, 32, (n, 16)).astype(np.int64)
    mask = np.arange(16)[None, :] < rng.integers(4, 17, n)[:, None]
    y = np.where(mask, ids % 5, -100).astype(np.int64)
    np.savez(os.path.join(a.out, "tagging.npz"), **split(ids=ids, mask=mask, y=y))

    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    np.savez(os.path.join(a.out, "seg.npz"), **split(x=x, y=x.argmax(1).astype(np.int64)))

    w = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    f = rng.standard_normal((n, 5)) * np.array([1.0, 10.0, 0.1, 1.0, 2.0]) + np.array([0, 50, 0, 0, 5])
    price = f @ w + 0.3 * rng.standard_normal(n)
    for name, rows in [("houses.csv", slice(0, a.train)), ("houses_test.csv", slice(a.train, n))]:
        with open(os.path.join(a.out, name), "w") as fh:
            fh.write("f0,f1,f2,f3,f4,price\n")
            for r, p in zip(f[rows], price[rows]):
                fh.write(",".join(f"{v:.5f}" for v in r) + f",{p:.5f}\n")

    x = rng.standard_normal((n, 5)).astype(np.float32)
    t = (x @ w.astype(np.float32) + 0.3 * rng.standard_normal(n)).astype(np.float32)
    np.savez(os.path.join(a.out, "own_loss.npz"), **split(x=x, t=t))
    print(f"wrote {a.out}: tokens.npz tagging.npz seg.npz houses.csv houses_test.csv own_loss.npz")


if __name__ == "__main__":
    main()
