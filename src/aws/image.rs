//! The Amazon Linux 2023 image an instance the operator launches boots (a Bastion, a Stack's NAT
//! instances): the public SSM parameter of the instance type's architecture, read once and then
//! pinned by the caller, so that a replacement boots the same image rather than whatever is newest
//! that day; and the launch settings every such instance shares. Knows no kind.

use aws_sdk_ec2::types::{
    HttpTokensState, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification,
};

use super::call::Calls;
use super::inventory::missing;
use super::limiter::Service;
use crate::error::Result;

/// The instance's one network interface: in `subnet`, behind `group`, a public IP of its own only
/// when `public_ip`, gone with the instance.
pub fn primary_interface(subnet: &str, group: &str, public_ip: bool) -> InstanceNetworkInterfaceSpecification {
    InstanceNetworkInterfaceSpecification::builder()
        .device_index(0)
        .subnet_id(subnet)
        .groups(group)
        .associate_public_ip_address(public_ip)
        .delete_on_termination(true)
        .build()
}

/// IMDSv2 only: a request forged through the instance cannot read its role's credentials.
pub fn imds_v2_only() -> InstanceMetadataOptionsRequest {
    InstanceMetadataOptionsRequest::builder()
        .http_tokens(HttpTokensState::Required)
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .build()
}

/// The CPU architecture of an instance type, as the Amazon Linux parameters name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Arm64,
    X86_64,
}

impl Arch {
    /// Graviton families carry a `g` after the generation digit (`t4g`, `m7g`, `c7gn`, `r6gd`,
    /// `g5g`); `a1` is the first Graviton. GPU families start with a `g` (`g4dn`) and are x86.
    pub fn of(instance_type: &str) -> Self {
        let family = instance_type.split('.').next().unwrap_or_default();
        if family == "a1" {
            return Arch::Arm64;
        }
        let after_digits = family.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        let suffix = after_digits.trim_start_matches(|c: char| c.is_ascii_digit());
        if suffix.contains('g') { Arch::Arm64 } else { Arch::X86_64 }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
        }
    }

    /// The public SSM parameter with the latest Amazon Linux 2023 image for the architecture.
    pub fn image_parameter(self) -> String {
        format!("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{}", self.as_str())
    }
}

/// The image recorded in a pin (`<architecture>:<ami>`), if it is for `arch`.
pub fn pinned_image(annotation: Option<&str>, arch: Arch) -> Option<String> {
    let (a, image) = annotation?.split_once(':')?;
    (a == arch.as_str() && image.starts_with("ami-")).then(|| image.to_string())
}

/// The pin of `image` for `arch`.
pub fn image_annotation(arch: Arch, image: &str) -> String {
    format!("{}:{image}", arch.as_str())
}

/// The image ID the public parameter names today.
pub async fn latest_image(ssm: &aws_sdk_ssm::Client, calls: Calls<'_>, parameter: &str) -> Result<String> {
    let read = || ssm.get_parameter().name(parameter).send();
    let out = calls.read(Service::Ssm, "ssm:GetParameter", read).await?;
    out.parameter()
        .and_then(|p| p.value())
        .filter(|v| v.starts_with("ami-"))
        .map(str::to_string)
        .ok_or_else(|| missing("ssm:GetParameter", "image ID"))
}
