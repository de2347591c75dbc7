#!/usr/bin/env python3
"""The held-out log of `train` runs, side by side: does the generator read held-out tasks?

Every `save_every` steps an end-to-end run (`--objective sft`) logs the held-out tasks'
answer NLL from their own examples and from another held-out task's (`shuffled`). Own
below shuffled means the adapter depends on the examples in the right direction, on tasks
the generator never trained on: the cheapest reading test there is, free with every run.

usage: train_log.py GENERATOR_DIR...
  prints, per run and logged step: training loss, held-out NLL from own examples, from
  another held-out task's, and own minus shuffled (negative: the examples are read).
"""
import json
import os
import sys


def rows(generator_dir):
    log = json.load(open(os.path.join(generator_dir, "train.json")))["log"]
    for line in log:
        own, shuffled = line.get("heldout_nll"), line.get("heldout_nll_shuffled")
        gap = own - shuffled if own is not None and shuffled is not None else None
        yield line["step"], line["loss"], own, shuffled, gap


def cell(x, sign=""):
    return "-" if x is None else f"{x:{sign}.3f}"


def main(dirs):
    if not dirs:
        sys.exit(__doc__)
    print("| run | step | loss | held-out NLL, own | shuffled | own - shuffled |")
    print("|---|---|---|---|---|---|")
    for d in dirs:
        name = os.path.basename(os.path.normpath(d))
        for step, loss, own, shuffled, gap in rows(d):
            print(f"| {name} | {step} | {loss:.3f} | {cell(own)} | {cell(shuffled)} | {cell(gap, '+')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
