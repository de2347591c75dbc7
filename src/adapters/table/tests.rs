//! The table's state machine against the fake engine: loads in the background and shared
//! by concurrent requests, LRU eviction by count and by memory, loads that wait for room
//! (memory admission), pins, failed loads, version swaps that wait for in-flight requests,
//! eviction and forgetting, version pruning and restart. The server tests cover the same
//! paths end to end on a real (tiny) model.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::engine::fake::{eventually, FakeEngine};
use crate::format::Module;
use crate::testing::{random_adapter, tiny_dims};

/// Long enough for any load here; a request that is routed returns as soon as it can.
const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    dir: tempfile::TempDir,
    engine: Arc<FakeEngine>,
    table: Arc<AdapterTable>,
}

/// A count limit only (every model "weighs" one byte); retired models wait for their
/// requests longer than any test.
fn limits(max_resident: usize) -> Limits {
    Limits {
        max_resident,
        max_resident_bytes: u64::MAX,
        bytes_per_model: 1,
        retire_ceiling: Duration::from_secs(3600),
        load_queue: WAIT,
    }
}

fn adapter(seed: u64) -> LoraAdapter {
    random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, seed, 0.5, 0.5).unwrap()
}

fn open(dir: tempfile::TempDir, limits: Limits) -> Fixture {
    let engine = Arc::new(FakeEngine::new());
    let store = Store::open(&dir.path().join("store")).unwrap();
    let table = AdapterTable::new(engine.clone(), store, tiny_dims(), limits).unwrap();
    Fixture { dir, engine, table }
}

fn fixture(limits: Limits) -> Fixture {
    open(tempfile::tempdir().unwrap(), limits)
}

/// A table started on a store that already holds `tasks` (name, pinned), as after a restart.
fn with_stored(tasks: &[(&str, bool)], limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    for (i, &(task, pinned)) in tasks.iter().enumerate() {
        let mut record = store.put(task, &adapter(i as u64), Source::Upload).unwrap();
        record.pinned = pinned;
        store.save(&record).unwrap();
    }
    open(dir, limits)
}

/// Installs a new version of `task` and returns the engine id it is served by.
async fn install(f: &Fixture, task: &str, seed: u64) -> String {
    f.table
        .install(task, &adapter(seed), Source::Upload)
        .await
        .unwrap();
    served_by(f, task, Duration::ZERO)
        .await
        .expect("an installed adapter serves at once")
}

/// The engine id a request for `task` goes to (`None`: the base model).
async fn served_by(f: &Fixture, task: &str, wait: Duration) -> Option<String> {
    match f.table.route(task, wait).await {
        Route::Base => None,
        Route::Adapter(m) => Some(m.engine_id.clone()),
    }
}

fn state(f: &Fixture, task: &str) -> Option<State> {
    f.table.info(task).map(|i| i.state)
}

fn registered(f: &Fixture, id: &str) -> bool {
    f.engine.registered().iter().any(|r| r == id)
}

fn is_failed(s: Option<State>) -> bool {
    matches!(s, Some(State::Failed(_)))
}

#[tokio::test]
async fn an_installed_version_is_loaded_from_its_own_folder_and_serves() {
    let f = fixture(limits(4));
    assert_eq!(served_by(&f, "a", WAIT).await, None, "unknown task: base");
    assert_eq!(state(&f, "a"), None);
    assert_eq!(f.engine.loads(), 0);

    let info = f
        .table
        .install("a", &adapter(1), Source::Upload)
        .await
        .unwrap();
    assert_eq!(info.state, State::Resident);
    assert_eq!(info.source, Some(Source::Upload));
    let hash = info.hash.unwrap();
    let id = served_by(&f, "a", Duration::ZERO).await.unwrap();
    assert_eq!(f.engine.registered(), std::slice::from_ref(&id));
    assert!(id.contains(&format!("a:{hash}:")), "{id}");
    assert_eq!(
        f.engine.folder_of(&id).unwrap(),
        f.table.store.version_dir("a", &hash)
    );
    assert_eq!(f.table.info("a").unwrap().hits, 1);
    assert_eq!(f.engine.loads(), 1);
}

#[tokio::test]
async fn concurrent_requests_for_a_stored_adapter_share_one_load_and_wait_for_it() {
    let f = with_stored(&[("a", false)], limits(4));
    assert_eq!(state(&f, "a"), Some(State::Stored));
    f.engine.hold();
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let table = f.table.clone();
            tokio::spawn(async move { table.route("a", WAIT).await })
        })
        .collect();
    eventually("the load to start", || f.engine.loads() == 1).await;
    assert_eq!(state(&f, "a"), Some(State::Loading));
    // Longer than a request's polling interval: each has seen the load in flight.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(requests.iter().all(|r| !r.is_finished()));
    f.engine.open();
    let mut ids = HashSet::new();
    for r in requests {
        match r.await.unwrap() {
            Route::Adapter(m) => ids.insert(m.engine_id.clone()),
            Route::Base => panic!("a request gave up on a load that finished in time"),
        };
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(f.engine.loads(), 1, "one load for all requests");
    assert_eq!(state(&f, "a"), Some(State::Resident));
    assert_eq!(f.table.info("a").unwrap().hits, 8);
}

#[tokio::test]
async fn a_request_that_cannot_wait_goes_to_the_base_while_the_load_goes_on() {
    let f = with_stored(&[("a", false)], limits(4));
    f.engine.hold();
    assert_eq!(served_by(&f, "a", Duration::ZERO).await, None);
    eventually("the load to start", || f.engine.loads() == 1).await;
    assert_eq!(state(&f, "a"), Some(State::Loading));
    assert_eq!(served_by(&f, "a", Duration::ZERO).await, None);
    f.engine.open();
    eventually("the adapter to be resident", || {
        state(&f, "a") == Some(State::Resident)
    })
    .await;
    assert!(served_by(&f, "a", Duration::ZERO).await.is_some());
    assert_eq!(f.engine.loads(), 1);
}

#[tokio::test]
async fn the_least_recently_used_adapter_is_evicted_and_unregistered() {
    let f = fixture(limits(2));
    install(&f, "a", 1).await;
    let b = install(&f, "b", 2).await;
    // A request for "a" makes "b" the least recently used.
    assert!(served_by(&f, "a", Duration::ZERO).await.is_some());
    install(&f, "c", 3).await;
    assert_eq!(state(&f, "b"), Some(State::Stored));
    assert_eq!(state(&f, "a"), Some(State::Resident));
    assert_eq!(state(&f, "c"), Some(State::Resident));
    assert_eq!(f.table.evictions.load(Ordering::Relaxed), 1);
    assert_eq!(f.table.loads.load(Ordering::Relaxed), 3);
    eventually("b's engine model to go", || !registered(&f, &b)).await;
    assert_eq!(f.engine.unloads(), 1);

    // A request for "b" brings it back; now "a" is the least recently used.
    let b2 = served_by(&f, "b", WAIT).await.expect("b reloaded");
    assert_ne!(b2, b, "a reload is a new engine model");
    assert_eq!(state(&f, "a"), Some(State::Stored));
    assert_eq!(state(&f, "c"), Some(State::Resident));
    assert_eq!(f.table.evictions.load(Ordering::Relaxed), 2);
    assert_eq!(
        f.table.loads.load(Ordering::Relaxed),
        4,
        "a reload counts as a load"
    );
    eventually("two engine models left", || {
        f.engine.registered().len() == 2
    })
    .await;
}

#[tokio::test]
async fn the_memory_limit_evicts_like_the_count_limit() {
    let f = fixture(Limits {
        max_resident_bytes: 250,
        bytes_per_model: 100,
        ..limits(10)
    });
    for (i, t) in ["a", "b", "c"].iter().enumerate() {
        install(&f, t, i as u64).await;
    }
    assert_eq!(state(&f, "a"), Some(State::Stored));
    assert_eq!(f.table.info("a").unwrap().resident_bytes, 0);
    for t in ["b", "c"] {
        assert_eq!(state(&f, t), Some(State::Resident));
        assert_eq!(f.table.info(t).unwrap().resident_bytes, 100);
    }
    assert_eq!(f.table.evictions.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn pinned_adapters_are_never_evicted() {
    let f = fixture(limits(2));
    install(&f, "a", 1).await;
    install(&f, "b", 2).await;
    let info = f.table.set_pinned("a", true).await.unwrap();
    assert!(info.pinned);
    assert!(f.table.store.get("a").unwrap().unwrap().pinned, "persisted");
    // "a" is the least recently used, but pinned: the others make room.
    install(&f, "c", 3).await;
    assert_eq!(state(&f, "b"), Some(State::Stored));
    install(&f, "d", 4).await;
    assert_eq!(state(&f, "c"), Some(State::Stored));
    assert_eq!(state(&f, "a"), Some(State::Resident));
    let err = f.table.evict("a", false).await.unwrap_err();
    assert!(err.to_string().contains("pinned"), "{err}");
    assert_eq!(state(&f, "a"), Some(State::Resident));

    // Unpinned, it is the least recently used again.
    f.table.set_pinned("a", false).await.unwrap();
    install(&f, "e", 5).await;
    assert_eq!(state(&f, "a"), Some(State::Stored));
    assert_eq!(state(&f, "d"), Some(State::Resident));
}

#[tokio::test]
async fn a_load_that_cannot_fit_beside_the_pinned_adapters_fails_before_loading() {
    let f = fixture(limits(1));
    install(&f, "a", 1).await;
    f.table.set_pinned("a", true).await.unwrap();
    let err = f
        .table
        .install("b", &adapter(2), Source::Upload)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no room"), "{err}");
    assert_eq!(state(&f, "b"), Some(State::Stored), "stored, not failed");
    assert_eq!(state(&f, "a"), Some(State::Resident));
    assert_eq!(f.engine.loads(), 1, "the engine was not asked to load b");
}

/// A failed load (a transient engine fault) is tried again by the first request after
/// LOAD_RETRY_BASE, then after twice that, and recovers once the fault is gone; requests in
/// between go to the base without starting a load each.
#[tokio::test]
async fn a_failed_load_is_retried_by_requests_after_a_growing_wait() {
    let f = with_stored(&[("a", false)], limits(4));
    f.engine.fail(true);
    assert_eq!(served_by(&f, "a", Duration::ZERO).await, None);
    eventually("the load to fail", || is_failed(state(&f, "a"))).await;
    let Some(State::Failed(msg)) = state(&f, "a") else {
        unreachable!()
    };
    assert!(msg.contains("failed (test)"), "{msg}");
    assert_eq!(f.table.load_failures.load(Ordering::Relaxed), 1);
    assert_eq!(served_by(&f, "a", Duration::ZERO).await, None);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(f.engine.loads(), 1, "no retry within the wait");

    tokio::time::sleep(LOAD_RETRY_BASE).await;
    assert_eq!(served_by(&f, "a", Duration::ZERO).await, None);
    eventually("a second failed load", || {
        f.engine.loads() == 2 && f.table.load_failures.load(Ordering::Relaxed) == 2
    })
    .await;
    // The wait has doubled: one base later there is still no third load.
    tokio::time::sleep(LOAD_RETRY_BASE / 2).await;
    assert_eq!(served_by(&f, "a", Duration::ZERO).await, None);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(f.engine.loads(), 2, "the second wait is longer");

    f.engine.fail(false);
    tokio::time::sleep(LOAD_RETRY_BASE * 2).await;
    assert!(served_by(&f, "a", WAIT).await.is_some(), "recovered");
    assert_eq!(state(&f, "a"), Some(State::Resident));
}

#[tokio::test]
async fn a_new_version_replaces_the_old_one_after_in_flight_requests_finish() {
    let f = fixture(limits(4));
    let v1 = install(&f, "a", 1).await;
    let in_flight = f.table.route("a", Duration::ZERO).await;
    assert!(matches!(&in_flight, Route::Adapter(m) if m.engine_id == v1));

    f.engine.hold();
    let install_v2 = {
        let table = f.table.clone();
        tokio::spawn(async move { table.install("a", &adapter(2), Source::Upload).await })
    };
    eventually("the new version to load", || f.engine.loads() == 2).await;
    assert_eq!(state(&f, "a"), Some(State::Loading));
    assert_eq!(
        served_by(&f, "a", Duration::ZERO).await.as_deref(),
        Some(v1.as_str()),
        "the old version serves while the new one loads"
    );
    f.engine.open();
    let info = install_v2.await.unwrap().unwrap();
    assert_eq!(info.state, State::Resident);
    assert_eq!(info.versions.len(), 2);
    let v2 = served_by(&f, "a", Duration::ZERO).await.unwrap();
    assert_ne!(v2, v1);
    assert!(v2.contains(info.hash.as_deref().unwrap()));

    // The old engine model stays while a request holds it (several retire polls here).
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(registered(&f, &v1));
    assert_eq!(f.engine.unloads(), 0);
    drop(in_flight);
    eventually("the old version to be unregistered", || {
        !registered(&f, &v1)
    })
    .await;
    assert_eq!(f.engine.registered(), [v2]);
}

#[tokio::test]
async fn a_failed_new_version_leaves_the_old_one_serving() {
    let f = fixture(limits(4));
    let v1 = install(&f, "a", 1).await;
    f.engine.fail(true);
    assert!(f
        .table
        .install("a", &adapter(2), Source::Upload)
        .await
        .is_err());
    assert!(is_failed(state(&f, "a")));
    assert_eq!(
        served_by(&f, "a", Duration::ZERO).await.as_deref(),
        Some(v1.as_str())
    );
    assert_eq!(f.engine.registered(), [v1]);
}

#[tokio::test]
async fn evict_returns_a_task_to_the_store_and_forget_deletes_it() {
    let f = fixture(limits(4));
    let id = install(&f, "a", 1).await;
    assert!(f.table.evict("a", false).await.unwrap());
    assert_eq!(state(&f, "a"), Some(State::Stored));
    eventually("the engine model to go", || !registered(&f, &id)).await;
    let id2 = served_by(&f, "a", WAIT).await.expect("reloaded on request");

    assert!(f.table.evict("a", true).await.unwrap());
    assert_eq!(state(&f, "a"), None);
    assert!(!f.dir.path().join("store/a").exists());
    eventually("the engine model to go", || !registered(&f, &id2)).await;
    assert_eq!(served_by(&f, "a", WAIT).await, None);
    assert_eq!(f.engine.loads(), 2);
    assert!(!f.table.evict("never-seen", false).await.unwrap());
}

#[tokio::test]
async fn mark_failed_shows_unless_an_adapter_serves() {
    let f = fixture(limits(4));
    f.table.mark_failed("ghost", "generation failed: x".into());
    assert_eq!(
        state(&f, "ghost"),
        Some(State::Failed("generation failed: x".into()))
    );
    assert_eq!(served_by(&f, "ghost", Duration::ZERO).await, None);

    install(&f, "a", 1).await;
    f.table.mark_failed("a", "generation failed: y".into());
    assert_eq!(state(&f, "a"), Some(State::Resident));
    assert!(served_by(&f, "a", Duration::ZERO).await.is_some());
    assert_eq!(f.engine.loads(), 1);
}

#[tokio::test]
async fn pruning_deletes_the_oldest_versions_but_never_the_current_one() {
    let f = fixture(limits(4));
    let mut hashes = Vec::new();
    for seed in [1, 2, 3] {
        install(&f, "a", seed).await;
        hashes.push(f.table.info("a").unwrap().hash.unwrap());
    }
    // Back to the first (oldest) version.
    install(&f, "a", 1).await;
    assert_eq!(f.table.info("a").unwrap().hash.as_ref(), Some(&hashes[0]));

    let versions = |f: &Fixture| -> Vec<String> {
        let info = f.table.info("a").unwrap();
        info.versions.into_iter().map(|v| v.hash).collect()
    };
    let dir = |h: &str| f.table.store.version_dir("a", h);
    f.table.prune_versions("a", 2).await.unwrap();
    assert_eq!(versions(&f), [hashes[0].clone(), hashes[2].clone()]);
    assert!(!dir(&hashes[1]).exists());
    assert!(dir(&hashes[0]).exists() && dir(&hashes[2]).exists());
    let stored = f.table.store.get("a").unwrap().unwrap();
    assert_eq!(stored.versions.len(), 2, "persisted");

    f.table.prune_versions("a", 1).await.unwrap();
    assert_eq!(versions(&f), [hashes[0].clone()]);
    assert_eq!(state(&f, "a"), Some(State::Resident));
}

#[tokio::test]
async fn a_restarted_table_knows_every_stored_task_and_loads_the_pinned_ones() {
    let f = with_stored(&[("a", true), ("b", false)], limits(4));
    assert_eq!(state(&f, "a"), Some(State::Stored));
    assert_eq!(state(&f, "b"), Some(State::Stored));
    assert!(f.table.info("a").unwrap().pinned);
    f.table.load_pinned().await;
    assert_eq!(state(&f, "a"), Some(State::Resident));
    assert_eq!(state(&f, "b"), Some(State::Stored));
    assert_eq!(f.engine.loads(), 1);
    let id = f.table.resident_ids();
    assert_eq!(f.engine.registered(), id);
    assert!(
        f.engine
            .folder_of(&id[0])
            .unwrap()
            .starts_with(f.table.store_root()),
        "loaded from the store"
    );
}

/// A corrupt record found at start neither stops the table nor fails the task's next
/// upload: it is moved aside and reported, and the upload gives a clean entry.
#[tokio::test]
async fn a_corrupt_record_at_start_is_quarantined_and_an_upload_repairs_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    store.put("bad", &adapter(1), Source::Upload).unwrap();
    store.put("good", &adapter(2), Source::Upload).unwrap();
    std::fs::write(dir.path().join("store/bad/meta.json"), b"{\"task\": ").unwrap();
    let f = open(dir, limits(4));

    assert_eq!(state(&f, "bad"), None);
    assert_eq!(state(&f, "good"), Some(State::Stored));
    let q = f.table.quarantined();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].task, "bad");
    assert!(
        std::path::Path::new(&q[0].path).exists(),
        "kept, not deleted"
    );

    let info = f
        .table
        .install("bad", &adapter(3), Source::Upload)
        .await
        .unwrap();
    assert_eq!(info.state, State::Resident);
    assert_eq!(info.versions.len(), 1);
    assert_eq!(info.hash, Some(adapter(3).content_hash().unwrap()));
    assert!(served_by(&f, "bad", Duration::ZERO).await.is_some());
}

/// A caller that goes away while its adapter loads (a client disconnecting drops the
/// handler's future) does not cancel the load: an upload and a pin both end resident, not
/// `loading` for good with the engine's model unknown to the table.
#[tokio::test]
async fn a_caller_that_goes_away_does_not_cancel_its_load() {
    let f = fixture(limits(4));
    f.table
        .install("pinned", &adapter(2), Source::Upload)
        .await
        .unwrap();
    f.table.evict("pinned", false).await.unwrap();
    f.engine.hold();
    let calls = [
        {
            let table = f.table.clone();
            tokio::spawn(async move {
                table
                    .install("uploaded", &adapter(1), Source::Upload)
                    .await
                    .map(|_| ())
            })
        },
        {
            let table = f.table.clone();
            tokio::spawn(async move { table.set_pinned("pinned", true).await.map(|_| ()) })
        },
    ];
    eventually("both loads to start", || f.engine.loads() == 3).await;
    for call in &calls {
        call.abort();
    }
    for call in calls {
        assert!(call.await.unwrap_err().is_cancelled());
    }
    assert_eq!(state(&f, "uploaded"), Some(State::Loading));
    f.engine.open();
    for task in ["uploaded", "pinned"] {
        eventually("the load to finish", || {
            state(&f, task) == Some(State::Resident)
        })
        .await;
        assert!(
            served_by(&f, task, Duration::ZERO).await.is_some(),
            "{task}"
        );
    }
    assert!(f.table.info("pinned").unwrap().pinned);
}

/// Issue 15, item 13: a replaced version is removed when its last request is done, however
/// long that takes (before: after 600 s whatever still used it); only the retire ceiling
/// cuts a request that never ends short, and only that one model.
#[tokio::test]
async fn a_retired_model_waits_for_its_last_request_up_to_the_ceiling() {
    let ceiling = Duration::from_millis(1500);
    let f = fixture(Limits {
        retire_ceiling: ceiling,
        ..limits(4)
    });
    let v1 = install(&f, "a", 1).await;
    let first = f.table.route("a", Duration::ZERO).await;
    let second = f.table.route("a", Duration::ZERO).await;
    install(&f, "a", 2).await;
    tokio::time::sleep(ceiling / 4).await;
    drop(first);
    tokio::time::sleep(ceiling / 4).await;
    assert!(registered(&f, &v1), "one request still uses it");
    drop(second);
    eventually("the old version to go with its last request", || {
        !registered(&f, &v1)
    })
    .await;

    // A request that never ends: the ceiling removes the model anyway.
    let v2 = served_by(&f, "a", Duration::ZERO).await.unwrap();
    let _stuck = f.table.route("a", Duration::ZERO).await;
    let t = Instant::now();
    install(&f, "a", 3).await;
    tokio::time::sleep(ceiling / 2).await;
    assert!(registered(&f, &v2), "before the ceiling");
    eventually("the ceiling to remove it", || !registered(&f, &v2)).await;
    assert!(t.elapsed() >= ceiling, "{:?}", t.elapsed());
    assert_eq!(f.engine.registered().len(), 1, "the current version stays");
}

/// Issue 15, item 11: a forget whose file deletion fails (a disk fault) after the task has
/// left the table does not bring the task back at the next start, and that start's
/// leftover sweep deletes the files.
#[tokio::test]
async fn a_forgotten_task_stays_forgotten_when_deleting_its_files_fails() {
    let f = fixture(limits(4));
    let id = install(&f, "a", 1).await;
    install(&f, "b", 2).await;
    f.table.store.fail_deletes(true);
    assert!(f.table.evict("a", true).await.unwrap());
    assert_eq!(state(&f, "a"), None);
    eventually("the engine model to go", || !registered(&f, &id)).await;

    // A restart on the same store.
    let root = f.table.store_root();
    let store = Store::open(&root).unwrap();
    let lock = crate::adapters::StoreLock::acquire(&root).unwrap();
    assert!(store.remove_leftovers(&lock).unwrap() >= 1);
    let table =
        AdapterTable::new(Arc::new(FakeEngine::new()), store, tiny_dims(), limits(4)).unwrap();
    assert!(table.info("a").is_none(), "forgotten for good");
    assert_eq!(table.info("b").unwrap().state, State::Stored);
    let left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n == "a" || n.starts_with(".a."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn store_limits_refuse_a_new_task_or_more_bytes_and_write_nothing() {
    let f = fixture(limits(16));
    let one = adapter(1).weight_bytes() as u64;
    f.table.set_store_limits(StoreLimits {
        max_tasks: 2,
        max_bytes: 3 * one,
    });
    install(&f, "a", 1).await;
    install(&f, "b", 2).await;
    let e = f
        .table
        .install("c", &adapter(3), Source::Upload)
        .await
        .unwrap_err();
    assert!(e.downcast_ref::<StoreFull>().is_some(), "{e:#}");
    assert!(format!("{e:#}").contains("max_stored_tasks"), "{e:#}");
    assert!(f.table.info("c").is_none());
    assert!(!f.dir.path().join("store/c").exists(), "nothing written");

    // A stored task adds a version while the bytes allow, not past them.
    install(&f, "a", 4).await;
    let e = f
        .table
        .install("b", &adapter(5), Source::Upload)
        .await
        .unwrap_err();
    assert!(e.downcast_ref::<StoreFull>().is_some(), "{e:#}");
    assert!(format!("{e:#}").contains("max_store_mib"), "{e:#}");
    assert_eq!(f.table.info("b").unwrap().versions.len(), 1);
    // A version already stored adds nothing.
    f.table
        .install("a", &adapter(4), Source::Upload)
        .await
        .unwrap();

    // Deleting a task makes room for another.
    assert!(f.table.evict("b", true).await.unwrap());
    install(&f, "c", 3).await;
}

/// Issue 15, item 7: ten requests at once for ten evicted adapters, with room for two
/// models, start two loads; the others wait for room, which evicting the least recently
/// used models (once their requests have them) makes. The engine never holds more than two
/// models, loads in flight included, and every request gets its own adapter.
#[tokio::test]
async fn concurrent_loads_wait_for_room_and_never_pass_the_limit() {
    let names: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let stored: Vec<(&str, bool)> = names.iter().map(|t| (t.as_str(), false)).collect();
    let f = with_stored(&stored, limits(2));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (engine, sampling) = (f.engine.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while sampling.load(Ordering::SeqCst) {
                most = most.max(engine.models());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        })
    };
    f.engine.hold();
    let requests: Vec<_> = names
        .iter()
        .map(|task| {
            let (table, task) = (f.table.clone(), task.clone());
            // Answered, a request lets go of its model (the route is dropped here).
            tokio::spawn(async move {
                match table.route(&task, WAIT).await {
                    Route::Base => None,
                    Route::Adapter(m) => Some(m.engine_id.clone()),
                }
            })
        })
        .collect();
    eventually("two loads to start", || f.engine.loads() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.engine.loads(), 2, "the other eight wait for room");
    f.engine.open();
    for (task, request) in names.iter().zip(requests) {
        let id = request
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the request for {task} was answered by the base"));
        assert!(
            id.starts_with(&format!("{ADAPTER_MODEL_PREFIX}{task}:")),
            "{task}: {id}"
        );
    }
    sampling.store(false, Ordering::SeqCst);
    let sampled = sampler.await.unwrap();
    assert!(sampled <= 2, "sampled {sampled} models at once");
    assert_eq!(f.engine.peak_models(), 2);
    assert_eq!(f.engine.loads(), 10, "one load per adapter");
    assert_eq!(f.table.evictions.load(Ordering::Relaxed), 8);
    eventually("two models left", || f.engine.models() == 2).await;
}

/// Issue 15, item 7: a model evicted while a request still uses it keeps its room until it
/// is removed. A load that gets no room within `load_queue` is given up, not failed: its
/// requests go to the base, and a later one loads it once there is room.
#[tokio::test]
async fn a_retired_model_in_use_holds_its_room_and_a_load_without_room_gives_up() {
    let f = with_stored(
        &[("a", false), ("b", false)],
        Limits {
            load_queue: Duration::from_millis(300),
            ..limits(1)
        },
    );
    let in_use = f.table.route("a", WAIT).await;
    let Route::Adapter(a) = &in_use else {
        panic!("a did not load")
    };
    let a_id = a.engine_id.clone();
    // b's load evicts a, but a's request keeps it registered: no room for b.
    assert_eq!(served_by(&f, "b", Duration::from_millis(100)).await, None);
    assert_eq!(state(&f, "a"), Some(State::Stored));
    assert_eq!(state(&f, "b"), Some(State::Loading), "waiting for room");
    eventually("b's load to give up", || {
        state(&f, "b") == Some(State::Stored)
    })
    .await;
    assert!(registered(&f, &a_id), "still in use");
    assert_eq!(f.engine.loads(), 1, "b was never loaded beside a");
    assert_eq!(f.table.load_failures.load(Ordering::Relaxed), 0);

    // Once a's request is done, a request for b finds room.
    drop(in_use);
    eventually("a to be removed", || !registered(&f, &a_id)).await;
    assert!(served_by(&f, "b", WAIT).await.is_some());
    assert_eq!(f.engine.peak_models(), 1);
}

/// With room for one model, a new version of the only resident adapter does not load
/// beside the old one: the old one goes first (its task's requests go to the base
/// meanwhile).
#[tokio::test]
async fn with_room_for_one_a_new_version_replaces_the_old_one_first() {
    let f = fixture(limits(1));
    let v1 = install(&f, "a", 1).await;
    f.table.set_pinned("a", true).await.unwrap();
    let v2 = install(&f, "a", 2).await;
    assert_ne!(v1, v2);
    assert_eq!(f.engine.registered(), [v2]);
    assert_eq!(f.engine.peak_models(), 1);
    assert!(f.table.info("a").unwrap().pinned);
}
