"""tests/fixtures/param_split: a parameter split by a list of sizes (torch.split(W, [2, 3, 4]) —
as nn.MultiheadAttention splits in_proj_weight for cross-attention), exported with
torch.onnx.export(dynamo=True, optimize=False, dynamic batch): model.onnx, batch.npz (x, y) and
grads.npz (PyTorch's float64 gradient of the mean cross-entropy, by parameter name)."""
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)

class ParamSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(9, 5) * 0.3)
        self.b = nn.Parameter(torch.randn(9) * 0.1)
        self.head = nn.Linear(4, 3)
    def forward(self, x):
        wq, wk, wv = torch.split(self.W, [2, 3, 4], 0)
        bq, bk, bv = torch.split(self.b, [2, 3, 4], 0)
        q = F.linear(x, wq, bq)
        k = F.linear(x, wk, bk)
        v = F.linear(x, wv, bv)
        h = torch.tanh(v) * (q.sum(1, keepdim=True) + k.mean(1, keepdim=True))
        return self.head(h)

m = ParamSplit().eval()
x = torch.randn(6, 5)
y = torch.tensor([0, 1, 2, 0, 1, 2])
out = "tests/fixtures/param_split"
torch.onnx.export(m, (x,), f"{out}/model.onnx", dynamo=True, optimize=False,
                  dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["x"], output_names=["logits"])
np.savez(f"{out}/batch.npz", x=x.numpy(), y=y.numpy())
md = ParamSplit().double(); md.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
loss = F.cross_entropy(md(x.double()), y)
grads = torch.autograd.grad(loss, list(md.parameters()))
np.savez(f"{out}/grads.npz", **{n: g.numpy() for (n, _), g in zip(md.named_parameters(), grads)})
print("loss", loss.item())
