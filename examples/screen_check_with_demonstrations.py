"""Screen: the no-harm check with one more candidate, the base model shown the task's first
K labelled examples as earlier turns (README, "In-context examples"), simulated from
recorded runs before the product has it.

    # 1. task files whose test split is the check's examples (training examples 16-31, the
    #    ones the served runs' checks read), each with the first K as earlier turns:
    python3 examples/screen_check_with_demonstrations.py files EXPORT OUT K TASK,TASK,...
    # 2. decode them (the base model): eval --tasks OUT/*.jsonl --limit 16 --out CHECKRUN
    # 3. route as the check would, beside the served runs and the test-split decodes:
    python3 examples/screen_check_with_demonstrations.py route CHECKRUN/eval.json \\
        SERVED.json DEMOS.json [SERVED.json DEMOS.json ...]

EXPORT is a `tasks --export` folder of the suite the runs used; SERVED a served run's
nll.json (judged by the default rule: `eval --report`), DEMOS the `eval --demonstrations K`
run of the same fold. The rule is guard::routed's with the default tolerance (1 of 16):
the candidate is accepted with hits + 1 >= the base model's, and of the accepted (DnD,
the fallback, the selection, then this one) the most strict hits, then the most hits, the
earliest on a tie, is routed. Hits are counted from the decode's aggregates as max(strict,
lenient) of 16 (under exact scoring a strict answer is a lenient one); the check itself
scores each answer. A screen: the product's check, once it has the candidate, replaces it.
"""
import json
import random
import sys

CHECK_FROM, CHECK_N = 16, 16


def files(export, out, k, names):
    import os

    os.makedirs(out, exist_ok=True)
    for name in names.split(","):
        lines = [json.loads(l) for l in open(f"{export}/{name}.jsonl")]
        train = [e for e in lines[1:] if e["split"] == "train"]
        turns = "".join(
            f"{d['prompt']}<|im_end|>\n<|im_start|>assistant\n{d['answer']}<|im_end|>\n<|im_start|>user\n"
            for d in train[:k]
        )
        with open(f"{out}/{name}.jsonl", "w") as f:
            # The check scores exactly, without choices (guard.rs).
            f.write(json.dumps({"task": name, "scoring": "exact"}) + "\n")
            for i, e in enumerate(train):
                checked = CHECK_FROM <= i < CHECK_FROM + CHECK_N
                prompt = turns + e["prompt"] if checked else e["prompt"]
                split = "test" if checked else "train"
                f.write(json.dumps({"prompt": prompt, "answer": e["answer"], "split": split}) + "\n")


def route(check_run, pairs):
    check = {s["task"]: s for s in json.load(open(check_run))["scores"] if s["model"] == "base"}
    rows = []
    for served, demos in zip(pairs[::2], pairs[1::2]):
        r = json.load(open(served))
        test = {s["task"]: s for s in json.load(open(demos))["scores"] if s["model"] == "base"}
        for dec, srv, c in zip(r["decoded"], r["fallback"]["rows"], r["checks"]):
            task = dec["task"]
            verdicts = [v for v in [c["dnd"][0], c.get("fallback"), c.get("selected")] if v]
            ranks = [(v["adapter_strict"], v["adapter_hits"]) for v in verdicts if v["accepted"]]
            n, base_hits = verdicts[0]["examples"], verdicts[0]["base_hits"]
            got = check[task]
            assert got["n"] == n, f"{task}: {got['n']} check examples decoded, {n} checked"
            strict = round(got["strict"] * n)
            hits = round(max(got["strict"], got["lenient"]) * n)
            accepted = hits + int(n * 0.1 + 1e-9) >= base_hits
            routed = accepted and all((strict, hits) > rank for rank in ranks)
            rows.append((task, dec["base"], srv["dnd"], test[task], test[task] if routed else srv["dnd"], routed))

    def mean(xs):
        return sum(xs) / len(xs)

    print(f"{len(rows)} tasks, strict % (lenient %); harm: 10+ lenient points below the base")
    for i, name in ((2, "as served (library)"), (3, "base + demonstrations"), (4, "as served, + demonstrations checked")):
        harmed = [r[0] for r in rows if r[1]["lenient"] - r[i]["lenient"] >= 0.1 - 1e-9]
        s, l = mean([r[i]["strict"] for r in rows]), mean([r[i]["lenient"] for r in rows])
        print(f"{name:<38} {100 * s:5.1f} ({100 * l:5.1f})  harmed {len(harmed)}  {', '.join(harmed)}")
    d = [100 * (r[4]["strict"] - r[2]["strict"]) for r in rows]
    rng = random.Random(14)
    means = sorted(mean([rng.choice(d) for _ in d]) for _ in range(10000))
    print(
        f"checked, against as served: {mean(d):+.1f} strict ({means[250]:+.1f} to {means[9749]:+.1f}, "
        f"tasks resampled); the demonstrations routed on {sum(r[5] for r in rows)} of {len(rows)} tasks"
    )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "files":
        files(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) >= 5 and sys.argv[1] == "route" and len(sys.argv) % 2 == 1:
        route(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
