//! The broker's promise, proven against a real mosquitto running the shipped `mosquitto/`
//! configuration: heater commands only from the LAN, status for anyone, and nobody but the
//! bridge speaks for the bridge.
//!
//! The whole security model is one table ([`matrix`], subjects × topics) that the test
//! [`acl_matrix_holds_for_mqtt_311_and_5`] exercises cell by cell with both protocol versions,
//! and that `mosquitto/README.md` prints verbatim (checked by
//! [`security_model_table_is_in_mosquitto_readme`]).

mod support;

use coffeebot::config::load_with;
use coffeebot::mqtt::command::CommandName;
use coffeebot::mqtt::topics::Topics;

use support::mosquitto::{
    shipped_config, shipped_public_config, topic_matches, Broker, ConnectError, Listener, Login,
    Protocol, TestClient, User, WAIT,
};

/// Who connects, where, and whether the broker lets them in.
struct Subject {
    /// Column heading in the README table.
    label: &'static str,
    listener: Listener,
    login: Login,
    /// Whether the CONNACK accepts the connection.
    connects: bool,
}

/// The matrix's columns.
const SUBJECTS: [Subject; 7] = [
    Subject {
        label: "`coffeebot` (LAN)",
        listener: Listener::Lan,
        login: Login::User(User::Coffeebot),
        connects: true,
    },
    Subject {
        label: "`homeassistant` (LAN)",
        listener: Listener::Lan,
        login: Login::User(User::HomeAssistant),
        connects: true,
    },
    Subject {
        label: "`lan` (LAN)",
        listener: Listener::Lan,
        login: Login::User(User::Lan),
        connects: true,
    },
    Subject {
        label: "anonymous (LAN)",
        listener: Listener::Lan,
        login: Login::Anonymous,
        connects: false,
    },
    Subject {
        label: "wrong password (LAN)",
        listener: Listener::Lan,
        login: Login::WrongPassword(User::Lan),
        connects: false,
    },
    Subject {
        label: "anonymous (public)",
        listener: Listener::Public,
        login: Login::Anonymous,
        connects: true,
    },
    Subject {
        label: "any username (public)",
        listener: Listener::Public,
        login: Login::User(User::Lan),
        connects: true,
    },
];

use support::acl::Access::{self, No, Pub, PubSub, Sub};

/// The security model of the bridge's own topics: one row per topic, one cell per
/// [`SUBJECTS`] column. `B` = `coffeebot`, `D` = `coffeepot`, discovery prefix
/// `homeassistant`. The whole model is [`matrix`].
#[rustfmt::skip]
const BRIDGE_ROWS: &[(&str, [Access; 7])] = &[
    ("coffeebot/bridge/availability",      [Pub,    Sub,    Sub,    No, No, Sub, No]),
    ("coffeebot/coffeepot/availability",   [Pub,    Sub,    Sub,    No, No, Sub, No]),
    ("coffeebot/coffeepot/state",          [Pub,    Sub,    Sub,    No, No, Sub, No]),
    ("coffeebot/coffeepot/event",          [Pub,    Sub,    Sub,    No, No, No,  No]),
    ("coffeebot/bridge/info",              [Pub,    Sub,    Sub,    No, No, No,  No]),
    // Answers to commands: each LAN user reads only `B/reply/<own username>/#`.
    ("coffeebot/reply/homeassistant/1",    [Pub,    Sub,    No,     No, No, No,  No]),
    ("coffeebot/reply/lan/1",              [Pub,    No,     Sub,    No, No, No,  No]),
];

/// The rows of Home Assistant's topics, after the commands.
#[rustfmt::skip]
const HOME_ASSISTANT_ROWS: &[(&str, [Access; 7])] = &[
    ("homeassistant/status",               [PubSub, PubSub, No,     No, No, No,  No]),
    ("homeassistant/switch/coffeebot_coffeepot/heater/config",
                                           [PubSub, PubSub, No,     No, No, No,  No]),
];

/// Who may do what with `B/D/<command>/set`: the bridge reads, the LAN users send (and see).
#[rustfmt::skip]
const COMMAND_ACCESS: [Access; 7] = [Sub, PubSub, PubSub, No, No, No, No];

/// The security model, subjects × topics: the bridge's rows, one row per [`CommandName`],
/// Home Assistant's rows.
fn matrix() -> Vec<(String, [Access; 7])> {
    let topics = Topics::new(&load_with(None, &[]).expect("default settings"));
    let row = |(topic, cells): &(&str, [Access; 7])| (topic.to_string(), *cells);
    BRIDGE_ROWS
        .iter()
        .map(row)
        .chain(
            CommandName::ALL
                .into_iter()
                .map(|c| (topics.command(c), COMMAND_ACCESS)),
        )
        .chain(HOME_ASSISTANT_ROWS.iter().map(row))
        .collect()
}

/// The matrix as the markdown table printed in `mosquitto/README.md`.
fn security_model_markdown() -> String {
    let mut out = String::from("| topic |");
    for s in &SUBJECTS {
        out.push_str(&format!(" {} |", s.label));
    }
    out.push_str("\n| --- |");
    out.push_str(&" --- |".repeat(SUBJECTS.len()));
    out.push('\n');
    for (topic, cells) in matrix() {
        out.push_str(&format!("| `{topic}` |"));
        for (subject, cell) in SUBJECTS.iter().zip(cells) {
            let text = match (subject.connects, cell) {
                (false, _) => "refused",
                (true, No) => "—",
                (true, Sub) => "sub",
                (true, Pub) => "pub",
                (true, PubSub) => "pub, sub",
            };
            out.push_str(&format!(" {text} |"));
        }
        out.push('\n');
    }
    out
}

/// Every cell must be observable: a topic needs a publisher (to test who receives) and a
/// reader (to test whose publishes arrive); a refused subject has no rights.
fn assert_matrix_is_testable() {
    for (topic, cells) in &matrix() {
        assert!(
            cells.iter().any(|c| c.may_pub()),
            "{topic}: nobody may publish"
        );
        assert!(
            cells.iter().any(|c| c.may_sub()),
            "{topic}: nobody may read"
        );
        for (s, cell) in SUBJECTS.iter().zip(cells) {
            assert!(
                s.connects || *cell == No,
                "{topic}: refused {} has rights",
                s.label
            );
        }
    }
}

#[test]
fn security_model_table_is_in_both_readmes() {
    let table = security_model_markdown();
    println!("{table}");
    let mosquitto_dir = shipped_config()
        .parent()
        .and_then(|config| config.parent())
        .expect("mosquitto/")
        .to_path_buf();
    let project_dir = mosquitto_dir.parent().expect("the project").to_path_buf();
    for readme_path in [
        mosquitto_dir.join("README.md"),
        project_dir.join("README.md"),
    ] {
        let readme = std::fs::read_to_string(&readme_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", readme_path.display()));
        assert!(
            readme.contains(&table),
            "{} must contain the security model table exactly as tested:\n\n{table}",
            readme_path.display()
        );
    }
}

/// Whether mosquitto grants `user` the `access` (`read` or `write`) to `topic` under an ACL
/// file, read as mosquitto.conf(5) describes `acl_file`: `topic [read|write|readwrite|deny]
/// FILTER` lines apply to the user of the `user` line above them, `pattern` lines to every
/// user with `%u` replaced by the name, an absent access is `readwrite`, and `deny` wins.
fn acl_allows(acl: &str, user: &str, topic: &str, access: &str) -> bool {
    let mut section: Option<&str> = None;
    let (mut granted, mut denied) = (false, false);
    for line in acl.lines().filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&kind, rest)) = words.split_first() else {
            continue;
        };
        if kind == "user" {
            section = rest.first().copied();
            continue;
        }
        let applies = kind == "pattern" || (kind == "topic" && section == Some(user));
        let (rule, filter) = match rest {
            [filter] => ("readwrite", *filter),
            [rule, filter] => (*rule, *filter),
            _ => continue,
        };
        let filter = match kind {
            "pattern" => filter.replace("%u", user),
            _ => filter.to_owned(),
        };
        if !applies || filter.contains("%c") || !topic_matches(&filter, topic) {
            continue;
        }
        match rule {
            "deny" => denied = true,
            "readwrite" => granted = true,
            r => granted |= r == access,
        }
    }
    granted && !denied
}

/// Every command is in the shipped LAN ACL: Home Assistant and `lan` may send it and the
/// bridge may read it; and every `…/set` rule there names a command, so none is left behind.
#[test]
fn acl_lan_has_every_command_and_no_other() {
    let path = shipped_config().with_file_name("acl-lan");
    let acl = std::fs::read_to_string(&path).unwrap();
    let topics = Topics::new(&load_with(None, &[]).expect("default settings"));
    let mut missing = Vec::new();
    for command in CommandName::ALL {
        let topic = topics.command(command);
        let rule = format!("{}/+/{}/set", topics.base, command.name());
        for (user, access) in [
            (User::HomeAssistant, "write"),
            (User::Lan, "write"),
            (User::Coffeebot, "read"),
        ] {
            if !acl_allows(&acl, user.name(), &topic, access) {
                missing.push(format!(
                    "`topic {access} {rule}` under `user {}`",
                    user.name()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} lacks:\n{}",
        path.display(),
        missing.join("\n")
    );
    for filter in acl.lines().filter_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        matches!(words.first(), Some(&("topic" | "pattern"))).then(|| words.last().copied())?
    }) {
        let levels: Vec<&str> = filter.split('/').collect();
        if let [.., name, "set"] = levels.as_slice() {
            assert!(
                CommandName::from_name(name).is_some(),
                "{}: {filter} names no command",
                path.display()
            );
        }
    }
    // The reading above can say no.
    let unknown = topics
        .command(CommandName::Brew)
        .replace("/brew/", "/grind/");
    assert!(!acl_allows(&acl, User::Lan.name(), &unknown, "write"));
    assert!(!acl_allows(
        &acl,
        User::Lan.name(),
        &topics.state(),
        "write"
    ));
    assert!(!acl_allows(
        &acl,
        User::Coffeebot.name(),
        &topics.command(CommandName::Brew),
        "write"
    ));
}

/// Every subject publishes to every topic, and every subject that gets in subscribes to every
/// topic and to `#`; then each must have received exactly the allowed publications on the
/// topics it may read. Silence is proven by ordering, not by waiting: all publications are
/// QoS 1 and acknowledged one after another, then a final message that the reader may read is
/// published (or, for a reader with no rights, it makes a round trip), and the reader waits
/// for it; anything mosquitto routed to it earlier has arrived by then.
#[tokio::test]
async fn acl_matrix_holds_for_mqtt_311_and_5() {
    assert_matrix_is_testable();
    for protocol in Protocol::ALL {
        check_matrix(protocol).await;
    }
}

async fn check_matrix(protocol: Protocol) {
    let broker = Broker::start();

    let mut clients: [Option<TestClient>; 7] = Default::default();
    for (s, slot) in SUBJECTS.iter().zip(clients.iter_mut()) {
        let result = broker.connect(protocol, s.listener, s.login).await;
        *slot = match (s.connects, result) {
            (true, Ok(client)) => Some(client),
            (false, Err(ConnectError::Refused(_))) => None,
            (true, Err(e)) => panic!("{protocol:?} {}: must connect: {e}", s.label),
            (false, Ok(_)) => panic!("{protocol:?} {}: must be refused", s.label),
            (false, Err(e)) => panic!("{protocol:?} {}: must get a refusal: {e}", s.label),
        };
    }
    let labels = SUBJECTS.map(|s| s.label);
    let failures = support::acl::check(protocol, &mut clients, labels, &matrix()).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const STATE: &str = "coffeebot/coffeepot/state";
const DEVICE_AVAILABILITY: &str = "coffeebot/coffeepot/availability";
const BRIDGE_AVAILABILITY: &str = "coffeebot/bridge/availability";

/// The public listener serves the bridge's retained status, and a retained spoof from anyone
/// else does not replace it.
#[tokio::test]
async fn public_listener_gets_retained_status_never_spoofs() {
    for protocol in Protocol::ALL {
        let broker = Broker::start();
        let real = [
            (STATE, r#"{"mode":"off","heater":"OFF"}"#),
            (DEVICE_AVAILABILITY, "online"),
            (BRIDGE_AVAILABILITY, "online"),
        ];
        let mut bridge = broker
            .connect(protocol, Listener::Lan, Login::User(User::Coffeebot))
            .await
            .unwrap();
        for (topic, payload) in real {
            let ack = bridge.publish(topic, payload, true).await.unwrap();
            assert!(
                ack.accepted(),
                "{protocol:?} bridge retained {topic}: {ack:?}"
            );
        }
        for (listener, login) in [
            (Listener::Lan, Login::User(User::Lan)),
            (Listener::Lan, Login::User(User::HomeAssistant)),
            (Listener::Public, Login::Anonymous),
        ] {
            let mut spoofer = broker.connect(protocol, listener, login).await.unwrap();
            for (topic, _) in real {
                spoofer.publish(topic, "spoof", true).await.unwrap();
            }
        }

        let mut public = broker
            .connect(protocol, Listener::Public, Login::Anonymous)
            .await
            .unwrap();
        public
            .subscribe_and_collect("coffeebot/#", real.len(), WAIT)
            .await
            .unwrap();
        public.round_trip().await.unwrap();
        let mut got: Vec<(String, String, bool)> = public
            .seen()
            .iter()
            .map(|m| (m.topic.clone(), m.text(), m.retain))
            .collect();
        got.sort();
        let mut want: Vec<(String, String, bool)> = real
            .iter()
            .map(|(t, p)| (t.to_string(), p.to_string(), true))
            .collect();
        want.sort();
        assert_eq!(
            got, want,
            "{protocol:?}: retained status on the public listener"
        );
    }
}

/// The test brokers run the shipped files: only listener ports, the feed's address and paths
/// differ, and the ACL files are byte for byte the shipped ones.
#[test]
fn test_broker_runs_the_shipped_config_with_only_ports_and_paths_changed() {
    let broker = Broker::start();
    broker.ws_port();
    same_but_ports_and_paths(&shipped_config(), broker.config_path());
    same_but_ports_and_paths(
        &shipped_public_config(),
        &broker.public_config_path().unwrap(),
    );
}

fn same_but_ports_and_paths(shipped: &std::path::Path, running: &std::path::Path) {
    let shipped = std::fs::read_to_string(shipped).unwrap();
    let running = std::fs::read_to_string(running).unwrap();
    assert_eq!(shipped.lines().count(), running.lines().count());
    for (a, b) in shipped.lines().zip(running.lines()) {
        if a == b {
            continue;
        }
        let key = a.split_whitespace().next().unwrap_or("");
        assert!(
            [
                "listener",
                "password_file",
                "acl_file",
                "persistence_location",
                "address"
            ]
            .contains(&key),
            "the harness changed `{a}` into `{b}`"
        );
        if key == "acl_file" {
            let shipped_acl = shipped_config()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join(a.split_whitespace().nth(1).unwrap());
            let running_acl = b.split_whitespace().nth(1).unwrap();
            assert_eq!(
                std::fs::read(shipped_acl).unwrap(),
                std::fs::read(running_acl).unwrap(),
                "{a}"
            );
        }
    }
}

/// `restart` keeps the ports, and the shipped persistence brings retained state back.
#[tokio::test]
async fn broker_restart_keeps_ports_and_retained_state() {
    let mut broker = Broker::start();
    let ports = (broker.lan_port(), broker.ws_port());
    let mut bridge = broker
        .connect(Protocol::V5, Listener::Lan, Login::User(User::Coffeebot))
        .await
        .unwrap();
    bridge.publish(STATE, "before restart", true).await.unwrap();
    bridge.disconnect().await;

    broker.restart();
    assert_eq!((broker.lan_port(), broker.ws_port()), ports);
    let mut public = broker
        .connect(Protocol::V311, Listener::Public, Login::Anonymous)
        .await
        .unwrap();
    let got = public.subscribe_and_collect(STATE, 1, WAIT).await.unwrap();
    assert_eq!(got[0].text(), "before restart");
    assert!(got[0].retain);
}

/// The plain anonymous broker is for tests that do not care about ACLs.
#[tokio::test]
async fn anonymous_broker_passes_messages() {
    let broker = Broker::start_anonymous();
    let mut reader = broker
        .connect(Protocol::V5, Listener::Lan, Login::Anonymous)
        .await
        .unwrap();
    reader.subscribe("coffeebot/#").await.unwrap();
    let mut writer = broker
        .connect(Protocol::V311, Listener::Lan, Login::Anonymous)
        .await
        .unwrap();
    writer
        .publish("coffeebot/coffeepot/heater/set", "ON", false)
        .await
        .unwrap();
    reader
        .wait_for_payload("coffeebot/coffeepot/heater/set", "ON")
        .await
        .unwrap();
}
