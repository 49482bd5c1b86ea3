//! The replies: to a PROLOG (the DOWNLOAD options and the packages offered) and to an
//! INVENTORY, in exactly the shape the strict Windows agent reads.

use std::fmt::Write as _;

use super::escape;

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
        let conf = &self.download;
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REPLY>");
        let _ = write!(
            out,
            "<RESPONSE>{}</RESPONSE><PROLOG_FREQ>{}</PROLOG_FREQ><INVENTORY_ON_STARTUP>0</INVENTORY_ON_STARTUP>",
            if self.send_inventory { "SEND" } else { "STOP" },
            self.prolog_freq
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
        for pack in &self.packs {
            let _ = write!(
                out,
                "<PARAM TYPE=\"PACK\" ID=\"{}\" INFO_LOC=\"{}\" PACK_LOC=\"{}\" CERT_PATH=\"INSTALL_PATH\" CERT_FILE=\"INSTALL_PATH/cacert.pem\" SCHEDULE=\"\" POSTCMD=\"\" FORCE=\"{}\" />",
                escape(&pack.id),
                escape(&pack.info_loc),
                escape(&pack.pack_loc),
                u8::from(pack.force)
            );
        }
        out.push_str("</OPTION></REPLY>\n");
        out
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
}
