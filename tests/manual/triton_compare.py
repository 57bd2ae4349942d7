"""Compare two outputs of triton_bitwise.py bit for bit: python triton_compare.py A.pt B.pt"""
import sys, torch
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
bad = 0
for i, case in enumerate(a["cases"]):
    ra, rb = a["results"][i], b["results"][i]
    diffs = []
    for key in ("params", "states", "steps", "grads"):
        xa, xb = ra[key], rb[key]
        if xa is None:
            assert xb is None; continue
        flat_a = [t for ts in xa for t in (ts if isinstance(ts, list) else [ts])]
        flat_b = [t for ts in xb for t in (ts if isinstance(ts, list) else [ts])]
        for ta, tb in zip(flat_a, flat_b):
            if not torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8)):
                d = (ta.double() - tb.double()).abs().max().item()
                diffs.append((key, d))
    if diffs:
        bad += 1
        print("DIFF", i, case[:2], case[3:], len(diffs), max(d for _, d in diffs))
print(f"{len(a['cases']) - bad}/{len(a['cases'])} cases bitwise equal")
