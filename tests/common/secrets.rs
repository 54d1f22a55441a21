//! The suite-wide secret scan: every operator the harness starts logs at debug level to a file in
//! the run's directory (`$TINYSTACKS_STATE/operator-logs`), a watch of the generated Secrets
//! records every password and private key the operator writes while it runs, and when the
//! operator stops the harness saves every Event and every object's status and conditions next to
//! its log. `tests/secret_scan.rs` then looks for each recorded secret, also base64-encoded and
//! line by line, in all of it, and in every plan (`status.plan`) of those objects on its own
//! (`hack/test.sh` runs it after the suite).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

/// The keys of the generated Secrets that hold a generated secret (the rest is host, port, user).
pub const SECRET_KEYS: [&str; 2] = ["PG_PASSWORD", "ssh-privatekey"];
/// The label the operator puts on the Secrets it writes.
const MANAGED: &str = "app.kubernetes.io/managed-by=tinystacks-operator";
/// The file of recorded secrets, one JSON string a line, beside (not in) the scanned directory.
const RECORDED: &str = "generated-secrets.jsonl";

/// Where the operators' logs and the saved Events and statuses go.
pub fn log_dir() -> PathBuf {
    let base = std::env::var_os("TINYSTACKS_STATE").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join("operator-logs");
    std::fs::create_dir_all(&dir).expect("the operator log directory");
    dir
}

fn recorded_path() -> PathBuf {
    log_dir().parent().map(|p| p.join(RECORDED)).unwrap_or_else(|| PathBuf::from(RECORDED))
}

/// Appends `value` to the recorded secrets.
pub fn record(value: &str) {
    if value.is_empty() {
        return;
    }
    let line = serde_json::Value::String(value.to_string()).to_string();
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(recorded_path()).expect("secrets file");
    writeln!(file, "{line}").expect("record a secret");
}

/// Every secret recorded so far in this run, deduplicated.
pub fn recorded() -> Vec<String> {
    let text = std::fs::read_to_string(recorded_path()).unwrap_or_default();
    let mut out: Vec<String> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    out.sort();
    out.dedup();
    out
}

/// Records the generated values of every managed Secret the cluster shows, until aborted.
pub fn watch_generated_secrets() -> Option<tokio::task::AbortHandle> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let task = handle.spawn(async {
        let Ok(client) = kube::Client::try_default().await else { return };
        let config = watcher::Config::default().labels(MANAGED);
        let mut events = std::pin::pin!(watcher(Api::<Secret>::all(client), config).default_backoff());
        while let Some(event) = events.next().await {
            let secrets = match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => vec![s],
                _ => continue,
            };
            for secret in secrets {
                for key in SECRET_KEYS {
                    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
                        record(&String::from_utf8_lossy(&value.0));
                    }
                }
            }
        }
    });
    Some(task.abort_handle())
}

/// Saves every Event and every tinystacks object (status and conditions included) as JSON under
/// `name` in the log directory.
pub fn save_cluster_said(name: &str) {
    let Ok(file) = std::fs::File::create(log_dir().join(format!("{name}.objects.json"))) else { return };
    let _ = Command::new("kubectl")
        .args(["get", "events.events.k8s.io,awsaccountlinks,stacks,databases,bastions", "-A", "-o", "json"])
        .stdout(file)
        .stderr(Stdio::null())
        .status();
}

/// The strings that would betray `secret`: the value, its base64 (as in a Secret's data), and
/// each long line of a multi-line value (a PEM key's body, which JSON logs escape line by line).
pub fn forms(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_string(), base64(secret.as_bytes())];
    if secret.contains('\n') {
        out.extend(
            secret.lines().map(str::trim).filter(|l| l.len() >= 24 && !l.starts_with("-----")).map(String::from),
        );
    }
    out
}

/// Where any form of any secret occurs: (source, index of the secret, which form). The secret
/// itself is never part of the answer, so that a failure does not print it.
pub fn scan(sources: &[(String, String)], secrets: &[String]) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        for (f, form) in forms(secret).iter().enumerate() {
            for (source, text) in sources {
                if text.contains(form.as_str()) {
                    found.push((source.clone(), i, f));
                }
            }
        }
    }
    found
}

/// Base64 as the API server writes a Secret's data.
pub fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(ByteString(bytes.to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The plans (`status.plan`) of the objects saved in `objects_json` (a `kubectl get -o json`
/// list): one source per plan, named `<file> <Kind>/<namespace>/<name>`, whose text is each
/// change's `name`, `id` and `detail`, one change a line. Scanned on their own so that a plan is
/// proven covered (the count is reported) and a finding names the object whose plan said it.
pub fn plans(file: &str, objects_json: &str) -> Vec<(String, String)> {
    let Ok(list) = serde_json::from_str::<serde_json::Value>(objects_json) else { return Vec::new() };
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|o| {
            let changes = o.pointer("/status/plan/changes")?.as_array()?;
            let meta = &o["metadata"];
            let object = format!(
                "{}/{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                meta["namespace"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default()
            );
            let text = changes
                .iter()
                .map(|c| {
                    ["name", "id", "detail"]
                        .iter()
                        .map(|k| c[*k].as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("\t")
                })
                .collect::<Vec<_>>()
                .join("\n");
            Some((format!("{file} {object}"), text))
        })
        .collect()
}
