#!/usr/bin/env python3
"""One training step of every optimizer of ../shared/METHOD.md in plain PyTorch: the reference
onnxsam's step graphs are tested against (tests/step_graphs.rs).

Not run in CI (needs torch). Setup as for tools/export_models.py, then:
    .venv/bin/python tools/reference_steps.py

For models mlp, cnn, resnet8 and the optimizers of CONFIGS (SGD and Adam/AdamW under SAM, USAM, ASAM,
RW-SAM, m-SAM, with amsgrad and gradient clipping) it writes
tests/fixtures/<model>/step_<optimizer>.npz with
  loss, grad_norm, sharpness (SAM family), scores (rwsam),
  and for every parameter p: next/<p>, next/momentum_buffer/<p> (SGD) or next/exp_avg/<p>,
  next/exp_avg_sq/<p>, [next/max_exp_avg_sq/<p>] and next/step (Adam); every running statistic
  next/<buffer>. Tensors over 4096 elements are stored at 1024 sampled coordinates
  (idx/<name> holds the flat indices) to keep fixtures small; their full norm is in norm/<name>.
The reference computes in float64 (from the float32 model, batch and inputs): one ASAM step on cnn
is ill-conditioned enough (ρ = 0.5 moves ReLU kinks) that PyTorch's own float32 result differs from
its float64 result by ~1% on the conv gradients; onnxsam's float32 graph is compared with the exact
answer. Inputs both sides compute from formulas (no files): the batch is tests/fixtures/<model>/batch.npz,
initial momentum buffers buf0_p[i] = 1e-3·sin(0.1·i + k) (k = parameter index in name order), and
the Rademacher direction z_p[i] = 1 − 2·bit13(i·2654435761 + 97·k mod 2³²).
"""
import os
import zlib
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_models import CNN, MLP, ResNet8  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# the hyperparameters of each optimizer's test (tests/step_graphs.rs uses the same)
CONFIGS = {
    "sgd": dict(opt="sgd", lr=0.1, momentum=0.9, nesterov=True, wd=5e-4, wd_mode="coupled"),
    "sam": dict(opt="sam", lr=0.1, momentum=0.9, nesterov=False, wd=5e-4, wd_mode="coupled", rho=0.05),
    "usam": dict(opt="usam", lr=0.1, momentum=0.9, nesterov=False, wd=5e-4, wd_mode="loss", rho=0.05),
    "asam": dict(opt="asam", lr=0.1, momentum=0.9, nesterov=False, wd=5e-4, wd_mode="decoupled", rho=0.5, eta=0.01),
    "rwsam": dict(opt="sam", lr=0.1, momentum=0.9, nesterov=False, wd=5e-4, wd_mode="coupled", rho=0.05,
                  lam=1.0, delta=3e-3),
    "msam": dict(opt="sam", lr=0.1, momentum=0.9, nesterov=False, wd=5e-4, wd_mode="coupled", rho=0.05, micro=2),
    # Adam and AdamW (torch.optim itself takes the base step) under every SAM variant; their state
    # starts mid-run (see adam_state0) so that bias correction and amsgrad's maximum matter
    "adam": dict(opt="sgd", base="adam", lr=1e-3, wd=5e-4, wd_mode="coupled"),
    "adamw_sam": dict(opt="sam", base="adamw", lr=1e-3, wd=1e-2, wd_mode="decoupled", rho=0.05),
    "adam_usam_amsgrad": dict(opt="usam", base="adam", lr=1e-3, wd=5e-4, wd_mode="coupled", rho=0.05, amsgrad=True),
    "adamw_asam_clip": dict(opt="asam", base="adamw", lr=1e-3, wd=1e-2, wd_mode="decoupled", rho=0.5, eta=0.01,
                            clip=0.05),
    "adamw_rwsam": dict(opt="sam", base="adamw", lr=1e-3, wd=1e-2, wd_mode="decoupled", rho=0.05, lam=1.0,
                        delta=3e-3, betas=(0.8, 0.99), eps=1e-6),
    "adamw_msam_amsgrad_clip": dict(opt="sam", base="adamw", lr=1e-3, wd=1e-2, wd_mode="decoupled", rho=0.05,
                                    micro=2, amsgrad=True, clip=0.05),
}
# the SAM variants (METHOD.md, "SAM variants of the literature"; tests/step_graphs.rs uses the same).
# Their state before the step: fsam_momentum = buf0(k + 53) (fsam_started 1, or 0 for fsam_first),
# looksam_gv = buf0(k + 70) (looksam_between is a step t with t mod k ≠ 0); momentum-sam's v is the
# momentum buffer buf0(k). (At buf0(k + 50) one resnet8 ReLU sits at its kink at θ + ε: PyTorch's own
# float32 step then differs from float64 by 1e-3; at ρ = 0.3 one of cnn's conv2 pre-activations is 6e-6 from
# zero at Momentum-SAM's θ + ε and float32 engines flip it. The states here keep clear of both.)
SGD_BASE = dict(lr=0.1, momentum=0.9, nesterov=False, wd=5e-4, wd_mode="coupled", rho=0.05)
VARIANTS = {
    "rwsam_auto": dict(opt="sam", lam="auto", target=0.5, delta=3e-3, **SGD_BASE),
    "rwsam_auto_none": dict(opt="sam", lam="auto", target=0.25, norm="none", delta=3e-3, **SGD_BASE),
    "gsam": dict(opt="gsam", alpha=0.3, **SGD_BASE),
    "rw_gsam": dict(opt="gsam", alpha=0.3, lam=1.0, delta=3e-3, **SGD_BASE),
    "wsam": dict(opt="wsam", gamma=0.8, **SGD_BASE),
    "fsam": dict(opt="fsam", sigma=1.0, flam=0.9, started=1, **SGD_BASE),
    "fsam_first": dict(opt="fsam", sigma=1.0, flam=0.9, started=0, **SGD_BASE),
    "looksam": dict(opt="looksam", alpha=0.7, **SGD_BASE),
    "looksam_between": dict(opt="looksam_between", alpha=0.7, **SGD_BASE),
    "momentum_sam": dict(opt="momentum_sam", **{**SGD_BASE, "rho": 0.05}),
}
CONFIGS.update(VARIANTS)
ADAM_STEP0 = 3


def adam_state0(k, n):
    """Adam's state before the step: exp_avg = buf0(k), exp_avg_sq = buf0(k + 17)², max_exp_avg_sq =
    buf0(k + 31)² + buf0(k + 17)²/2, step = ADAM_STEP0 (tests/step_graphs.rs uses the same)."""
    v = buf0(k + 17, n).astype(np.float64) ** 2
    return buf0(k, n), v.astype(np.float32), (buf0(k + 31, n).astype(np.float64) ** 2 + v / 2).astype(np.float32)


def buf0(k, n):
    i = np.arange(n, dtype=np.float64)
    return (1e-3 * np.sin(0.1 * i + k)).astype(np.float32)


def rademacher(k, n):
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(97 * k)) % np.uint64(2**32)
    return (1.0 - 2.0 * ((h >> np.uint64(13)) & np.uint64(1)).astype(np.float32)).astype(np.float32)


def load_from_onnx(model, path):
    """Parameters by PyTorch name from the ONNX initializers (directly or through the exporter's
    Identity aliases); BatchNorm buffers keep PyTorch's fresh values, which the export has too."""
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            inits.setdefault(n.output[0], inits[n.input[0]])
    state = model.state_dict()
    for k in state:
        if k in inits:
            state[k] = torch.from_numpy(inits[k].copy())
        else:
            assert "running" in k or "num_batches" in k or k.startswith("bn") or ".bn" in k, k
    model.load_state_dict(state)


def per_sample(model, x, y):
    return F.cross_entropy(model(x), y, reduction="none")


def per_sample_at(model, names, values, x, y):
    """Per-sample losses with the parameters replaced by `values`; BatchNorm uses batch statistics
    and updates copies of the running statistics, so the model's are left alone (METHOD.md)."""
    state = dict(zip(names, values))
    state.update({k: v.clone() for k, v in model.named_buffers()})
    logits = torch.func.functional_call(model, state, (x,))
    return F.cross_entropy(logits, y, reduction="none")


def is_weight(name, p):
    return "weight" in name or ("bias" not in name and p.dim() >= 2)


def ascent_and_descent(model, names, params, x, y, cfg, z=None):
    """g = ∇L(θ + ε) (with wd in mode `loss`), plus diagnostics. The clean forward updates BN."""
    wd, mode = cfg["wd"], cfg["wd_mode"]
    lps = per_sample(model, x, y)
    loss = lps.mean()
    diag = {"loss": loss.detach().cpu().numpy()}
    if cfg["opt"] == "sgd":
        g = list(torch.autograd.grad(loss, params))
        if mode == "loss":
            g = [gi + wd * p.detach() for gi, p in zip(g, params)]
        diag["grad_norm"] = torch.sqrt(sum((gi ** 2).sum() for gi in g)).cpu().numpy()
        return g, diag
    ascent = loss
    if "lam" in cfg:
        delta = cfg["delta"]
        with torch.no_grad():
            lq = per_sample_at(model, names, [p + zp * delta for p, zp in zip(params, z)], x, y)
        d = (lq - lps.detach()) / delta
        s = torch.sqrt(d ** 2)
        c = s.mean() + 1e-12
        w = torch.softmax(cfg["lam"] * s / c, dim=0).detach()
        diag["scores"] = s.cpu().numpy()
        ascent = (w * lps).sum()
    ga = list(torch.autograd.grad(ascent, params))
    if mode == "loss":
        ga = [gi + wd * p.detach() for gi, p in zip(ga, params)]
    gn = torch.sqrt(sum((gi ** 2).sum() for gi in ga))
    diag["grad_norm"] = gn.cpu().numpy()
    rho = cfg["rho"]
    if cfg["opt"] == "usam":
        eps = [rho * gi for gi in ga]
    elif cfg["opt"] == "sam":
        eps = [rho * gi / (gn + 1e-12) for gi in ga]
    else:  # asam
        t = [(p.detach().abs() + cfg["eta"]) if is_weight(n, p) else None for n, p in zip(names, params)]
        tg = [ti * gi if ti is not None else gi for ti, gi in zip(t, ga)]
        n2 = torch.sqrt(sum((x_ ** 2).sum() for x_ in tg))
        eps = [rho * (ti * x_ if ti is not None else x_) / (n2 + 1e-12) for ti, x_ in zip(t, tg)]
    pe = [(p.detach() + e.detach()).requires_grad_() for p, e in zip(params, eps)]
    adv = per_sample_at(model, names, pe, x, y).mean()
    g = list(torch.autograd.grad(adv, pe))
    if mode == "loss":
        g = [gi + wd * p.detach() for gi, p in zip(g, pe)]
    diag["sharpness"] = (adv - loss).detach().cpu().numpy()
    return g, diag


def norm(xs):
    return torch.sqrt(sum((x_ ** 2).sum() for x_ in xs))


def dot(xs, ys):
    return sum((a * b).sum() for a, b in zip(xs, ys))


def auto_lambda(a, f):
    """λ ≥ 0 with ESS(softmax(λ·a)) = f·b, by bisection in float64 (the exact root)."""
    b = a.numel()
    if f >= 1.0 or float(a.max() - a.min()) == 0.0:
        return 0.0

    def ess(lam):
        p = torch.softmax(lam * a, dim=0)
        return float(1.0 / (p ** 2).sum())
    lo, hi = 0.0, 1.0
    while ess(hi) > f * b:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ess(mid) > f * b else (lo, mid)
    return 0.5 * (lo + hi)


def variant_step(model, names, params, x, y, cfg, st, z):
    """The direction d a SAM variant hands the base optimizer (METHOD.md), its diagnostics, the
    variant's next state, and whether coupled weight decay is in d already (Momentum-SAM)."""
    wd, mode, rho, opt = cfg["wd"], cfg["wd_mode"], cfg["rho"], cfg["opt"]
    diag, nst = {}, {}
    if opt == "momentum_sam":
        v = st["buf"]
        nv = norm(v)
        eps = [-rho * vi / (nv + 1e-12) for vi in v]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        loss = per_sample(model, x, y).mean()  # the only forward: BatchNorm's statistics move here
        g = list(torch.autograd.grad(loss, params))
        with torch.no_grad():
            at = [p.detach().clone() for p in params]
            for p, e in zip(params, eps):
                p.sub_(e)
        diag["loss"] = loss.detach().cpu().numpy()
        diag["grad_norm"] = norm(g).detach().cpu().numpy()
        if mode in ("coupled", "loss"):
            g = [gi + wd * a for gi, a in zip(g, at)]
        return g, diag, nst, True
    lps = per_sample(model, x, y)
    loss = lps.mean()
    diag["loss"] = loss.detach().cpu().numpy()
    ascent = loss
    if "lam" in cfg and opt != "looksam_between":
        delta = cfg["delta"]
        with torch.no_grad():
            lq = per_sample_at(model, names, [p + zp * delta for p, zp in zip(params, z)], x, y)
        s = torch.sqrt(((lq - lps.detach()) / delta) ** 2)
        c = s.mean() + 1e-12 if cfg.get("norm", "mean") == "mean" else 1.0
        a = s / c
        lam = auto_lambda(a, cfg["target"]) if cfg["lam"] == "auto" else cfg["lam"]
        w = torch.softmax(lam * a, dim=0).detach()
        diag["scores"] = s.cpu().numpy()
        if cfg["lam"] == "auto":
            diag["lambda"] = np.float32(lam)
            diag["ess"] = np.float32(1.0 / float((w ** 2).sum()))
        ascent = (w * lps).sum()
    ga = list(torch.autograd.grad(ascent, params))
    if mode == "loss":
        ga = [gi + wd * p.detach() for gi, p in zip(ga, params)]
    gn = norm(ga)
    diag["grad_norm"] = gn.detach().cpu().numpy()
    if opt == "looksam_between":
        gv = st["gv"]
        k = cfg["alpha"] * gn / (norm(gv) + 1e-12)
        return [gi + k * v for gi, v in zip(ga, gv)], diag, nst, False
    direction = ga
    if opt == "fsam":
        m = st["m"]
        if cfg["started"]:
            direction = [gi - cfg["sigma"] * mi for gi, mi in zip(ga, m)]
            nst["fsam_momentum"] = [cfg["flam"] * mi + (1 - cfg["flam"]) * gi for gi, mi in zip(ga, m)]
        else:
            nst["fsam_momentum"] = [gi.detach().clone() for gi in ga]
        nst["fsam_started"] = 1.0
    dn = norm(direction)
    eps = [rho * di / (dn + 1e-12) for di in direction]
    pe = [(p.detach() + e.detach()).requires_grad_() for p, e in zip(params, eps)]
    adv = per_sample_at(model, names, pe, x, y).mean()
    gp = list(torch.autograd.grad(adv, pe))
    if mode == "loss":
        gp = [gi + wd * p.detach() for gi, p in zip(gp, pe)]
    diag["sharpness"] = (adv - loss).detach().cpu().numpy()
    ga = [gi.detach() for gi in ga]
    if opt == "gsam":
        gpn = norm(gp)
        cos = dot(ga, gp) / (gpn * gn + 1e-12)
        vertical = [gi - cos * gn * pi / (gpn + 1e-12) for gi, pi in zip(ga, gp)]
        return [pi - cfg["alpha"] * v for pi, v in zip(gp, vertical)], diag, nst, False
    if opt == "wsam":
        gm = cfg["gamma"]
        return [(1 - 2 * gm) / (1 - gm) * gi + gm / (1 - gm) * pi for gi, pi in zip(ga, gp)], diag, nst, False
    if opt == "looksam":
        k = dot(gp, ga) / (gn ** 2 + 1e-12)
        nst["looksam_gv"] = [pi - k * gi for pi, gi in zip(gp, ga)]
    return gp, diag, nst, False


def step(model, x, y, cfg, bufs, z=None, st=None):
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    skip_coupled = False
    nst = {}
    if cfg["opt"] not in ("sgd", "sam", "usam", "asam") or cfg.get("lam") == "auto":
        g, diag, nst, skip_coupled = variant_step(model, names, params, x, y, cfg, dict(st or {}, buf=bufs), z)
    elif "micro" in cfg:
        m = cfg["micro"]
        k = x.shape[0] // m
        acc = [torch.zeros_like(p) for p in params]
        losses = []
        for j in range(k):
            gj, dj = ascent_and_descent(model, names, params, x[j * m:(j + 1) * m], y[j * m:(j + 1) * m], cfg)
            acc = [a + gi for a, gi in zip(acc, gj)]
            losses.append(dj["loss"])
        g = [a / k for a in acc]
        diag = {"loss": np.float32(np.mean(losses))}
    else:
        g, diag = ascent_and_descent(model, names, params, x, y, cfg, z)
    if "clip" in cfg:
        for p, gi in zip(params, g):
            p.grad = gi.detach().clone()
        torch.nn.utils.clip_grad_norm_(params, cfg["clip"], foreach=False)
        g = [p.grad for p in params]
    if "base" in cfg:
        return adam_step(params, g, cfg, bufs), diag
    lr, mu, wd = cfg["lr"], cfg["momentum"], cfg["wd"]
    new_bufs = []
    with torch.no_grad():
        for p, gi, b in zip(params, g, bufs):
            if cfg["wd_mode"] == "coupled" and not skip_coupled:
                gi = gi + wd * p
            nb = mu * b + gi
            d = gi + mu * nb if cfg["nesterov"] else nb
            if cfg["wd_mode"] == "decoupled":
                p.sub_(lr * wd * p)
            p.sub_(lr * d)
            new_bufs.append(nb)
    for k, v in nst.items():
        diag[f"next/{k}"] = v
    return new_bufs, diag


def adam_step(params, g, cfg, state0):
    """torch.optim.Adam/AdamW's own step from the state `state0` (per parameter: exp_avg,
    exp_avg_sq, max_exp_avg_sq); returns the new state per parameter as a dict."""
    cls = torch.optim.AdamW if cfg["base"] == "adamw" else torch.optim.Adam
    amsgrad = cfg.get("amsgrad", False)
    opt = cls(params, lr=cfg["lr"], betas=cfg.get("betas", (0.9, 0.999)), eps=cfg.get("eps", 1e-8),
              weight_decay=cfg["wd"], amsgrad=amsgrad, foreach=False)
    for p, gi, (m0, v0, vmax0) in zip(params, g, state0):
        p.grad = gi.detach().clone()
        st = {"step": torch.tensor(float(ADAM_STEP0)), "exp_avg": m0.clone(), "exp_avg_sq": v0.clone()}
        if amsgrad:
            st["max_exp_avg_sq"] = vmax0.clone()
        opt.state[p] = st
    opt.step()
    out = []
    for p in params:
        st = opt.state[p]
        d = {"exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"], "step": st["step"]}
        if amsgrad:
            d["max_exp_avg_sq"] = st["max_exp_avg_sq"]
        out.append(d)
    return out


def sample(name, a, out):
    a = np.asarray(a).astype(np.float32)
    flat = a.reshape(-1)
    if flat.size > 4096:
        idx = np.random.default_rng(zlib.crc32(name.encode())).choice(flat.size, 1024, replace=False)
        idx.sort()
        out[f"idx/{name}"] = idx.astype(np.int64)
        out[f"norm/{name}"] = np.float32(np.linalg.norm(flat.astype(np.float64)))
        out[name] = flat[idx]
    else:
        out[name] = a


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    only = set(sys.argv[1:])  # optimizer names to write (default: all)
    for name, cls in [("mlp", MLP), ("cnn", CNN), ("resnet8", ResNet8)]:
        batch = np.load(os.path.join(FIXTURES, name, "batch.npz"))
        x = torch.from_numpy(batch["input"]).double()
        y = torch.from_numpy(batch["y"].astype(np.int64))
        for opt, cfg in CONFIGS.items():
            if only and opt not in only:
                continue
            model = cls()
            load_from_onnx(model, os.path.join(ROOT, "models", f"{name}.onnx"))
            model.double().train()
            named = list(model.named_parameters())
            order = sorted(range(len(named)), key=lambda i: named[i][0])
            kidx = {named[i][0]: k for k, i in enumerate(order)}
            if "base" in cfg:
                bufs = [tuple(torch.from_numpy(a).reshape(p.shape).double() for a in adam_state0(kidx[n], p.numel()))
                        for n, p in named]
            else:
                bufs = [torch.from_numpy(buf0(kidx[n], p.numel())).reshape(p.shape).double() for n, p in named]
            z = [torch.from_numpy(rademacher(kidx[n], p.numel())).reshape(p.shape).double() for n, p in named]
            st = {"m": [torch.from_numpy(buf0(kidx[n] + 53, p.numel())).reshape(p.shape).double() for n, p in named],
                  "gv": [torch.from_numpy(buf0(kidx[n] + 70, p.numel())).reshape(p.shape).double() for n, p in named]}
            new_bufs, diag = step(model, x, y, cfg, bufs, z, st)
            nst = {k[len("next/"):]: diag.pop(k) for k in list(diag) if k.startswith("next/")}
            out = {k: np.asarray(v).astype(np.float32) for k, v in diag.items()}
            for k, v in nst.items():
                if isinstance(v, list):
                    for (n, _), t in zip(named, v):
                        sample(f"next/{k}/{n}", t.detach().cpu().numpy(), out)
                else:
                    out[f"next/{k}"] = np.float32(v)
            for (n, p), nb in zip(named, new_bufs):
                sample(f"next/{n}", p.detach().cpu().numpy(), out)
                if isinstance(nb, dict):
                    for k, v in nb.items():
                        if k == "step":
                            out["next/step"] = np.float32(v)
                        else:
                            sample(f"next/{k}/{n}", v.cpu().numpy(), out)
                else:
                    sample(f"next/momentum_buffer/{n}", nb.cpu().numpy(), out)
            for n, b in model.named_buffers():
                if "running" in n:
                    sample(f"next/{n}", b.cpu().numpy(), out)
            path = os.path.join(FIXTURES, name, f"step_{opt}.npz")
            np.savez(path, **out)
            print(f"{name} {opt}: loss {float(diag['loss']):.5f}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
