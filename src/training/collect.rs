//! Checkpoint collection: one LoRA fine-tune per task, saving a checkpoint at every step of
//! the last part of the run. These trajectories are the generator's training targets (DnD
//! paper, section 5: "a checkpoint at every step", about 50 per dataset). What it writes is
//! the [`super::collection`] format.
//!
//! Cost, SmolLM2-135M with LoRA r = 8 on q_proj and v_proj on this project's 2-core CPU:
//! - an example is 41-68 tokens once wrapped in the chat template, of which the first ~30
//!   (system prompt, ChatML markers) are the same for every example and computed once per
//!   batch (`suite_token_lengths` test);
//! - a step (forward, backward, AdamW) at batch 4 costs 1.7-3.0 s depending on the task's
//!   length (`bench_smollm2_step`: 1.86-1.90 s at 4 x 52 tokens, 3.82 s without the shared
//!   prefix); batch 8 costs 1.9-2.2x batch 4, so batch 4 is used. The matmuls are ~60 % of
//!   the time and reach 35-50 GFLOP/s here, not 120.
//!
//! Defaults ([`CollectConfig::default`]): 64 steps of batch 4 per task with a shared frozen
//! A (LoRA-FA) and a checkpoint after each of the last 40: the first 24 steps play the part
//! of the paper's "short first run", the 40 checkpoints its per-step trajectory. Measured
//! (README, "The generator and its training data"): 42-85 s per task, the 24-task suite in
//! about 25 minutes, peak RSS 1.2 GB. Each checkpoint is 1.8 MB (F32).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::collection::{
    checkpoint_name, read_json, CheckpointMeta, CollectConfig, Collection, TaskDone, DONE_FILE,
    META_FILE, SETTINGS_FILE, TASK_FILE,
};
use super::llama::batch::BatchStream;
use super::llama::chat::ChatTokenizer;
use super::llama::Llama;
use super::lora::{TrainConfig, Trainer};
use super::optim::{progress_bar, safetensors_bytes, StepBudget, RESUME_STATE_FILE};
use crate::format::fsio::{publish_dir, write_atomic, write_folder_atomic};
use crate::format::rng::Rng;
use crate::tasks::Task;

/// What a call to [`collect`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectReport {
    /// Tasks found complete and skipped.
    pub skipped: Vec<String>,
    /// Tasks trained in this call.
    pub trained: Vec<String>,
    /// Set when the call stopped early (step limit) in the middle of this task.
    pub interrupted: Option<String>,
    /// A task continued from its resume state, and the step it continued from.
    pub resumed: Option<(String, usize)>,
}

/// Knobs that do not change the trained weights.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// Stop (as if killed) after this many optimiser steps in this call.
    pub stop_after_steps: Option<usize>,
    /// No progress bars or timing lines (tests).
    pub quiet: bool,
    /// The command line of this call, recorded in each task's `done.json`.
    pub command: Option<String>,
    /// Save a task's resume state every this many steps (0: never; a killed task then starts
    /// again from its first step).
    pub resume_every: usize,
}

/// What a task's partial folder needs, beside its checkpoints, to continue after a kill.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeRecord {
    train_hash: String,
    seed: u64,
    step: usize,
    losses: Vec<f32>,
    checkpoints: Vec<String>,
    seconds: f64,
}

const RESUME_DIR: &str = "resume";
const RESUME_FILE: &str = "resume.json";

/// The resume state in `partial`, if it is one of this run (same examples and seed).
fn read_resume(
    partial: &Path,
    hash: &str,
    seed: u64,
) -> Result<Option<(ResumeRecord, HashMap<String, Tensor>)>> {
    let dir = partial.join(RESUME_DIR);
    if !dir.join(RESUME_FILE).is_file() {
        return Ok(None);
    }
    let record: ResumeRecord = read_json(&dir.join(RESUME_FILE))?;
    if record.train_hash != hash || record.seed != seed {
        return Ok(None);
    }
    let state = candle_core::safetensors::load(dir.join(RESUME_STATE_FILE), &Device::Cpu)
        .with_context(|| format!("reading {}", dir.display()))?;
    Ok(Some((record, state)))
}

/// The seed of one task's run.
pub fn task_seed(seed: u64, task: &str) -> u64 {
    Rng::derive(seed, task).next_u64()
}

fn train_hash(task: &Task) -> Result<String> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&task.train)?);
    Ok(hex::encode(&h.finalize()[..8]))
}

/// Trains every task in order and writes its checkpoints under `out`, skipping tasks that
/// are already complete there. See the module documentation for the layout.
pub fn collect(
    base_dir: &Path,
    tasks: &[Task],
    out: &Path,
    cfg: &CollectConfig,
    opts: &CollectOptions,
) -> Result<CollectReport> {
    ensure!(cfg.train.steps >= 1, "steps must be at least 1");
    ensure!(cfg.checkpoints >= 1, "checkpoints must be at least 1");
    let mut names = std::collections::BTreeSet::new();
    for t in tasks {
        t.validate()?;
        ensure!(
            !t.train.is_empty(),
            "task {} has no training examples",
            t.name
        );
        ensure!(names.insert(&t.name), "task {} is listed twice", t.name);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    check_settings(out, cfg)?;

    let device = Device::Cpu;
    let base = Llama::load(base_dir, &device)?;
    let tok = ChatTokenizer::load(base_dir)?;
    let mut report = CollectReport::default();
    let mut budget = StepBudget::new(opts.stop_after_steps);
    for (i, task) in tasks.iter().enumerate() {
        let hash = train_hash(task)?;
        if let Some(dir) = Collection::new(out).completed(&task.name) {
            let done: TaskDone = read_json(&dir.join(DONE_FILE))?;
            ensure!(
                done.train_hash == hash,
                "{} was collected from different training examples of task {}; use a new output folder",
                dir.display(),
                task.name
            );
            report.skipped.push(task.name.clone());
            continue;
        }
        let label = format!("[{}/{}] {}", i + 1, tasks.len(), task.name);
        match train_task(
            &base,
            &tok,
            task,
            &hash,
            out,
            cfg,
            opts,
            &label,
            &mut budget,
            &mut report.resumed,
        )? {
            true => report.trained.push(task.name.clone()),
            false => {
                report.interrupted = Some(task.name.clone());
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// Writes `collect.json`, or checks that an existing one has the same settings.
fn check_settings(out: &Path, cfg: &CollectConfig) -> Result<()> {
    let path = out.join(SETTINGS_FILE);
    if path.exists() {
        let old: CollectConfig = read_json(&path)?;
        if &old != cfg {
            bail!(
                "{} was started with other settings ({}); resume with the same settings or use a new output folder",
                out.display(),
                serde_json::to_string(&old)?
            );
        }
        return Ok(());
    }
    write_atomic(&path, &serde_json::to_vec_pretty(cfg)?)
}

/// Trains one task into its partial folder and publishes it. Returns false when the step
/// budget ran out first (the partial folder stays behind, as after a kill).
#[allow(clippy::too_many_arguments)]
fn train_task(
    base: &Llama,
    tok: &ChatTokenizer,
    task: &Task,
    hash: &str,
    out: &Path,
    cfg: &CollectConfig,
    opts: &CollectOptions,
    label: &str,
    budget: &mut StepBudget,
    resumed: &mut Option<(String, usize)>,
) -> Result<bool> {
    let started = Instant::now();
    let final_dir = out.join(&task.name);
    let partial = out.join(format!(".partial-{}", task.name));
    let seed = task_seed(cfg.train.seed, &task.name);
    let resume = read_resume(&partial, hash, seed)?;
    let mut stale = vec![final_dir.clone()];
    match &resume {
        // Checkpoints written after the resume state are written again.
        Some((r, _)) => stale
            .extend((r.step + 1..=cfg.train.steps).map(|step| partial.join(checkpoint_name(step)))),
        None => stale.push(partial.clone()),
    }
    for dir in stale.iter().filter(|d| d.exists()) {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing incomplete {}", dir.display()))?;
    }
    if resume.is_none() {
        std::fs::create_dir_all(&partial)?;
        crate::tasks::taskfile::write_task_file(task, &partial.join(TASK_FILE))?;
    }

    let train_cfg = TrainConfig {
        seed,
        ..cfg.train.clone()
    };
    let examples = task
        .train
        .iter()
        .map(|e| tok.encode_example(&e.prompt, &e.answer))
        .collect::<Result<Vec<_>>>()?;
    let mut stream = BatchStream::new(examples, train_cfg.batch_size, tok.end_of_turn, seed)?;
    let mut trainer = Trainer::new(base, train_cfg)?;
    let (mut losses, mut checkpoints, mut seconds_before) = (Vec::new(), Vec::new(), 0.0);
    if let Some((r, state)) = resume {
        trainer.restore(state, r.step)?;
        stream.skip(r.step);
        (losses, checkpoints, seconds_before) = (r.losses, r.checkpoints, r.seconds);
        *resumed = Some((task.name.clone(), r.step));
    }

    let bar = progress_bar(cfg.train.steps, opts.quiet, label);
    bar.set_position(trainer.steps_done() as u64);

    let saved = cfg.saved_steps();
    while trainer.steps_done() < cfg.train.steps {
        if !budget.take() {
            bar.abandon_with_message("stopped (step limit)");
            return Ok(false);
        }
        let batch = stream.next_batch(base.device())?;
        let stats = trainer.step(&batch)?;
        let step = trainer.steps_done();
        losses.push(stats.loss);
        if saved.contains(&step) {
            let name = checkpoint_name(step);
            let dir = partial.join(&name);
            trainer.lora.to_adapter(&base.name)?.write_peft(&dir)?;
            let meta = CheckpointMeta {
                task: task.name.clone(),
                step,
                loss: stats.loss,
                grad_norm: stats.grad_norm,
                lr: stats.lr,
                seed,
            };
            write_atomic(&dir.join(META_FILE), &serde_json::to_vec_pretty(&meta)?)?;
            checkpoints.push(name);
        }
        if opts.resume_every > 0 && step % opts.resume_every == 0 && step < cfg.train.steps {
            let record = ResumeRecord {
                train_hash: hash.to_string(),
                seed,
                step,
                losses: losses.clone(),
                checkpoints: checkpoints.clone(),
                seconds: seconds_before + started.elapsed().as_secs_f64(),
            };
            write_folder_atomic(
                &partial.join(RESUME_DIR),
                &[
                    (
                        RESUME_STATE_FILE,
                        &safetensors_bytes(&trainer.resume_state())?,
                    ),
                    (RESUME_FILE, &serde_json::to_vec_pretty(&record)?),
                ],
            )?;
        }
        bar.set_message(format!("loss {:.3}", stats.loss));
        bar.inc(1);
    }
    let seconds = seconds_before + started.elapsed().as_secs_f64();
    let resume_dir = partial.join(RESUME_DIR);
    if resume_dir.exists() {
        std::fs::remove_dir_all(&resume_dir)?;
    }
    let done = TaskDone {
        task: task.name.clone(),
        family: task.family.clone(),
        train_hash: hash.to_string(),
        seed,
        steps: cfg.train.steps,
        checkpoints,
        losses,
        seconds,
        command: opts.command.clone(),
    };
    write_atomic(&partial.join(DONE_FILE), &serde_json::to_vec_pretty(&done)?)?;
    publish_dir(&partial, &final_dir)?;
    let first = done.losses.first().copied().unwrap_or(f32::NAN);
    let last = done.losses.last().copied().unwrap_or(f32::NAN);
    bar.finish_and_clear();
    if !opts.quiet {
        println!(
            "{label}: {} steps in {seconds:.1} s ({:.2} s/step), loss {first:.3} -> {last:.3}, {} checkpoints",
            cfg.train.steps,
            seconds / cfg.train.steps as f64,
            done.checkpoints.len()
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::LoraAdapter;
    use crate::tasks::{builtin_task, SuiteConfig};
    use crate::testing::tiny_model_dir;
    use crate::training::lora::LoraConfig;

    fn small() -> (Vec<Task>, CollectConfig) {
        let sc = SuiteConfig {
            seed: 9,
            train: 12,
            test: 4,
            ..SuiteConfig::default()
        };
        let tasks = vec![
            builtin_task("add", &sc).unwrap(),
            builtin_task("parity", &sc).unwrap(),
        ];
        let cfg = CollectConfig {
            train: TrainConfig {
                lora: LoraConfig {
                    rank: 2,
                    alpha: 4.0,
                    ..LoraConfig::default()
                },
                steps: 5,
                batch_size: 3,
                lr: 1e-2,
                warmup_steps: 1,
                seed: 11,
                ..TrainConfig::default()
            },
            checkpoints: 3,
        };
        (tasks, cfg)
    }

    fn quiet(stop: Option<usize>) -> CollectOptions {
        CollectOptions {
            stop_after_steps: stop,
            quiet: true,
            ..Default::default()
        }
    }

    /// Every file under `dir` except timings, as (relative path, bytes).
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                let mut bytes = std::fs::read(&p).unwrap();
                if rel.ends_with(DONE_FILE) {
                    let mut done: TaskDone = serde_json::from_slice(&bytes).unwrap();
                    done.seconds = 0.0;
                    bytes = serde_json::to_vec(&done).unwrap();
                }
                out.push((rel, bytes));
            }
        }
        out.sort();
        out
    }

    /// The uninterrupted run's folder and the resumed run's hold the same files and bytes.
    fn assert_same_files(full: &Path, resumed: &Path) {
        let a = snapshot(full);
        let b = snapshot(resumed);
        assert_eq!(
            a.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            b.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>()
        );
        for ((p, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                x == y,
                "{p} differs between the resumed and the uninterrupted run"
            );
        }
    }

    #[test]
    fn resumed_collection_equals_uninterrupted_one() {
        let model = tiny_model_dir();
        let (tasks, cfg) = small();

        let full = tempfile::tempdir().unwrap();
        let r = collect(model.path(), &tasks, full.path(), &cfg, &quiet(None)).unwrap();
        assert_eq!(r.trained, vec!["add", "parity"]);
        assert!(r.interrupted.is_none());

        // Killed three steps into the second task (one checkpoint written), then resumed.
        let resumed = tempfile::tempdir().unwrap();
        let r = collect(model.path(), &tasks, resumed.path(), &cfg, &quiet(Some(8))).unwrap();
        assert_eq!(r.trained, vec!["add"]);
        assert_eq!(r.interrupted.as_deref(), Some("parity"));
        assert!(Collection::new(resumed.path())
            .completed("parity")
            .is_none());
        assert!(resumed.path().join(".partial-parity/step-000003").exists());
        let r = collect(model.path(), &tasks, resumed.path(), &cfg, &quiet(None)).unwrap();
        assert_eq!(r.skipped, vec!["add"]);
        assert_eq!(r.trained, vec!["parity"]);
        assert!(!resumed.path().join(".partial-parity").exists());

        assert_same_files(full.path(), resumed.path());

        // Layout: the last three steps of five, each a valid PEFT folder with its meta.
        let done: TaskDone = read_json(&full.path().join("add").join(DONE_FILE)).unwrap();
        assert_eq!(
            done.checkpoints,
            vec!["step-000003", "step-000004", "step-000005"]
        );
        assert_eq!(done.losses.len(), 5);
        let ck = full.path().join("add/step-000005");
        let adapter = LoraAdapter::read_peft(&ck).unwrap();
        let base = Llama::load(model.path(), &Device::Cpu).unwrap();
        adapter.validate(&base.dims).unwrap();
        assert_eq!(adapter.config.r, 2);
        let meta: CheckpointMeta = read_json(&ck.join(META_FILE)).unwrap();
        assert_eq!((meta.task.as_str(), meta.step), ("add", 5));
        assert_eq!(meta.seed, task_seed(11, "add"));
        assert_eq!(meta.loss, done.losses[4]);
        let saved =
            crate::tasks::taskfile::read_task_file(&full.path().join("add").join(TASK_FILE))
                .unwrap();
        assert_eq!(
            (saved.train, saved.test),
            (tasks[0].train.clone(), tasks[0].test.clone())
        );
        // Trained: B is no longer zero.
        let b = adapter.pair(0, crate::format::Module::Q).unwrap().1;
        assert!(
            b.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );

        // Other settings on the same folder are refused.
        let other = CollectConfig {
            checkpoints: 2,
            ..cfg.clone()
        };
        let err = collect(model.path(), &tasks, full.path(), &other, &quiet(None)).unwrap_err();
        assert!(format!("{err:#}").contains("other settings"), "{err:#}");
    }

    #[test]
    fn a_killed_task_continues_from_its_resume_state() {
        let model = tiny_model_dir();
        let (tasks, cfg) = small();
        let full = tempfile::tempdir().unwrap();
        collect(model.path(), &tasks, full.path(), &cfg, &quiet(None)).unwrap();

        // Resume state every 2 steps; killed 3 steps into the first task (5 steps), so its
        // state is step 2's and step 3's checkpoint is written again.
        let every = |stop| CollectOptions {
            resume_every: 2,
            ..quiet(stop)
        };
        let resumed = tempfile::tempdir().unwrap();
        let r = collect(model.path(), &tasks, resumed.path(), &cfg, &every(Some(3))).unwrap();
        assert_eq!(r.interrupted.as_deref(), Some("add"));
        assert!(resumed
            .path()
            .join(".partial-add/resume/state.safetensors")
            .exists());
        assert!(resumed.path().join(".partial-add/step-000003").exists());
        // 3 more steps finish "add" only if it continues from step 2.
        let r = collect(model.path(), &tasks, resumed.path(), &cfg, &every(Some(3))).unwrap();
        assert_eq!(r.resumed, Some(("add".to_string(), 2)));
        assert_eq!(r.trained, vec!["add"]);
        let r = collect(model.path(), &tasks, resumed.path(), &cfg, &every(None)).unwrap();
        assert_eq!(r.trained, vec!["parity"]);

        assert_same_files(full.path(), resumed.path());
    }

    #[test]
    fn saved_steps_are_the_last_ones() {
        let mut c = CollectConfig::default();
        c.train.steps = 10;
        c.checkpoints = 4;
        assert_eq!(c.saved_steps(), 7..=10);
        c.checkpoints = 50;
        assert_eq!(c.saved_steps(), 1..=10);
    }

    /// Token lengths of the built-in suite with the real tokenizer (for the budget):
    /// `cargo test --lib suite_token_lengths -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn suite_token_lengths() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2");
        let tok = ChatTokenizer::load(&dir).unwrap();
        let suite = crate::tasks::builtin_suite(&SuiteConfig::default()).unwrap();
        let mut all = Vec::new();
        for t in &suite {
            let lens: Vec<usize> = t
                .train
                .iter()
                .map(|e| tok.encode_example(&e.prompt, &e.answer).unwrap())
                .map(|e| e.ids.len())
                .collect();
            let answer: Vec<usize> = t
                .train
                .iter()
                .map(|e| tok.encode_example(&e.prompt, &e.answer).unwrap())
                .map(|e| e.ids.len() - e.prompt_len)
                .collect();
            let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
            let amean = answer.iter().sum::<usize>() as f64 / answer.len() as f64;
            println!(
                "{:<20} tokens mean {mean:.1} max {:>3}; answer tokens mean {amean:.1} max {}",
                t.name,
                lens.iter().max().unwrap(),
                answer.iter().max().unwrap()
            );
            all.extend(lens);
        }
        let mean = all.iter().sum::<usize>() as f64 / all.len() as f64;
        println!("suite: mean {mean:.1} max {}", all.iter().max().unwrap());
        let ex = &suite[0].train[0];
        let e = tok.encode_example(&ex.prompt, &ex.answer).unwrap();
        println!(
            "{:?} -> {:?}",
            ex.prompt,
            tok.tokenizer.decode(&e.ids, false).unwrap()
        );
    }
}
