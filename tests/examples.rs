//! The team setup in `examples/`, applied with `kubectl apply -f examples/` exactly as the README
//! says, converges against the API server and moto; deleting it leaves nothing in AWS but the
//! final snapshot its Database's `Snapshot` policy keeps on purpose.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use aws_config::BehaviorVersion;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use tinystacks_operator::api::{AwsAccountLink, Bastion, Database, Stack};

use common::{Operator, OperatorConfig, wait_gone, wait_ready};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl").args(args).output().expect("run kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_examples_converge_and_delete_to_nothing_but_the_final_snapshot() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let client = common::client().await;
    common::install_crds(&client).await;

    // What `make dev` does before applying the examples: the operator's namespace and the
    // bootstrap Secret the link names, holding moto's credentials.
    let operator_ns = "tinystacks-system";
    let _ = Command::new("kubectl").args(["create", "namespace", operator_ns]).output();
    let key = std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY");
    let _ = Command::new("kubectl").args(["-n", operator_ns, "delete", "secret", "sandbox-bootstrap"]).output();
    kubectl(&[
        "-n",
        operator_ns,
        "create",
        "secret",
        "generic",
        "sandbox-bootstrap",
        &format!("--from-literal=AWS_ACCESS_KEY_ID={key}"),
        &format!("--from-literal=AWS_SECRET_ACCESS_KEY={secret}"),
    ]);
    let operator = Operator::start(OperatorConfig {
        namespace: operator_ns,
        lease_name: "tinystacks-operator",
        resync: "5s",
        extra_args: vec![],
    });

    kubectl(&["apply", "-f", &format!("{REPO}/examples/")]);
    let links = Api::<AwsAccountLink>::all(client.clone());
    let stacks = Api::<Stack>::namespaced(client.clone(), "team-a");
    let databases = Api::<Database>::namespaced(client.clone(), "team-a");
    let bastions = Api::<Bastion>::namespaced(client.clone(), "team-a");
    let link = wait_ready(&links, "sandbox").await;
    let stack = wait_ready(&stacks, "web").await;
    let database = wait_ready(&databases, "orders").await;
    wait_ready(&bastions, "ops").await;
    assert!(link["status"]["roleArn"].as_str().is_some_and(|a| a.ends_with(":role/TinyStacksRole")), "{link}");

    // The app's Deployment takes the database settings from the connection Secret.
    let deployment = Api::<Deployment>::namespaced(client.clone(), "team-a").get("orders-api").await.expect("app");
    let env_from = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers.into_iter().flat_map(|c| c.env_from.unwrap_or_default()).collect::<Vec<_>>())
        .unwrap_or_default();
    let from = env_from.iter().filter_map(|e| e.secret_ref.as_ref()).map(|r| r.name.clone()).collect::<Vec<_>>();
    assert_eq!(from, vec!["orders-connection".to_string()]);
    let connection =
        Api::<Secret>::namespaced(client.clone(), "team-a").get("orders-connection").await.expect("Secret");
    let data: BTreeMap<String, String> = connection
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for key in ["PG_HOST", "PG_PORT", "PG_DATABASE", "PG_USER", "PG_PASSWORD", "PG_CREDENTIALS_SECRET", "DATABASE_URL"]
    {
        assert!(data.get(key).is_some_and(|v| !v.is_empty()), "{key} in the connection Secret");
    }
    assert!(data["DATABASE_URL"].starts_with("postgres://"), "DATABASE_URL is a postgres URL");

    // In moto: the VPC, the private instance.
    let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let vpc_id = stack["status"]["vpcId"].as_str().expect("vpcId").to_string();
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpcs = ec2.describe_vpcs().vpc_ids(&vpc_id).send().await.expect("the Stack's VPC");
    assert_eq!(vpcs.vpcs().len(), 1);
    let rds = aws_sdk_rds::Client::new(&aws);
    let instance_id = database["status"]["dbInstanceIdentifier"].as_str().expect("instance").to_string();
    let instances = rds.describe_db_instances().db_instance_identifier(&instance_id).send().await.expect("instance");
    let instance = instances.db_instances().first().expect("the DB instance");
    assert_eq!(instance.publicly_accessible(), Some(false));
    assert_eq!(instance.storage_encrypted(), Some(true));

    // Deleting the examples deletes the namespace; its objects go children first, then the link
    // and its CloudFormation stack.
    kubectl(&["delete", "-f", &format!("{REPO}/examples/"), "--wait=false"]);
    wait_gone(&Api::<Namespace>::all(client.clone()), "team-a").await;
    wait_gone(&links, "sandbox").await;
    let vpcs = ec2.describe_vpcs().vpc_ids(&vpc_id).send().await;
    assert!(vpcs.map(|v| v.vpcs().is_empty()).unwrap_or(true), "the VPC {vpc_id} is deleted");
    let instances = rds.describe_db_instances().db_instance_identifier(&instance_id).send().await;
    assert!(instances.map(|i| i.db_instances().is_empty()).unwrap_or(true), "the DB instance is deleted");
    let snapshots = rds.describe_db_snapshots().db_instance_identifier(&instance_id).send().await.expect("snapshots");
    assert_eq!(snapshots.db_snapshots().len(), 1, "the final snapshot of the Snapshot policy");
    let cfn = aws_sdk_cloudformation::Client::new(&aws);
    let role_stack = cfn.describe_stacks().stack_name("TinyStacksRole").send().await;
    let live = role_stack
        .map(|s| s.stacks().iter().any(|s| s.stack_status().is_some_and(|st| st.as_str() != "DELETE_COMPLETE")))
        .unwrap_or(false);
    assert!(!live, "the link's CloudFormation stack is deleted");
    drop(operator);
}
