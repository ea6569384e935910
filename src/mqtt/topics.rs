//! The bridge's topic names (SPEC §4), built once from the settings so that the task, the
//! discovery builder and the tests agree on every string.

use crate::config::Settings;
use crate::mqtt::command::CommandName;

/// What a topic under the device's command subscription names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandTopic {
    /// One of [`CommandName::ALL`].
    Known(CommandName),
    /// `B/D/<name>/set` with a name that is no command (rejected with `command_rejected`).
    Unknown(String),
}

/// Every topic the bridge publishes or subscribes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// `B`, `mqtt.base_topic`.
    pub base: String,
    /// `D`, `device.id`.
    pub device: String,
    /// `homeassistant.discovery_prefix`.
    pub discovery_prefix: String,
}

impl Topics {
    /// The topics of these settings.
    pub fn new(settings: &Settings) -> Topics {
        Topics {
            base: settings.mqtt.base_topic.clone(),
            device: settings.device.id.clone(),
            discovery_prefix: settings.homeassistant.discovery_prefix.clone(),
        }
    }

    /// `B/bridge/availability`: retained `online`/`offline`, also the last will.
    pub fn bridge_availability(&self) -> String {
        format!("{}/bridge/availability", self.base)
    }

    /// `B/bridge/info`: retained JSON about the bridge itself (version, start, settings).
    pub fn bridge_info(&self) -> String {
        format!("{}/bridge/info", self.base)
    }

    /// `B/reply/`: the only place the bridge answers commands (MQTT 5 Response Topics). The
    /// broker lets each LAN user read `B/reply/<own username>/#`.
    pub fn reply_prefix(&self) -> String {
        format!("{}/reply/", self.base)
    }

    /// Whether a Response Topic may be answered: a topic name (no wildcard, no empty level)
    /// at least two levels under `B/reply/` (`B/reply/<user>/<anything>`), so that an answer
    /// can never land on a topic of the bridge or of another part of the broker; and not
    /// `B/reply/<user>/set`, which has the shape of a command topic (`B/+/+/set`, which
    /// the LAN users may read).
    pub fn reply_allowed(&self, topic: &str) -> bool {
        topic
            .strip_prefix(&self.reply_prefix())
            .is_some_and(|rest| {
                let levels: Vec<&str> = rest.split('/').collect();
                levels.len() >= 2
                    && levels != [levels[0], "set"]
                    && levels
                        .iter()
                        .all(|l| !l.is_empty() && !l.contains(['+', '#', '\0']))
            })
    }

    /// `B/D/availability`: retained `online` while the controller answers.
    pub fn availability(&self) -> String {
        format!("{}/{}/availability", self.base, self.device)
    }

    /// `B/D/state`: the retained state JSON.
    pub fn state(&self) -> String {
        format!("{}/{}/state", self.base, self.device)
    }

    /// `B/D/event`: event JSON, not retained.
    pub fn event(&self) -> String {
        format!("{}/{}/event", self.base, self.device)
    }

    /// `B/D/<command>/set`.
    pub fn command(&self, command: CommandName) -> String {
        format!("{}/{}/{}/set", self.base, self.device, command.name())
    }

    /// The filter the bridge subscribes to for commands, `B/D/+/set`: every command topic, and
    /// any other `…/set` under the device, so that a typo gets a `command_rejected` rather than
    /// silence (with the shipped ACL the broker delivers only the commands' topics).
    pub fn command_filter(&self) -> String {
        format!("{}/{}/+/set", self.base, self.device)
    }

    /// Home Assistant's birth and will topic, `<prefix>/status`.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }

    /// Every filter the bridge subscribes to.
    pub fn subscriptions(&self) -> [String; 2] {
        [self.command_filter(), self.ha_status()]
    }

    /// The command a topic names, if it is `B/D/<name>/set`.
    pub fn parse_command(&self, topic: &str) -> Option<CommandTopic> {
        let name = topic
            .strip_prefix(self.base.as_str())?
            .strip_prefix('/')?
            .strip_prefix(self.device.as_str())?
            .strip_prefix('/')?
            .strip_suffix("/set")?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(match CommandName::from_name(name) {
            Some(known) => CommandTopic::Known(known),
            None => CommandTopic::Unknown(name.to_owned()),
        })
    }
}

/// Whether an MQTT topic filter (with `+` and `#`) matches a topic name.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match (f, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_under_reply_only() {
        let t = Topics {
            base: "coffeebot".into(),
            device: "coffeepot".into(),
            discovery_prefix: "homeassistant".into(),
        };
        for ok in [
            "coffeebot/reply/lan/1",
            "coffeebot/reply/lan/a/b",
            "coffeebot/reply/u/sets",
        ] {
            assert!(t.reply_allowed(ok), "{ok}");
        }
        for refused in [
            "coffeebot/reply/lan",
            "coffeebot/reply/",
            "coffeebot/reply/lan/",
            "coffeebot/reply//x",
            "coffeebot/reply/lan/+",
            "coffeebot/reply/lan/#",
            "coffeebot/reply/lan/set",
            "coffeebot/coffeepot/state",
            "coffeebot/bridge/info",
            "other/reply/lan/1",
            "coffeebotx/reply/lan/1",
        ] {
            assert!(!t.reply_allowed(refused), "{refused}");
        }
    }

    fn topics() -> Topics {
        Topics {
            base: "coffeebot".into(),
            device: "coffeepot".into(),
            discovery_prefix: "homeassistant".into(),
        }
    }

    #[test]
    fn names_follow_the_spec() {
        let t = topics();
        assert_eq!(t.bridge_availability(), "coffeebot/bridge/availability");
        assert_eq!(t.availability(), "coffeebot/coffeepot/availability");
        assert_eq!(t.state(), "coffeebot/coffeepot/state");
        assert_eq!(t.event(), "coffeebot/coffeepot/event");
        assert_eq!(t.command(CommandName::Brew), "coffeebot/coffeepot/brew/set");
        assert_eq!(t.ha_status(), "homeassistant/status");
    }

    #[test]
    fn command_topics_are_recognised() {
        let t = topics();
        for c in CommandName::ALL {
            assert_eq!(t.parse_command(&t.command(c)), Some(CommandTopic::Known(c)));
            assert!(filter_matches(&t.command_filter(), &t.command(c)));
        }
        assert_eq!(
            t.parse_command("coffeebot/coffeepot/grind/set"),
            Some(CommandTopic::Unknown("grind".into()))
        );
        assert_eq!(t.parse_command("coffeebot/coffeepot/state"), None);
        assert_eq!(t.parse_command("coffeebot/other/brew/set"), None);
        assert_eq!(t.parse_command("coffeebot/coffeepot//set"), None);
        assert_eq!(t.parse_command("coffeebot/coffeepot/a/b/set"), None);
    }
}
