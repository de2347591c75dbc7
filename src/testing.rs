//! Test fixtures shared by the unit tests and the integration tests (production code never
//! uses them): a tiny llama model the tests build themselves (seeded random weights, a
//! byte-level BPE tokenizer with ChatML specials, a chat template), the real assets fetched
//! when missing, and random LoRA adapters (re-exported from the PEFT format, where the
//! hot-load benchmark finds them too).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use crate::format::peft::{uniform, LlamaDims, Module};

pub use crate::format::peft::random_adapter;

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// SmolLM2-135M-Instruct's chat template, verbatim from its GGUF metadata (it adds a
/// default system prompt).
pub const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The largest absolute difference between two tensors of one shape (as F32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// The sum of a tensor's absolute values (as F32): is a gradient there, and finite?
pub fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|d| d.sum_all())
        .and_then(|d| d.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("a tensor")
}

/// A fresh temporary folder holding the tiny model ([`write_tiny_llama`], seed 7) with
/// SmolLM2's chat template, for the trainer's tests.
pub fn tiny_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_tiny_llama(dir.path(), 7).expect("writing the tiny model");
    let path = dir.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("tokenizer_config.json"))
            .expect("valid JSON");
    cfg["chat_template"] = json!(SMOLLM2_TEMPLATE);
    std::fs::write(&path, cfg.to_string()).expect("writing tokenizer_config.json");
    dir
}

/// The real assets for tests: `$DND_ASSETS`, or `assets/` in the crate, fetched when missing
/// (so that no real-model test skips itself on a clean checkout).
pub fn real_assets() -> crate::assets::Assets {
    let root = crate::assets::default_root();
    let root = if root.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(root)
    } else {
        root
    };
    let assets = crate::assets::Assets::new(root);
    assets.ensure().expect("fetching the real model assets");
    assets
}

/// Shapes of the tiny test model (GQA: 4 heads, 2 KV heads).
pub fn tiny_dims() -> LlamaDims {
    LlamaDims {
        hidden_size: 64,
        intermediate_size: 128,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        num_hidden_layers: 2,
        head_dim: Some(16),
    }
}

/// GPT-2's byte -> printable character map used by byte-level BPE.
pub fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32).collect();
    printable.extend('¡' as u32..='¬' as u32);
    printable.extend('®' as u32..='ÿ' as u32);
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            if printable.contains(&b) {
                char::from_u32(b).expect("valid char")
            } else {
                n += 1;
                char::from_u32(255 + n).expect("valid char")
            }
        })
        .collect()
}

/// Writes a tiny llama model (Hugging Face layout, F32) into `dir`.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let d = tiny_dims();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let vocab_size = specials.len() + 256;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
        added.push(
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    for (i, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(specials.len() + i));
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tokenizer)?)?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&json!({
            "chat_template": CHATML_TEMPLATE, "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
            "add_bos_token": false, "model_max_length": 512
        }))?,
    )?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": d.hidden_size, "intermediate_size": d.intermediate_size,
            "num_attention_heads": d.num_attention_heads,
            "num_key_value_heads": d.num_key_value_heads,
            "num_hidden_layers": d.num_hidden_layers, "head_dim": d.head_dim(),
            "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "rope_scaling": null, "vocab_size": vocab_size, "tie_word_embeddings": true,
            "attention_bias": false, "mlp_bias": false, "bos_token_id": 1, "eos_token_id": 2,
            "torch_dtype": "float32"
        }))?,
    )?;
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::to_vec(&json!({"bos_token_id": 1, "eos_token_id": 2}))?,
    )?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    // Only letters and digits get non-zero embeddings. The others' (tied) logits are 0 and
    // never win greedy decoding against 62 random ones, so the model neither stops at once
    // nor emits text the server holds back or trims (spaces, invalid UTF-8, tool-call
    // openers such as '{', '[' and '<').
    let keep: Vec<f32> = (0..vocab_size)
        .map(|i| {
            let byte = i as i64 - specials.len() as i64;
            let alnum = u8::try_from(byte).is_ok_and(|b| b.is_ascii_alphanumeric());
            if alnum {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let keep = Tensor::from_vec(keep, (vocab_size, 1), &Device::Cpu)?;
    let embed = uniform(&mut rng, &[vocab_size, d.hidden_size], 1.0)?.broadcast_mul(&keep)?;
    t.insert("model.embed_tokens.weight".into(), embed);
    t.insert(
        "model.norm.weight".into(),
        Tensor::ones(d.hidden_size, candle_core::DType::F32, &Device::Cpu)?,
    );
    for l in 0..d.num_hidden_layers {
        for m in Module::ALL {
            let (i, o) = m.dims(&d);
            let scale = 1.0 / (i as f32).sqrt();
            t.insert(
                format!("model.layers.{l}.{}.{}.weight", m.block(), m.name()),
                uniform(&mut rng, &[o, i], scale)?,
            );
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            t.insert(
                format!("model.layers.{l}.{n}.weight"),
                Tensor::ones(d.hidden_size, candle_core::DType::F32, &Device::Cpu)?,
            );
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    Ok(())
}
