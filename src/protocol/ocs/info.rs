//! The `info` file of a package: one `DOWNLOAD` element with the attributes the OCS
//! console writes, in its order.

use std::fmt::Write as _;

use super::escape;

/// What an agent does with a package (the `ACT` attribute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `LAUNCH`: run `NAME`, a command line whose first word is a file of the archive.
    Launch { name: String },
    /// `EXECUTE`: run `COMMAND` in the unpacked directory.
    Execute { command: String },
    /// `STORE`: unpack into `PATH`.
    Store { path: String },
}

/// Where fragments are fetched (`PROTO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http,
    Https,
}

/// The `info` file of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// All digits.
    pub id: String,
    pub priority: u8,
    pub action: Action,
    /// Lowercase hex MD5 of the whole archive; empty with no fragments.
    pub digest: String,
    pub proto: Proto,
    pub fragments: usize,
    /// Windows pre-install dialog.
    pub notify: Option<Notify>,
    /// Windows post-install dialog text.
    pub done_action: Option<String>,
}

/// A pre-install dialog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub text: String,
    /// Seconds; None waits for the user.
    pub countdown: Option<u64>,
    pub can_abort: bool,
    pub can_delay: bool,
}

impl Info {
    /// The `info` file: one empty `DOWNLOAD` element, attributes in the order the OCS
    /// console writes them, values XML-escaped.
    pub fn to_xml(&self) -> String {
        let (act, key, value) = match &self.action {
            Action::Launch { name } => ("LAUNCH", "NAME", name),
            Action::Execute { command } => ("EXECUTE", "COMMAND", command),
            Action::Store { path } => ("STORE", "PATH", path),
        };
        let flag = |b: bool| if b { "1" } else { "0" };
        let notify = self.notify.as_ref();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DOWNLOAD");
        let mut attribute = |name: &str, value: &str| {
            let _ = write!(out, " {name}=\"{}\"", escape(value));
        };
        attribute("ID", &self.id);
        attribute("PRI", &self.priority.to_string());
        attribute("ACT", act);
        attribute("DIGEST", &self.digest);
        attribute(
            "PROTO",
            match self.proto {
                Proto::Http => "HTTP",
                Proto::Https => "HTTPS",
            },
        );
        attribute("FRAGS", &self.fragments.to_string());
        attribute("DIGEST_ALGO", "MD5");
        attribute("DIGEST_ENCODE", "Hexa");
        attribute(key, value);
        attribute("NOTIFY_USER", flag(notify.is_some()));
        attribute("NOTIFY_TEXT", notify.map_or("", |n| n.text.as_str()));
        attribute(
            "NOTIFY_COUNTDOWN",
            &notify
                .and_then(|n| n.countdown)
                .map(|c| c.to_string())
                .unwrap_or_default(),
        );
        attribute(
            "NOTIFY_CAN_ABORT",
            flag(notify.is_some_and(|n| n.can_abort)),
        );
        attribute(
            "NOTIFY_CAN_DELAY",
            flag(notify.is_some_and(|n| n.can_delay)),
        );
        attribute("NEED_DONE_ACTION", flag(self.done_action.is_some()));
        attribute(
            "NEED_DONE_ACTION_TEXT",
            self.done_action.as_deref().unwrap_or(""),
        );
        attribute("GARDEFOU", "rien");
        out.push_str(" />\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_info_file_has_the_consoles_attributes_in_order_and_escapes_values() {
        let info = Info {
            id: "1736849000".into(),
            priority: 5,
            action: Action::Execute {
                command: "sh install.sh --name \"a&b\" <x>".into(),
            },
            digest: "3f2a5d0c7b1e9a4486c2d0e1f5a7b9c3".into(),
            proto: Proto::Https,
            fragments: 3,
            notify: None,
            done_action: None,
        };
        assert_eq!(
            info.to_xml(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DOWNLOAD ID=\"1736849000\" PRI=\"5\" ACT=\"EXECUTE\" DIGEST=\"3f2a5d0c7b1e9a4486c2d0e1f5a7b9c3\" PROTO=\"HTTPS\" FRAGS=\"3\" DIGEST_ALGO=\"MD5\" DIGEST_ENCODE=\"Hexa\" COMMAND=\"sh install.sh --name &quot;a&amp;b&quot; &lt;x&gt;\" NOTIFY_USER=\"0\" NOTIFY_TEXT=\"\" NOTIFY_COUNTDOWN=\"\" NOTIFY_CAN_ABORT=\"0\" NOTIFY_CAN_DELAY=\"0\" NEED_DONE_ACTION=\"0\" NEED_DONE_ACTION_TEXT=\"\" GARDEFOU=\"rien\" />\n"
        );
    }

    #[test]
    fn dialogs_and_store_paths_are_written() {
        let info = Info {
            id: "1".into(),
            priority: 0,
            action: Action::Store {
                path: "INSTALL_PATH/x".into(),
            },
            digest: String::new(),
            proto: Proto::Http,
            fragments: 0,
            notify: Some(Notify {
                text: "Installing".into(),
                countdown: Some(300),
                can_abort: true,
                can_delay: false,
            }),
            done_action: Some("Done".into()),
        };
        let xml = info.to_xml();
        for part in [
            "ACT=\"STORE\"",
            "PATH=\"INSTALL_PATH/x\"",
            "PROTO=\"HTTP\"",
            "FRAGS=\"0\"",
            "NOTIFY_USER=\"1\"",
            "NOTIFY_COUNTDOWN=\"300\"",
            "NOTIFY_CAN_ABORT=\"1\"",
            "NEED_DONE_ACTION=\"1\"",
            "NEED_DONE_ACTION_TEXT=\"Done\"",
        ] {
            assert!(xml.contains(part), "{part} in {xml}");
        }
    }
}
