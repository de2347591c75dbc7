"""In-context examples against the served adapters, per task and pooled (README, "In-context
examples"): reads served runs' nll.json (`eval --generator ... --decode --guard`, with
--fallback and --select) and `eval --demonstrations K` runs' eval.json on the same tasks and
test examples, and prints strict % (lenient %) for the base model, the LoRA of all training
tasks and the server's route with the library (the runs' "as served with the library"),
beside each model of the demonstrations runs, with the tasks each harms (10 or more lenient
points below the base model without demonstrations, the issue's no-harm bar) and each
one's mean lead over the served route with a 95 % interval (tasks resampled).

    python3 examples/compare_demonstrations.py SERVED.json [...] -- DEMOS.json [...]
"""
import json
import random
import sys


def served_rows(path):
    r = json.load(open(path))
    if not r.get("fallback"):
        sys.exit(f"{path}: no checks with a fallback adapter (a served run is needed)")
    out = {}
    for dec, srv in zip(r["decoded"], r["fallback"]["rows"]):
        assert dec["task"] == srv["task"]
        out[dec["task"]] = {
            "base": dec["base"],
            "LoRA of all": dec["multitask"][0],
            "as served (library)": srv["dnd"],
        }
    return out


def demo_rows(path, tasks, ks):
    r = json.load(open(path))
    out = {}
    for s in r["scores"]:
        task, k = s["task"], r.get("demonstrations")
        # Task files written with their demonstrations in the prompts: NAME-kK.
        if task not in tasks and "-k" in task:
            task, k = task.rsplit("-k", 1)
        ks.add(f"{path}: {'not recorded' if k is None else k}")
        out.setdefault(task, {})[f"{s['model']} + demonstrations"] = s
    return out


def interval(d, draws=10000, seed=14):
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(d) for _ in d) / len(d) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    rows = {}
    for p in argv[:cut]:
        rows.update(served_rows(p))
    ks = set()
    for p in argv[cut + 1 :]:
        for task, cols in demo_rows(p, rows, ks).items():
            if task in rows:
                rows[task].update(cols)
    tasks = sorted(t for t in rows if len(rows[t]) > 3)
    # The columns every task has (the runs may differ in their adapters).
    columns = [c for c in rows[tasks[0]] if all(c in rows[t] for t in tasks)]
    print(f"{len(tasks)} tasks, strict % (lenient %); harm: 10+ lenient points below the base")
    print("demonstrations: " + "; ".join(sorted(ks)))
    for c in columns:
        s = [100 * rows[t][c]["strict"] for t in tasks]
        l = [100 * rows[t][c]["lenient"] for t in tasks]
        harmed = [t for t in tasks if rows[t]["base"]["lenient"] - rows[t][c]["lenient"] >= 0.1 - 1e-9]
        line = f"{c:<32} {sum(s) / len(s):5.1f} ({sum(l) / len(l):5.1f})  harmed {len(harmed)}"
        if c not in ("base", "as served (library)"):
            d = [100 * (rows[t][c]["strict"] - rows[t]["as served (library)"]["strict"]) for t in tasks]
            lo, hi = interval(d)
            line += f"  vs as served {sum(d) / len(d):+5.1f} ({lo:+.1f} to {hi:+.1f})"
        print(line + (f"  {', '.join(harmed)}" if harmed and c != "base" else ""))
    print()
    print("| task | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for t in tasks:
        cells = [f"{100 * rows[t][c]['strict']:.1f} ({100 * rows[t][c]['lenient']:.1f})" for c in columns]
        print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
