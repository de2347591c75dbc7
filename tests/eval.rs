//! `eval` through the serving path on the tiny model: scores come from real engine outputs.

use mistralrs_dnd::eval::{evaluate, markdown, write_report, Candidate};
use mistralrs_dnd::format::Module;
use mistralrs_dnd::tasks::{Example, Scoring, Task};
use mistralrs_dnd::testing::{max_abs_diff, random_adapter, tiny_dims};

use crate::common::*;

fn task(name: &str, answers: &[(&str, &str)]) -> Task {
    let ex = |(p, a): &(&str, &str)| Example {
        prompt: p.to_string(),
        answer: a.to_string(),
        choices: vec![],
    };
    Task {
        name: name.into(),
        family: "external".into(),
        scoring: Scoring::Exact,
        train: vec![ex(&("unused", "x"))],
        test: answers.iter().map(ex).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_scores_engine_outputs_for_base_and_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path());
    let adapter_dir = dir.path().join("lora");
    random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 9, 0.5, 0.5)
        .unwrap()
        .write_peft(&adapter_dir)
        .unwrap();
    let prompts = ["one", "two", "three"];
    let wrong = task("wrong", &prompts.map(|p| (p, "nothing like this")));
    let base_only = [Candidate {
        label: "base".into(),
        adapter: None,
        only_tasks: vec![],
    }];
    let r = evaluate(
        config.clone(),
        std::slice::from_ref(&wrong),
        &base_only,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.scores.len(), r.scores[0].n, r.scores[0].strict),
        (1, 3, 0.0)
    );

    // A task whose answers are what the base model says: the base scores 100 %, the
    // adapter (which changes the outputs) does not.
    let said: Vec<String> = r.scores[0]
        .samples
        .iter()
        .map(|(_, _, out)| out.clone())
        .collect();
    let pairs: Vec<(&str, &str)> = prompts
        .iter()
        .zip(&said)
        .map(|(p, a)| (*p, a.as_str()))
        .collect();
    let echo = task("echo", &pairs);
    let candidates = [
        base_only[0].clone(),
        Candidate {
            label: "lora".into(),
            adapter: Some(adapter_dir),
            only_tasks: vec![],
        },
    ];
    let r = evaluate(config, &[wrong, echo], &candidates, Some(3))
        .await
        .unwrap();
    let get = |m: &str, t: &str| {
        r.scores
            .iter()
            .find(|s| s.model == m && s.task == t)
            .unwrap()
            .strict
    };
    assert_eq!(r.scores.len(), 4, "every model on every task");
    assert_eq!(get("base", "echo"), 1.0);
    assert!(get("lora", "echo") < 1.0);
    let md = markdown(&r);
    for row in [
        "| wrong |",
        "| echo |",
        "| mean |",
        "| task | base | lora |",
    ] {
        assert!(md.contains(row), "{row} missing in\n{md}");
    }
    let out = dir.path().join("report");
    write_report(&r, &out).unwrap();
    let png = std::fs::read(out.join("eval.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(std::fs::read_to_string(out.join("eval.json"))
        .unwrap()
        .contains("\"echo\""));
    if let Ok(keep) = std::env::var("DND_KEEP_CHART") {
        std::fs::copy(out.join("eval.png"), keep).unwrap();
    }
}

/// Side by side, every column's requests are in flight at once: the evaluation server
/// makes room for them whatever the production bounds say (here one request, no wait).
/// The column of examples shown is the base model's answers to the prompts after them:
/// each prompt's nearest of a pool (here 1 of 2), as `plugin.demonstrations_pool` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_by_side_columns_are_not_refused_by_the_admission_bounds() {
    use mistralrs_dnd::eval::{turns, EvalServer, Shown};
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(dir.path());
    config.plugin.max_in_flight_per_model = 1;
    config.plugin.max_in_flight_per_task = 1;
    config.plugin.admission_wait_ms = 1;
    let adapter = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 9, 0.5, 0.5).unwrap();
    let mut adapters = vec![("base".to_string(), None)];
    adapters.extend((0..3).map(|i| (format!("lora-{i}"), Some(&adapter))));
    let (server, _store) = EvalServer::start(config, adapters.len() + 1).await.unwrap();
    let prompts = ["one", "two", "three", "four", "five", "six"];
    let pool = task("pool", &[("one more", "1"), ("two more", "2")]).test;
    let shown = Shown {
        pool: &pool,
        each: 1,
    };
    let turn = |user: &str, assistant: &str| {
        format!(
            "{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n<|im_start|>user\n"
        )
    };
    assert_eq!(turns(shown, "one"), turn("one more", "1"));
    assert_eq!(turns(shown, "two"), turn("two more", "2"));
    assert_eq!(
        turns(Shown { each: 2, ..shown }, "two"),
        pool.iter()
            .map(|e| turn(&e.prompt, &e.answer))
            .collect::<String>()
    );
    let out = server
        .answer_side_by_side(&adapters, &prompts, Some(shown))
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|answers| answers.len() == prompts.len()));
    let after: Vec<String> = (prompts.iter())
        .map(|p| format!("{}{p}", turns(shown, p)))
        .collect();
    let after: Vec<&str> = after.iter().map(String::as_str).collect();
    let base = server
        .answer_side_by_side(&adapters[..1], &after, None)
        .await
        .unwrap();
    assert_eq!(out[4], base[0]);
}

/// `eval --generator`: one summary row per held-out task with every comparison, the spread
/// and overhead table, and a clear refusal for a generator without held-out tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heldout_eval_reports_every_row_for_every_heldout_task() {
    use mistralrs_dnd::eval::heldout::{
        evaluate_heldout, weight_space, write_heldout, HeldoutSetup,
    };
    let trained = trained_tiny_generator();
    let dir = tempfile::tempdir().unwrap();
    let setup = HeldoutSetup {
        generator: trained.generator.clone(),
        encoder: mistralrs_dnd::testing::real_assets().minilm(),
        checkpoints: Some(trained.collection.clone()),
        samples: 2,
        seed: 0,
        overhead_steps: vec![4],
    };
    let r = evaluate_heldout(tiny_config(dir.path()), &trained.tasks, &setup, Some(2))
        .await
        .unwrap();
    assert_eq!(r.rows.len(), 1);
    let row = &r.rows[0];
    assert_eq!(row.task, HELD_OUT);
    assert_eq!(r.train_tasks, ["add", "uppercase"]);
    assert!(row.dnd_seconds > 0.0 && row.lora_seconds > 0.0);
    assert_eq!(
        row.own_curve.iter().map(|c| c.0).collect::<Vec<_>>(),
        [4, 6]
    );
    // Base on the held-out task, 2 other LoRAs and their average, the oracle, its step-4
    // checkpoint, 2 DnD.
    assert_eq!(r.all.scores.len(), 8);
    assert!(row.others_averaged.is_some());
    let models: Vec<&str> = r.summary.scores.iter().map(|s| s.model.as_str()).collect();
    assert_eq!(
        models,
        [
            "base",
            "other LoRAs (mean)",
            "other LoRAs (best)",
            "other LoRAs averaged",
            "own LoRA (oracle)",
            "DnD (mean)"
        ]
    );
    let out = dir.path().join("report");
    write_heldout(&r, &out).unwrap();
    let md = std::fs::read_to_string(out.join("eval.md")).unwrap();
    assert!(
        md.contains(&format!("| {HELD_OUT} |")) && md.contains("| mean |"),
        "{md}"
    );
    let spread = std::fs::read_to_string(out.join("heldout.md")).unwrap();
    assert!(spread.contains(&format!("| {HELD_OUT} |")), "{spread}");
    assert_eq!(&std::fs::read(out.join("eval.png")).unwrap()[1..4], b"PNG");

    // The weight-space view: one row, every similarity a cosine, the nearest LoRA named.
    let w = weight_space(&trained.tasks, &setup).unwrap();
    assert_eq!(w.rows.len(), 1);
    let wr = &w.rows[0];
    assert_eq!(wr.task, HELD_OUT);
    assert!(r.train_tasks.contains(&wr.nearest_other.0), "{w:?}");
    for c in [
        wr.dnd_to_own,
        wr.others_mean_to_own,
        wr.nearest_other.1,
        wr.dnd_to_others_mean,
        wr.dnd_within,
    ] {
        assert!((-1.0..=1.0 + 1e-9).contains(&c), "{w:?}");
    }
    assert!(wr.norm_ratio > 0.0, "{w:?}");

    // The same run with no held-out task asked for is refused with the reason.
    let other = [trained.tasks[0].clone()];
    let err = evaluate_heldout(tiny_config(dir.path()), &other, &setup, Some(2))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("held-out tasks"), "{err:#}");
}

/// `eval --generator G --nll --tasks FILE...`: a task file the generator did not train on (a
/// tenant's own task, the external set) is compared like a held-out task, without an own
/// LoRA; one named like a training task is not.
#[test]
fn task_files_it_did_not_train_on_are_compared_as_held_out_tasks() {
    use mistralrs_dnd::eval::nll::{Comparison, NllSetup};
    use mistralrs_dnd::tasks::{taskfile::EXTERNAL_FAMILY, Task};
    let trained = trained_tiny_generator();
    let setup = NllSetup {
        generator: trained.generator.clone(),
        encoder: mistralrs_dnd::testing::real_assets().minilm(),
        base: tiny_model(),
        checkpoints: Some(trained.collection.clone()),
        multitask: Vec::new(),
        batches: 1,
        nearest: 5,
        nearest_on: None,
        select: 0,
        select_by: Default::default(),
        soup: false,
        seed: 0,
        fallback: None,
        generated_library: Vec::new(),
        ensemble: Vec::new(),
    };
    let file = |name: &str| Task {
        name: name.to_string(),
        family: EXTERNAL_FAMILY.to_string(),
        ..trained.tasks[0].clone()
    };
    let given = [
        file("tenant_a"),
        file(&trained.tasks[0].name),
        file("tenant_b"),
    ];
    let c = Comparison::build(&given, &setup).unwrap();
    let names: Vec<&str> = c.cases.iter().map(|c| c.task.name.as_str()).collect();
    assert_eq!(names, ["tenant_a", "tenant_b"]);
    assert!(c.cases.iter().all(|c| c.own.is_none() && c.dnd.len() == 1));
    assert_eq!(c.cases[0].shuffled_from, "tenant_b");
    // Retrieval's library: the training tasks among those given (here the one named like
    // a training task), whatever k asks for.
    let nearest = c.cases[0].nearest.as_ref().unwrap();
    let names: Vec<&str> = nearest.neighbours.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [trained.tasks[0].name.as_str()]);
    assert!(c.cases[1].nearest_shuffled.is_some());

    // Selection: of the neighbour and the multi-task LoRA given, the one with the lowest
    // answer NLL on each task's first training examples; the next task's pick the control.
    {
        use mistralrs_dnd::eval::nll::adapter_name;
        use mistralrs_dnd::training::llama::score::{encode, score};
        use mistralrs_dnd::training::llama::{chat::ChatTokenizer, Llama};
        use mistralrs_dnd::training::lora::LoraWeights;
        let finals = mistralrs_dnd::training::collection::Collection::new(&trained.collection)
            .final_checkpoints()
            .unwrap();
        let other = finals[&trained.tasks[1].name].clone();
        let selecting = NllSetup {
            multitask: vec![other.clone()],
            select: 4,
            ..setup.clone()
        };
        let c = Comparison::build(&given, &selecting).unwrap();
        let device = candle_core::Device::Cpu;
        let model = Llama::load(&tiny_model(), &device).unwrap();
        let tok = ChatTokenizer::load(&tiny_model()).unwrap();
        let read = |p: &std::path::Path| mistralrs_dnd::format::peft::LoraAdapter::read_peft(p);
        let candidates = [
            read(&finals[&trained.tasks[0].name]).unwrap(),
            read(&other).unwrap(),
        ];
        let nll = |a: &mistralrs_dnd::format::peft::LoraAdapter, task: &Task| {
            let l = LoraWeights::from_adapter(a, &model.dims, &device).unwrap();
            let examples = encode(&tok, &task.train[..4]).unwrap();
            score(&model, &tok, Some(&l), &examples).unwrap().nll
        };
        for case in &c.cases {
            let picked = case.selected.as_ref().expect("a selection");
            let names = [&trained.tasks[0].name, &adapter_name(&other)];
            assert!(names.contains(&&picked.name), "{}", picked.name);
            let best = candidates
                .iter()
                .map(|a| nll(a, &case.task))
                .fold(f64::INFINITY, f64::min);
            assert_eq!(nll(&picked.adapter, &case.task), best, "{}", case.task.name);
        }
        let same = |a: &mistralrs_dnd::format::peft::LoraAdapter,
                    b: &mistralrs_dnd::format::peft::LoraAdapter| {
            a.tensors.iter().all(|(n, t)| {
                let d = (t - &b.tensors[n]).unwrap().abs().unwrap();
                d.max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0
            })
        };
        let control = c.cases[0].selected_shuffled.as_ref().unwrap();
        assert!(same(
            control,
            &c.cases[1].selected.as_ref().unwrap().adapter
        ));
    }

    let err = Comparison::build(&given[1..2], &setup).err().unwrap();
    assert!(format!("{err:#}").contains("nor any task file"), "{err:#}");

    // --fallback: the adapter named is the fallback column, added once, or found among the
    // multi-task LoRAs given (by its weights, whatever the folder).
    assert_eq!(c.fallback, None);
    let finals = mistralrs_dnd::training::collection::Collection::new(&trained.collection)
        .final_checkpoints()
        .unwrap();
    let [a, b] = [0, 1].map(|i| finals[&trained.tasks[i].name].clone());
    let with = |fallback: &std::path::Path, multitask: Vec<std::path::PathBuf>| NllSetup {
        generator: trained.generator.clone(),
        encoder: mistralrs_dnd::testing::real_assets().minilm(),
        base: tiny_model(),
        checkpoints: Some(trained.collection.clone()),
        multitask,
        batches: 1,
        nearest: 5,
        nearest_on: None,
        select: 0,
        select_by: Default::default(),
        soup: false,
        seed: 0,
        fallback: Some(fallback.to_path_buf()),
        generated_library: Vec::new(),
        ensemble: Vec::new(),
    };
    let c = Comparison::build(&given, &with(&a, vec![b.clone()])).unwrap();
    assert_eq!((c.multitask.len(), c.fallback), (2, Some(1)));
    let c = Comparison::build(&given, &with(&b, vec![a.clone(), b.clone()])).unwrap();
    assert_eq!((c.multitask.len(), c.fallback), (2, Some(1)));

    // A shipped generator away from its collection: no averaged column, the rest as above;
    // a collection that is named must exist.
    // A generator folder's files copied into a new folder.
    let copy = |from: &std::path::Path| {
        let to = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        to
    };
    let moved = copy(&trained.generator);
    let record = moved.path().join("train.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    json["checkpoints"] = "not/on/this/machine".into();
    std::fs::write(&record, json.to_string()).unwrap();
    let away = NllSetup {
        generator: moved.path().to_path_buf(),
        checkpoints: None,
        ..setup
    };
    let c = Comparison::build(&given, &away).unwrap();
    assert!(c.averaged.is_none() && c.cases.len() == 2);
    // A generated library needs no collection: its adapter of a task is DnD's of that task
    // (from the same first batch), here of the first task given.
    let generated = NllSetup {
        generated_library: vec![given[0].clone()],
        ..away.clone()
    };
    let c = Comparison::build(&given, &generated).unwrap();
    let nearest = c.cases[0].nearest.as_ref().expect("retrieval");
    let names: Vec<&str> = nearest.neighbours.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["tenant_a"]);
    for (name, t) in &c.cases[0].dnd[0].tensors {
        assert_eq!(
            max_abs_diff(t, &nearest.adapter.tensors[name]),
            0.0,
            "{name}"
        );
    }
    // An ensemble: DnD's adapter is the mean of each generator's of the same batch (the
    // second here the first with every decoder weight scaled, so that they differ).
    let scaled = copy(moved.path());
    let weights = scaled.path().join("decoder.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k, (t * 1.5).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let alone = |generator: &std::path::Path| {
        let setup = NllSetup {
            generator: generator.to_path_buf(),
            nearest: 0,
            ..away.clone()
        };
        Comparison::build(&given, &setup).unwrap().cases[0].dnd[0].clone()
    };
    let (first, second) = (alone(moved.path()), alone(scaled.path()));
    let both = NllSetup {
        ensemble: vec![scaled.path().to_path_buf()],
        nearest: 0,
        ..away.clone()
    };
    let c = Comparison::build(&given, &both).unwrap();
    let mut moved_by = 0f32;
    for (name, t) in &c.cases[0].dnd[0].tensors {
        let mean = ((&first.tensors[name] + &second.tensors[name]).unwrap() * 0.5).unwrap();
        assert!(max_abs_diff(t, &mean) < 1e-6, "{name}");
        moved_by = moved_by.max(max_abs_diff(&first.tensors[name], &second.tensors[name]));
    }
    assert!(moved_by > 1e-4, "the two generators gave the same adapter");
    let named = NllSetup {
        checkpoints: Some("not/here".into()),
        ..away
    };
    assert!(Comparison::build(&given, &named).is_err());
}
