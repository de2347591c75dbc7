#!/usr/bin/env python3
"""Task files that tell whether a generator reads a rule's value from a task's examples.

For each task X of a rule family, writes two task files for `eval --tasks`:
  X.jsonl          X's training examples and X's test examples (DnD as usual; X_own.jsonl
                   with --trained);
  X_by_Y.jsonl     the training examples of Y, the task before X in its family (suite
                   order: a training task, another value of the same rule), less any
                   prompt X's tests ask, and X's tests.
A generator that reads only the family answers both alike; one that reads the value
answers X's tests from X's examples and fails them from Y's (README, "The rule tasks
beside the 18 held-out tasks, and alone").

usage: sibling_tasks.py [--trained] EXPORT_DIR SUITE_TABLE TASKS OUT_DIR
       sibling_tasks.py --report NLL_JSON
  EXPORT_DIR   `tasks --suite-version 4 --export DIR`
  SUITE_TABLE  the table `tasks --suite-version 4` prints (suite order)
  TASKS        comma-separated task names (e.g. the rule_ names of `tasks --hold-out-every`)
  --trained    TASKS are training tasks of the generator: their own file is X_own.jsonl,
               since `eval` leaves a generator's training tasks out by name
  --report     the table of an `eval --generator G --nll --tasks OUT_DIR/*.jsonl` run, every
               X.jsonl before every X_by_Y.jsonl: per task, the answer NLL (greedy exact %)
               of the generator's base adapter, DnD from X's examples, from Y's, and from
               the next task's (the eval's shuffle control: another family when the tasks
               are of several), then the means and the own-minus-sibling difference with a
               95 % interval over tasks (and of the held-out and the --trained tasks apart
               when there are both).
"""
import json
import os
import sys

from compare_columns import interval


def suite_order(table_path):
    """(family, task) rows of the `tasks` table, in suite order."""
    rows = []
    for line in open(table_path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1] and not cells[0].startswith(("family", "---")):
            rows.append((cells[0], cells[1]))
    return rows


def read(export_dir, name):
    lines = [json.loads(l) for l in open(os.path.join(export_dir, name + ".jsonl"))]
    header, examples = lines[0], lines[1:]
    split = lambda s: [e for e in examples if e["split"] == s]
    return header, split("train"), split("test")


def write(path, name, scoring, examples):
    with open(path, "w") as f:
        f.write(json.dumps({"task": name, "scoring": scoring}) + "\n")
        for e in examples:
            f.write(json.dumps(e) + "\n")


def report(nll_json):
    rows = {r["task"]: r for r in json.load(open(nll_json))["rows"]}
    cell = lambda s: f"{s['nll']:.3f} ({100 * s['greedy']:.1f})"
    print("| task | base adapter | DnD, own examples | DnD, sibling's | DnD, the next task's |")
    print("|---|---|---|---|---|")
    tasks = []  # (trained, the four scores)
    pairs = [(n.split("_by_")[0], r) for n, r in rows.items() if "_by_" in n]
    for name, by in sorted(pairs, key=lambda p: p[0]):
        trained = name not in rows
        own = rows[name + "_own"] if trained else rows[name]
        scores = [own["multitask"][0], own["dnd"], by["dnd"], own["shuffled"]]
        tasks.append((trained, scores))
        print(f"| {name} | " + " | ".join(cell(s) for s in scores) + " |")
    # Held-out and training tasks apart as well when the files hold both.
    groups = [("", tasks)]
    if len({t for t, _ in tasks}) == 2:
        for label, trained in ((", held out", False), (", trained", True)):
            groups.append((label, [t for t in tasks if t[0] == trained]))
    mean = lambda c, k: sum(s[k] for s in c) / len(c)
    for label, group in groups:
        cols = list(zip(*(scores for _, scores in group)))
        print(f"| mean{label} | " + " | ".join(cell({k: mean(c, k) for k in ("nll", "greedy")}) for c in cols) + " |")
    print()
    for label, group in groups:
        cols = list(zip(*(scores for _, scores in group)))
        for k, scale in (("greedy", 100), ("nll", 1)):
            m, lo, hi = interval([scale * (a[k] - b[k]) for a, b in zip(cols[1], cols[2])])
            print(f"own - sibling{label}, {k}: {m:+.3f} ({lo:+.3f} to {hi:+.3f})")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return report(sys.argv[2])
    args = sys.argv[1:]
    trained = args[:1] == ["--trained"]
    args = args[trained:]
    if len(args) != 4:
        sys.exit(__doc__)
    export_dir, table, tasks, out = args
    rows = suite_order(table)
    os.makedirs(out, exist_ok=True)
    names = [t for _, t in rows]
    for x in tasks.split(","):
        if x not in names:
            sys.exit(f"{x} is not in {table}")
        i = names.index(x)
        if i == 0 or rows[i - 1][0] != rows[i][0]:
            sys.exit(f"{x} is the first task of its family: no sibling before it")
        y = rows[i - 1][1]
        header, x_train, x_test = read(export_dir, x)
        _, y_train, _ = read(export_dir, y)
        # A task file may not ask one prompt in both splits (`Task::validate`).
        tested = {e["prompt"] for e in x_test}
        y_train = [e for e in y_train if e["prompt"] not in tested]
        family = rows[i][0]
        short = y[len(family) + 1:] if y.startswith(family + "_") else y
        own = x + "_own" if trained else x
        write(os.path.join(out, own + ".jsonl"), own, header["scoring"], x_train + x_test)
        name = f"{x}_by_{short}"
        write(os.path.join(out, name + ".jsonl"), name, header["scoring"], y_train + x_test)
        print(f"{x}: sibling {y}")


if __name__ == "__main__":
    main()
