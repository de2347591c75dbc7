"""The base model shown each test prompt's 4 nearest of a task's first 32 training examples
against its first 4 (README "Which examples"), per fold and pooled over folds: greedy exact
points, resampling tasks for the interval.

    python3 examples/nearest_demonstrations.py 0 1 2

reads data/demos-fF-k4-tf and data/demos-fF-k4-n32-tf (`eval --demonstrations 4
[--demonstrations-pool 32] --nll`, the README's loop) for each fold F given."""
import json
import sys

from compare_columns import interval


def rows(path):
    return {r["task"]: r["base"] for r in json.load(open(path))["rows"]}


def mean(r, key):
    return sum(x[key] for x in r.values()) / len(r)


pooled = []
for fold in sys.argv[1:]:
    first = rows(f"data/demos-f{fold}-k4-tf/lora-nll.json")
    near = rows(f"data/demos-f{fold}-k4-n32-tf/lora-nll.json")
    d = [100 * (near[t]["greedy"] - first[t]["greedy"]) for t in first]
    pooled += d
    print(
        f"fold {fold}, {len(d)} tasks: first 4 {mean(first, 'nll'):.3f} "
        f"({100 * mean(first, 'greedy'):.1f}), nearest 4 of 32 {mean(near, 'nll'):.3f} "
        f"({100 * mean(near, 'greedy'):.1f}); %+.1f (%+.1f to %+.1f); " % interval(d)
        + f"better on {sum(x > 0 for x in d)}, worse on {sum(x < 0 for x in d)}"
    )
print(f"pooled, {len(pooled)} tasks: %+.1f (%+.1f to %+.1f)" % interval(pooled)
      + f"; better on {sum(x > 0 for x in pooled)}, worse on {sum(x < 0 for x in pooled)}")
