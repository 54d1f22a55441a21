//! AWS accounts in moto for one test each: moto keeps a separate state per account, and
//! `sts:AssumeRole` into a role ARN of another account acts in that account, as the operator does
//! through an AwsAccountLink.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

/// A fresh 12-digit account ID, so that a test starts from an empty account.
pub fn new_account_id() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random_range(100_000_000_000..999_999_999_999);
    n.to_string()
}

/// The role the operator assumes in `account` (the AwsAccountLink's default role name).
pub fn role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/TinyStacksRole")
}

/// SDK configuration acting in `account` (moto's endpoint and region from the environment).
pub async fn account_config(account: &str) -> SdkConfig {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run the tests with `make test`, or `source \"$(hack/testenv.sh up)\"` first"
    );
    let base = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let sts = aws_sdk_sts::Client::new(&base);
    let out = sts
        .assume_role()
        .role_arn(role_arn(account))
        .role_session_name("tinystacks-tests")
        .send()
        .await
        .expect("assume a role in the test account");
    let c = out.credentials().expect("credentials");
    let credentials =
        Credentials::new(c.access_key_id(), c.secret_access_key(), Some(c.session_token().to_string()), None, "tests");
    base.to_builder().credentials_provider(SharedCredentialsProvider::new(credentials)).build()
}
