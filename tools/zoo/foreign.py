#!/usr/bin/env python3
"""The second zoo family: models nobody on the team wrote — timm and Hugging Face transformers
architectures as their users build and export them — with the same five export settings and float64
PyTorch references as tools/zoo/zoo.py (whose machinery this reuses; read its docstring for the files).

What differs from zoo.py:
  - the models come from timm.create_model / transformers' *For{SequenceClassification,
    ImageClassification} (random init, small configs where the library has them), num_classes /
    num_labels 10, dropout and stochastic depth off (the references are train-mode PyTorch; dropout is
    checked separately, tests/dropout.rs);
  - every norm affine, running statistic and constant-valued parameter (zero biases, layer-scale
    gammas, class tokens) is randomized (seeded), so no exporter can merge or drop them and every
    gradient is informative;
  - text models take token ids [batch, seq] with BOTH axes dynamic (dynamo: dynamic_shapes=({0: batch,
    1: seq},), legacy: dynamic_axes), as Hugging Face users export them; the batch holds padding tokens
    (the tokenizer's pad id) so that nn.Embedding(padding_idx=…) matters;
  - Hugging Face models return ModelOutput: the instance's forward is wrapped to return the logits
    (the graph is what `torch.onnx.export(model, (input_ids,), …)` writes; only the output packing
    differs);
  - where the file cannot say something onnxsam needs (the legacy exporter drops padding_idx),
    meta.json's per-setting "onnxsam_flags" holds the flags a user passes after reading onnxsam's
    warning (check.py passes them).

Usage (needs torch, timm, transformers, onnxscript; ~10 min on 2 cores for the full family):
    .venv/bin/python tools/zoo/foreign.py                      # full family -> zoo-foreign/ (git-ignored)
    .venv/bin/python tools/zoo/foreign.py --narrow             # tiny configs -> tests/fixtures/zoo_foreign/
    .venv/bin/python tools/zoo/foreign.py --only bert resnet10t --out /tmp/f
    .venv/bin/python tools/zoo/foreign.py --list
    .venv/bin/python tools/zoo/check.py --zoo zoo-foreign --docs-section foreign
Options as zoo.py: --out, --narrow, --only, --settings, --batch (8), --seed (0), --no-check, --stack-traces.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402

ROOT = zoo.ROOT
NUM_CLASSES = zoo.NUM_CLASSES
SEQ = 16


# ---- model builders: (model, input shape without batch, dtype, description, extra)
# extra: {"dims": dynamic axes, "pad_id": padding token, "vocab": ids range, "flags": {setting: [...]}}

def _timm(name, size, narrow_kwargs=None, **kw):
    def build(narrow):
        import timm
        args = dict(num_classes=NUM_CLASSES, drop_rate=0.0, drop_path_rate=0.0, **kw)
        if narrow:
            if narrow_kwargs is None:
                return None
            args.update(narrow_kwargs.get("kwargs", {}))
            model_name = narrow_kwargs.get("name", name)
            s = narrow_kwargs.get("size", size)
        else:
            model_name, s = name, size
        try:
            m = timm.create_model(model_name, **args)
        except TypeError:
            args.pop("drop_path_rate", None)
            m = timm.create_model(model_name, **args)
        desc = f"timm.create_model('{model_name}', {', '.join(f'{k}={v!r}' for k, v in args.items())}), input 3x{s}x{s}"
        return m, (3, s, s), torch.float32, desc, {}
    return build


def _hf_text(kind, narrow_cfg, full_cfg):
    def build(narrow):
        import transformers as tr
        cfg_cls, model_cls, pad = {
            "bert": (tr.BertConfig, tr.BertForSequenceClassification, 0),
            "roberta": (tr.RobertaConfig, tr.RobertaForSequenceClassification, 1),
            "distilbert": (tr.DistilBertConfig, tr.DistilBertForSequenceClassification, 0),
            "albert": (tr.AlbertConfig, tr.AlbertForSequenceClassification, 0),
            "electra": (tr.ElectraConfig, tr.ElectraForSequenceClassification, 0),
            "gpt2": (tr.GPT2Config, tr.GPT2ForSequenceClassification, 0),
        }[kind]
        c = dict(narrow_cfg if narrow else full_cfg)
        c.update(num_labels=NUM_CLASSES, pad_token_id=pad)
        cfg = cfg_cls(**c)
        m = model_cls(cfg)
        _logits_forward(m, "input_ids")
        vocab = cfg.vocab_size
        m.vocab = vocab
        desc = f"transformers.{model_cls.__name__}({cfg_cls.__name__}({', '.join(f'{k}={v!r}' for k, v in c.items())}))"
        # the padding rows the file must be told about where the exporter drops padding_idx
        pads = {n: mod.padding_idx for n, mod in m.named_modules()
                if isinstance(mod, nn.Embedding) and mod.padding_idx is not None}
        tables = {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Embedding)}
        flags = []
        for n in tables:
            row = pads.get(n)
            flags += ["--padding-idx", f"{n}.weight={'none' if row is None else row}"]
        legacy_flags = {s: flags for s in zoo.SETTINGS if s.startswith("legacy")}
        return m, (SEQ,), torch.int64, desc, {"dims": {0: "batch", 1: "seq"}, "pad_id": pad, "vocab": vocab,
                                             "flags": legacy_flags, "padding_rows": {f"{n}.weight": r for n, r in pads.items()}}
    return build


def _hf_vit(narrow):
    import transformers as tr
    c = dict(image_size=32, patch_size=8, hidden_size=16 if narrow else 64, num_hidden_layers=1 if narrow else 2,
             num_attention_heads=2, intermediate_size=32 if narrow else 128, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0, num_labels=NUM_CLASSES)
    m = tr.ViTForImageClassification(tr.ViTConfig(**c))
    _logits_forward(m, "pixel_values")
    return m, (3, 32, 32), torch.float32, f"transformers.ViTForImageClassification(ViTConfig({c}))", {}


def _logits_forward(model, arg):
    """The model's forward with the inputs a user passes, returning the logits tensor (ModelOutput's
    first field): a subclass, so that deep copies (the float64 references) keep it."""
    base = type(model)

    class Logits(base):
        def forward(self, input):  # noqa: A002 (the exported input's name)
            return base.forward(self, **{arg: input}, return_dict=False)[0]

    Logits.__name__ = base.__name__
    Logits.__qualname__ = base.__qualname__
    model.__class__ = Logits


_TXT_NARROW = dict(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                   max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_TXT_FULL = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _distil(cfg):
    return dict(vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
                n_heads=cfg["num_attention_heads"], hidden_dim=cfg["intermediate_size"],
                max_position_embeddings=cfg["max_position_embeddings"], dropout=0.0, attention_dropout=0.0,
                seq_classif_dropout=0.0)


def _albert(cfg):
    return dict(cfg, embedding_size=cfg["hidden_size"] // 2, classifier_dropout_prob=0.0)


def _electra(cfg):
    return dict(cfg, embedding_size=cfg["hidden_size"] // 2)


def _gpt2(cfg):
    return dict(vocab_size=cfg["vocab_size"], n_embd=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"],
                n_head=cfg["num_attention_heads"], n_positions=cfg["max_position_embeddings"], resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0, bos_token_id=cfg["vocab_size"] - 1,
                eos_token_id=cfg["vocab_size"] - 1)


ARCHS = {
    # timm: one of each family, the smallest variants
    "resnet10t": _timm("resnet10t", 32),
    "convnext_atto": _timm("convnext_atto", 32),
    "vit_tiny": _timm("vit_tiny_patch16_224", 32, img_size=32, patch_size=8),
    "mobilevit_xxs": _timm("mobilevit_xxs", 64),
    "efficientvit_m0": _timm("efficientvit_m0", 64, img_size=64),
    "mixnet_s": _timm("mixnet_s", 32),
    "ghostnet_050": _timm("ghostnet_050", 32),
    "regnetx_002": _timm("regnetx_002", 32),
    "edgenext_xx_small": _timm("edgenext_xx_small", 64),
    "lcnet_050": _timm("lcnet_050", 32),
    "resnest14d": _timm("resnest14d", 32),
    "hgnetv2_b0": _timm("hgnetv2_b0", 32),
    # (fastvit_t8 is left out: PyTorch 2.15's own channels_last train step segfaults on it on the CPU)
    "efficientformerv2_s0": _timm("efficientformerv2_s0", 64, img_size=64),
    "levit_128s": _timm("levit_128s", 64, img_size=64),
    "efficientnet_test": _timm("test_efficientnet", 32),
    # Hugging Face transformers
    "hf_bert": _hf_text("bert", _TXT_NARROW, _TXT_FULL),
    "hf_roberta": _hf_text("roberta", dict(_TXT_NARROW, max_position_embeddings=40), dict(_TXT_FULL, max_position_embeddings=72)),
    "hf_distilbert": _hf_text("distilbert", _distil(_TXT_NARROW), _distil(_TXT_FULL)),
    "hf_albert": _hf_text("albert", _albert(_TXT_NARROW), _albert(_TXT_FULL)),
    "hf_electra": _hf_text("electra", _electra(_TXT_NARROW), _electra(_TXT_FULL)),
    "hf_gpt2": _hf_text("gpt2", _gpt2(_TXT_NARROW), _gpt2(_TXT_FULL)),
    "hf_vit": _hf_vit,
}


def randomize(model, seed):
    """Norm affines and running statistics, and every parameter whose elements are all equal (zero
    biases, layer-scale gammas, class tokens), drawn at random (seeded): no exporter merges or drops
    them, and no gradient is structurally zero for want of a nonzero weight."""
    g = torch.Generator().manual_seed(seed + 17)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(1.0 + 0.5 * torch.rand(mod.running_var.shape, generator=g))
        for name, p in model.named_parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()) or p.numel() == 1:
                base = p.flatten()[0].item()
                scale = 0.1 * max(abs(base), 1.0) if base != 0 else 0.05
                p.add_(scale * torch.randn(p.shape, generator=g))


def make_batch_for(extra):
    """zoo.make_batch, with padding tokens for text models: the last 3 positions of every other row are
    the pad id, and ids elsewhere avoid it (a user's batch of padded sentences)."""
    def make(shape, dtype, batch, seed, vocab=zoo.VOCAB):
        gen = torch.Generator().manual_seed(seed + 1)
        if dtype == torch.int64:
            v = extra.get("vocab", vocab)
            pad = extra.get("pad_id", 0)
            x = torch.randint(0, v - 1, (batch,) + tuple(shape), generator=gen)
            x = x + (x >= pad).long()  # ids other than pad
            x[::2, -3:] = pad
        else:
            x = torch.randn((batch,) + tuple(shape), generator=gen)
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
        return x, y
    return make


def run_arch(arch, args, out_root):
    torch.manual_seed(args.seed)
    built = ARCHS[arch](args.narrow)
    if built is None:
        return None
    model, shape, dtype, desc, extra = built
    randomize(model, args.seed)
    model.eval()
    zoo.make_batch = make_batch_for(extra)
    args.dims = extra.get("dims")
    d = os.path.join(out_root, arch)
    os.makedirs(d, exist_ok=True)
    params = [(n, list(p.shape)) for n, p in model.named_parameters()]
    buffers = [(n, list(b.shape)) for n, b in model.named_buffers()]
    param_names = [n for n, _ in params]
    buffer_names = [n for n, _ in buffers]
    meta, x, y, logits_eval, kept = zoo._fresh_references(model, arch, args, d, shape, dtype, desc, params, buffers)
    meta["family"] = "foreign"
    meta["dynamic_axes"] = {str(k): v for k, v in (extra.get("dims") or {0: "batch"}).items()}
    if "padding_rows" in extra:
        meta["padding_rows"] = extra["padding_rows"]
        meta["input"]["pad_id"] = extra["pad_id"]
    if args.check:
        ort_refs = {"eval": zoo._ort_reference(model, x, False, zoo._batch_stats_in_eval(model),
                                               "logits_eval (reference.npz): PyTorch float32, eval mode", logits_eval)}
        if "legacy_train" in args.settings:
            ort_refs["train"] = zoo._ort_reference(model, x, True, True, "PyTorch float32 logits in TRAIN mode")
    else:
        ort_refs = None
    meta = zoo._export_settings(model, arch, args, d, x, param_names, buffer_names, ort_refs, meta, kept)
    for s, e in meta["settings"].items():
        flags = extra.get("flags", {}).get(s)
        if flags and e.get("error") is None:
            e["onnxsam_flags"] = flags
    with open(os.path.join(d, "meta.json"), "w") as f:
        import json
        json.dump(meta, f, indent=1)
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--narrow", action="store_true")
    ap.add_argument("--only", nargs="+", choices=list(ARCHS), metavar="ARCH")
    ap.add_argument("--settings", nargs="+", choices=zoo.SETTINGS, default=zoo.SETTINGS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--stack-traces", choices=["keep", "strip"])
    ap.add_argument("--no-check", dest="check", action="store_false")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.stack_traces is None:
        args.stack_traces = "strip" if args.narrow else "keep"
    archs = args.only or list(ARCHS)
    if args.list:
        for a in archs:
            torch.manual_seed(args.seed)
            b = ARCHS[a](args.narrow)
            if b is None:
                print(f"{a:20s} (no narrow variant)")
                continue
            print(f"{a:20s} {zoo.count_params(b[0]):10d}  {tuple(b[1])} {str(b[2])[6:]:7s} {b[3]}")
        return 0
    default = os.path.join(ROOT, "tests", "fixtures", "zoo_foreign") if args.narrow else os.path.join(ROOT, "zoo-foreign")
    out_root = args.out or default
    os.makedirs(out_root, exist_ok=True)
    metas = []
    for a in archs:
        t0 = time.time()
        try:
            meta = run_arch(a, args, out_root)
        except Exception as e:  # noqa: BLE001
            print(f"{a}: FAILED to build or reference: {zoo._first_line(e)}", flush=True)
            continue
        if meta is None:
            continue
        metas.append(meta)
        ok = sum(e.get("error") is None for e in meta["settings"].values())
        print(f"{a}: {meta['num_params']} params, {ok}/{len(meta['settings'])} exports, {time.time() - t0:.1f}s", flush=True)
    zoo.summary(metas)
    return 0


if __name__ == "__main__":
    sys.exit(main())
