"""Planning time of ``load_into(..., align="auto")`` on a renamed model: 300 and 3,000 tensors (`make bench`).

A GPT-style checkpoint (``h.{i}.attn.c_attn``...) planned against the same network refactored
(``layers.{i}.self_attention.qkv``...), in a fresh process each (``import torchweights`` and the first call
included, as a script meets it), through the planner (``reconcile``) on shapes only, beside two anchors: the same
plan without renames (nothing to align) and an unrelated model (refused). Target: 300 tensors well under a second;
a completely different architecture refused as fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
started = time.perf_counter()
import torchweights
from torchweights.plan.spec import ModelSpec

layers, d, mode = int(sys.argv[1]), 16, sys.argv[2]
def gpt(old):
    names = [("wte" if old else "embed", (50, d)), ("wpe" if old else "pos_embed", (12, d))]
    for i in range(layers):
        b = f"h.{i}" if old else f"layers.{i}"
        parts = (("ln_1", (d,)), ("attn.c_attn", (3 * d, d)), ("attn.c_proj", (d, d)), ("ln_2", (d,)),
                 ("mlp.c_fc", (4 * d, d)), ("mlp.c_proj", (d, 4 * d))) if old else (
                 ("norm1", (d,)), ("self_attention.qkv", (3 * d, d)), ("self_attention.out", (d, d)),
                 ("norm2", (d,)), ("ffn.fc1", (4 * d, d)), ("ffn.fc2", (d, 4 * d)))
        for name, shape in parts:
            names.append((f"{b}.{name}.weight", shape))
            names.append((f"{b}.{name}.bias", (shape[0],)))
    names += [("ln_f.weight" if old else "norm.weight", (d,)), ("ln_f.bias" if old else "norm.bias", (d,))]
    return names
from torchweights.plan.reconcile import reconcile
from torchweights.plan.rules import Rules
from torchweights.plan.sources import SourceKey
source = [SourceKey(n, (n,), s, "float32") for n, s in gpt(True)]
if mode == "unrelated":
    spec = ModelSpec.from_tuples([(f"conv{i}.weight", (8 * (i + 1), 3, 3, 3), "float32") for i in range(len(source))])
else:
    spec = ModelSpec.from_tuples([(n, s, "float32") for n, s in gpt(mode == "anchor")])
t0 = time.perf_counter()
plan = reconcile(source, spec, Rules.make(align="auto", strict=False))
t1 = time.perf_counter()
a = plan.alignment
print(json.dumps({"tensors": len(source), "plan_s": t1 - t0, "first_call_s": t1 - started,
                  "aligned": a.aligned if a else 0, "loaded": len(plan.by_kind("load")), "note": a.note if a else ""}))
"""


def main() -> int:
    print("align='auto' planning, fresh process each (seconds; first_call includes import torchweights)")
    for layers in (25, 250):
        for mode in ("anchor", "renamed", "unrelated"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(layers), mode], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr)
                return 1
            row = json.loads(out.stdout.splitlines()[-1])
            print(
                f"  {row['tensors']:>5} tensors {mode:<9}  plan {row['plan_s']:.3f} s  first call "
                f"{row['first_call_s']:.3f} s  aligned {row['aligned']:>5}  loaded {row['loaded']:>5}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
