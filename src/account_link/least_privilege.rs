//! The `Scoped` permission set against the source: every AWS SDK call the operator's code makes as
//! a link's role must be granted by `template::SCOPED_ACTIONS`. The calls are found by reading
//! `src/`, so a new call without a grant fails here, not in a customer's account.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::template;

/// Files whose calls run as another identity than the link's role, and what they may call.
const OTHER_IDENTITIES: &[(&str, &str, &[&str])] = &[
    // The operator's own identity: it assumes the link roles and asks who it is.
    ("src/aws/mod.rs", "operator", &["sts:AssumeRole", "sts:GetCallerIdentity"]),
    // The bootstrap credentials from the link's Secret deploy the stack that creates the role.
    ("src/account_link/cloudformation.rs", "bootstrap", &["cloudformation:*", "sts:GetCallerIdentity"]),
];

/// IAM's prefix for the variable a client is bound to; clients are named after their service so
/// that this scan can tell them apart.
fn service_of(receiver: &str) -> Option<&'static str> {
    Some(match receiver {
        "sts" => "sts",
        "cfn" | "cloudformation" => "cloudformation",
        "ec2" => "ec2",
        "iam" => "iam",
        "rds" => "rds",
        "kms" => "kms",
        "secretsmanager" | "secrets" => "secretsmanager",
        "ssm" => "ssm",
        "apigateway" | "apigw" => "apigateway",
        "tagging" => "tag",
        "cloudtrail" => "cloudtrail",
        "s3" => "s3",
        _ => return None,
    })
}

/// The IAM action of an SDK operation. API Gateway authorizes HTTP verbs on resource paths rather
/// than operation names.
fn action_of(service: &str, operation: &str) -> String {
    let pascal: String = operation
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    // S3's IAM actions are not named after its operations.
    if service == "s3" {
        let action = match operation {
            "head_bucket" | "list_objects_v2" => "ListBucket",
            "get_public_access_block" => "GetBucketPublicAccessBlock",
            "put_public_access_block" => "PutBucketPublicAccessBlock",
            "get_bucket_encryption" => "GetEncryptionConfiguration",
            "put_bucket_encryption" => "PutEncryptionConfiguration",
            "get_bucket_lifecycle_configuration" => "GetLifecycleConfiguration",
            "put_bucket_lifecycle_configuration" => "PutLifecycleConfiguration",
            "delete_objects" => "DeleteObject",
            _ => "",
        };
        if !action.is_empty() {
            return format!("s3:{action}");
        }
    }
    if service == "apigateway" {
        let verb = match operation.split('_').next() {
            Some("get") => "GET",
            Some("create" | "tag") => "POST",
            Some("delete" | "untag") => "DELETE",
            Some("update") => "PATCH",
            _ => "UNKNOWN",
        };
        return format!("apigateway:{verb}");
    }
    format!("{service}:{pascal}")
}

/// Rust source with comments removed and the contents of string and char literals blanked, so
/// that parentheses and dots inside them do not confuse the scan.
fn code_only(source: &str) -> Vec<char> {
    let s: Vec<char> = source.chars().collect();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < s.len() && !(s[i] == '*' && s[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && (i == 0 || !s[i - 1].is_alphanumeric()) {
            let mut j = i + 1;
            let mut hashes = 0;
            while j < s.len() && s[j] == '#' {
                hashes += 1;
                j += 1;
            }
            if s.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push('"');
            j += 1;
            while j < s.len() && !(s[j] == '"' && (0..hashes).all(|h| s.get(j + 1 + h) == Some(&'#'))) {
                out.push(if s[j] == '\n' { '\n' } else { ' ' });
                j += 1;
            }
            out.push('"');
            i = j + 1 + hashes;
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < s.len() && s[i] != '"' {
                if s[i] == '\\' {
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || s.get(i + 2) == Some(&'\'')) {
            // A char literal ('x' or an escape); a lifetime ('a) has no closing quote.
            out.push(' ');
            i += 1;
            while i < s.len() && s[i] != '\'' {
                if s[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn skip_ws_back(t: &[char], mut i: usize) -> Option<usize> {
    loop {
        if !t.get(i)?.is_whitespace() {
            return Some(i);
        }
        i = i.checked_sub(1)?;
    }
}

/// Reads the identifier that ends at `end` (inclusive); returns it and the index before it.
fn ident_back(t: &[char], end: usize) -> (String, Option<usize>) {
    let mut start = end;
    while start > 0 && is_ident(t[start - 1]) {
        start -= 1;
    }
    let name: String = t[start..=end].iter().collect();
    (name, start.checked_sub(1))
}

/// Every SDK call in `code`: `(receiver, operation)` of each chain that ends in `.send()`, and the
/// lines of `.send()` calls whose chain does not start at a client variable (built in steps, say).
fn sdk_calls(code: &[char]) -> (Vec<(String, String)>, Vec<usize>) {
    let needle: Vec<char> = ".send()".chars().collect();
    let mut calls = Vec::new();
    let mut unresolved = Vec::new();
    for at in 0..code.len().saturating_sub(needle.len()) {
        if code[at..at + needle.len()] != needle[..] {
            continue;
        }
        let mut operation = None;
        let mut receiver = String::from("?");
        let mut dot = at;
        while let Some(mut j) = dot.checked_sub(1).and_then(|j| skip_ws_back(code, j)) {
            if code[j] == ')' {
                let mut depth = 0usize;
                loop {
                    match code[j] {
                        ')' => depth += 1,
                        '(' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    if j == 0 {
                        break;
                    }
                    j -= 1;
                }
                let Some(name_end) = j.checked_sub(1) else { break };
                let (name, before) = ident_back(code, name_end);
                match before.and_then(|b| skip_ws_back(code, b)) {
                    Some(b) if code[b] == '.' => {
                        operation = Some(name);
                        dot = b;
                    }
                    _ => {
                        receiver = name;
                        break;
                    }
                }
            } else if is_ident(code[j]) {
                receiver = ident_back(code, j).0;
                break;
            } else {
                break;
            }
        }
        match operation {
            Some(operation) => calls.push((receiver, operation)),
            None => unresolved.push(code[..at].iter().filter(|c| **c == '\n').count() + 1),
        }
    }
    (calls, unresolved)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(file, action)` for every SDK call under `src/`.
fn calls_in_source() -> Vec<(String, String)> {
    // Overridable so that a checkout with work in progress can be scanned by this build.
    let root = std::env::var("TINYSTACKS_SOURCE_ROOT").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let root = Path::new(&root);
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
        let source = std::fs::read_to_string(&file).expect("read source file");
        let (calls, unresolved) = sdk_calls(&code_only(&source));
        for line in unresolved {
            // Not a failure: `.send()` also ends chains built in steps, which this scan cannot
            // follow; the metrics' operation labels cover those at run time.
            eprintln!("note: {relative}:{line}: a .send() whose chain the scan cannot follow");
        }
        for (receiver, operation) in calls {
            let service = service_of(&receiver).unwrap_or_else(|| {
                panic!(
                    "{relative}: `{receiver}.{operation}()...send()`: bind SDK clients to a variable named after the service (sts, ec2, cfn, ...) so that this test can check its IAM action"
                )
            });
            found.push((relative.clone(), action_of(service, &operation)));
        }
    }
    found
}

#[test]
fn every_call_made_as_the_link_role_is_granted_by_the_scoped_policy() {
    let granted: BTreeSet<String> = template::scoped_called_actions().map(str::to_lowercase).collect();
    let calls = calls_in_source();
    let mut as_role = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for (file, action) in &calls {
        match OTHER_IDENTITIES.iter().find(|(f, _, _)| f == file) {
            Some((_, identity, allowed)) => {
                let ok = allowed.iter().any(|a| match a.strip_suffix('*') {
                    Some(prefix) => action.starts_with(prefix),
                    None => a == action,
                });
                assert!(ok, "{file} calls {action}, which the {identity} identity is not meant to call");
            }
            None => {
                if !granted.contains(&action.to_lowercase()) {
                    missing.insert(format!("{file}: {action}"));
                }
                as_role.insert(action.clone());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "calls made as a link's role that the Scoped permission set does not grant (add them to SCOPED_ACTIONS in template.rs):\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The scan must see the calls this module is known to make, or it proves nothing.
    for known in ["sts:AssumeRole", "cloudformation:CreateStack", "cloudformation:DescribeStacks"] {
        assert!(calls.iter().any(|(_, a)| a == known), "the scan missed {known}: {calls:?}");
    }
    for known in ["sts:GetCallerIdentity", "ec2:DescribeAvailabilityZones"] {
        assert!(as_role.contains(known), "the scan missed {known} as the link role: {as_role:?}");
    }
}

#[test]
fn the_scanner_reads_chains_across_lines_and_ignores_strings_and_comments() {
    let source = r#"
        // ec2.delete_vpc().send() in a comment
        let a = sts
            .assume_role()
            .role_arn(format!("x(y).send()"))
            .external_id(&id)
            .send()
            .await;
        let b = self.ec2.describe_vpcs().filters(f('a')).send().await?;
        let c = "ec2.run_instances().send()";
        tx.send(value);
        if x { call.a() } else { call.b() }.send();
    "#;
    let (calls, unresolved) = sdk_calls(&code_only(source));
    assert_eq!(unresolved, vec![12], "only the chain built in steps is unresolved (tx.send(value) is no SDK call)");
    assert_eq!(
        calls,
        vec![("sts".to_string(), "assume_role".to_string()), ("ec2".to_string(), "describe_vpcs".to_string())]
    );
    assert_eq!(action_of("ec2", "describe_availability_zones"), "ec2:DescribeAvailabilityZones");
    assert_eq!(action_of("apigateway", "create_vpc_link"), "apigateway:POST");
    assert_eq!(action_of("s3", "put_public_access_block"), "s3:PutBucketPublicAccessBlock");
    assert_eq!(action_of("s3", "put_bucket_policy"), "s3:PutBucketPolicy");
}
