//! The CNI protocol as data: the environment a runtime sets, the versions we
//! speak, error codes and the JSON we print. Spec 0.4.0 and 1.0.0.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Versions this plugin accepts in `cniVersion` (and reports for VERSION).
pub const SUPPORTED_VERSIONS: [&str; 2] = ["0.4.0", "1.0.0"];

/// The CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach the container (idempotent).
    Del,
    /// Verify the container's networking is as ADD left it.
    Check,
    /// Report supported versions.
    Version,
}

/// Well-known error codes from the spec (plugin-specific ones are >= 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnv = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network config.
    InvalidConfig = 7,
    /// 11: try again later (e.g. the node agent has not made the bridge yet).
    TryAgainLater = 11,
    /// 100: CHECK found the container's networking differs from ADD's.
    CheckFailed = 100,
    /// 101: the gateway network slice has no free address.
    AddressesExhausted = 101,
}

/// A CNI error, printed as the spec's error JSON on stdout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// Spec code.
    pub code: Code,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

impl CniError {
    /// An error with code, message and details.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON for `version` (the config's, or the newest we speak).
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version: version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{}}}", self.code as u32))
    }
}

/// The VERSION command's answer.
pub fn version_json(version: &str) -> String {
    serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
        .to_string()
}

/// Whether `version` is one we speak.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    Err(CniError::new(
        Code::IncompatibleVersion,
        format!("incompatible CNI version {version:?}"),
        format!("this plugin supports {}", SUPPORTED_VERSIONS.join(", ")),
    ))
}

/// The runtime's environment for one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (the primary's interface; ours is named in the config).
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl CniEnv {
    /// Reads the environment through `get` (`std::env::var` in the binary).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let missing = |name: &str| {
            CniError::new(
                Code::InvalidEnv,
                format!("{name} is not set"),
                "the container runtime must set CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME",
            )
        };
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected ADD, DEL, CHECK or VERSION",
                ));
            }
            None => return Err(missing("CNI_COMMAND")),
        };
        let nonempty = |name: &str| get(name).filter(|v| !v.is_empty());
        let needed = command != Command::Version;
        let container_id = match nonempty("CNI_CONTAINERID") {
            Some(id) => id,
            None if needed => return Err(missing("CNI_CONTAINERID")),
            None => String::new(),
        };
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(missing("CNI_NETNS"));
        }
        let ifname = match nonempty("CNI_IFNAME") {
            Some(i) => i,
            None if needed => return Err(missing("CNI_IFNAME")),
            None => String::new(),
        };
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args: parse_args(&get("CNI_ARGS").unwrap_or_default()),
        })
    }

    /// The pod's namespace and name from `CNI_ARGS`, when the runtime is Kubernetes'.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?.as_str(),
            self.args.get("K8S_POD_NAME")?.as_str(),
        ))
    }
}

/// `CNI_ARGS`: `K1=V1;K2=V2` (entries without `=` are ignored).
pub fn parse_args(raw: &str) -> BTreeMap<String, String> {
    raw.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn add_needs_every_variable() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;junk",
            ),
        ];
        let e = CniEnv::from_env(env(&full)).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.pod(), Some(("ns", "p")));
        for skip in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let partial: Vec<_> = full.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = CniEnv::from_env(env(&partial)).unwrap_err();
            assert_eq!(err.code, Code::InvalidEnv, "{skip}");
            assert!(err.msg.contains(skip));
        }
    }

    #[test]
    fn del_may_have_no_netns_and_version_needs_nothing() {
        let e = CniEnv::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(e.netns, None);
        assert_eq!(e.pod(), None);
        assert!(CniEnv::from_env(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
        let bad = CniEnv::from_env(env(&[("CNI_COMMAND", "GC")])).unwrap_err();
        assert_eq!(bad.code, Code::InvalidEnv);
    }

    #[test]
    fn error_json_has_code_msg_details() {
        let e = CniError::new(Code::TryAgainLater, "no bridge", "vpno0 missing");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(v["code"], 11);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["msg"], "no bridge");
        assert_eq!(v["details"], "vpno0 missing");
    }

    #[test]
    fn versions() {
        assert!(check_version("0.4.0").is_ok() && check_version("1.0.0").is_ok());
        assert_eq!(
            check_version("0.3.1").unwrap_err().code,
            Code::IncompatibleVersion
        );
        let v: serde_json::Value = serde_json::from_str(&version_json("1.0.0")).unwrap();
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0"])
        );
    }
}
