"""One column of an `eval --generator --nll` run against another, per task, with an
interval over tasks resampled (README "The examples as the generator's teacher"):

    python3 examples/compare_columns.py A/nll.json B/nll.json COLUMN_A COLUMN_B

prints B's COLUMN_B minus A's COLUMN_A in greedy exact points and answer NLL; a column is
`base`, `dnd`, `shuffled` or `mt` (the first multi-task column, e.g. the generator's base
adapter). The same file twice compares two columns of one run."""
import json
import random
import sys


def rows(path):
    return {r["task"]: r for r in json.load(open(path))["rows"]}


def column(row, name):
    return row["multitask"][0] if name == "mt" else row[name]


def interval(d):
    random.seed(14)
    m = sorted(sum(random.choice(d) for _ in d) / len(d) for _ in range(2000))
    return sum(d) / len(d), m[50], m[1949]


def main():
    a, b = rows(sys.argv[1]), rows(sys.argv[2])
    ca, cb = sys.argv[3], sys.argv[4]
    greedy = [100 * (column(b[t], cb)["greedy"] - column(a[t], ca)["greedy"]) for t in a]
    nll = [column(b[t], cb)["nll"] - column(a[t], ca)["nll"] for t in a]
    print("greedy %+.1f (%+.1f to %+.1f)" % interval(greedy),
          " nll %+.3f (%+.3f to %+.3f)" % interval(nll),
          f" better/worse/level {sum(x > 0 for x in greedy)}/{sum(x < 0 for x in greedy)}"
          f"/{sum(x == 0 for x in greedy)}")


# `interval` serves the other examples' scripts too.
if __name__ == "__main__":
    main()
