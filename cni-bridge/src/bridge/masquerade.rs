//! The masquerade step of ADD, DEL, CHECK and GC: whether a config asks
//! for it, which driver ([`MasqDriver`]) runs it, and the rollback of a
//! setup that failed halfway (one address family done, the other not).

use cni_protocol::CniError;
use ipnetwork::IpNetwork;

use crate::masq_driver::{self, MasqDriver};

use super::config::{MasqBackend, NetConf};

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::internal(e.to_string())
}

/// One container's masquerade on one network.
pub struct Masquerade<'a> {
    driver: &'a dyn MasqDriver,
    network: &'a str,
    container_id: &'a str,
}

impl<'a> Masquerade<'a> {
    /// What `conf` asks for: nothing without `ipMasq`, nor on layer 2 (no
    /// IPAM, so no addresses); else its `ipMasqBackend`'s driver.
    pub fn of(conf: &'a NetConf, container_id: &'a str) -> Result<Option<Self>, CniError> {
        Self::chosen(conf, container_id, |b| masq_driver::driver(b))
    }

    /// [`Masquerade::of`] with the drivers `pick` gives (a fake in tests).
    fn chosen(
        conf: &'a NetConf,
        container_id: &'a str,
        pick: impl FnOnce(MasqBackend) -> &'a dyn MasqDriver,
    ) -> Result<Option<Self>, CniError> {
        if !(conf.is_layer3() && conf.ip_masq) {
            return Ok(None);
        }
        Ok(Some(Masquerade {
            driver: pick(conf.masq_backend()?),
            network: &conf.name,
            container_id,
        }))
    }

    /// Masquerades `addrs`. A setup that fails removes what it made (the
    /// container's rules, as the rollback of a later step does) and
    /// reports the driver's error.
    pub fn setup(&self, addrs: &[IpNetwork]) -> Result<(), CniError> {
        self.driver
            .setup(self.network, self.container_id, addrs)
            .map_err(|e| {
                self.rollback();
                internal(e)
            })
    }

    /// Undoes [`Masquerade::setup`] for an ADD that failed later: every
    /// rule of the container. Best effort: the ADD's own error is the one
    /// reported.
    pub fn rollback(&self) {
        let _ = self.driver.teardown(self.network, self.container_id, None);
    }

    /// DEL: the rules of `addrs` (None: all of the container's).
    pub fn teardown(&self, addrs: Option<&[IpNetwork]>) -> Result<(), CniError> {
        self.driver
            .teardown(self.network, self.container_id, addrs)
            .map_err(internal)
    }

    /// CHECK: every rule for `addrs` is there.
    pub fn verify(&self, addrs: &[IpNetwork]) -> Result<(), CniError> {
        if self
            .driver
            .verify(self.network, self.container_id, addrs)
            .map_err(internal)?
        {
            Ok(())
        } else {
            Err(CniError::internal(format!(
                "masquerade rules for {} are missing",
                self.container_id
            )))
        }
    }
}

/// GC: `ipMasq` alone decides, with or without IPAM, as in the
/// reference's GC.
pub fn collect_garbage(conf: &NetConf, valid: &[String]) -> Result<(), CniError> {
    collect_garbage_with(conf, valid, |b| masq_driver::driver(b))
}

fn collect_garbage_with<'a>(
    conf: &NetConf,
    valid: &[String],
    pick: impl FnOnce(MasqBackend) -> &'a dyn MasqDriver,
) -> Result<(), CniError> {
    if !conf.ip_masq {
        return Ok(());
    }
    pick(conf.masq_backend()?)
        .collect_garbage(&conf.name, valid)
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masq_driver::MasqDriverError;
    use std::cell::RefCell;

    /// What the bridge asked of the fake driver, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Setup(String, Vec<IpNetwork>),
        Teardown(String, Option<Vec<IpNetwork>>),
        Verify(String, Vec<IpNetwork>),
        Gc(String, Vec<String>),
    }

    /// A driver that records calls and fails where it is told to.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<Call>>,
        fail_setup: bool,
        fail_teardown: bool,
        rules_there: bool,
    }

    fn tool_error(what: &str) -> MasqDriverError {
        MasqDriverError::Nftables(crate::nft::NftError::Failed(what.into()))
    }

    impl MasqDriver for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn setup(&self, _: &str, id: &str, addrs: &[IpNetwork]) -> Result<(), MasqDriverError> {
            self.calls
                .borrow_mut()
                .push(Call::Setup(id.into(), addrs.to_vec()));
            if self.fail_setup {
                return Err(tool_error(
                    "Error: Could not process rule: No such file or directory",
                ));
            }
            Ok(())
        }
        fn teardown(
            &self,
            _: &str,
            id: &str,
            addrs: Option<&[IpNetwork]>,
        ) -> Result<(), MasqDriverError> {
            self.calls
                .borrow_mut()
                .push(Call::Teardown(id.into(), addrs.map(<[_]>::to_vec)));
            if self.fail_teardown {
                return Err(tool_error("teardown refused"));
            }
            Ok(())
        }
        fn verify(&self, _: &str, id: &str, addrs: &[IpNetwork]) -> Result<bool, MasqDriverError> {
            self.calls
                .borrow_mut()
                .push(Call::Verify(id.into(), addrs.to_vec()));
            Ok(self.rules_there)
        }
        fn collect_garbage(&self, network: &str, valid: &[String]) -> Result<(), MasqDriverError> {
            self.calls
                .borrow_mut()
                .push(Call::Gc(network.into(), valid.to_vec()));
            Ok(())
        }
    }

    fn conf(extra: &str) -> NetConf {
        let text = format!(r#"{{"cniVersion":"1.0.0","name":"bridge","type":"bridge"{extra}}}"#);
        NetConf::load(text.as_bytes()).expect("conf")
    }

    const L3_MASQ: &str = r#","ipMasq":true,"ipam":{"type":"host-local"}"#;

    fn addrs() -> Vec<IpNetwork> {
        vec![
            "10.244.1.2/24".parse().expect("v4"),
            "fd00::2/64".parse().expect("v6"),
        ]
    }

    fn with<'a>(fake: &'a Fake, conf: &'a NetConf) -> Masquerade<'a> {
        Masquerade::chosen(conf, "web-002", |_| fake)
            .expect("backend")
            .expect("masquerade")
    }

    #[test]
    fn the_config_chooses_whether_and_which() {
        for extra in [
            r#","ipMasq":true"#,
            r#","ipam":{"type":"host-local"}"#,
            r#","ipMasq":false,"ipam":{"type":"host-local"},"ipMasqBackend":"nftables""#,
        ] {
            let c = conf(extra);
            assert!(Masquerade::of(&c, "x").expect("ok").is_none(), "{extra}");
        }
        for (backend, name) in [
            ("", "iptables"),
            (r#","ipMasqBackend":"""#, "iptables"),
            (r#","ipMasqBackend":"iptables""#, "iptables"),
            (r#","ipMasqBackend":"nftables""#, "nftables"),
        ] {
            let c = conf(&format!("{L3_MASQ}{backend}"));
            let m = Masquerade::of(&c, "x").expect("ok").expect("masquerade");
            assert_eq!(m.driver.name(), name, "{backend}");
        }
        let mut c = conf(L3_MASQ);
        c.ip_masq_backend = Some("pf".into());
        let e = Masquerade::of(&c, "x").err().expect("refused");
        assert_eq!(e.code, cni_protocol::ErrorCode::InvalidNetworkConfig as u32);
        assert_eq!(e.msg, r#"unknown ipMasqBackend "pf""#);
    }

    #[test]
    fn setup_then_rollback_of_a_later_failure() {
        let (fake, c) = (Fake::default(), conf(L3_MASQ));
        let m = with(&fake, &c);
        m.setup(&addrs()).expect("setup");
        assert_eq!(
            *fake.calls.borrow(),
            [Call::Setup("web-002".into(), addrs())]
        );
        // A later step of the ADD failed: every rule of the container goes.
        m.rollback();
        assert_eq!(
            fake.calls.borrow()[1..],
            [Call::Teardown("web-002".into(), None)]
        );
    }

    #[test]
    fn a_failed_setup_rolls_itself_back_and_says_the_tools_error() {
        let fake = Fake {
            fail_setup: true,
            fail_teardown: true,
            ..Fake::default()
        };
        let c = conf(L3_MASQ);
        let e = with(&fake, &c).setup(&addrs()).expect_err("fails");
        assert_eq!(
            *fake.calls.borrow(),
            [
                Call::Setup("web-002".into(), addrs()),
                Call::Teardown("web-002".into(), None)
            ]
        );
        // The setup's error, not the rollback's.
        assert_eq!(e.code, cni_protocol::ErrorCode::Internal as u32);
        assert_eq!(
            e.msg,
            "nft failed: Error: Could not process rule: No such file or directory"
        );
    }

    #[test]
    fn teardown_passes_its_scope_and_its_error() {
        let (fake, c) = (Fake::default(), conf(L3_MASQ));
        let m = with(&fake, &c);
        let a = addrs();
        m.teardown(Some(&a)).expect("interface");
        m.teardown(Some(&[])).expect("vanished interface");
        m.teardown(None).expect("netns gone");
        assert_eq!(
            *fake.calls.borrow(),
            [
                Call::Teardown("web-002".into(), Some(addrs())),
                Call::Teardown("web-002".into(), Some(vec![])),
                Call::Teardown("web-002".into(), None),
            ]
        );
        let failing = Fake {
            fail_teardown: true,
            ..Fake::default()
        };
        let e = with(&failing, &c).teardown(None).expect_err("fails");
        assert_eq!(e.msg, "nft failed: teardown refused");
    }

    #[test]
    fn verify_names_the_container_whose_rules_are_missing() {
        let c = conf(L3_MASQ);
        let missing = Fake::default();
        let e = with(&missing, &c).verify(&addrs()).expect_err("missing");
        assert_eq!(e.msg, "masquerade rules for web-002 are missing");
        let there = Fake {
            rules_there: true,
            ..Fake::default()
        };
        with(&there, &c).verify(&addrs()).expect("there");
        assert_eq!(
            *there.calls.borrow(),
            [Call::Verify("web-002".into(), addrs())]
        );
    }

    #[test]
    fn gc_follows_ip_masq_alone() {
        let valid = vec!["web-001".to_string()];
        let fake = Fake::default();
        collect_garbage_with(&conf(r#","ipMasq":false"#), &valid, |_| &fake).expect("gc");
        assert!(fake.calls.borrow().is_empty());
        // With ipMasq, even on layer 2.
        collect_garbage_with(&conf(r#","ipMasq":true"#), &valid, |_| &fake).expect("gc");
        assert_eq!(
            *fake.calls.borrow(),
            [Call::Gc("bridge".into(), valid.clone())]
        );
    }
}
