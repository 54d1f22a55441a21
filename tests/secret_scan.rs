//! No generated password or private key in any operator log line (debug level), Event, status,
//! condition or plan (`status.plan`: each change's name, id and detail) of the whole suite. The harness (`tests/common/secrets.rs`) keeps every operator's
//! log, the Events and objects each operator left, and every secret the operators generated;
//! `hack/test.sh` runs the scan after the suite, over all of them.

mod common;

use common::secrets::{SECRET_KEYS, base64, forms, log_dir, plans, recorded, scan};

/// Every file of the log directory: (file name, text).
fn sources() -> Vec<(String, String)> {
    let entries = std::fs::read_dir(log_dir()).expect("the operator log directory");
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let text = std::fs::read(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), String::from_utf8_lossy(&text).into_owned()))
        })
        .collect()
}

#[test]
fn the_scanner_finds_a_secret_raw_base64_and_by_the_lines_of_a_key() {
    let password = "Zq3-generated-password-9f8e7d6c".to_string();
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDv1vtJ9rq2xn4cQ3nKZ2dUu8UQW6q5O6j2y8mJ3y9mZgAAAJgtrI2JLayN\n-----END OPENSSH PRIVATE KEY-----\n".to_string();
    let secrets = vec![password.clone(), key.clone()];
    let clean = (
        "clean.log".to_string(),
        r#"{"level":"DEBUG","fields":{"message":"secret written","secret":"orders-connection"}}"#.to_string(),
    );
    // A JSON log escapes the key's newlines: its lines still show.
    let escaped = serde_json::to_string(&key).expect("JSON");
    let sources = vec![
        clean.clone(),
        ("raw.log".to_string(), format!("connecting with password={password} to the instance")),
        ("b64.json".to_string(), format!(r#"{{"data":{{"PG_PASSWORD":"{}"}}}}"#, base64(password.as_bytes()))),
        ("key.log".to_string(), format!(r#"{{"fields":{{"key":{escaped}}}}}"#)),
        ("keyb64.json".to_string(), format!(r#"{{"note":"{}"}}"#, base64(key.as_bytes()))),
    ];
    let found = scan(&sources, &secrets);
    let in_file = |name: &str| found.iter().any(|(source, _, _)| source == name);
    assert!(!in_file("clean.log"), "{found:?}");
    for leaked in ["raw.log", "b64.json", "key.log", "keyb64.json"] {
        assert!(in_file(leaked), "the leak in {leaked} is found: {found:?}");
    }
    // The findings name the source and the secret's index, never the secret.
    assert!(found.iter().all(|f| !format!("{f:?}").contains(&password)));
    assert!(forms(&key).len() > 2, "a key is also looked for line by line");
    assert!(scan(&[clean], &secrets).is_empty());
}

#[test]
fn a_secret_in_a_plan_is_found_and_named_by_its_object() {
    let password = "Zq3-generated-password-9f8e7d6c".to_string();
    let change = |detail: &str| {
        serde_json::json!({"action": "Update", "resource": "rds:DBInstance", "name": "instance",
            "id": "db-orders", "detail": detail})
    };
    let object = |name: &str, changes: Vec<serde_json::Value>| {
        serde_json::json!({"kind": "Database", "metadata": {"namespace": "team", "name": name},
            "status": {"plan": {"id": "0123456789abcdef", "changes": changes}}})
    };
    let saved = serde_json::json!({"items": [
        object("clean", vec![change("instanceClass db.t4g.micro -> db.t4g.small")]),
        object("leaky", vec![change("instanceClass db.t4g.micro -> db.t4g.small"),
            change(&format!("masterUserPassword -> {password}"))]),
        {"kind": "Event", "metadata": {"namespace": "team", "name": "e"}},
    ]});
    let sources = plans("op.objects.json", &saved.to_string());
    assert_eq!(sources.len(), 2, "one source per object with a plan: {sources:?}");
    assert!(sources.iter().all(|(_, text)| text.contains("db-orders") && text.contains("instance\t")));
    let found = scan(&sources, &[password]);
    let named: Vec<&str> = found.iter().map(|(source, _, _)| source.as_str()).collect();
    assert_eq!(named, ["op.objects.json Database/team/leaky"]);
}

#[test]
#[ignore = "after the suite: `hack/test.sh` runs it once every other test has run"]
fn no_generated_secret_in_any_log_event_status_or_condition_of_the_suite() {
    let secrets = recorded();
    let sources = sources();
    let logs = sources.iter().filter(|(name, _)| name.ends_with(".log")).count();
    let said = sources.iter().filter(|(name, _)| name.ends_with(".objects.json")).count();
    let lines: usize = sources.iter().map(|(_, text)| text.lines().count()).sum();
    let plan_sources: Vec<(String, String)> = sources
        .iter()
        .filter(|(name, _)| name.ends_with(".objects.json"))
        .flat_map(|(name, text)| plans(name, text))
        .collect();
    let changes: usize = plan_sources.iter().map(|(_, text)| text.lines().count()).sum();
    eprintln!(
        "secret scan: {} generated secrets ({SECRET_KEYS:?}) against {logs} operator logs ({lines} lines in all), the Events and objects after {said} operators, and {} plans ({changes} changes)",
        secrets.len(),
        plan_sources.len()
    );
    assert!(!secrets.is_empty(), "no generated secret was recorded: the harness's recorder did not run");
    assert!(logs > 0 && said > 0, "the suite left no operator log in {}: did it run?", log_dir().display());
    assert!(!plan_sources.is_empty(), "no object the suite left had a status.plan: is it written every pass?");
    let found = scan(&[sources, plan_sources].concat(), &secrets);
    assert!(found.is_empty(), "generated secrets found (file, secret number, form): {found:?}");
}
