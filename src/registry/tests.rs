//! The registry's behaviour: IDs, expiry, rotation, and what survives a restart.

use std::sync::Mutex;

use super::*;

const JOURNAL_FILE: &str = "broadcasts.journal";

fn journal_lines(dir: &Path) -> usize {
    fs::read_to_string(dir.join(JOURNAL_FILE))
        .unwrap()
        .lines()
        .count()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "whipcast-registry-{name}-{}",
        secret::random_token()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn broadcasts_survive_reopening_and_only_a_hash_is_stored() {
    let dir = temp_dir("persist");
    let mut r = Registry::open(&dir).unwrap();
    let created = r.create(1);
    r.save().unwrap();
    let text = fs::read_to_string(dir.join(STATE_FILE)).unwrap();
    assert!(
        !text.contains(&created.broadcast_id),
        "the broadcast ID must not be stored"
    );
    let reopened = Registry::open(&dir).unwrap();
    let key = reopened
        .by_broadcast_id(&created.broadcast_id)
        .expect("broadcast ID still valid");
    assert_eq!(reopened.by_view_id(&created.view_id), Some(key));
    assert_eq!(
        reopened.by_broadcast_id(&created.view_id),
        None,
        "a view ID cannot publish"
    );
    assert_eq!(
        reopened.by_view_id(&created.broadcast_id),
        None,
        "a broadcast ID is not a view ID"
    );
}

#[test]
fn unused_broadcasts_expire_and_rotation_revokes_the_old_view_id() {
    let dir = temp_dir("expire");
    let mut r = Registry::open(&dir).unwrap();
    let old = r.create(1_000);
    let fresh = r.create(1_000_000);
    let ttl = std::time::Duration::from_secs(10_000);
    assert_eq!(r.expire(1_000_000, ttl, ttl), 1);
    assert_eq!(r.by_broadcast_id(&old.broadcast_id), None);
    let (new_view, _) = r.rotate_view_id(fresh.key).unwrap();
    r.save().unwrap();
    assert_eq!(
        r.by_view_id(&fresh.view_id),
        None,
        "old viewer link stops working"
    );
    let reopened = Registry::open(&dir).unwrap();
    let key = reopened.by_broadcast_id(&fresh.broadcast_id).expect("kept");
    assert_eq!(
        reopened.by_view_id(&new_view),
        Some(key),
        "the new view ID survives a restart"
    );
}

#[test]
fn never_published_broadcasts_expire_sooner_than_published_ones() {
    let dir = temp_dir("unpublished");
    let mut r = Registry::open(&dir).unwrap();
    let idle = r.create(1_000);
    let used = r.create(1_000);
    assert!(r.touch(used.key, 1_000), "the first publish is recorded");
    let (ttl, unpublished) = (
        std::time::Duration::from_secs(30 * 86_400),
        std::time::Duration::from_secs(6 * 3_600),
    );
    assert_eq!(r.expire(1_000 + 3_600, ttl, unpublished), 0);
    assert_eq!(r.expire(1_000 + 7 * 3_600, ttl, unpublished), 1);
    assert_eq!(r.by_broadcast_id(&idle.broadcast_id), None);
    assert!(r.by_broadcast_id(&used.broadcast_id).is_some());
}

#[test]
fn the_state_files_are_private_and_no_temporary_file_is_left() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("private");
    let registry = Mutex::new(Registry::open(&dir).unwrap());
    let saver = Saver::default();
    for _ in 0..2 {
        // The first save writes a snapshot, the second appends to the journal.
        let generation = {
            let mut r = registry.lock().unwrap();
            r.create(1);
            r.generation()
        };
        saver.save_at_least(&registry, generation).unwrap();
    }
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [JOURNAL_FILE, STATE_FILE]);
    for name in names {
        let mode = fs::metadata(dir.join(&name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
    assert_eq!(journal_lines(&dir), 1, "the second creation is one line");
}

#[test]
fn corrupt_state_file_is_an_error_not_an_empty_registry() {
    let dir = temp_dir("corrupt");
    fs::write(dir.join(STATE_FILE), "{ not json").unwrap();
    let err = Registry::open(&dir).err().expect("corrupt file must fail");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// Found by the `journal` fuzz target (issue 28): a state file in which two broadcasts
/// shared a view ID (or one broadcast ID was listed twice) loaded, and the view ID then
/// opened only the later broadcast: the other one's viewers were shown the wrong stream. A
/// journal record doing the same replayed too.
#[test]
fn two_broadcasts_under_one_id_are_corruption() {
    let entry = |id: u8, view: &str| {
        format!(
            r#"{{"id_sha256":"{}","view_id":"{view}","label":"x","created_unix":1}}"#,
            format!("{id:02x}").repeat(32)
        )
    };
    let state = |entries: &[String]| {
        format!(
            r#"{{"version":1,"generation":1,"broadcasts":[{}]}}"#,
            entries.join(",")
        )
    };
    let put = |generation: u64, entry: String| {
        format!("{{\"op\":\"put\",\"generation\":{generation},\"entry\":{entry}}}\n")
    };
    for broadcasts in [
        [entry(1, "v1"), entry(2, "v1")],
        [entry(1, "v1"), entry(1, "v2")],
    ] {
        let dir = temp_dir("one-id-twice");
        fs::write(dir.join(STATE_FILE), state(&broadcasts)).unwrap();
        let err = Registry::open(&dir).err().expect("an ID listed twice");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
    let dir = temp_dir("view-id-taken");
    fs::write(dir.join(STATE_FILE), state(&[entry(1, "v1")])).unwrap();
    fs::write(dir.join(JOURNAL_FILE), put(2, entry(2, "v1"))).unwrap();
    let err = Registry::open(&dir).err().expect("another's view ID");
    assert!(err.to_string().contains("line 1"), "{err}");
    // A broadcast keeping its own view ID, or leaving it for another, is no conflict.
    let lines = [
        put(2, entry(1, "v1")),
        put(3, entry(1, "v3")),
        put(4, entry(2, "v1")),
    ];
    fs::write(dir.join(JOURNAL_FILE), lines.concat()).unwrap();
    let r = Registry::open(&dir).expect("no conflict");
    assert_eq!(r.len(), 2);
    assert!(r.indices_agree_for_tests());
}

/// Creates a broadcast and saves it as the HTTP layer does.
fn create_saved(registry: &Mutex<Registry>, saver: &Saver) -> Created {
    let (created, generation) = {
        let mut r = registry.lock().unwrap();
        let created = r.create(1_000);
        (created, r.generation())
    };
    saver.save_at_least(registry, generation).unwrap();
    created
}

#[test]
fn a_restart_recovers_changes_journalled_after_the_snapshot() {
    let dir = temp_dir("journal");
    let registry = Mutex::new(Registry::open(&dir).unwrap());
    let saver = Saver::default();
    let kept = create_saved(&registry, &saver); // the first save is a snapshot
    let gone = create_saved(&registry, &saver);
    let rotated = create_saved(&registry, &saver);
    let generation = {
        let mut r = registry.lock().unwrap();
        r.forget(gone.key);
        r.rotate_view_id(rotated.key).unwrap();
        r.generation()
    };
    saver.save_at_least(&registry, generation).unwrap();
    assert_eq!(
        journal_lines(&dir),
        4,
        "two creations, a deletion, a rotation"
    );
    let new_view = registry
        .lock()
        .unwrap()
        .view_id(rotated.key)
        .unwrap()
        .to_owned();

    let reopened = Registry::open(&dir).unwrap();
    assert!(reopened.replayed_journal());
    assert_eq!(reopened.len(), 2);
    assert!(reopened.by_broadcast_id(&kept.broadcast_id).is_some());
    assert_eq!(reopened.by_broadcast_id(&gone.broadcast_id), None);
    let key = reopened.by_broadcast_id(&rotated.broadcast_id).unwrap();
    assert_eq!(reopened.by_view_id(&new_view), Some(key));
    assert_eq!(
        reopened.by_view_id(&rotated.view_id),
        None,
        "a rotated view ID stays revoked across a restart"
    );
}

#[test]
fn records_older_than_the_snapshot_are_not_replayed_over_it() {
    let dir = temp_dir("stale");
    let registry = Mutex::new(Registry::open(&dir).unwrap());
    let saver = Saver::default();
    let created = create_saved(&registry, &saver);
    let generation = {
        let mut r = registry.lock().unwrap();
        r.rotate_view_id(created.key).unwrap();
        r.generation()
    };
    saver.save_at_least(&registry, generation).unwrap();
    let journal = fs::read(dir.join(JOURNAL_FILE)).unwrap();
    // A crash between writing a snapshot and emptying the journal: the old journal remains.
    registry
        .lock()
        .unwrap()
        .rotate_view_id(created.key)
        .unwrap();
    let latest = registry
        .lock()
        .unwrap()
        .view_id(created.key)
        .unwrap()
        .to_owned();
    registry.lock().unwrap().save().unwrap();
    fs::write(dir.join(JOURNAL_FILE), journal).unwrap();

    let reopened = Registry::open(&dir).unwrap();
    let key = reopened.by_broadcast_id(&created.broadcast_id).unwrap();
    assert_eq!(reopened.view_id(key), Some(latest.as_str()));
}

#[test]
fn a_journal_line_cut_short_is_ignored_and_others_are_not() {
    let dir = temp_dir("torn");
    let registry = Mutex::new(Registry::open(&dir).unwrap());
    let saver = Saver::default();
    create_saved(&registry, &saver);
    let journalled = create_saved(&registry, &saver);
    let path = dir.join(JOURNAL_FILE);
    let whole = fs::read_to_string(&path).unwrap();
    fs::write(&path, format!("{whole}{{\"op\":\"put\",\"genera")).unwrap();
    let reopened = Registry::open(&dir).expect("a torn last line is not corruption");
    assert!(reopened.by_broadcast_id(&journalled.broadcast_id).is_some());
    assert_eq!(reopened.len(), 2);

    fs::write(&path, format!("{{\"op\":\"put\",\"genera\n{whole}")).unwrap();
    let err = Registry::open(&dir)
        .err()
        .expect("a bad line before others");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn each_creation_writes_a_line_not_the_whole_registry() {
    let dir = temp_dir("cost");
    let registry = Mutex::new(Registry::open(&dir).unwrap());
    let saver = Saver::default();
    create_saved(&registry, &saver);
    let line = fs::metadata(dir.join(STATE_FILE)).unwrap().len(); // one broadcast: about a line
    let n = 1_500; // more than the journal holds before it is folded into a snapshot
    let created: Vec<Created> = (0..n).map(|_| create_saved(&registry, &saver)).collect();
    // Rewriting the whole file each time would write n²/2 lines; the journal writes n, plus
    // snapshots as long as the journal they replace.
    let per_creation = saver.bytes_written() / n as u64;
    assert!(
        per_creation < 3 * line,
        "{per_creation} bytes written per creation; a line is about {line}"
    );
    assert!(journal_lines(&dir) < n, "the journal was compacted");
    let reopened = Registry::open(&dir).unwrap();
    assert_eq!(reopened.len(), n + 1);
    assert!(
        created
            .iter()
            .all(|c| reopened.by_broadcast_id(&c.broadcast_id).is_some())
    );
}

#[test]
fn the_record_switch_survives_a_restart_through_the_journal() {
    let dir = temp_dir("record-switch");
    let registry = Mutex::new(Registry::open(&dir).unwrap());
    let saver = Saver::default();
    let created = create_saved(&registry, &saver);
    assert!(
        registry.lock().unwrap().record(created.key),
        "on by default"
    );
    let generation = {
        let mut r = registry.lock().unwrap();
        assert_eq!(r.set_record(created.key, false), Some(true));
        r.generation()
    };
    saver.save_at_least(&registry, generation).unwrap();
    let reopened = Registry::open(&dir).unwrap();
    let key = reopened.by_broadcast_id(&created.broadcast_id).unwrap();
    assert!(!reopened.record(key), "switched off before the restart");
    assert_eq!(reopened.not_recorded().collect::<Vec<_>>(), [key]);
}
