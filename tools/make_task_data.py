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
  lm.npz         input_ids [N, 32] int64 (vocabulary 32, 0 = padding), y [N, 32] = the next token,
                 -100 on padding and on the last real token                   tests/fixtures/tasks/gpt2/dynamo.onnx
                 (GPT-2, n_positions=32, logits [N, T, V]). Sequences of lengths 8..32 (right-padded
                 with 0) from a seeded sparse Markov chain of order 1 over tokens 1..31: every token
                 has 4 possible successors (the next token cyclically and 3 random ones) with
                 Dirichlet(1) weights; the first token is drawn from the chain's stationary law, so
                 every labeled position is a stationary transition: the best possible mean
                 cross-entropy is the chain's entropy rate, 1.1305 nats/token (printed; perplexity
                 exp(1.1305) = 3.097, against 31 for a uniform guess over tokens 1..31).
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

    ids, y, h = markov_lm(np.random.default_rng(1), n)
    np.savez(os.path.join(a.out, "lm.npz"), **split(input_ids=ids, y=y))
    print(f"lm.npz: entropy rate {h:.4f} nats/token (the best mean cross-entropy; perplexity {np.exp(h):.3f})")
    print(f"wrote {a.out}: tokens.npz tagging.npz seg.npz houses.csv houses_test.csv own_loss.npz lm.npz")


def markov_lm(rng, n, vocab=32, seq=32, fanout=4, min_len=8):
    """Right-padded sequences of a sparse order-1 Markov chain over tokens 1..vocab-1 (0 = padding), the
    next-token labels (-100 on padding and on the last real token), and the chain's entropy rate (nats)."""
    k = vocab - 1
    p = np.zeros((k, k))
    for i in range(k):
        succ = np.concatenate([[(i + 1) % k], rng.choice(np.delete(np.arange(k), (i + 1) % k), fanout - 1, replace=False)])
        p[i, succ] = rng.dirichlet(np.ones(fanout))
    vals, vecs = np.linalg.eig(p.T)
    pi = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1))]))
    pi /= pi.sum()
    assert np.allclose(pi @ p, pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = float(-(pi[:, None] * np.where(p > 0, p * np.log(p), 0.0)).sum())
    cum = np.cumsum(p, 1)
    cum[:, -1] = 1.0
    states = np.empty((n, seq), dtype=np.int64)
    states[:, 0] = np.minimum(np.searchsorted(np.cumsum(pi), rng.random(n), side="right"), k - 1)
    for t in range(1, seq):
        u = rng.random(n)
        states[:, t] = np.minimum((u[:, None] >= cum[states[:, t - 1]]).sum(1), k - 1)
    lengths = rng.integers(min_len, seq + 1, n)
    pos = np.arange(seq)[None, :]
    ids = np.where(pos < lengths[:, None], states + 1, 0).astype(np.int64)
    y = np.full((n, seq), -100, dtype=np.int64)
    y[:, :-1] = np.where(pos[:, 1:] < lengths[:, None], ids[:, 1:], -100)
    return ids, y, h


if __name__ == "__main__":
    main()
