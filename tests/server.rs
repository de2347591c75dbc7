//! The serving foundation on the tiny model: routing, LoRA application, LRU, pinning,
//! auth, validation, concurrency and restart.

use std::time::Duration;

use mistralrs_dnd::format::Module;
use mistralrs_dnd::testing::{random_adapter, tiny_dims};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

fn adapter(seed: u64) -> mistralrs_dnd::format::LoraAdapter {
    random_adapter(
        &tiny_dims(),
        &[Module::Q, Module::V, Module::Down],
        4,
        seed,
        0.5,
        0.5,
    )
    .unwrap()
}

async fn hash_of(s: &TestServer, task: &str) -> String {
    let r = s
        .admin(Method::GET, &format!("/adapters/{task}"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["hash"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_each_task_id_source() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    let up = s.upload("t1", &adapter(1)).await;
    assert_eq!(up.status, 201, "{}", up.json);
    let want = format!("t1@{}", hash_of(&s, "t1").await);

    let by_header = s.chat_task("hello", "t1").await;
    let by_body = s
        .chat("hello", |rb, b| {
            b["task_id"] = json!("t1");
            rb
        })
        .await;
    let by_user = s
        .chat("hello", |rb, b| {
            b["user"] = json!("t1");
            rb
        })
        .await;
    let untagged = s.chat("hello", |rb, _| rb).await;
    let unknown = s.chat_task("hello", "nobody").await;
    for r in [&by_header, &by_body, &by_user] {
        assert_eq!(r.status, 200, "{}", r.json);
        assert_eq!(r.adapter.as_deref(), Some(want.as_str()));
    }
    assert_eq!(by_header.content(), by_body.content());
    assert_eq!(untagged.adapter.as_deref(), Some("base"));
    assert_eq!(unknown.adapter.as_deref(), Some("base"));
    assert_eq!(untagged.content(), unknown.content());

    // Completions are tagged the same way.
    let r = s
        .client
        .post(format!("{}/v1/completions", s.url))
        .header("X-Task-Id", "t1")
        .json(&json!({"model": "x", "prompt": "abc", "max_tokens": 4, "temperature": 0.0}))
        .send()
        .await
        .unwrap();
    let r = reply(r).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.adapter.as_deref(), Some(want.as_str()));

    // The model list does not reveal which tasks (tenants) have adapters.
    let models: Value = s
        .client
        .get(format!("{}/v1/models", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"base"), "{ids:?}");
    assert!(!ids.iter().any(|id| id.contains("t1")), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_ids_are_rejected_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    for bad in ["a b", "../etc", "é", &"x".repeat(129)] {
        let r = s.chat_task("hi", bad).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.json);
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("task id"),
            "{}",
            r.json
        );
    }
    let r = s
        .chat("hi", |rb, b| {
            b["task_id"] = json!(5);
            rb
        })
        .await;
    assert_eq!(r.status, 400);
    let ok = s.chat_task("hi", &"x".repeat(128)).await;
    assert_eq!(ok.status, 200);
    let r = reply(
        s.client
            .post(format!("{}/v1/chat/completions", s.url))
            .body("not json")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_is_really_applied() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    let zero_b = random_adapter(&tiny_dims(), &Module::ALL, 4, 3, 0.5, 0.0).unwrap();
    assert_eq!(s.upload("zero", &zero_b).await.status, 201);
    assert_eq!(s.upload("rand", &adapter(4)).await.status, 201);
    for prompt in ["hello there", "what is 2+2?"] {
        let base = s.chat(prompt, |rb, _| rb).await;
        let zero = s.chat_task(prompt, "zero").await;
        let rand = s.chat_task(prompt, "rand").await;
        assert!(zero.adapter.as_deref().unwrap().starts_with("zero@"));
        assert_eq!(
            zero.content(),
            base.content(),
            "B = 0 must give exactly the base output"
        );
        assert_ne!(
            rand.content(),
            base.content(),
            "a random LoRA must change the output"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_evicts_and_reloads_and_pins_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.max_resident = 2;
    let s = start(c).await;
    for (i, t) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(s.upload(t, &adapter(10 + i as u64)).await.status, 201);
    }
    // Capacity 2: the least recently used ("a") went back to the store.
    assert_eq!(s.state("a").await, "stored");
    assert_eq!(s.state("b").await, "resident");
    assert_eq!(s.state("c").await, "resident");
    let adapted = s.chat_task("hi", "b").await.content();

    // A request for "a" is answered by the base and brings "a" back; "c" is now LRU.
    let r = s.chat_task("hi", "a").await;
    assert_eq!(r.adapter.as_deref(), Some("base"));
    s.wait_state("a", "resident").await;
    assert_eq!(s.state("c").await, "stored");
    assert!(s
        .chat_task("hi", "a")
        .await
        .adapter
        .as_deref()
        .unwrap()
        .starts_with("a@"));

    // Pin "b": loading others never evicts it, and it cannot be evicted by hand.
    let r = s
        .admin(Method::POST, "/adapters/b/pin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s.chat_task("hi", "c").await;
    assert_eq!(r.adapter.as_deref(), Some("base"));
    s.wait_state("c", "resident").await;
    assert_eq!(s.state("b").await, "resident");
    assert_eq!(s.state("a").await, "stored");
    let r = s.admin(Method::DELETE, "/adapters/b").send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(s.chat_task("hi", "b").await.content(), adapted);

    // Unpin, evict by hand, forget.
    assert_eq!(
        s.admin(Method::POST, "/adapters/b/unpin")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.admin(Method::DELETE, "/adapters/b")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(s.state("b").await, "stored");
    let r = s
        .admin(Method::DELETE, "/adapters/b?forget=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.admin(Method::GET, "/adapters/b")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert!(!dir.path().join("store/b").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_may_wait_for_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.max_resident = 1;
    c.plugin.load_wait_ms = 30_000;
    let s = start(c).await;
    assert_eq!(s.upload("a", &adapter(1)).await.status, 201);
    assert_eq!(s.upload("b", &adapter(2)).await.status, 201);
    assert_eq!(s.state("a").await, "stored");
    // Two requests at once: one starts the reload, both wait for it.
    let (r1, r2) = tokio::join!(s.chat_task("hi", "a"), s.chat_task("ho", "a"));
    for r in [r1, r2] {
        assert!(
            r.adapter.as_deref().unwrap().starts_with("a@"),
            "the request waited for the reload"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_token_and_stock_admin_routes_are_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    let url = format!("{}/admin/adapters", s.url);
    assert_eq!(s.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        s.client
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        s.client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let form = upload_form(b"{}".to_vec(), vec![]);
    let r = s
        .client
        .put(format!("{url}/x"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for path in [
        "/v1/models/unload",
        "/v1/models/reload",
        "/re_isq",
        "/v1/system/doctor",
    ] {
        let r = s
            .client
            .post(format!("{}{path}", s.url))
            .json(&json!({"model_id": "base"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // Non-loopback without a token refuses to start.
    let mut c = tiny_config(dir.path());
    c.plugin.admin_token = None;
    c.server.listen = "0.0.0.0:8080".parse().unwrap();
    if std::env::var("DND_ADMIN_TOKEN").is_err() {
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
    }

    // /metrics needs the token too, unless plugin.metrics_need_token is off.
    let metrics = format!("{}/metrics", s.url);
    let r = reply(s.client.get(&metrics).send().await.unwrap()).await;
    assert_eq!(r.status, 401, "{}", r.json);
    assert_eq!(
        r.json["error"]["type"], "authentication_error",
        "{}",
        r.json
    );
    let r = s
        .client
        .get(&metrics)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(s);
    let mut c = tiny_config(&dir.path().join("open-metrics"));
    c.plugin.metrics_need_token = false;
    let s = start(c).await;
    let r = s
        .client
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .get(format!("{}/admin/adapters", s.url))
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 401);
}

/// Issue 15: without a token (loopback dev mode) a web page the operator visits cannot
/// drive the admin API: not by a cross-site form, not from another origin, not by DNS
/// rebinding; curl-style requests still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenless_admin_serves_same_site_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.admin_token = None;
    let s = start(c).await;
    if s.plugin.admin_token.is_some() {
        eprintln!("skipped: DND_ADMIN_TOKEN is set");
        return;
    }
    // A multipart upload (PUT, no Origin) is what curl -F sends.
    assert_eq!(s.upload("t", &adapter(1)).await.status, 201);
    let pin = || s.admin(Method::POST, "/adapters/t/pin");
    let port = s.url.rsplit(':').next().unwrap().to_string();
    for (what, rb) in [
        // What <form enctype="text/plain"> posts: a JSON-looking body, text/plain.
        (
            "text/plain form",
            pin()
                .header("content-type", "text/plain")
                .body("{\"x\": 1}"),
        ),
        ("no content type", pin()),
        (
            "multipart POST",
            pin().multipart(upload_form(vec![], vec![])),
        ),
        (
            "other origin",
            pin()
                .header("origin", "http://evil.example")
                .json(&json!({})),
        ),
        (
            "rebound host",
            pin()
                .header("host", format!("evil.example:{port}"))
                .json(&json!({})),
        ),
        (
            "rebound host, GET",
            s.admin(Method::GET, "/adapters")
                .header("host", format!("evil.example:{port}")),
        ),
        (
            "rebound host, metrics",
            s.client
                .get(format!("{}/metrics", s.url))
                .header("host", format!("evil.example:{port}")),
        ),
    ] {
        let r = reply(rb.send().await.unwrap()).await;
        assert_eq!(r.status, 403, "{what}: {}", r.json);
        assert_eq!(r.json["error"]["type"], "permission_error", "{what}");
    }
    assert_eq!(s.adapter_info("t").await.unwrap()["pinned"], false);

    let same_origin = format!("http://127.0.0.1:{port}");
    let r = pin().header("origin", same_origin).json(&json!({})).send();
    assert_eq!(r.await.unwrap().status(), 200);
    assert_eq!(s.adapter_info("t").await.unwrap()["pinned"], true);
    let localhost = format!("localhost:{port}");
    let r = s.admin(Method::GET, "/adapters").header("host", localhost);
    assert_eq!(r.send().await.unwrap().status(), 200);
    let r = s.client.get(format!("{}/metrics", s.url)).send().await;
    assert_eq!(r.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_adapters_get_400_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    assert_eq!(s.upload("keep", &adapter(1)).await.status, 201);
    let before = s.list().await;
    let good = adapter(2);

    let mut wrong_shape = good.clone();
    let name = wrong_shape.tensors.keys().next().unwrap().clone();
    wrong_shape.tensors.insert(
        name,
        candle_core::Tensor::zeros((4, 3), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
    );
    let mut nan = good.clone();
    let name = nan.tensors.keys().last().unwrap().clone();
    let t = nan.tensors[&name].clone();
    nan.tensors.insert(name, (t * f64::NAN).unwrap());
    let mut missing = good.clone();
    let name = missing.tensors.keys().next().unwrap().clone();
    missing.tensors.remove(&name);
    let mut bad_module = good.clone();
    bad_module.config.target_modules.push("lm_head".into());
    let mut dora = good.clone();
    dora.config.use_dora = true;

    for (what, a) in [
        ("shape", wrong_shape),
        ("nan", nan),
        ("missing", missing),
        ("module", bad_module),
        ("dora", dora),
    ] {
        for task in ["keep", "new"] {
            let r = s.upload(task, &a).await;
            assert_eq!(r.status, 400, "{what}: {}", r.json);
            assert!(
                r.json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("invalid adapter"),
                "{what}"
            );
        }
    }
    let raw = |c: &[u8], w: &[u8]| upload_form(c.to_vec(), w.to_vec());
    let cfg = serde_json::to_vec(&good.config).unwrap();
    for (what, form) in [
        ("bad json", raw(b"{", &good.safetensors_bytes().unwrap())),
        ("bad safetensors", raw(&cfg, b"garbage")),
        (
            "missing part",
            reqwest::multipart::Form::new().part(
                "adapter_config.json",
                reqwest::multipart::Part::bytes(cfg.clone()).file_name("adapter_config.json"),
            ),
        ),
    ] {
        let r = s
            .admin(Method::PUT, "/adapters/new")
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
    }
    // Path import outside the import root is refused; inside it works.
    let outside = dir.path().join("outside");
    good.write_peft(&outside).unwrap();
    let r = s
        .admin(Method::PUT, "/adapters/new")
        .json(&json!({"path": outside}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(s.list().await, before, "nothing changed");
    assert!(!dir.path().join("store/new").exists());

    let inside = dir.path().join("import/good");
    good.write_peft(&inside).unwrap();
    let r = s
        .admin(Method::PUT, "/adapters/new")
        .json(&json!({"path": inside}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(s.state("new").await, "resident");
}

/// Issue 15: a path import reads regular files only: a symlink inside the import root may
/// point outside it, and a FIFO would block the read forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_imports_refuse_symlinks_and_special_files() {
    use mistralrs_dnd::format::peft::{CONFIG_FILE, WEIGHTS_FILE};
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    let outside = dir.path().join("outside");
    adapter(1).write_peft(&outside).unwrap();
    let linked = dir.path().join("import/linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::fs::copy(outside.join(CONFIG_FILE), linked.join(CONFIG_FILE)).unwrap();
    std::os::unix::fs::symlink(outside.join(WEIGHTS_FILE), linked.join(WEIGHTS_FILE)).unwrap();
    let fifo = dir.path().join("import/fifo");
    std::fs::create_dir_all(&fifo).unwrap();
    std::fs::copy(outside.join(CONFIG_FILE), fifo.join(CONFIG_FILE)).unwrap();
    let c = std::ffi::CString::new(fifo.join(WEIGHTS_FILE).to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    for (folder, why) in [(&linked, "symlink"), (&fifo, "not a regular file")] {
        let r = s
            .admin(Method::PUT, "/adapters/t")
            .json(&json!({ "path": folder }))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("an answer, not a read blocked for good");
        let r = reply(r).await;
        assert_eq!(r.status, 400, "{why}: {}", r.json);
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(s.list().await["adapters"], json!([]), "nothing changed");
    assert!(!dir.path().join("store/t").exists());

    // The same files, copied in, import.
    std::fs::remove_file(linked.join(WEIGHTS_FILE)).unwrap();
    std::fs::copy(outside.join(WEIGHTS_FILE), linked.join(WEIGHTS_FILE)).unwrap();
    let r = s
        .admin(Method::PUT, "/adapters/t")
        .json(&json!({ "path": linked }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_an_adapter_swaps_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    assert_eq!(s.upload("t", &adapter(1)).await.status, 201);
    let h1 = hash_of(&s, "t").await;
    let out1 = s.chat_task("hi", "t").await.content();
    assert_eq!(s.upload("t", &adapter(2)).await.status, 201);
    let h2 = hash_of(&s, "t").await;
    assert_ne!(h1, h2);
    let r = s.chat_task("hi", "t").await;
    assert_eq!(r.adapter, Some(format!("t@{h2}")));
    assert_ne!(r.content(), out1);
    let v: Value = s
        .admin(Method::GET, "/adapters/t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    // The old engine model is removed once drained.
    wait_for("the old model removed", Duration::from_secs(4), || {
        s.plugin.table.resident_ids().len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tasks_in_parallel_while_adapters_load_and_evict() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.max_resident = 3;
    let s = std::sync::Arc::new(start(c).await);
    let mut jobs = Vec::new();
    for i in 0..8u64 {
        let s = s.clone();
        jobs.push(tokio::spawn(async move {
            let task = format!("task-{i}");
            let mut statuses = Vec::new();
            for round in 0..4u64 {
                if round == 1 {
                    let up = s.upload(&task, &adapter(100 + i * 10 + round)).await;
                    statuses.push((format!("upload {task}"), up.status));
                }
                let r = s.chat_task(&format!("round {round}"), &task).await;
                statuses.push((format!("chat {task} {round}: {}", r.json), r.status));
            }
            statuses
        }));
    }
    for j in jobs {
        for (what, status) in j.await.unwrap() {
            assert!(status == 200 || status == 201, "{what} -> {status}");
        }
    }
    assert!(s.plugin.table.resident_ids().len() <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let c = tiny_config(dir.path());
    let (h_a, out_a);
    {
        let s = start(c.clone()).await;
        assert_eq!(s.upload("a", &adapter(1)).await.status, 201);
        assert_eq!(s.upload("b", &adapter(2)).await.status, 201);
        assert_eq!(
            s.admin(Method::POST, "/adapters/a/pin")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        h_a = hash_of(&s, "a").await;
        out_a = s.chat_task("hi", "a").await.content();
    }
    let s = start(c).await;
    assert_eq!(
        s.state("a").await,
        "resident",
        "pinned adapters load at start"
    );
    assert_eq!(s.state("b").await, "stored");
    let r = s.chat_task("hi", "a").await;
    assert_eq!(r.adapter, Some(format!("a@{h_a}")));
    assert_eq!(r.content(), out_a);
    let list = s.list().await;
    assert_eq!(list["adapters"].as_array().unwrap().len(), 2);
}

/// One server per store: a second one fails to start, naming the store. At the next start,
/// what an interrupted write left is removed, and a record that went corrupt is moved
/// aside and reported (admin listing, metrics) instead of failing the task's uploads: the
/// next upload gives a clean entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_has_one_server_and_a_restart_repairs_what_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let c = tiny_config(dir.path());
    let store = dir.path().join("store");
    {
        let s = start(c.clone()).await;
        assert_eq!(s.upload("a", &adapter(1)).await.status, 201);
        assert_eq!(s.upload("b", &adapter(2)).await.status, 201);
        let err = match LocalServer::start(c.clone()).await {
            Ok(_) => panic!("a second server started on a store in use"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&store.display().to_string()), "{err}");
        assert_eq!(s.state("a").await, "resident", "the first one still serves");
    }
    std::fs::write(store.join("a/meta.json"), b"{\"task\": \"a\", \"cur").unwrap();
    std::fs::write(store.join("b/.meta.json.tmp-999999"), b"{").unwrap();

    let s = start(c).await;
    assert!(
        !store.join("b/.meta.json.tmp-999999").exists(),
        "leftover removed"
    );
    assert_eq!(s.state("b").await, "stored");
    let list = s.list().await;
    let q = list["quarantined"].as_array().unwrap();
    assert_eq!(q.len(), 1, "{list}");
    assert_eq!(q[0]["task"], "a");
    assert!(
        std::path::Path::new(q[0]["path"].as_str().unwrap()).exists(),
        "kept"
    );
    assert_eq!(
        metric(&metrics(&s).await, "dnd_quarantined_records_total"),
        1.0
    );

    let r = s.upload("a", &adapter(3)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(
        r.json["versions"].as_array().unwrap().len(),
        1,
        "{}",
        r.json
    );
    assert_eq!(s.state("a").await, "resident");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_the_version_it_started_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    assert_eq!(s.upload("t", &adapter(1)).await.status, 201);
    let h1 = hash_of(&s, "t").await;
    // A long streamed answer is still running while version 2 is uploaded.
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.url))
        .header("X-Task-Id", "t")
        .json(
            &json!({"model": "x", "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 400, "temperature": 0.0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-dnd-adapter"], format!("t@{h1}").as_str());
    assert_eq!(s.upload("t", &adapter(2)).await.status, 201);
    assert_eq!(
        s.plugin.table.resident_ids().len(),
        1,
        "new requests go to version 2 only"
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("[DONE]"),
        "the old version finished the stream: {body:.200}"
    );
    assert!(s
        .chat_task("hi", "t")
        .await
        .adapter
        .unwrap()
        .ends_with(&hash_of(&s, "t").await));
}

/// The training forward pass (`training::llama::Llama`, the chat template as the trainer
/// applies it) gives the logits mistral.rs serves for the same weights, for the base model
/// and with a LoRA merged by the engine. With temperature 0, mistral.rs 0.8.1 reports as
/// `logprob` the log10 of the raw *logit* (its argmax path skips the softmax), so the
/// top-5 logits and their token ids are compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_forward_matches_the_engines_logits() {
    use candle_core::{Device, Tensor};
    use mistralrs_dnd::training::llama::chat::ChatTokenizer;
    use mistralrs_dnd::training::llama::Llama;
    use mistralrs_dnd::training::lora::LoraWeights;
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    let lora = adapter(21);
    assert_eq!(s.upload("merged", &lora).await.status, 201);
    let base = Llama::load(&tiny_model(), &Device::Cpu).unwrap();
    let tok = ChatTokenizer::load(&tiny_model()).unwrap();
    let weights = LoraWeights::from_adapter(&lora, &tiny_dims(), &Device::Cpu).unwrap();
    let prompt = "Name three colours of the sea.";
    let ids = tok.encode_prompt(prompt).unwrap();
    let mut tops = Vec::new();
    for (task, lora) in [(None, None), (Some("merged"), Some(&weights))] {
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = base.hidden_states(&t, lora).unwrap();
        let last = Tensor::new(&[ids.len() as u32 - 1], &Device::Cpu).unwrap();
        let logits: Vec<f32> = base
            .logits_at(&hidden, &last)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut ours: Vec<(u32, f32)> = (0u32..).zip(logits).collect();
        ours.sort_by(|a, b| b.1.total_cmp(&a.1));
        ours.truncate(5);
        assert!(
            ours[4].1 > 0.0,
            "the comparison needs positive top logits: {ours:?}"
        );
        let mut body = json!({
            "model": "default",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": true,
            "top_logprobs": 5,
        });
        if let Some(t) = task {
            body["task_id"] = json!(t);
        }
        let r = s.post_chat(&body).await;
        assert_eq!(r.status, 200, "{}", r.json);
        let served: Vec<(u32, f32)> = r.json["choices"][0]["logprobs"]["content"][0]
            ["top_logprobs"]
            .as_array()
            .unwrap_or_else(|| panic!("no top_logprobs in {}", r.json))
            .iter()
            .map(|v| {
                let logit = 10f64.powf(v["logprob"].as_f64().unwrap()) as f32;
                (v["token"].as_u64().unwrap() as u32, logit)
            })
            .collect();
        assert_eq!(served.len(), 5, "{}", r.json);
        for (a, b) in served.iter().zip(&ours) {
            assert!(
                a.0 == b.0 && (a.1 - b.1).abs() < 1e-3 * b.1.abs().max(1.0),
                "{task:?}: engine {served:?} vs training {ours:?}"
            );
        }
        tops.push(ours);
    }
    assert_ne!(tops[0], tops[1], "the LoRA must change the logits");
}

/// Issue 15: the request bounds (default and ceiling of `max_tokens`, `n`, body size),
/// answered in the OpenAI error shape before the engine sees anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_bounded_before_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.default_max_tokens = 3;
    c.plugin.max_tokens_limit = 50;
    c.plugin.max_request_bytes = 4096;
    let s = start(c).await;
    let msgs = json!([{"role": "user", "content": "hello"}]);

    // No max_tokens: the default applies.
    let r = s
        .post_chat(&json!({"model": "default", "messages": msgs, "temperature": 0.0}))
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let used = r.json["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=3).contains(&used), "{}", r.json);

    let openai_400 = |r: &Reply, param: &str| {
        assert_eq!(r.status, 400, "{}", r.json);
        let e = &r.json["error"];
        assert_eq!(e["type"], "invalid_request_error", "{}", r.json);
        assert_eq!(e["param"], param, "{}", r.json);
        assert!(
            e["message"].as_str().is_some() && e.get("code").is_some(),
            "{}",
            r.json
        );
    };
    for key in ["max_tokens", "max_completion_tokens"] {
        let r = s
            .post_chat(&json!({"model": "default", "messages": msgs, key: 51}))
            .await;
        openai_400(&r, key);
        assert!(r.json["error"]["message"].as_str().unwrap().contains("50"));
    }
    // The answer to `"n": 100000` that once got the server killed.
    let r = s
        .post_chat(&json!({"model": "default", "messages": msgs, "n": 100_000, "max_tokens": 2}))
        .await;
    openai_400(&r, "n");
    let r = reply(
        s.client
            .post(format!("{}/v1/completions", s.url))
            .header("X-Task-Id", "t1")
            .json(&json!({"model": "x", "prompt": "abc", "best_of": 9}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    openai_400(&r, "best_of");

    // Past the chat body limit: 413, announced or streamed.
    let big =
        json!({"model": "default", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = s.post_chat(&big).await;
    assert_eq!(r.status, 413, "{}", r.json);
    assert_eq!(r.json["error"]["type"], "invalid_request_error");
    // Each request after a refused body on a connection of its own: the server closes the
    // connection whose body it did not read, and a pooled client may not have seen that
    // yet when it sends the next request on it (a flaky "connection closed").
    let fresh = reqwest::Client::new;
    let bytes = serde_json::to_vec(&big).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let r = reply(
        fresh()
            .post(format!("{}/v1/chat/completions", s.url))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.json);
    // The server still answers.
    let r = reply(
        fresh()
            .post(format!("{}/v1/chat/completions", s.url))
            .json(&chat_body("hi", 6))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
}

/// Issue 15: clients see the model name they asked for, never an engine id (the base
/// folder path, an adapter's `dnd:` id), may not name an engine id, and the Responses API
/// (which bypasses tagging) is hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_and_use_public_model_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(tiny_config(dir.path())).await;
    assert_eq!(s.upload("t1", &adapter(1)).await.status, 201);
    for task in [None, Some("t1")] {
        let mut body = chat_body("hello", 4);
        body["model"] = json!("my-model");
        if let Some(t) = task {
            body["task_id"] = json!(t);
        }
        let r = s.post_chat(&body).await;
        assert_eq!(r.status, 200, "{}", r.json);
        assert_eq!(r.json["model"], "my-model", "{task:?}: {}", r.json);

        body["stream"] = json!(true);
        let resp = s
            .client
            .post(format!("{}/v1/chat/completions", s.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(!events.is_empty(), "{text}");
        for e in &events {
            assert_eq!(e["model"], "my-model", "{task:?}: {text}");
        }
        assert!(text.contains("[DONE]"), "{text}");
    }

    let engine_id = s.plugin.table.resident_ids()[0].clone();
    assert!(engine_id.starts_with("dnd:"), "{engine_id}");
    let base_dir = tiny_model().display().to_string();
    for model in [engine_id.as_str(), base_dir.as_str()] {
        for task in [None, Some("t1")] {
            let mut body = chat_body("hello", 2);
            body["model"] = json!(model);
            if let Some(t) = task {
                body["task_id"] = json!(t);
            }
            let r = s.post_chat(&body).await;
            assert_eq!(r.status, 404, "{model}: {}", r.json);
            assert_eq!(r.json["error"]["code"], "model_not_found", "{}", r.json);
            assert_eq!(r.json["error"]["param"], "model", "{}", r.json);
        }
    }

    for (method, path) in [
        (Method::POST, "/v1/responses"),
        (Method::GET, "/v1/responses/resp_1"),
        (Method::DELETE, "/v1/responses/resp_1"),
        (Method::POST, "/v1/responses/resp_1/cancel"),
    ] {
        let r = s
            .client
            .request(method.clone(), format!("{}{path}", s.url))
            .json(&json!({"model": engine_id, "input": "hello"}))
            .send()
            .await
            .unwrap();
        let r = reply(r).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.json);
        assert_eq!(r.json["error"]["type"], "not_found_error", "{}", r.json);
    }
}

/// A tiny-model config in keys mode (`plugin.tenants = "keys"`).
fn keys_config(dir: &std::path::Path) -> mistralrs_dnd::server::Config {
    let mut c = tiny_config(dir);
    c.plugin.tenants = mistralrs_dnd::server::config::TenantMode::Keys;
    c
}

/// `POST /admin/keys` for `tenant` (with `rpm` when given): the key and its id.
async fn create_key(s: &TestServer, tenant: &str, rpm: Option<u32>) -> (String, String) {
    let mut body = json!({ "tenant": tenant });
    if let Some(rpm) = rpm {
        body["rpm"] = json!(rpm);
    }
    let r = reply(
        s.admin(Method::POST, "/keys")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["tenant"], tenant, "{}", r.json);
    let key = r.json["key"].as_str().unwrap().to_string();
    (key, r.json["id"].as_str().unwrap().to_string())
}

/// A chat completion sent with `key` (when given) and `tag` applied to the request.
async fn keyed_chat(
    s: &TestServer,
    key: Option<&str>,
    tag: impl FnOnce(reqwest::RequestBuilder, &mut Value) -> reqwest::RequestBuilder,
) -> Reply {
    s.chat("hello", |rb, b| {
        let rb = match key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        };
        tag(rb, b)
    })
    .await
}

fn assert_invalid_key(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.json);
    assert_eq!(
        r.json["error"]["code"], "invalid_api_key",
        "{what}: {}",
        r.json
    );
    assert_eq!(r.json["error"]["type"], "authentication_error", "{what}");
    assert!(r.adapter.is_none(), "{what}: nothing was routed");
}

/// Issue 15, item 1: in keys mode a request needs a key, and the key alone chooses the
/// tenant: its requests land on its tenant's adapter and never on another's, whatever
/// header, body field or `user` they send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_are_the_only_way_to_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(keys_config(dir.path())).await;
    assert_eq!(s.upload("acme", &adapter(1)).await.status, 201);
    assert_eq!(s.upload("globex", &adapter(2)).await.status, 201);
    let acme = format!("acme@{}", hash_of(&s, "acme").await);
    let globex = format!("globex@{}", hash_of(&s, "globex").await);
    let (key_a, _) = create_key(&s, "acme", None).await;
    let (key_g, _) = create_key(&s, "globex", None).await;

    // No key, a wrong one, the admin token: 401 on every /v1/ route.
    assert_invalid_key(&keyed_chat(&s, None, |rb, _| rb).await, "no key");
    let wrong = format!("{key_a}0");
    assert_invalid_key(
        &keyed_chat(&s, Some(wrong.as_str()), |rb, _| rb).await,
        "wrong key",
    );
    assert_invalid_key(
        &keyed_chat(&s, Some(TOKEN), |rb, _| rb).await,
        "admin token",
    );
    let tagged = keyed_chat(&s, None, |rb, _| rb.header("X-Task-Id", "acme")).await;
    assert_invalid_key(&tagged, "a task id is no credential");
    let completion = s
        .client
        .post(format!("{}/v1/completions", s.url))
        .json(&json!({"model": "x", "prompt": "abc", "max_tokens": 2}));
    assert_invalid_key(
        &reply(completion.send().await.unwrap()).await,
        "completions",
    );
    let models = s.client.get(format!("{}/v1/models", s.url));
    assert_invalid_key(&reply(models.send().await.unwrap()).await, "models");
    let health = s.client.get(format!("{}/health", s.url)).send().await;
    assert_eq!(health.unwrap().status(), 200, "liveness needs no key");

    // Each key reaches its own tenant's adapter.
    let r = keyed_chat(&s, Some(key_a.as_str()), |rb, _| rb).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.adapter.as_deref(), Some(acme.as_str()));
    let r = keyed_chat(&s, Some(key_g.as_str()), |rb, _| rb).await;
    assert_eq!(r.adapter.as_deref(), Some(globex.as_str()));
    let completion = s
        .client
        .post(format!("{}/v1/completions", s.url))
        .bearer_auth(&key_a)
        .json(&json!({"model": "x", "prompt": "abc", "max_tokens": 2}));
    let r = reply(completion.send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.adapter.as_deref(), Some(acme.as_str()));

    // Naming its own tenant is fine (open-mode clients keep working); `user` is not read.
    let r = keyed_chat(&s, Some(key_a.as_str()), |rb, _| {
        rb.header("X-Task-Id", "acme")
    })
    .await;
    assert_eq!(r.adapter.as_deref(), Some(acme.as_str()), "{}", r.json);
    let r = keyed_chat(&s, Some(key_a.as_str()), |rb, b| {
        b["user"] = json!("globex");
        rb
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.adapter.as_deref(),
        Some(acme.as_str()),
        "user is not a tenant"
    );

    // Naming another tenant, existing or not, is refused, and that tenant sees nothing.
    let hits = s.adapter_info("globex").await.unwrap()["hits"].clone();
    for (what, other) in [("existing", "globex"), ("unknown", "nobody")] {
        let r = keyed_chat(&s, Some(key_a.as_str()), |rb, _| {
            rb.header("X-Task-Id", other)
        })
        .await;
        assert_eq!(r.status, 403, "{what} header: {}", r.json);
        assert_eq!(r.json["error"]["code"], "tenant_mismatch", "{}", r.json);
        assert_eq!(r.json["error"]["type"], "permission_error", "{}", r.json);
        assert!(r.adapter.is_none(), "{what}: x-dnd-adapter names nothing");
        let r = keyed_chat(&s, Some(key_a.as_str()), |rb, b| {
            b["task_id"] = json!(other);
            rb
        })
        .await;
        assert_eq!(r.status, 403, "{what} task_id: {}", r.json);
        assert_eq!(r.json["error"]["param"], "task_id", "{}", r.json);
    }
    assert_eq!(s.adapter_info("globex").await.unwrap()["hits"], hits);

    // The model list needs a key too, and still names no tenant.
    let models: Value = s
        .client
        .get(format!("{}/v1/models", s.url))
        .bearer_auth(&key_g)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = models.to_string();
    assert!(text.contains("\"base\""), "{text}");
    assert!(!text.contains("acme") && !text.contains("globex"), "{text}");
}

/// Issue 15, item 1: keys are hashed at rest and listed without their secret; a revoked
/// key is refused from the next request, and keys (and revocations) survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_hashed_at_rest_revoked_at_once_and_survive_a_restart() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let c = keys_config(dir.path());
    let (key_1, key_2) = {
        let s = start(c.clone()).await;
        let (key_1, id_1) = create_key(&s, "acme", None).await;
        let (key_2, _) = create_key(&s, "acme", Some(100)).await;
        assert_eq!(
            keyed_chat(&s, Some(key_1.as_str()), |rb, _| rb)
                .await
                .status,
            200
        );

        let list = reply(s.admin(Method::GET, "/keys").send().await.unwrap()).await;
        assert_eq!(list.status, 200);
        let keys = list.json["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2, "{}", list.json);
        let file = std::fs::read_to_string(dir.path().join("store/.keys.json")).unwrap();
        for key in [&key_1, &key_2] {
            let secret = &key["dnd-".len()..];
            assert!(!list.json.to_string().contains(secret), "{}", list.json);
            assert!(!file.contains(secret), "plaintext key on disk: {file}");
            let sha = hex::encode(sha2::Sha256::digest(key.as_bytes()));
            assert!(file.contains(&sha), "{file}");
            assert!(keys
                .iter()
                .any(|k| sha.starts_with(k["id"].as_str().unwrap())));
        }
        let rpms: Vec<u64> = keys.iter().map(|k| k["rpm"].as_u64().unwrap()).collect();
        assert!(
            rpms.contains(&60) && rpms.contains(&100),
            "default and given: {rpms:?}"
        );

        let r = s
            .admin(Method::DELETE, &format!("/keys/{id_1}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_invalid_key(
            &keyed_chat(&s, Some(key_1.as_str()), |rb, _| rb).await,
            "revoked",
        );
        assert_eq!(
            keyed_chat(&s, Some(key_2.as_str()), |rb, _| rb)
                .await
                .status,
            200
        );
        let again = s.admin(Method::DELETE, &format!("/keys/{id_1}")).send();
        assert_eq!(again.await.unwrap().status(), 404);
        let bad = reply(
            s.admin(Method::POST, "/keys")
                .json(&json!({"tenant": "../x"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(bad.status, 400, "{}", bad.json);
        assert_eq!(bad.json["error"]["param"], "tenant");
        (key_1, key_2)
    };
    let s = start(c).await;
    assert_eq!(
        keyed_chat(&s, Some(key_2.as_str()), |rb, _| rb)
            .await
            .status,
        200
    );
    assert_invalid_key(
        &keyed_chat(&s, Some(key_1.as_str()), |rb, _| rb).await,
        "revoked, restarted",
    );
    let list = reply(s.admin(Method::GET, "/keys").send().await.unwrap()).await;
    assert_eq!(
        list.json["keys"].as_array().unwrap().len(),
        1,
        "{}",
        list.json
    );
}

/// Issue 15, item 1: past its requests per minute a key gets 429 `rate_limit_exceeded`
/// with `Retry-After`; other keys are not slowed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_rate_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = keys_config(dir.path());
    c.plugin.default_key_rpm = 2;
    let s = start(c).await;
    let (slow, _) = create_key(&s, "acme", None).await;
    let (other, _) = create_key(&s, "acme", Some(1000)).await;
    for _ in 0..2 {
        assert_eq!(
            keyed_chat(&s, Some(slow.as_str()), |rb, _| rb).await.status,
            200
        );
    }
    let resp = s
        .chat_request(None)
        .bearer_auth(&slow)
        .json(&chat_body("hello", 2))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let r = reply(resp).await;
    assert_eq!(r.status, 429, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "rate_limit_exceeded", "{}", r.json);
    assert_eq!(r.json["error"]["type"], "rate_limit_error", "{}", r.json);
    assert!(r.adapter.is_none());
    let models = s
        .client
        .get(format!("{}/v1/models", s.url))
        .bearer_auth(&slow);
    assert_eq!(
        models.send().await.unwrap().status(),
        429,
        "every route counts"
    );
    for _ in 0..3 {
        assert_eq!(
            keyed_chat(&s, Some(other.as_str()), |rb, _| rb)
                .await
                .status,
            200
        );
    }
}

/// Issue 15, item 5: a request an adapter serves takes a place of its task (at most
/// `plugin.max_in_flight_per_task`), then every request a place on the engine model that
/// computes it (at most `plugin.max_in_flight_per_model`; with shared adapters the base
/// runs every adapter too). Past them (after the admission wait, none here) a task over its
/// share answers 429 while others are served, and a full base answers 503 to everyone, both
/// with `Retry-After`, in the OpenAI error shape. A place is held until the answer has
/// ended: a stream until it has been sent to its end, a non-streamed answer until it is
/// answered or its client goes away (which cancels the engine sequence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_a_models_in_flight_bound_are_refused_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.max_in_flight_per_model = 2;
    c.plugin.max_in_flight_per_task = 1;
    c.plugin.admission_wait_ms = 0;
    let s = start(c).await;
    assert_eq!(s.upload("t", &adapter(1)).await.status, 201);
    assert_eq!(s.upload("u", &adapter(2)).await.status, 201);
    let in_flight = |model: &str| s.plugin.admission.in_flight(model);
    let mut long = chat_body("go on", 400);
    long["stream"] = json!(true);
    let refused = |r: &Reply, status: u16, kind: &str, code: &str| {
        assert_eq!(r.status, status, "{}", r.json);
        assert_eq!(r.json["error"]["type"], kind, "{}", r.json);
        assert_eq!(r.json["error"]["code"], code, "{}", r.json);
        assert!(r.json["error"]["message"].is_string(), "{}", r.json);
    };
    let send = |task: Option<&'static str>| {
        let rb = s.chat_request(task).json(&chat_body("hi", 2));
        async move { rb.send().await.unwrap() }
    };

    // The task's share: its second request is the task's to wait for (429), while an
    // untagged request takes the base's other place.
    let t_stream = s.chat_request(Some("t")).json(&long).send().await.unwrap();
    assert_eq!(t_stream.status(), 200);
    assert_eq!(
        (in_flight("base"), s.plugin.admission.task_in_flight("t")),
        (1, 1)
    );
    let resp = send(Some("t")).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    refused(
        &reply(resp).await,
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
    );
    let r = s.send_chat(None, &chat_body("hi", 2)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);

    // The base full (the task's stream and an untagged one): 503 for everyone, a task
    // with its own adapter too, since it runs in the base's batches.
    let base_stream = s.chat_request(None).json(&long).send().await.unwrap();
    assert_eq!(base_stream.status(), 200);
    assert_eq!(in_flight("base"), 2);
    for task in [None, Some("u")] {
        let resp = send(task).await;
        assert_eq!(resp.headers()["retry-after"], "1", "{task:?}");
        refused(&reply(resp).await, 503, "server_error", "server_overloaded");
    }

    // Once the streams have ended, their places are free.
    for open in [t_stream, base_stream] {
        let text = open.text().await.unwrap();
        assert!(text.contains("[DONE]"), "{text:.200}");
    }
    assert_eq!(in_flight("base"), 0);
    assert_eq!(s.plugin.admission.task_in_flight("t"), 0);
    for task in [None, Some("t"), Some("u")] {
        let r = s.send_chat(task, &chat_body("hi", 2)).await.unwrap();
        assert_eq!(r.status, 200, "{task:?}: {}", r.json);
    }
    let m = metrics(&s).await;
    assert_eq!(
        metric(&m, "dnd_requests_rejected_total{status=\"503\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "dnd_requests_rejected_total{status=\"429\"}"),
        1.0
    );

    // A non-streamed answer whose client goes away gives its place back at once: the
    // handler goes with the client, and the engine cancels the sequence at its next step
    // (vendor patch 0004) instead of finishing an answer nobody reads.
    let body = chat_body("go on", 400);
    let t = std::time::Instant::now();
    assert_eq!(s.send_chat(None, &body).await.unwrap().status, 200);
    let full = t.elapsed();
    let gone = {
        let rb = s.chat_request(None).json(&body);
        tokio::spawn(async move { rb.send().await })
    };
    wait_for("the request admitted", Duration::from_secs(1), || {
        in_flight("base") == 1
    })
    .await;
    let aborted = std::time::Instant::now();
    gone.abort();
    while in_flight("base") != 0 && aborted.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let freed = aborted.elapsed();
    assert_eq!(in_flight("base"), 0, "freed");
    // Only telling when a whole answer takes long enough to tell.
    if full >= Duration::from_millis(200) {
        assert!(
            freed < full / 2,
            "freed after {freed:?}; a whole answer takes {full:?}"
        );
    }
}

/// A generator that is never due (K = 1000) and fails if asked: with it the server keeps
/// the prompts of tagged requests, so that a refused request whose prompt was kept shows
/// in the adapter list.
struct IdleGenerator;

impl mistralrs_dnd::server::specialise::AdapterGenerator for IdleGenerator {
    fn batch_size(&self) -> usize {
        1000
    }
    fn generate(&self, _prompts: &[String]) -> anyhow::Result<mistralrs_dnd::format::LoraAdapter> {
        anyhow::bail!("no generation is due in this test")
    }
}

/// One row of a bad-input table: a request, and the status, `error.code` and
/// `error.param` it must be answered with (`error.type` follows from the status).
struct Bad {
    what: String,
    req: reqwest::RequestBuilder,
    status: u16,
    code: Option<&'static str>,
    param: Option<&'static str>,
}

fn bad(
    what: &str,
    status: u16,
    code: Option<&'static str>,
    param: Option<&'static str>,
    req: reqwest::RequestBuilder,
) -> Bad {
    Bad {
        what: what.to_string(),
        req,
        status,
        code,
        param,
    }
}

/// The OpenAI error type of a status, as README documents it.
fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Sends every row and checks its answer: the status, a JSON body that is exactly
/// `{"error": {"message", "type", "param", "code"}}` with a message, the type, code and
/// param of the row, and no `x-dnd-adapter` (nothing was routed). Reports every row that
/// fails, not just the first.
async fn check_bad_inputs(rows: Vec<Bad>) {
    let total = rows.len();
    let mut failures = Vec::new();
    for row in rows {
        let resp = match row.req.send().await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: no answer: {e}", row.what));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let routed = resp.headers().get("x-dnd-adapter").cloned();
        let json_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let e = &v["error"];
        let shaped = v.as_object().is_some_and(|o| o.len() == 1)
            && e.as_object().is_some_and(|o| {
                o.len() == 4
                    && ["message", "type", "param", "code"]
                        .iter()
                        .all(|k| o.contains_key(*k))
            })
            && e["message"].as_str().is_some_and(|m| !m.is_empty());
        let want = json!({"type": openai_type(row.status), "code": row.code, "param": row.param});
        let got = json!({"type": e["type"].clone(), "code": e["code"].clone(), "param": e["param"].clone()});
        if status != row.status || got != want || !shaped || !json_type || routed.is_some() {
            failures.push(format!(
                "{}: got {status} {text:.300} (x-dnd-adapter {routed:?}); want {} {want}",
                row.what, row.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} bad inputs were not answered as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What a bad input must not change: the adapter list (adapters, kept prompts, dropped
/// and quarantined tasks), the API keys, and every file of the store (its SHA-256).
type Observable = (Value, Value, Vec<(String, String)>);

async fn observable_state(s: &TestServer, store: &std::path::Path) -> Observable {
    use sha2::Digest;
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                let bytes = std::fs::read(&path).unwrap();
                out.push((name, hex::encode(sha2::Sha256::digest(&bytes))));
            }
        }
    }
    let keys = reply(s.admin(Method::GET, "/keys").send().await.unwrap()).await;
    assert_eq!(keys.status, 200, "{}", keys.json);
    let mut files = Vec::new();
    walk(store, store, &mut files);
    files.sort();
    (s.list().await, keys.json, files)
}

/// [`observable_state`] once it has settled (the prompt writer and the table write in the
/// background): the same twice in a row, 100 ms apart.
async fn settled_state(s: &TestServer, store: &std::path::Path) -> Observable {
    let mut last = observable_state(s, store).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = observable_state(s, store).await;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Issue 15, "Bad input": every bad input to chat, completions and the admin API, in open
/// mode, is a 4xx in the OpenAI error shape with the field at fault as `param` where there
/// is one, and changes nothing (adapters, kept prompts, keys, store files), including a
/// refused request that names a task that keeps prompts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_4xx_in_the_openai_shape_and_change_nothing() {
    use mistralrs_dnd::format::peft::CONFIG_FILE;
    use mistralrs_dnd::server::local::adapter_form;
    use reqwest::multipart::{Form, Part};
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.server.max_body_bytes = 64 << 10;
    c.plugin.max_request_bytes = 8 << 10;
    c.plugin.max_input_bytes = 2048;
    c.plugin.max_tokens_limit = 50;
    c.plugin.default_max_tokens = 16;
    c.plugin.max_n = 2;
    c.plugin.max_messages = 4;
    let s = start_with(c, Some(std::sync::Arc::new(IdleGenerator))).await;
    let store = dir.path().join("store");

    // A task with an adapter, a task that keeps prompts (two so far), an API key.
    let good = adapter(1);
    assert_eq!(s.upload("keep", &good).await.status, 201);
    for p in ["first", "second"] {
        assert_eq!(s.chat_task(p, "collecting").await.status, 200);
    }
    create_key(&s, "keep", None).await;
    let prompts_file = store.join("collecting/prompts.jsonl");
    wait_for("both prompts kept", Duration::from_secs(10), || {
        std::fs::read_to_string(&prompts_file).map_or(0, |t| t.lines().count()) == 2
    })
    .await;
    let before = settled_state(&s, &store).await;
    assert_eq!(
        before.0["adapters"].as_array().unwrap().len(),
        2,
        "{}",
        before.0
    );
    assert!(
        before
            .2
            .iter()
            .any(|(name, _)| name.ends_with("prompts.jsonl")),
        "the kept prompts are written: {:?}",
        before.2.iter().map(|f| &f.0).collect::<Vec<_>>()
    );

    let engine_id = s.plugin.table.resident_ids()[0].clone();
    let base_dir = tiny_model().display().to_string();
    let msgs = json!([{"role": "user", "content": "hello"}]);
    let chat_url = format!("{}/v1/chat/completions", s.url);
    let completions_url = format!("{}/v1/completions", s.url);
    let chat = |extra: Value| {
        let mut body = json!({"model": "default", "messages": msgs});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        s.client.post(&chat_url).json(&body)
    };
    let chat_raw = |body: &str| s.client.post(&chat_url).body(body.to_string());
    let completion = |body: Value| s.client.post(&completions_url).json(&body);
    let tagged = |task: &str, extra: Value| chat(extra).header("X-Task-Id", task);
    let admin = |m: Method, path: &str| s.admin(m, path);
    let put = |path: &str, form: Form| admin(Method::PUT, path).multipart(form);
    let form = |a: &mistralrs_dnd::format::LoraAdapter| adapter_form(a).unwrap();

    // Adapters that fail validation, one fault each.
    let mut wrong_shape = good.clone();
    let first = wrong_shape.tensors.keys().next().unwrap().clone();
    let zeros = |shape: (usize, usize)| {
        candle_core::Tensor::zeros(shape, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap()
    };
    wrong_shape.tensors.insert(first.clone(), zeros((4, 3)));
    let mut missing = good.clone();
    missing.tensors.remove(&first);
    let mut extra = good.clone();
    extra.tensors.insert(
        "base_model.model.lm_head.lora_A.weight".into(),
        zeros((4, 64)),
    );
    let mut nan = good.clone();
    let last = nan.tensors.keys().last().unwrap().clone();
    let t = nan.tensors[&last].clone();
    nan.tensors.insert(last, (t * f64::NAN).unwrap());
    let mut rank = good.clone();
    rank.config.r = 8;
    let mut module = good.clone();
    module.config.target_modules.push("lm_head".into());
    let mut prefix = good.clone();
    prefix.config.peft_type = "PREFIX_TUNING".into();
    let mut dora = good.clone();
    dora.config.use_dora = true;
    let weights = good.safetensors_bytes().unwrap();
    let config = serde_json::to_vec(&good.config).unwrap();
    let outside = dir.path().join("outside");
    good.write_peft(&outside).unwrap();
    let half = dir.path().join("import/half");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join(CONFIG_FILE), &config).unwrap();

    let long = |n: usize| "x".repeat(n);
    let five = vec![json!({"role": "user", "content": "hi"}); 5];
    // One row per bad input: what it is, the status, `error.code` and `error.param` it must
    // get, and the request.
    #[rustfmt::skip]
    let rows = vec![
        // The body.
        bad("chat: not JSON", 400, None, None,
            chat_raw("{\"messages\": [").header("content-type", "application/json")),
        bad("chat: a JSON array", 400, None, None,
            chat_raw("[1, 2]").header("content-type", "application/json")),
        bad("chat: no content type", 415, None, None, chat_raw("{\"messages\": []}")),
        bad("chat: a form", 415, None, None,
            chat_raw("messages=hi").header("content-type", "application/x-www-form-urlencoded")),
        bad("chat: past max_request_bytes", 413, None, None,
            chat(json!({"messages": [{"role": "user", "content": long(9000)}]}))),
        // model
        bad("model: a number", 400, None, Some("model"), chat(json!({"model": 3}))),
        bad("model: an adapter's engine id", 404, Some("model_not_found"), Some("model"),
            chat(json!({"model": engine_id}))),
        bad("model: the base folder", 404, Some("model_not_found"), Some("model"),
            chat(json!({"model": base_dir}))),
        // max_tokens, n
        bad("max_tokens: a string", 400, None, Some("max_tokens"),
            chat(json!({"max_tokens": "9"}))),
        bad("max_tokens: 0", 400, None, Some("max_tokens"), chat(json!({"max_tokens": 0}))),
        bad("max_tokens: negative", 400, None, Some("max_tokens"),
            chat(json!({"max_tokens": -1}))),
        bad("max_tokens: fractional", 400, None, Some("max_tokens"),
            chat(json!({"max_tokens": 2.5}))),
        bad("max_tokens: past the ceiling", 400, None, Some("max_tokens"),
            chat(json!({"max_tokens": 51}))),
        bad("max_completion_tokens: past the ceiling", 400, None, Some("max_completion_tokens"),
            chat(json!({"max_completion_tokens": 51}))),
        bad("n: past max_n", 400, None, Some("n"), chat(json!({"n": 3}))),
        bad("n: 100000", 400, None, Some("n"), chat(json!({"n": 100_000}))),
        bad("n: a string", 400, None, Some("n"), chat(json!({"n": "2"}))),
        // messages, and the other fields of the stock request
        bad("messages: missing", 400, None, Some("messages"),
            s.client.post(&chat_url).json(&json!({"model": "default"}))),
        bad("messages: a number", 400, None, Some("messages"), chat(json!({"messages": 5}))),
        bad("messages: null", 400, None, Some("messages"), chat(json!({"messages": null}))),
        bad("messages: a role that is a number", 400, None, Some("messages"),
            chat(json!({"messages": [{"role": 5, "content": "x"}]}))),
        bad("messages: past max_messages", 400, None, Some("messages"),
            chat(json!({ "messages": five }))),
        bad("messages: text past max_input_bytes", 400, None, Some("messages"),
            chat(json!({"messages": [{"role": "user", "content": long(3000)}]}))),
        bad("temperature: a string", 400, None, Some("temperature"),
            chat(json!({"temperature": "hot"}))),
        bad("stream: a string", 400, None, Some("stream"), chat(json!({"stream": "yes"}))),
        // Task ids, from each source.
        bad("X-Task-Id: a space", 400, None, None, tagged("a b", json!({}))),
        bad("X-Task-Id: not ASCII", 400, None, None, tagged("é", json!({}))),
        bad("X-Task-Id: 129 characters", 400, None, None, tagged(&long(129), json!({}))),
        bad("X-Task-Id: a store file", 400, None, None, tagged(".keys.json", json!({}))),
        bad("X-Task-Id: empty", 400, None, None, tagged("", json!({}))),
        bad("task_id: a number", 400, None, Some("task_id"), chat(json!({"task_id": 5}))),
        bad("task_id: a path", 400, None, Some("task_id"), chat(json!({"task_id": "../keep"}))),
        bad("user: a slash", 400, None, Some("user"), chat(json!({"user": "a/b"}))),
        bad("user: an object", 400, None, Some("user"), chat(json!({"user": {"id": 1}}))),
        // A task that keeps prompts, with a fault elsewhere: its prompt is not kept.
        bad("collecting: max_tokens past the ceiling", 400, None, Some("max_tokens"),
            tagged("collecting", json!({"max_tokens": 51}))),
        bad("collecting: temperature a string", 400, None, Some("temperature"),
            tagged("collecting", json!({"temperature": "hot"}))),
        bad("collecting: an engine id", 404, Some("model_not_found"), Some("model"),
            tagged("collecting", json!({"model": engine_id}))),
        bad("collecting: no content type", 415, None, None,
            chat_raw(&json!({ "messages": msgs }).to_string()).header("X-Task-Id", "collecting")),
        // Completions.
        bad("completion: prompt missing", 400, None, Some("prompt"),
            completion(json!({"model": "x"}))),
        bad("completion: prompt a number", 400, None, Some("prompt"),
            completion(json!({"prompt": 5}))),
        bad("completion: prompt a list", 400, None, Some("prompt"),
            completion(json!({"prompt": ["a", "b"]})).header("X-Task-Id", "collecting")),
        bad("completion: best_of past max_n", 400, None, Some("best_of"),
            completion(json!({"prompt": "a", "best_of": 3}))),
        bad("completion: prompt past max_input_bytes", 400, None, Some("prompt"),
            completion(json!({"prompt": long(3000)}))),
        bad("completion: task_id a number", 400, None, Some("task_id"),
            completion(json!({"prompt": "a", "task_id": 1}))),
        // Routes.
        bad("the Responses API", 404, None, None,
            s.client.post(format!("{}/v1/responses", s.url)).json(&json!({"input": "hi"}))),
        bad("a hidden stock route", 404, None, None,
            s.client.post(format!("{}/v1/models/unload", s.url)).json(&json!({}))),
        bad("no such route", 404, None, None,
            s.client.post(format!("{}/v1/nowhere", s.url)).json(&json!({}))),
        bad("chat: GET", 405, None, None, s.client.get(&chat_url)),
        // Admin: who calls.
        bad("admin: no token", 401, None, None, s.client.get(format!("{}/admin/adapters", s.url))),
        bad("admin: a wrong token", 401, None, None,
            s.client.get(format!("{}/admin/adapters", s.url)).bearer_auth("wrong")),
        bad("admin: an API key as token", 401, None, None,
            s.client.delete(format!("{}/admin/adapters/keep", s.url)).bearer_auth("dnd-0")),
        // Admin: which task, which route.
        bad("admin: unknown task", 404, None, None, admin(Method::GET, "/adapters/nobody")),
        bad("admin: task id with a space", 400, None, None, admin(Method::GET, "/adapters/a%20b")),
        bad("admin: task id of a store file", 400, None, None,
            admin(Method::GET, "/adapters/.keys.json")),
        bad("admin: pin an unknown task", 404, None, None,
            admin(Method::POST, "/adapters/nobody/pin")),
        bad("admin: unpin an unknown task", 404, None, None,
            admin(Method::POST, "/adapters/nobody/unpin")),
        bad("admin: evict an unknown task", 404, None, None,
            admin(Method::DELETE, "/adapters/nobody")),
        bad("admin: forget=maybe", 400, None, None,
            admin(Method::DELETE, "/adapters/keep?forget=maybe")),
        bad("admin: no such route", 404, None, None, admin(Method::GET, "/nowhere")),
        bad("admin: a method the route does not take", 405, None, None,
            admin(Method::POST, "/adapters")),
        // Admin: regenerate.
        bad("regenerate: unknown task, no prompts", 409, None, None,
            admin(Method::POST, "/adapters/nobody/regenerate")),
        bad("regenerate: no prompts given", 409, None, None,
            admin(Method::POST, "/adapters/collecting/regenerate").json(&json!({"prompts": []}))),
        bad("regenerate: blank prompts given", 409, None, None,
            admin(Method::POST, "/adapters/collecting/regenerate")
                .json(&json!({"prompts": ["  "]}))),
        bad("regenerate: prompts a number", 400, None, None,
            admin(Method::POST, "/adapters/collecting/regenerate").json(&json!({"prompts": 5}))),
        bad("regenerate: bad task id", 400, None, None,
            admin(Method::POST, "/adapters/a%20b/regenerate")),
        // Admin: uploads that fail validation, over an adapter and as a new task.
        bad("upload: wrong shape", 400, None, None, put("/adapters/keep", form(&wrong_shape))),
        bad("upload: missing tensor", 400, None, None, put("/adapters/new", form(&missing))),
        bad("upload: extra tensor", 400, None, None, put("/adapters/keep", form(&extra))),
        bad("upload: NaN", 400, None, None, put("/adapters/new", form(&nan))),
        bad("upload: config rank not the tensors'", 400, None, None,
            put("/adapters/keep", form(&rank))),
        bad("upload: unknown target module", 400, None, None, put("/adapters/new", form(&module))),
        bad("upload: not LoRA", 400, None, None, put("/adapters/keep", form(&prefix))),
        bad("upload: DoRA", 400, None, None, put("/adapters/new", form(&dora))),
        bad("upload: not a PEFT config", 400, None, None,
            put("/adapters/new", upload_form(b"{\"foo\": 1}".to_vec(), weights.clone()))),
        bad("upload: config not JSON", 400, None, None,
            put("/adapters/keep", upload_form(b"{".to_vec(), weights.clone()))),
        bad("upload: weights not safetensors", 400, None, None,
            put("/adapters/new", upload_form(config.clone(), b"garbage".to_vec()))),
        bad("upload: no weights part", 400, None, None,
            put("/adapters/new", Form::new()
                .part(CONFIG_FILE, Part::bytes(config.clone()).file_name(CONFIG_FILE)))),
        bad("upload: an unknown part", 400, None, None,
            put("/adapters/new", upload_form(config.clone(), weights.clone())
                .part("notes", Part::bytes(b"x".to_vec()).file_name("notes.txt")))),
        bad("upload: past server.max_body_bytes", 413, None, None,
            put("/adapters/new", upload_form(config.clone(), vec![0; 80 << 10]))),
        bad("upload: bad task id", 400, None, None, put("/adapters/a%20b", form(&good))),
        bad("upload: text/plain", 415, None, None,
            admin(Method::PUT, "/adapters/new").header("content-type", "text/plain").body("hi")),
        // Admin: path imports.
        bad("import: outside the import root", 403, None, None,
            admin(Method::PUT, "/adapters/new").json(&json!({"path": outside}))),
        bad("import: a folder without weights", 400, None, None,
            admin(Method::PUT, "/adapters/new").json(&json!({"path": half}))),
        bad("import: no such folder", 400, None, None,
            admin(Method::PUT, "/adapters/new").json(&json!({"path": dir.path().join("import/none")}))),
        bad("import: path a number", 400, None, None,
            admin(Method::PUT, "/adapters/new").json(&json!({"path": 5}))),
        bad("import: no path", 400, None, None, admin(Method::PUT, "/adapters/new").json(&json!({}))),
        // Admin: API keys.
        bad("key: bad tenant", 400, None, Some("tenant"),
            admin(Method::POST, "/keys").json(&json!({"tenant": "../x"}))),
        bad("key: rpm 0", 400, None, Some("rpm"),
            admin(Method::POST, "/keys").json(&json!({"tenant": "t", "rpm": 0}))),
        bad("key: rpm negative", 400, None, None,
            admin(Method::POST, "/keys").json(&json!({"tenant": "t", "rpm": -5}))),
        bad("key: unknown field", 400, None, None,
            admin(Method::POST, "/keys").json(&json!({"tenant": "t", "admin": true}))),
        bad("key: tenant a number", 400, None, None,
            admin(Method::POST, "/keys").json(&json!({"tenant": 5}))),
        bad("key: not JSON", 400, None, None,
            admin(Method::POST, "/keys").header("content-type", "application/json").body("tenant=t")),
        bad("key: past server.max_body_bytes", 413, None, None,
            admin(Method::POST, "/keys").json(&json!({"tenant": long(80 << 10)}))),
        bad("key: revoke an unknown id", 404, None, None,
            admin(Method::DELETE, "/keys/000000000000")),
    ];
    check_bad_inputs(rows).await;
    assert_eq!(
        observable_state(&s, &store).await,
        before,
        "a bad input changed something"
    );
    assert!(!store.join("new").exists() && !store.join("nobody").exists());
    // The server still answers, from the adapter and the base.
    let r = s.chat_task("hello", "keep").await;
    assert!(
        r.adapter.as_deref().unwrap_or("").starts_with("keep@"),
        "{:?} {}",
        r.adapter,
        r.json
    );
    assert_eq!(s.chat("hello", |rb, _| rb).await.status, 200);
}

/// Issue 15, "Bad input", keys mode: requests without a valid key, or naming another
/// tenant, or otherwise bad, are refused in the OpenAI shape and change nothing (the other
/// tenant's hits included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_in_keys_mode_get_a_4xx_in_the_openai_shape_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = keys_config(dir.path());
    c.plugin.max_tokens_limit = 50;
    c.plugin.default_max_tokens = 16;
    let s = start_with(c, Some(std::sync::Arc::new(IdleGenerator))).await;
    let store = dir.path().join("store");
    assert_eq!(s.upload("acme", &adapter(1)).await.status, 201);
    assert_eq!(s.upload("globex", &adapter(2)).await.status, 201);
    let (key, _) = create_key(&s, "acme", None).await;
    let before = settled_state(&s, &store).await;

    let chat_url = format!("{}/v1/chat/completions", s.url);
    let chat = |auth: Option<&str>, extra: Value| {
        let mut body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let rb = s.client.post(&chat_url).json(&body);
        match auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        }
    };
    let bearer = format!("Bearer {key}");
    let keyed = |extra: Value| chat(Some(bearer.as_str()), extra);
    let wrong = format!("Bearer {key}0");
    let token = format!("Bearer {TOKEN}");
    let basic = format!("Basic {key}");
    let engine_id = s.plugin.table.resident_ids()[0].clone();
    // As in the open-mode table: what, status, `error.code`, `error.param`, the request.
    #[rustfmt::skip]
    let rows = vec![
        bad("no key", 401, Some("invalid_api_key"), None, chat(None, json!({}))),
        bad("an unknown key", 401, Some("invalid_api_key"), None,
            chat(Some(wrong.as_str()), json!({}))),
        bad("the admin token as key", 401, Some("invalid_api_key"), None,
            chat(Some(token.as_str()), json!({}))),
        bad("the key as Basic auth", 401, Some("invalid_api_key"), None,
            chat(Some(basic.as_str()), json!({}))),
        bad("no key, a task id", 401, Some("invalid_api_key"), None,
            chat(None, json!({"task_id": "acme"}))),
        bad("completions without a key", 401, Some("invalid_api_key"), None,
            s.client.post(format!("{}/v1/completions", s.url)).json(&json!({"prompt": "a"}))),
        bad("models without a key", 401, Some("invalid_api_key"), None,
            s.client.get(format!("{}/v1/models", s.url))),
        bad("another tenant's X-Task-Id", 403, Some("tenant_mismatch"), None,
            keyed(json!({})).header("X-Task-Id", "globex")),
        bad("another tenant's task_id", 403, Some("tenant_mismatch"), Some("task_id"),
            keyed(json!({"task_id": "globex"}))),
        bad("an unknown task_id", 403, Some("tenant_mismatch"), Some("task_id"),
            keyed(json!({"task_id": "nobody"}))),
        bad("a malformed X-Task-Id", 400, None, None, keyed(json!({})).header("X-Task-Id", "a b")),
        bad("a malformed task_id", 400, None, Some("task_id"), keyed(json!({"task_id": "a/b"}))),
        bad("max_tokens past the ceiling", 400, None, Some("max_tokens"),
            keyed(json!({"max_tokens": 51}))),
        bad("messages a number", 400, None, Some("messages"), keyed(json!({"messages": 5}))),
        bad("an engine id as model", 404, Some("model_not_found"), Some("model"),
            keyed(json!({"model": engine_id}))),
    ];
    check_bad_inputs(rows).await;
    assert_eq!(
        observable_state(&s, &store).await,
        before,
        "a bad input changed something"
    );
    let r = reply(keyed(json!({"max_tokens": 4})).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(
        r.adapter.as_deref().unwrap_or("").starts_with("acme@"),
        "{:?}",
        r.adapter
    );
}
