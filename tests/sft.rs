//! The end-to-end objective on the tiny model: a residual generator starts at the training
//! tasks' mean adapter, learns, writes a loadable generator and resumes exactly.

use std::path::Path;

use candle_core::{Device, Tensor};
use mistralrs_dnd::format::LoraAdapter;
use mistralrs_dnd::generator::decoder::Condition;
use mistralrs_dnd::generator::{Generator, TokenLayout};
use mistralrs_dnd::tasks::Task;
use mistralrs_dnd::training::collection::Collection;
use mistralrs_dnd::training::generator::{
    decoder_config_for, load_training_set, train_decoder, Holdout, Objective, ResidualFold,
    ResidualInit, TrainDecoderConfig, TrainOptions, TrainOutcome,
};
use mistralrs_dnd::training::sft::SftData;

use crate::common::*;

fn settings(objective: Objective) -> TrainDecoderConfig {
    TrainDecoderConfig {
        steps: 8,
        batch_size: 2,
        lr: 2e-2,
        warmup_steps: 1,
        prompt_pool: 16,
        save_every: 4,
        holdout: Holdout::Tasks(vec![HELD_OUT.into()]),
        objective,
        sft_examples: 2,
        residual_l2: 0.01,
        mix_weight: 1.0,
        ..TrainDecoderConfig::default()
    }
}

fn train(objective: Objective, out: &Path, stop: Option<usize>) -> TrainOutcome {
    train_with(objective, out, stop, None, None, &[], ResidualInit::Gates).unwrap()
}

/// `train` on `suite`'s tasks (the collection lending the checkpoints it has), the residual
/// on `residual_from` (and `folds`).
fn train_with(
    objective: Objective,
    out: &Path,
    stop: Option<usize>,
    suite: Option<&[Task]>,
    residual_from: Option<&Path>,
    folds: &[ResidualFold],
    init: ResidualInit,
) -> anyhow::Result<TrainOutcome> {
    let fixture = trained_tiny_generator();
    let decoder = residual_decoder(&fixture.collection);
    let cfg = TrainDecoderConfig {
        residual_from: residual_from.map(Path::to_path_buf),
        residual_folds: folds.to_vec(),
        residual_init: init,
        ..settings(objective)
    };
    let encoder = real_encoder();
    let set = load_training_set(
        &fixture.collection,
        suite,
        &decoder,
        &encoder,
        &cfg,
        &out.join("cache"),
    )?;
    let sft = SftData::load(&tiny_model(), &decoder, &set, residual_from, folds)?;
    let opts = TrainOptions {
        stop_after_steps: stop,
        quiet: true,
        command: Some(format!("train stop={stop:?}")),
    };
    train_decoder(
        &set,
        &decoder,
        &cfg,
        &fixture.collection,
        out,
        Some(&sft),
        &opts,
    )
}

/// A residual decoder for the tiny model and `collection`'s layout.
fn residual_decoder(collection: &Path) -> mistralrs_dnd::generator::DecoderConfig {
    let mut decoder = decoder_config_for(
        collection,
        "tiny-llama",
        &mistralrs_dnd::testing::tiny_dims(),
        32,
        4,
        16,
    )
    .unwrap();
    decoder.residual = true;
    decoder
}

fn real_encoder() -> mistralrs_dnd::generator::PromptEncoder {
    mistralrs_dnd::generator::PromptEncoder::load(
        &mistralrs_dnd::testing::real_assets().minilm(),
        &Device::Cpu,
    )
    .unwrap()
}

/// The generator in `dir`, with the real MiniLM encoder.
/// The fixture collection's training set for `decoder` and `cfg` (encodings cached under
/// `dir`) and its end-to-end data on the tiny model.
fn fixture_sft(
    decoder: &mistralrs_dnd::generator::DecoderConfig,
    encoder: &mistralrs_dnd::generator::PromptEncoder,
    cfg: &TrainDecoderConfig,
    dir: &Path,
) -> (mistralrs_dnd::training::generator::TrainingSet, SftData) {
    let collection = &trained_tiny_generator().collection;
    let set =
        load_training_set(collection, None, decoder, encoder, cfg, &dir.join("cache")).unwrap();
    let sft = SftData::load(&tiny_model(), decoder, &set, None, &[]).unwrap();
    (set, sft)
}

fn load_generator(dir: &Path) -> Generator {
    Generator::load(
        dir,
        &mistralrs_dnd::testing::real_assets().minilm(),
        &Device::Cpu,
    )
    .unwrap()
}

fn b_matrices(a: &LoraAdapter, layout: &TokenLayout) -> Vec<Tensor> {
    layout
        .slots
        .iter()
        .map(|s| a.tensors[&s.name()].clone())
        .collect()
}

fn max_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| mistralrs_dnd::testing::max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

/// Trains 8 steps end to end; the generator's adapters at the start are the mean of the
/// training tasks' final checkpoints, the gates leave zero, the held-out NLL is logged
/// against its starting value, and the folder loads as a generator whose adapters differ
/// from the mean.
#[test]
fn sft_starts_at_the_mean_adapter_and_moves_from_it() {
    let fixture = trained_tiny_generator();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sft");
    let outcome = train(Objective::Sft, &out, None);
    let record = &outcome.record;
    assert_eq!(record.step, 8);
    assert_eq!(record.train_tasks.len(), 2);
    let start = record
        .heldout_nll_at_start
        .expect("held-out NLL at the start");
    assert!(start.is_finite() && start > 0.0);
    assert_eq!(record.log.len(), 2);
    for line in &record.log {
        let nll = line.heldout_nll.expect("held-out NLL in the log");
        assert!(nll.is_finite() && nll != start, "{line:?}");
    }

    let g = load_generator(&out);
    assert!(g.config().residual);
    let layout = g.layout().clone();
    let prompts: Vec<String> = (0..4).map(|i| format!("What is {i} plus {i}?")).collect();
    let trained = b_matrices(&g.generate(&prompts).unwrap().adapter, &layout);

    // The mean of the training tasks' last checkpoints.
    let collection = Collection::new(&fixture.collection);
    let last = collection.final_checkpoints().unwrap();
    let means: Vec<LoraAdapter> = record
        .train_tasks
        .iter()
        .map(|t| LoraAdapter::read_peft(&last[t]).unwrap())
        .collect();
    let mean: Vec<Tensor> = layout
        .slots
        .iter()
        .map(|s| {
            let parts: Vec<Tensor> = means.iter().map(|a| a.tensors[&s.name()].clone()).collect();
            Tensor::stack(&parts, 0).unwrap().mean(0).unwrap()
        })
        .collect();
    let residual = mistralrs_dnd::generator::Residual::load(&out, &layout).unwrap();
    assert!(max_diff(&residual.base, &mean) < 1e-6, "base is the mean");
    let gates = residual.gate.abs().unwrap().sum_all().unwrap();
    assert!(gates.to_scalar::<f32>().unwrap() > 0.0, "the gates moved");
    assert!(
        max_diff(&trained, &mean) > 1e-6,
        "the trained generator adds to the mean"
    );
    // Gates at zero give the mean exactly, whatever the decoder says.
    let zero = mistralrs_dnd::generator::Residual {
        gate: residual.gate.zeros_like().unwrap(),
        ..residual
    };
    let (decoder, _) = mistralrs_dnd::generator::Decoder::load(&out, &Device::Cpu).unwrap();
    let encoder = mistralrs_dnd::generator::PromptEncoder::load(
        &mistralrs_dnd::testing::real_assets().minilm(),
        &Device::Cpu,
    )
    .unwrap();
    let at_start = Generator::new(encoder, decoder)
        .unwrap()
        .with_residual(Some(zero))
        .unwrap();
    let start_b = b_matrices(&at_start.generate(&prompts).unwrap().adapter, &layout);
    assert!(max_diff(&start_b, &mean) < 1e-6);
}

/// `--residual-init output` starts where `gates` starts (the base adapter: the same held-out
/// NLL before the first step), its decoder's adapters then depend on the prompts, and a run
/// killed and rerun ends with the same bytes (the zeroed layer is set before the resume
/// state is read).
#[test]
fn output_init_starts_at_the_base_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, init, stop| {
        train_with(
            Objective::Sft,
            &dir.path().join(name),
            stop,
            None,
            None,
            &[],
            init,
        )
        .unwrap()
    };
    let gates = run("gates", ResidualInit::Gates, None);
    let output = run("output", ResidualInit::Output, None);
    let (g0, o0) = (
        gates.record.heldout_nll_at_start.unwrap(),
        output.record.heldout_nll_at_start.unwrap(),
    );
    assert!((g0 - o0).abs() < 1e-6, "{g0} vs {o0}");
    assert!(output.record.log.iter().all(|l| l.heldout_nll != Some(o0)));

    let out = dir.path().join("output");
    let g = load_generator(&out);
    let layout = g.layout().clone();
    let adapter =
        |prompts: Vec<String>| b_matrices(&g.generate(&prompts).unwrap().adapter, &layout);
    let sums = adapter((0..4).map(|i| format!("What is {i} plus {i}?")).collect());
    let words = adapter(
        (0..4)
            .map(|i| format!("Spell word number {i} backwards."))
            .collect(),
    );
    assert!(
        max_diff(&sums, &words) > 1e-6,
        "the prompts move the adapter"
    );

    run("resumed", ResidualInit::Output, Some(5));
    run("resumed", ResidualInit::Output, None);
    for file in ["decoder.safetensors", "residual.safetensors"] {
        assert_eq!(
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(dir.path().join("resumed").join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Killed after 5 steps and rerun, the end-to-end `mix` run ends with the same bytes as an
/// uninterrupted one (the gates and their AdamW moments are in the resume state).
#[test]
fn mix_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(Objective::Mix, &a, None);
    let first = train(Objective::Mix, &b, Some(5));
    assert_eq!(first.record.step, 5);
    let second = train(Objective::Mix, &b, None);
    assert_eq!(second.resumed_from, 4, "resumes from the last save");
    assert_eq!(
        second.record.made_by,
        ["train stop=Some(5)", "train stop=None"],
        "each call's command, in order"
    );
    for file in ["decoder.safetensors", "residual.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// The end-to-end objective trains on a task that was never collected, from a given base
/// adapter (e.g. a multi-task LoRA); reconstruction refuses that task.
#[test]
fn sft_trains_uncollected_tasks_from_a_given_base() {
    let fixture = trained_tiny_generator();
    let collection = Collection::new(&fixture.collection);
    let mut suite: Vec<Task> = collection
        .tasks()
        .unwrap()
        .iter()
        .map(|n| collection.task(n).unwrap())
        .collect();
    let mut fresh = suite[0].clone();
    fresh.name = "never_collected".into();
    suite.push(fresh);
    let from = collection.final_checkpoints().unwrap()[&suite[0].name].clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sft");
    let outcome = train_with(
        Objective::Sft,
        &out,
        None,
        Some(&suite),
        Some(&from),
        &[],
        ResidualInit::Gates,
    )
    .unwrap();
    assert!(outcome
        .record
        .train_tasks
        .contains(&"never_collected".to_string()));
    let g = load_generator(&out);
    let layout = g.layout().clone();
    let residual = mistralrs_dnd::generator::Residual::load(&out, &layout).unwrap();
    let given = b_matrices(&LoraAdapter::read_peft(&from).unwrap(), &layout);
    assert!(
        max_diff(&residual.base, &given) < 1e-6,
        "base is the given adapter"
    );

    // That generator's folder gives the same base to a new run, without the LoRA's folder;
    // a generator without a base adapter is refused.
    let again = dir.path().join("again");
    train_with(
        Objective::Sft,
        &again,
        Some(4),
        Some(&suite),
        Some(&out),
        &[],
        ResidualInit::Gates,
    )
    .unwrap();
    let residual = mistralrs_dnd::generator::Residual::load(&again, &layout).unwrap();
    assert!(
        max_diff(&residual.base, &given) == 0.0,
        "base is the generator's"
    );
    let err = train_with(
        Objective::Sft,
        &dir.path().join("plain"),
        Some(4),
        Some(&suite),
        Some(&fixture.generator),
        &[],
        ResidualInit::Gates,
    )
    .expect_err("a reconstruction generator has no base adapter");
    assert!(format!("{err:#}").contains("not residual"), "{err:#}");

    let err = train_with(
        Objective::Mix,
        &dir.path().join("mix"),
        None,
        Some(&suite),
        None,
        &[],
        ResidualInit::Gates,
    )
    .expect_err("mix needs every task's checkpoints");
    assert!(format!("{err:#}").contains("never_collected"), "{err:#}");
}

/// Every training task in a fold on adapter B trains exactly as a run whose residual sits on
/// B (same decoder and gates, byte for byte), while the generator written sits on
/// `--residual-from` A; rebased onto B it is that run's generator. A fold naming a task
/// that is not a training task is refused.
#[test]
fn folds_train_on_their_adapter_and_rebase_moves_the_base() {
    let fixture = trained_tiny_generator();
    let collection = Collection::new(&fixture.collection);
    let finals = collection.final_checkpoints().unwrap();
    let names = collection.tasks().unwrap();
    let train_tasks: Vec<String> = names.iter().filter(|n| *n != HELD_OUT).cloned().collect();
    let (a, b) = (
        finals[&train_tasks[0]].clone(),
        finals[&train_tasks[1]].clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (folded, plain) = (dir.path().join("folded"), dir.path().join("plain"));
    let fold = ResidualFold {
        adapter: b.clone(),
        tasks: train_tasks.clone(),
    };
    train_with(
        Objective::Sft,
        &folded,
        None,
        None,
        Some(&a),
        &[fold],
        ResidualInit::Gates,
    )
    .unwrap();
    train_with(
        Objective::Sft,
        &plain,
        None,
        None,
        Some(&b),
        &[],
        ResidualInit::Gates,
    )
    .unwrap();
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert!(
        bytes(&folded, "decoder.safetensors") == bytes(&plain, "decoder.safetensors"),
        "the folded run trained as the run on B"
    );
    let layout = load_generator(&folded).layout().clone();
    let written = mistralrs_dnd::generator::Residual::load(&folded, &layout).unwrap();
    let given = b_matrices(&LoraAdapter::read_peft(&a).unwrap(), &layout);
    assert!(max_diff(&written.base, &given) < 1e-6, "written on A");

    let rebased = dir.path().join("rebased");
    let b_adapter = LoraAdapter::read_peft(&b).unwrap();
    mistralrs_dnd::generator::rebase_generator(&folded, &b_adapter, &b, &rebased).unwrap();
    for f in [
        "decoder.safetensors",
        "residual.safetensors",
        "decoder.json",
    ] {
        assert!(bytes(&rebased, f) == bytes(&plain, f), "{f} differs");
    }

    let stray = ResidualFold {
        adapter: b,
        tasks: vec![HELD_OUT.into()],
    };
    let err = train_with(
        Objective::Sft,
        &dir.path().join("stray"),
        None,
        None,
        Some(&a),
        &[stray],
        ResidualInit::Gates,
    )
    .expect_err("a held-out task in a fold");
    assert!(format!("{err:#}").contains(HELD_OUT), "{err:#}");
}

#[test]
fn an_examples_generator_reads_answers_and_is_not_scored_on_the_ones_it_read() {
    let fixture = trained_tiny_generator();
    let mut decoder = residual_decoder(&fixture.collection);
    let encoder = real_encoder();
    let cfg = TrainDecoderConfig {
        prompt_pool: 4,
        ..settings(Objective::Sft)
    };
    let dir = tempfile::tempdir().unwrap();
    let load = |decoder: &mistralrs_dnd::generator::DecoderConfig| {
        fixture_sft(decoder, &encoder, &cfg, dir.path())
    };
    let (prompts_set, prompts_sft) = load(&decoder);
    decoder.condition = Condition::Examples;
    let (set, sft) = load(&decoder);
    for (i, task) in set.train.iter().enumerate() {
        let pool = task.pool.dim(0).unwrap();
        assert_eq!(pool, cfg.prompt_pool.min(task.train.len()));
        assert!(
            task.train.len() > pool,
            "the fixture leaves examples to score"
        );
        assert_eq!(prompts_sft.train[i].train.len(), task.train.len());
        assert_eq!(sft.train[i].train.len(), task.train.len() - pool);
        // The same prompts read with their answers encode to something else.
        let diff = mistralrs_dnd::testing::max_abs_diff(&task.pool, &prompts_set.train[i].pool);
        assert!(diff > 1e-3, "{}: the pool ignores the answers", task.name);
    }
}

/// The condition-contrast term: `contrast` times how far the other condition's adapter
/// falls short of the task's own plus the margin, zero once it is worse by more.
#[test]
fn the_contrast_term_pays_the_margin_until_the_other_condition_is_worse() {
    use mistralrs_dnd::format::rng::Rng;
    let fixture = trained_tiny_generator();
    let decoder = residual_decoder(&fixture.collection);
    // No residual penalty, so that a sample's loss is its cross-entropy alone.
    let cfg = TrainDecoderConfig {
        residual_l2: 0.0,
        ..settings(Objective::Sft)
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, sft) = fixture_sft(&decoder, &real_encoder(), &cfg, dir.path());
    let (t, h, w) = decoder.layout().unwrap().shape();
    let tokens = |seed: u64| {
        let mut rng = Rng::new(seed);
        let v: Vec<f32> = (0..t * h * w).map(|_| 2.0 * rng.unit_f32() - 1.0).collect();
        Tensor::from_vec(v, (t, h, w), &Device::Cpu).unwrap()
    };
    let (x, y) = (tokens(1), (tokens(2) * 30.0).unwrap());
    let gate = sft.model.residual.gate.ones_like().unwrap();
    let contrast = TrainDecoderConfig {
        contrast: 0.5,
        contrast_margin: 0.2,
        ..cfg.clone()
    };
    // The same seed draws the same examples for every call.
    let loss = |c: &TrainDecoderConfig, own: &Tensor, other: Option<&Tensor>| {
        sft.task_loss(0, own, &gate, c, other, &mut Rng::new(7))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (ce_x, ce_y) = (loss(&cfg, &x, None), loss(&cfg, &y, None));
    assert!(
        (ce_x - ce_y).abs() > 0.2,
        "the two adapters differ by more than the margin: {ce_x} {ce_y}"
    );
    let hinge = |own: f32, other: f32| own + 0.5 * (own + 0.2 - other).max(0.0);
    for (own, other, ce_own, ce_other) in [(&x, &y, ce_x, ce_y), (&y, &x, ce_y, ce_x)] {
        let got = loss(&contrast, own, Some(other));
        let want = hinge(ce_own, ce_other);
        assert!((got - want).abs() < 1e-3, "{got} against {want}");
    }
    let same = loss(&contrast, &x, Some(&x));
    assert!(
        (same - (ce_x + 0.1)).abs() < 1e-4,
        "{same} against {ce_x} + 0.1"
    );
}

/// The distillation teacher reads each training example after the task's first examples
/// (which an examples generator's loss never takes; a prompts generator's would, so it is
/// refused), answers with the same tokens, and its term is a non-negative addition to the
/// loss in proportion to its weight; an adapter trained beside the examples reads them too.
#[test]
fn the_distillation_teacher_is_shown_examples_the_loss_never_takes() {
    use mistralrs_dnd::format::rng::Rng;
    let fixture = trained_tiny_generator();
    let mut decoder = residual_decoder(&fixture.collection);
    let cfg = TrainDecoderConfig {
        prompt_pool: 4,
        residual_l2: 0.0,
        ..settings(Objective::Sft)
    };
    let dir = tempfile::tempdir().unwrap();
    let encoder = real_encoder();
    let load = |decoder: &mistralrs_dnd::generator::DecoderConfig| {
        fixture_sft(decoder, &encoder, &cfg, dir.path())
    };
    let (set, sft) = load(&decoder);
    let err = sft
        .with_shown(&set, 2, false)
        .err()
        .expect("a prompts generator");
    assert!(
        format!("{err:#}").contains("would be trained on"),
        "{err:#}"
    );

    decoder.condition = Condition::Examples;
    let (set, sft) = load(&decoder);
    let sft = sft.with_shown(&set, 2, true).unwrap();
    assert!(!sft.heldout.is_empty());
    // Beside the adapter, the held-out tasks' test examples are read after them too.
    let heldout = sft.heldout.iter().map(|ex| (&ex.shown, &ex.test));
    for (shown, plain) in sft
        .train
        .iter()
        .map(|ex| (&ex.shown, &ex.train))
        .chain(heldout)
    {
        assert_eq!(shown.len(), plain.len());
        for (t, s) in shown.iter().zip(plain) {
            assert!(
                t.prompt_len > s.prompt_len,
                "the teacher's prompt holds more turns"
            );
            assert_eq!(
                t.ids[t.prompt_len..],
                s.ids[s.prompt_len..],
                "the same answer"
            );
        }
    }
    let (t, h, w) = decoder.layout().unwrap().shape();
    let mut rng = Rng::new(3);
    let v: Vec<f32> = (0..t * h * w).map(|_| 2.0 * rng.unit_f32() - 1.0).collect();
    let tokens = Tensor::from_vec(v, (t, h, w), &Device::Cpu).unwrap();
    let gate = sft.model.residual.gate.ones_like().unwrap();
    let loss = |distill: f64, adapter_sees_shown: bool| {
        let c = TrainDecoderConfig {
            distill,
            adapter_sees_shown,
            shown: 2,
            ..cfg.clone()
        };
        sft.task_loss(0, &tokens, &gate, &c, None, &mut Rng::new(7))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (plain, one, two) = (loss(0.0, false), loss(1.0, false), loss(2.0, false));
    assert!(
        one - plain > 1e-4,
        "the adapter is not the teacher: {plain} {one}"
    );
    assert!(
        ((two - plain) - 2.0 * (one - plain)).abs() < 1e-4,
        "{plain} {one} {two}"
    );
    // Shown the examples too, the adapter answers otherwise.
    let beside = loss(0.0, true);
    assert!((beside - plain).abs() > 1e-4, "{plain} {beside}");
}

/// `task_mixup` end to end: mixed samples (a batch partly another task's rows, scored on
/// both tasks' examples in the same proportion) change the run, which still trains; at 0
/// the run draws nothing more, so it is the plain one.
#[test]
fn task_mixup_mixes_conditions_and_losses_end_to_end() {
    let fixture = trained_tiny_generator();
    let decoder = residual_decoder(&fixture.collection);
    let encoder = real_encoder();
    let dir = tempfile::tempdir().unwrap();
    let run = |mixup: f64, name: &str| {
        let cfg = TrainDecoderConfig {
            task_mixup: mixup,
            ..settings(Objective::Sft)
        };
        let (set, sft) = fixture_sft(&decoder, &encoder, &cfg, dir.path());
        let opts = TrainOptions {
            stop_after_steps: None,
            quiet: true,
            command: None,
        };
        let out = dir.path().join(name);
        let outcome = train_decoder(
            &set,
            &decoder,
            &cfg,
            &fixture.collection,
            &out,
            Some(&sft),
            &opts,
        )
        .unwrap();
        let losses: Vec<f32> = outcome.record.log.iter().map(|l| l.loss).collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        assert_eq!(outcome.record.config.task_mixup, mixup);
        losses
    };
    let plain = run(0.0, "plain");
    assert_eq!(plain, run(0.0, "plain-again"));
    let mixed = run(1.0, "mixed");
    assert_ne!(plain, mixed);
    let plain_gen = train(Objective::Sft, &dir.path().join("train"), None);
    let logged: Vec<f32> = plain_gen.record.log.iter().map(|l| l.loss).collect();
    assert_eq!(plain, logged, "task_mixup 0 is the plain run");
}
