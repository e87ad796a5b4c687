#!/usr/bin/env python3
"""Tables of the label-noise study (tools/study/label_noise.sh) for docs/results.md.

    python3 tools/study/summarize.py runs/study [MODEL ...]

Per model and optimizer over its seeds: test accuracy after the last epoch (mean ± sample std),
training accuracy against the noisy labels in the last epoch (memorization: the clean share is
60%), tr V of the trained model over 1024 training samples (--trace-v), seconds per epoch, and for
RW-SAM runs the ESS (and the adaptive λ) at 1%, 10%, 50% and 100% of the steps, seed 0.
"""
import json
import os
import statistics
import sys

ORDER = ["sgd", "sam", "rwsam", "rwsam-auto50", "rwsam-auto25", "msam16", "msam4", "gsam"]
NAMES = {
    "sgd": "SGD",
    "sam": "SAM",
    "rwsam": "RW-SAM (λ = 1)",
    "rwsam-auto50": "RW-SAM (auto, F = 0.5)",
    "rwsam-auto25": "RW-SAM (auto, F = 0.25)",
    "msam16": "m-SAM (m = 16)",
    "msam4": "m-SAM (m = 4)",
    "gsam": "GSAM (α = 0.4, ρ ∝ lr)",
}


def rows(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def ms(xs, digits=2):
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def main():
    root = sys.argv[1]
    models = sys.argv[2:] or ["mlp", "cnn"]
    for model in models:
        runs = {}
        for d in sorted(os.listdir(root)):
            p = os.path.join(root, d)
            if not d.startswith(model + "-") or not os.path.isfile(os.path.join(p, "model.onnx")):
                continue
            opt, seed = d[len(model) + 1:].rsplit("-s", 1)
            runs.setdefault(opt, []).append((int(seed), rows(p)))
        if not runs:
            continue
        epochs = max(r["epoch"] for _, rs in next(iter(runs.values())) for r in rs if r.get("kind") == "epoch")
        print(f"\n{model}, {epochs} epoch{'s' if epochs > 1 else ''}, seeds per row in brackets\n")
        print("| optimizer | test acc % | train acc on noisy labels % | tr V (end) | s/epoch |")
        print("|---|---:|---:|---:|---:|")
        ess_lines = []
        for opt in [o for o in ORDER if o in runs]:
            test, train, tv, sec = [], [], [], []
            for seed, rs in sorted(runs[opt]):
                ep = [r for r in rs if r.get("kind") == "epoch"]
                test.append(100 * ep[-1]["test_acc"])
                train.append(100 * ep[-1]["train_acc"])
                sec.append(ep[-1]["seconds"] / len(ep))  # the rows' seconds run from the start
                tv += [r["trace_v"] for r in rs if r.get("kind") == "trace_v"]
                steps = [r for r in rs if r.get("kind") == "step"]
                if seed == 0 and "ess" in steps[0]:
                    n = len(steps)
                    per_epoch = sum(1 for r in steps if r["epoch"] == 1)
                    # an epoch's last batch is short (60000 = 468·128 + 96): the step before it
                    pick = [max(0, min(n - 1, int(f * n) - 1)) for f in (0.01, 0.1, 0.5, 1.0)]
                    at = [steps[i - 1 if (i + 1) % per_epoch == 0 else i] for i in pick]
                    ess = ", ".join(f"{r['ess']:.1f}" for r in at)
                    lam = ", ".join(f"{r['lambda']:.3g}" for r in at) if "lambda" in at[0] else ""
                    ess_lines.append(f"| {NAMES[opt]} | {ess} | {lam} |")
            print(f"| {NAMES[opt]} [{len(test)}] | {ms(test)} | {ms(train)} | {ms(tv, 1)} | {ms(sec, 1)} |")
        if ess_lines:
            print("\nESS of 128 (and λ) at 1% / 10% / 50% / 100% of the steps, seed 0:\n")
            print("| optimizer | ESS | λ |")
            print("|---|---|---|")
            print("\n".join(ess_lines))


if __name__ == "__main__":
    main()
