//! Deployer API keys with the real binary: the key `tessera serve` prints (once) and saves for
//! the CLI, where the CLI looks for one, and `tessera keys create|list|revoke`. No browser needed.

use tessera_e2e::{api_keys_printed, json_lines, text, Scheduler};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_first_start_prints_one_admin_key_and_saves_it_where_the_cli_looks() {
    let mut scheduler = Scheduler::start();
    let log = std::fs::read_to_string(scheduler.dir.path().join("serve.log")).unwrap();
    assert_eq!(api_keys_printed(&log), vec![scheduler.api_key.clone()], "exactly one key line:\n{log}");
    assert!(scheduler.api_key.starts_with("tsk_k"), "{}", scheduler.api_key);
    // Saved for this URL, readable by this user only.
    let credentials = scheduler.config_dir().join("credentials");
    let saved = std::fs::read_to_string(&credentials).unwrap();
    assert!(saved.contains(&format!("{} {}", scheduler.url, scheduler.api_key)), "{saved}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&credentials).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The CLI finds it with no flag and no TESSERA_API_KEY: no manual step.
    let program = scheduler.file("double.js", "(x) => x * 2");
    let deployed = scheduler.command().args(["deploy", &program, "--range", "0:3"]).output().unwrap();
    assert!(deployed.status.success(), "{}", text(&deployed));
    let job_id = stdout(&deployed);

    // A second start of the same database prints no key, and the saved one still works.
    scheduler.start_again();
    let log = std::fs::read_to_string(scheduler.dir.path().join("serve.log")).unwrap();
    assert_eq!(api_keys_printed(&log).len(), 1, "no key on a later start:\n{log}");
    assert_eq!(std::fs::read_to_string(&credentials).unwrap(), saved);
    let status = scheduler.command().args(["status", "--json", &job_id]).output().unwrap();
    assert!(status.status.success(), "{}", text(&status));
}

#[test]
fn no_save_key_prints_the_key_but_writes_no_file() {
    let scheduler = Scheduler::start_with(&["--no-save-key"]);
    assert!(scheduler.api_key.starts_with("tsk_"));
    assert!(!scheduler.config_dir().join("credentials").exists());
    let log = std::fs::read_to_string(scheduler.dir.path().join("serve.log")).unwrap();
    assert!(log.contains("shown only now: keep it"), "{log}");
}

#[test]
fn a_missing_key_is_one_line_saying_where_the_cli_looked() {
    let scheduler = Scheduler::start_with(&["--no-save-key"]);
    let output = scheduler.command().args(["jobs"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let message = stderr(&output);
    let credentials = scheduler.config_dir().join("credentials");
    for expected in [
        format!("no API key for {}", scheduler.url),
        "--api-key".to_string(),
        "TESSERA_API_KEY".to_string(),
        credentials.display().to_string(),
    ] {
        assert!(message.contains(&expected), "`{expected}` missing from: {message}");
    }
    // A wrong key is refused by the scheduler, and the CLI says where the key came from.
    let output = scheduler.command().args(["jobs", "--api-key", "tsk_knope_00"]).output().unwrap();
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("unauthorized") && message.contains("unknown API key"), "{message}");
    assert!(message.contains("the key came from --api-key"), "{message}");
}

#[test]
fn keys_are_created_listed_and_revoked_with_the_cli() {
    let scheduler = Scheduler::start();
    let admins_job = scheduler.deploy(&[&scheduler.file("id.js", "(x) => x"), "--range", "0:2"]);

    let created = scheduler.tessera(&["keys", "create", "bob"]);
    assert!(created.status.success(), "{}", text(&created));
    let bob = stdout(&created);
    assert!(bob.starts_with("tsk_k") && !bob.contains(char::is_whitespace), "{bob}");
    assert!(stderr(&created).contains("only time the key is shown"), "{}", text(&created));
    let bob_id = bob.strip_prefix("tsk_").unwrap().split_once('_').unwrap().0.to_string();

    // Listing shows ids, names and flags, never a secret.
    let listed = scheduler.tessera(&["keys", "list", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let keys = json_lines(&listed.stdout);
    let names: Vec<&str> = keys.iter().map(|key| key["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["admin", "bob"]);
    assert_eq!((keys[0]["admin"].as_bool(), keys[1]["admin"].as_bool()), (Some(true), Some(false)));
    let secret = bob.rsplit('_').next().unwrap();
    let table = scheduler.tessera(&["keys", "list"]);
    for output in [&listed, &table] {
        assert!(!stdout(output).contains(secret), "a listing shows no secret: {}", text(output));
    }
    assert!(stdout(&table).contains(&bob_id), "{}", text(&table));

    // Bob deploys and sees only his jobs; he cannot read the admin's job, nor manage keys.
    let program = scheduler.file("triple.js", "(x) => x * 3");
    let as_bob = |args: &[&str]| scheduler.command().args(args).env("TESSERA_API_KEY", &bob).output().unwrap();
    let deployed = as_bob(&["deploy", &program, "--range", "0:4"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    let bobs_job = stdout(&deployed);
    let jobs = as_bob(&["jobs", "--json"]);
    let ids: Vec<String> = json_lines(&jobs.stdout).iter().map(|job| job["job_id"].as_str().unwrap().into()).collect();
    assert_eq!(ids, vec![bobs_job.clone()]);
    let refused = as_bob(&["status", &admins_job]);
    assert!(!refused.status.success() && stderr(&refused).contains("not_found"), "{}", text(&refused));
    let refused = as_bob(&["cancel", &admins_job]);
    assert!(!refused.status.success() && stderr(&refused).contains("not_found"), "{}", text(&refused));
    let refused = as_bob(&["keys", "list"]);
    assert!(stderr(&refused).contains("forbidden"), "{}", text(&refused));
    assert_eq!(scheduler.status(&admins_job)["state"], "running", "the admin's job is untouched");
    // The admin sees both jobs.
    assert_eq!(json_lines(&scheduler.tessera(&["jobs", "--json"]).stdout).len(), 2);

    // Revoked: refused from the next command on.
    let revoked = scheduler.tessera(&["keys", "revoke", &bob_id]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    let refused = as_bob(&["status", &bobs_job]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(stderr(&refused).contains("was revoked"), "{}", text(&refused));
    let listed = json_lines(&scheduler.tessera(&["keys", "list", "--json"]).stdout);
    assert!(listed[1]["revoked_ms"].as_u64().is_some(), "{listed:?}");
}

#[test]
fn keys_create_db_makes_an_admin_key_while_the_scheduler_runs() {
    let scheduler = Scheduler::start();
    let db = scheduler.db.to_string_lossy().into_owned();
    // No key needed: it writes the database file directly (the way back in without an admin key).
    let created = scheduler.command().args(["keys", "create", "rescue", "--admin", "--db", &db]).output().unwrap();
    assert!(created.status.success(), "{}", text(&created));
    let rescue = stdout(&created);
    let listed = scheduler.command().args(["keys", "list", "--json", "--api-key", &rescue]).output().unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    assert_eq!(json_lines(&listed.stdout).len(), 2);
    let missing =
        scheduler.command().args(["keys", "create", "x", "--db", "/nonexistent/tessera.db"]).output().unwrap();
    assert!(stderr(&missing).contains("no database at"), "{}", text(&missing));
}
