//! GGUF (llama.cpp) -> Hugging Face llama folder, for SmolLM2 and other llama-architecture
//! GGUFs: dequantised weights with the q/k rotary permutation undone, `config.json`, a
//! `tokenizer.json` rebuilt from the GGUF's BPE metadata, `tokenizer_config.json` with the
//! chat template, and `generation_config.json`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

fn meta<'a>(c: &'a Content, key: &str) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .with_context(|| format!("GGUF metadata has no {key}"))
}

fn meta_u32(c: &Content, key: &str) -> Result<usize> {
    Ok(meta(c, key)?.to_u32()? as usize)
}

/// llama.cpp stores q and k rows permuted for its interleaved rotary layout: per head, the
/// rows are (d/2, 2) where Hugging Face has (2, d/2). Undo it.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let d = out / heads;
    Ok(w.reshape((heads, d / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Converts `gguf` into a Hugging Face llama folder at `out` (created; must not exist).
pub fn convert_gguf_to_hf(gguf: &Path, out: &Path) -> Result<()> {
    let mut file =
        std::fs::File::open(gguf).with_context(|| format!("opening {}", gguf.display()))?;
    let content = Content::read(&mut file)
        .with_context(|| format!("{} is not a readable GGUF file", gguf.display()))?;
    let arch = meta(&content, "general.architecture")?.to_string()?.clone();
    if arch != "llama" {
        bail!("only llama-architecture GGUFs are supported, got {arch:?}");
    }
    let hidden = meta_u32(&content, "llama.embedding_length")?;
    let ffn = meta_u32(&content, "llama.feed_forward_length")?;
    let heads = meta_u32(&content, "llama.attention.head_count")?;
    let kv_heads = meta_u32(&content, "llama.attention.head_count_kv")?;
    let layers = meta_u32(&content, "llama.block_count")?;
    let ctx = meta_u32(&content, "llama.context_length")?;
    let eps = meta(&content, "llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
    let theta = meta(&content, "llama.rope.freq_base")
        .and_then(|v| Ok(v.to_f32()?))
        .unwrap_or(10000.0);
    let vocab = meta(&content, "tokenizer.ggml.tokens")?.to_vec()?.len();
    let bos = meta_u32(&content, "tokenizer.ggml.bos_token_id")?;
    let eos = meta_u32(&content, "tokenizer.ggml.eos_token_id")?;
    let pad = meta_u32(&content, "tokenizer.ggml.padding_token_id").unwrap_or(eos);
    let tied = !content.tensor_infos.contains_key("output.weight");

    let mut names: Vec<(String, String, Option<usize>)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            None,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            None,
        ),
    ];
    if !tied {
        names.push(("output.weight".into(), "lm_head.weight".into(), None));
    }
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (g, h, perm) in [
            ("attn_q", "self_attn.q_proj", Some(heads)),
            ("attn_k", "self_attn.k_proj", Some(kv_heads)),
            ("attn_v", "self_attn.v_proj", None),
            ("attn_output", "self_attn.o_proj", None),
            ("ffn_gate", "mlp.gate_proj", None),
            ("ffn_up", "mlp.up_proj", None),
            ("ffn_down", "mlp.down_proj", None),
            ("attn_norm", "input_layernorm", None),
            ("ffn_norm", "post_attention_layernorm", None),
        ] {
            names.push((
                format!("blk.{i}.{g}.weight"),
                format!("{p}.{h}.weight"),
                perm,
            ));
        }
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (g, h, perm) in names {
        let q = content
            .tensor(&mut file, &g, &Device::Cpu)
            .with_context(|| format!("reading GGUF tensor {g}"))?;
        let mut t = q.dequantize(&Device::Cpu)?;
        if let Some(n) = perm {
            t = unpermute(&t, n)?;
        }
        tensors.insert(h, t.to_dtype(DType::F16)?);
    }

    std::fs::create_dir_all(out)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "head_dim": hidden / heads,
        "max_position_embeddings": ctx,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": null,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float16",
    });
    write_json(&out.join("config.json"), &config)?;
    write_json(
        &out.join("tokenizer.json"),
        &tokenizer_json_from_gguf(&content)?,
    )?;
    let tokens = meta(&content, "tokenizer.ggml.tokens")?.to_vec()?;
    let tok = |id: usize| -> Result<String> { Ok(tokens[id].to_string()?.clone()) };
    let template = meta(&content, "tokenizer.chat_template")?
        .to_string()?
        .clone();
    write_json(
        &out.join("tokenizer_config.json"),
        &json!({
            "chat_template": template,
            "bos_token": tok(bos)?,
            "eos_token": tok(eos)?,
            "pad_token": tok(pad)?,
            "unk_token": tok(0)?,
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": ctx,
            "tokenizer_class": "GPT2Tokenizer",
        }),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &json!({ "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad }),
    )?;
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A `tokenizers` JSON for the GGUF's GPT-2-style BPE: digits split one by one, then
/// byte-level without a prefix space (llama.cpp's "smollm" pre-tokenizer); the tokens of
/// type 3 (control) are special added tokens.
pub fn tokenizer_json_from_gguf(c: &Content) -> Result<serde_json::Value> {
    let model = meta(c, "tokenizer.ggml.model")?.to_string()?;
    if model != "gpt2" {
        bail!("only GPT-2 style BPE tokenizers are supported, got {model:?}");
    }
    let tokens = meta(c, "tokenizer.ggml.tokens")?.to_vec()?;
    let merges = meta(c, "tokenizer.ggml.merges")?.to_vec()?;
    let types = meta(c, "tokenizer.ggml.token_type")?.to_vec()?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let s = t.to_string()?;
        vocab.insert(s.clone(), json!(id));
        if types.get(id).map(|v| v.to_i32().unwrap_or(1)) == Some(3) {
            added.push(json!({
                "id": id, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
        }
    }
    let merges: Vec<String> = merges
        .iter()
        .map(|m| Ok(m.to_string()?.clone()))
        .collect::<Result<_>>()?;
    let byte_level = |prefix: bool, trim: bool| json!({ "type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": trim, "use_regex": true });
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                { "type": "Digits", "individual_digits": true },
                byte_level(false, true),
            ]
        },
        "post_processor": byte_level(false, false),
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    }))
}
