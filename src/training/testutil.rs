//! Test fixtures: a tiny random llama model in a Hugging Face folder (config, safetensors,
//! a word-level tokenizer with the ChatML special tokens, SmolLM2's chat template), so the
//! trainer and the collector can be tested in seconds without the real model.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::rng::Rng;

/// SmolLM2-135M-Instruct's chat template, verbatim from its GGUF metadata.
pub const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const WORDS: &str = "system user assistant You are a helpful AI named SmolLM , trained by Hugging \
Face what is plus minus times the word reverse cat tac is even or odd ? . A B C D ) how many \
letters in of and to from if today day week month after before which number larger largest \
sort these numbers list items item last first letter count convert into hours minutes days \
weeks meters kilometers answer with write capital uppercase Monday Tuesday Wednesday \
Thursday Friday Saturday Sunday add subtract multiply by calculate please now ' \" : ,";

pub const HIDDEN: usize = 32;
pub const LAYERS: usize = 2;

/// A fresh temporary folder holding the tiny model.
pub fn tiny_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_tiny_model(dir.path());
    dir
}

pub fn write_tiny_model(dir: &std::path::Path) {
    // Tokenizer: special tokens 0..=2, [UNK] 3, then words, numbers 0..=300 and letters.
    let mut vocab: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
        "[UNK]".into(),
    ];
    let mut push = |w: String| {
        if !vocab.contains(&w) {
            vocab.push(w);
        }
    };
    WORDS.split_whitespace().for_each(|w| push(w.to_string()));
    (0..=300).for_each(|n| push(n.to_string()));
    ('a'..='z').for_each(|c| push(c.to_string()));
    let vocab_size = vocab.len();
    let added: Vec<serde_json::Value> = (0..3)
        .map(|id| {
            serde_json::json!({"id": id, "content": vocab[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), serde_json::json!(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tok_cfg = serde_json::json!({"chat_template": SMOLLM2_TEMPLATE, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();

    let (inter, heads, kv) = (64, 4, 2);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "intermediate_size": inter,
        "num_attention_heads": heads, "num_key_value_heads": kv, "num_hidden_layers": LAYERS,
        "vocab_size": vocab_size, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": true, "bos_token_id": 1,
        "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let mut rng = Rng::new(42);
    let mut rand = |shape: &[usize], center: f32, scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| center + (2.0 * rng.unit_f32() - 1.0) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let hd = HIDDEN / heads;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        rand(&[vocab_size, HIDDEN], 0.0, 1.0),
    );
    t.insert("model.norm.weight".into(), rand(&[HIDDEN], 1.0, 0.2));
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let lin = |o: usize, i: usize| (o, i, 1.0 / (i as f32).sqrt() * 1.7);
        for (name, (o, i, s)) in [
            ("self_attn.q_proj", lin(heads * hd, HIDDEN)),
            ("self_attn.k_proj", lin(kv * hd, HIDDEN)),
            ("self_attn.v_proj", lin(kv * hd, HIDDEN)),
            ("self_attn.o_proj", lin(HIDDEN, heads * hd)),
            ("mlp.gate_proj", lin(inter, HIDDEN)),
            ("mlp.up_proj", lin(inter, HIDDEN)),
            ("mlp.down_proj", lin(HIDDEN, inter)),
        ] {
            t.insert(format!("{p}.{name}.weight"), rand(&[o, i], 0.0, s));
        }
        t.insert(
            format!("{p}.input_layernorm.weight"),
            rand(&[HIDDEN], 1.0, 0.2),
        );
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            rand(&[HIDDEN], 1.0, 0.2),
        );
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}
