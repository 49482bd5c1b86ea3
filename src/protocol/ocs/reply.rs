//! The replies: to a PROLOG (the DOWNLOAD options and the packages offered) and to an
//! INVENTORY, in exactly the shape the strict Windows agent reads.

use std::fmt::Write as _;

use super::escape;

/// The part of a PROLOG reply before its packages, for one set of Server settings.
struct Heads {
    prolog_freq: u32,
    download: DownloadConf,
    /// With `<RESPONSE>SEND</RESPONSE>`.
    send: String,
    /// With `<RESPONSE>STOP</RESPONSE>`.
    stop: String,
}

thread_local! {
    static HEADS: std::cell::RefCell<Option<Heads>> = const { std::cell::RefCell::new(None) };
}

/// The reply up to its packages: RESPONSE, PROLOG_FREQ and the DOWNLOAD CONF parameter.
fn head(send_inventory: bool, prolog_freq: u32, conf: &DownloadConf) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REPLY>");
    let _ = write!(
        out,
        "<RESPONSE>{}</RESPONSE><PROLOG_FREQ>{}</PROLOG_FREQ><INVENTORY_ON_STARTUP>0</INVENTORY_ON_STARTUP>",
        if send_inventory { "SEND" } else { "STOP" },
        prolog_freq
    );
    let _ = write!(
        out,
        "<OPTION><NAME>DOWNLOAD</NAME><PARAM TYPE=\"CONF\" ON=\"{}\" FRAG_LATENCY=\"{}\" CYCLE_LATENCY=\"{}\" PERIOD_LATENCY=\"{}\" PERIOD_LENGTH=\"{}\" TIMEOUT=\"{}\" EXECUTION_TIMEOUT=\"{}\" />",
        u8::from(conf.on),
        conf.frag_latency,
        conf.cycle_latency,
        conf.period_latency,
        conf.period_length,
        conf.timeout,
        conf.execution_timeout
    );
    out
}

/// `text` escaped for an attribute, appended to `out` (copied whole when nothing needs it).
fn escape_into(out: &mut String, text: &str) {
    if text
        .bytes()
        .any(|b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\'' | b'\n' | b'\r' | b'\t'))
    {
        out.push_str(&escape(text));
    } else {
        out.push_str(text);
    }
}

/// The answer to a PROLOG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrologReply {
    /// `SEND` (send an inventory now) or `STOP`.
    pub send_inventory: bool,
    /// Hours between contacts.
    pub prolog_freq: u32,
    pub download: DownloadConf,
    /// Packages to offer.
    pub packs: Vec<Pack>,
}

/// The DOWNLOAD CONF parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadConf {
    pub on: bool,
    /// Seconds.
    pub frag_latency: u64,
    pub cycle_latency: u64,
    pub period_latency: u64,
    pub period_length: u64,
    /// Days.
    pub timeout: u64,
    /// Minutes.
    pub execution_timeout: u64,
}

impl Default for DownloadConf {
    /// The OCS console's defaults: on, 10 s after each fragment, 60 s after each cycle,
    /// 1 s after each period of 10 cycles, 30 days, 120 minutes.
    fn default() -> Self {
        Self {
            on: true,
            frag_latency: 10,
            cycle_latency: 60,
            period_latency: 1,
            period_length: 10,
            timeout: 30,
            execution_timeout: 120,
        }
    }
}

/// A package offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pack {
    pub id: String,
    /// `host[:port]/path`, no scheme.
    pub info_loc: String,
    pub pack_loc: String,
    /// Install even if in the agent's history.
    pub force: bool,
}

impl PrologReply {
    /// The reply XML: CONF first, then one PACK per package (also with STOP).
    pub fn to_xml(&self) -> String {
        HEADS.with(|heads| {
            let mut heads = heads.borrow_mut();
            // Everything before the packages depends only on the Server's settings: written
            // once per thread and settings, then copied.
            let fresh = heads
                .as_ref()
                .is_some_and(|h| h.prolog_freq == self.prolog_freq && h.download == self.download);
            if !fresh {
                *heads = Some(Heads {
                    prolog_freq: self.prolog_freq,
                    download: self.download.clone(),
                    send: head(true, self.prolog_freq, &self.download),
                    stop: head(false, self.prolog_freq, &self.download),
                });
            }
            let Some(heads) = heads.as_ref() else {
                return String::new();
            };
            let head = if self.send_inventory {
                &heads.send
            } else {
                &heads.stop
            };
            // A PACK line is about 250 bytes with its locations.
            let mut out = String::with_capacity(head.len() + 256 * self.packs.len() + 24);
            out.push_str(head);
            for pack in &self.packs {
                out.push_str("<PARAM TYPE=\"PACK\" ID=\"");
                escape_into(&mut out, &pack.id);
                out.push_str("\" INFO_LOC=\"");
                escape_into(&mut out, &pack.info_loc);
                out.push_str("\" PACK_LOC=\"");
                escape_into(&mut out, &pack.pack_loc);
                out.push_str("\" CERT_PATH=\"INSTALL_PATH\" CERT_FILE=\"INSTALL_PATH/cacert.pem\" SCHEDULE=\"\" POSTCMD=\"\" FORCE=\"");
                out.push_str(if pack.force { "1" } else { "0" });
                out.push_str("\" />");
            }
            out.push_str("</OPTION></REPLY>\n");
            out
        })
    }
}

/// The reply to an INVENTORY: never empty (the Unix agent exits on an empty one).
pub fn inventory_reply() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REPLY><RESPONSE>NO_ACCOUNT_UPDATE</RESPONSE></REPLY>\n".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prolog_reply_puts_conf_first_and_offers_packages_also_with_stop() {
        let reply = PrologReply {
            send_inventory: false,
            prolog_freq: 12,
            download: DownloadConf::default(),
            packs: vec![Pack {
                id: "1736849000".into(),
                info_loc: "ocs.example.lan:8443/download".into(),
                pack_loc: "mirror.lan/download".into(),
                force: false,
            }],
        };
        let xml = reply.to_xml();
        assert!(
            xml.contains("<RESPONSE>STOP</RESPONSE><PROLOG_FREQ>12</PROLOG_FREQ>"),
            "{xml}"
        );
        let conf = xml.find("TYPE=\"CONF\"").unwrap();
        let pack = xml.find("TYPE=\"PACK\"").unwrap();
        assert!(conf < pack, "CONF first");
        assert!(xml.contains("ON=\"1\" FRAG_LATENCY=\"10\" CYCLE_LATENCY=\"60\" PERIOD_LATENCY=\"1\" PERIOD_LENGTH=\"10\" TIMEOUT=\"30\" EXECUTION_TIMEOUT=\"120\""), "{xml}");
        assert!(xml.contains("ID=\"1736849000\" INFO_LOC=\"ocs.example.lan:8443/download\" PACK_LOC=\"mirror.lan/download\""), "{xml}");
        assert!(inventory_reply().contains("<RESPONSE>NO_ACCOUNT_UPDATE</RESPONSE>"));
    }

    /// The head written once per settings is the one written each time before: a reply
    /// after the settings change carries the new CONF, and locations are escaped.
    #[test]
    fn the_head_kept_per_thread_follows_the_settings() {
        let mut reply = PrologReply {
            send_inventory: true,
            prolog_freq: 12,
            download: DownloadConf::default(),
            packs: vec![Pack {
                id: "1".into(),
                info_loc: "a&b\"c/download".into(),
                pack_loc: "plain/download".into(),
                force: true,
            }],
        };
        let first = reply.to_xml();
        assert!(
            first.contains("<RESPONSE>SEND</RESPONSE><PROLOG_FREQ>12</PROLOG_FREQ>"),
            "{first}"
        );
        assert!(
            first.contains("INFO_LOC=\"a&amp;b&quot;c/download\" PACK_LOC=\"plain/download\""),
            "{first}"
        );
        assert!(
            first.contains("FORCE=\"1\" /></OPTION></REPLY>\n"),
            "{first}"
        );
        reply.download.on = false;
        reply.prolog_freq = 24;
        reply.send_inventory = false;
        let second = reply.to_xml();
        assert!(
            second.contains("<RESPONSE>STOP</RESPONSE><PROLOG_FREQ>24</PROLOG_FREQ>"),
            "{second}"
        );
        assert!(second.contains("TYPE=\"CONF\" ON=\"0\""), "{second}");
        assert_eq!(second.matches("<REPLY>").count(), 1);
    }
}
