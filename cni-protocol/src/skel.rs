//! The plugin skeleton: reads the environment and stdin, validates them the
//! way the reference skeleton does, dispatches the command and prints the
//! result or the error. Plugins implement [`Plugin`] and call [`run`].

use std::io::{Read, Write};
use std::process::ExitCode;

use crate::config::NetConfHeader;
use crate::env::{CniEnv, Command};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::validate;
use crate::version::{self, Semver, SpecVersion};

/// What a command sees: the environment, the raw config and its version.
#[derive(Debug, Clone)]
pub struct Request {
    pub env: CniEnv,
    pub stdin: Vec<u8>,
    pub header: NetConfHeader,
    pub version: SpecVersion,
}

pub trait Plugin {
    /// The "about" line printed when no command is given.
    fn about(&self) -> String;

    fn supported_versions(&self) -> &[SpecVersion] {
        &SpecVersion::ALL
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError>;

    /// How an ADD result is printed; the default converts it to the
    /// config's version, as the spec asks.
    fn print_result(&self, _req: &Request, result: &CniResult, version: SpecVersion) -> Vec<u8> {
        result.to_json(version)
    }
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;

    /// CNI 1.1 GC. The default has nothing to collect.
    fn gc(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }

    /// CNI 1.1 STATUS. The default is always ready.
    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

/// Runs the plugin against the process's environment, stdin and stdout.
pub fn run<P: Plugin>(plugin: &P) -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().lock().read_to_end(&mut stdin);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = match read {
        Ok(_) => dispatch(
            plugin,
            |k| std::env::var(k).ok(),
            &stdin,
            &mut out,
            &mut err,
        ),
        Err(e) => {
            let e = CniError::new(
                ErrorCode::IoFailure,
                format!("error reading from stdin: {e}"),
            );
            out = e.to_json();
            1
        }
    };
    // If stdout is gone there is nobody left to tell; the exit code still says it.
    let _ = std::io::stdout().lock().write_all(&out);
    let _ = std::io::stderr().lock().write_all(&err);
    ExitCode::from(code)
}

/// The whole protocol with injected I/O; returns the exit code.
pub fn dispatch<P: Plugin>(
    plugin: &P,
    lookup: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
) -> u8 {
    let command_given = lookup("CNI_COMMAND").is_some_and(|c| !c.is_empty());
    let env = match CniEnv::from_lookup(&lookup) {
        Ok(env) => env,
        Err(e) if !command_given => {
            // The reference answers a bare invocation with its about text.
            let _ = e;
            let versions: Vec<&str> = plugin
                .supported_versions()
                .iter()
                .map(|v| v.as_str())
                .collect();
            let _ = writeln!(err, "{}", plugin.about());
            let _ = writeln!(
                err,
                "CNI protocol versions supported: {}",
                versions.join(", ")
            );
            return 0;
        }
        Err(e) => {
            *out = e.to_json();
            return 1;
        }
    };
    match handle(plugin, env, stdin) {
        Ok(bytes) => {
            *out = bytes;
            0
        }
        Err(e) => {
            *out = e.to_json();
            1
        }
    }
}

fn handle<P: Plugin>(plugin: &P, env: CniEnv, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let supported = plugin.supported_versions();
    if env.command == Command::Version {
        return Ok(crate::json::to_go_compact_line(&version::version_info(
            stdin, supported,
        )));
    }
    let header = NetConfHeader::parse(stdin)?;
    validate::network_name(&header.name)?;
    if env.command.is_per_attachment() || matches!(env.command, Command::Unknown(_)) {
        validate::container_id(&env.container_id)?;
        validate::interface_name(&env.ifname)?;
    }
    let config_version = version::config_version_string(stdin)?;
    let minimum = match &env.command {
        Command::Add | Command::Del => None,
        Command::Check => Some(SpecVersion::V0_4_0),
        Command::Gc | Command::Status => Some(SpecVersion::V1_1_0),
        Command::Version => None,
        Command::Unknown(c) => {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("unknown CNI_COMMAND: {c}"),
            ));
        }
    };
    if let Some(min) = minimum {
        let min_semver = Semver::parse(min.as_str())?;
        if Semver::parse(&config_version)? < min_semver {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("config version does not allow {}", env.command.as_str()),
            ));
        }
    }
    let version = version::reconcile(&config_version, supported)?;
    let req = Request {
        env,
        stdin: stdin.to_vec(),
        header,
        version,
    };
    match req.env.command {
        Command::Add => Ok(plugin.print_result(&req, &plugin.add(&req)?, version)),
        Command::Del => plugin.del(&req).map(|_| Vec::new()),
        Command::Check => plugin.check(&req).map(|_| Vec::new()),
        Command::Gc => plugin.gc(&req).map(|_| Vec::new()),
        Command::Status => plugin.status(&req).map(|_| Vec::new()),
        Command::Version | Command::Unknown(_) => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
    }

    impl Plugin for Recorder {
        fn about(&self) -> String {
            "CNI test plugin".into()
        }
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            self.calls.borrow_mut().push(format!("ADD {}", req.version));
            Ok(CniResult::default())
        }
        fn del(&self, _: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push("DEL".into());
            Ok(())
        }
        fn check(&self, _: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push("CHECK".into());
            Err(CniError::internal("nope"))
        }
    }

    fn call(p: &Recorder, env: &[(&str, &str)], stdin: &str) -> (u8, String, String) {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = dispatch(
            p,
            |k| map.get(k).cloned(),
            stdin.as_bytes(),
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    fn code_of(out: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(out).expect("error json");
        v["code"].as_u64().expect("code")
    }

    #[test]
    fn no_command_prints_about_and_succeeds() {
        let (code, out, err) = call(&Recorder::default(), &[], "");
        assert_eq!(code, 0);
        assert!(out.is_empty());
        assert!(err.starts_with("CNI test plugin\nCNI protocol versions supported: 0.1.0,"));
    }

    #[test]
    fn add_prints_result_in_config_version() {
        let p = Recorder::default();
        let (code, out, _) = call(
            &p,
            ADD_ENV,
            r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#,
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\"cniVersion\": \"0.4.0\""));
        assert_eq!(p.calls.borrow().as_slice(), ["ADD 0.4.0"]);
    }

    #[test]
    fn error_codes_follow_the_reference() {
        let p = Recorder::default();
        assert_eq!(code_of(&call(&p, ADD_ENV, "{").1), 6);
        assert_eq!(
            code_of(&call(&p, ADD_ENV, r#"{"cniVersion":"9.9.9","name":"n"}"#).1),
            1
        );
        assert_eq!(
            code_of(&call(&p, ADD_ENV, r#"{"cniVersion":"0.3.1","name":"../evil"}"#).1),
            7
        );
        assert_eq!(
            code_of(&call(&p, ADD_ENV, r#"{"cniVersion":"0.3.1"}"#).1),
            7
        );
        let mut env = ADD_ENV.to_vec();
        env[0] = ("CNI_COMMAND", "FOO");
        assert_eq!(
            code_of(&call(&p, &env, r#"{"cniVersion":"0.3.1","name":"n"}"#).1),
            4
        );
        env[0] = ("CNI_COMMAND", "CHECK");
        assert_eq!(
            code_of(&call(&p, &env, r#"{"cniVersion":"0.3.1","name":"n"}"#).1),
            1
        );
        assert_eq!(
            code_of(&call(&p, &env, r#"{"cniVersion":"1.0.0","name":"n"}"#).1),
            999
        );
        env[1] = ("CNI_CONTAINERID", "a/b");
        assert_eq!(
            code_of(&call(&p, &env, r#"{"cniVersion":"1.0.0","name":"n"}"#).1),
            4
        );
        assert!(p.calls.borrow().iter().all(|c| c == "CHECK"));
    }

    #[test]
    fn gc_needs_110() {
        let p = Recorder::default();
        let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
        assert_eq!(
            code_of(&call(&p, &env, r#"{"cniVersion":"1.0.0","name":"n"}"#).1),
            1
        );
        let (code, out, _) = call(&p, &env, r#"{"cniVersion":"1.1.0","name":"n"}"#);
        assert_eq!((code, out.as_str()), (0, ""));
    }

    #[test]
    fn version_is_compact_with_newline() {
        let (code, out, _) = call(
            &Recorder::default(),
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(code, 0);
        assert!(out.starts_with("{\"cniVersion\":\"0.4.0\",\"supportedVersions\":[\"0.1.0\""));
        assert!(out.ends_with("]}\n"));
    }
}
