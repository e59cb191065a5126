"""Diagnostic (issue 25), WiSE-FT-style weight interpolation: alpha * fine-tuned + (1 - alpha) * base for the
parameters both files have; parameters only the fine-tuned model has (click parts) are taken from it, and so are
its extras and config.  Usage: make_soup.py FINE_TUNED.pt BASE.pt ALPHA OUT.pt"""
import sys, torch
ft, base, alpha, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
L = lambda p: torch.load(p, map_location="cpu", weights_only=False)
a, b = L(ft), L(base)
sa, sb = a["state_dict"], b["state_dict"]
for k, v in sa.items():
    if k in sb and v.is_floating_point():
        sa[k] = alpha * v + (1 - alpha) * sb[k].to(v.dtype)
torch.save(a, out)
print(out, alpha)
