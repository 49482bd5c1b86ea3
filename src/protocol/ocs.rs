//! The OCS Inventory NG wire format (see `reference/ocs-protocol.md`): bodies (zlib, gzip
//! or plain), requests read leniently (each field an attribute or a child element of
//! `REQUEST`, in any order, as XML::Simple made agents write them), replies in exactly the
//! shape the strict Windows agent reads, and the package `info` file.

use std::fmt::Write as _;
use std::io::{Read, Write};

use quick_xml::events::Event;

/// Largest compressed body accepted: a large inventory is a few hundred KB.
pub const MAX_BODY: usize = 8 << 20;
/// Largest body after inflating: stops a small zlib bomb from taking the server's memory.
pub const MAX_INFLATED: usize = 32 << 20;

/// Why a request was refused (each is a 400 for the agent, with a log line).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("the body is {0} bytes, more than the {MAX_BODY} accepted")]
    TooLarge(usize),
    #[error("the body inflates to more than {MAX_INFLATED} bytes")]
    InflatesTooFar,
    #[error("the body is neither zlib, gzip nor XML")]
    Undecodable,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("the root element is `{0}`, not REQUEST")]
    NotARequest(String),
    #[error("the request has no {0}")]
    Missing(&'static str),
    #[error("`{0}` is not an OCS device id (name-YYYY-MM-DD-HH-MM-SS)")]
    BadDeviceId(String),
}

/// How a body was encoded; replies use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Zlib,
    Gzip,
    Plain,
}

/// The XML of a request body, and how it was encoded: zlib first (what agents send), then
/// gzip, then plain XML.
pub fn decode_body(body: &[u8]) -> Result<(Vec<u8>, Encoding), CodecError> {
    if body.len() > MAX_BODY {
        return Err(CodecError::TooLarge(body.len()));
    }
    let inflate = |reader: &mut dyn Read| -> Result<Option<Vec<u8>>, CodecError> {
        let mut out = Vec::new();
        match reader.take(MAX_INFLATED as u64 + 1).read_to_end(&mut out) {
            Ok(_) if out.len() > MAX_INFLATED => Err(CodecError::InflatesTooFar),
            Ok(_) if !out.is_empty() => Ok(Some(out)),
            _ => Ok(None),
        }
    };
    if let Some(xml) = zlib_inflate(body)? {
        return Ok((xml, Encoding::Zlib));
    }
    if let Some(xml) = inflate(&mut flate2::read::GzDecoder::new(body))? {
        return Ok((xml, Encoding::Gzip));
    }
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    if body[start..].starts_with(b"<") {
        return Ok((body.to_vec(), Encoding::Plain));
    }
    Err(CodecError::Undecodable)
}

/// `xml` encoded as `encoding`.
pub fn encode_body(xml: &str, encoding: Encoding) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    match encoding {
        Encoding::Zlib => zlib_deflate(xml.as_bytes()),
        Encoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = encoder.write_all(xml.as_bytes());
            encoder.finish().unwrap_or_default()
        }
        Encoding::Plain => xml.as_bytes().to_vec(),
    }
}

// A zlib stream's state is hundreds of kilobytes to allocate and clear: far more than a
// PROLOG's bytes take to compress. Each thread keeps one of each and resets it.
thread_local! {
    static DEFLATE: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::default(), true));
    static INFLATE: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(true));
}

/// `data` as a zlib stream (RFC 1950), as OCS agents expect replies.
fn zlib_deflate(data: &[u8]) -> Vec<u8> {
    DEFLATE.with(|cell| {
        let mut deflate = cell.borrow_mut();
        deflate.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(deflate.total_in()).unwrap_or(data.len());
            let status = deflate.compress_vec(
                &data[consumed.min(data.len())..],
                &mut out,
                flate2::FlushCompress::Finish,
            );
            match status {
                Ok(flate2::Status::StreamEnd) | Err(_) => return out,
                Ok(_) => out.reserve(out.capacity().max(64)),
            }
        }
    })
}

/// The content of a zlib stream; `None` when `body` is not one.
fn zlib_inflate(body: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
    INFLATE.with(|cell| {
        let mut inflate = cell.borrow_mut();
        inflate.reset(true);
        let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(MAX_INFLATED) + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let consumed = usize::try_from(inflate.total_in()).unwrap_or(body.len());
            let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
            let status = inflate.decompress_vec(
                &body[consumed.min(body.len())..],
                &mut out,
                // Not `Finish`: with it the decompressor takes `out` as the whole output and
                // cannot continue into a grown buffer.
                flate2::FlushDecompress::None,
            );
            if out.len() > MAX_INFLATED {
                return Err(CodecError::InflatesTooFar);
            }
            match status {
                Ok(flate2::Status::StreamEnd) if !out.is_empty() => return Ok(Some(out)),
                Ok(flate2::Status::StreamEnd) | Err(_) => return Ok(None),
                // Neither input taken nor output given with room to spare: the input
                // ended before the stream did.
                Ok(_)
                    if inflate.total_in() == in_before
                        && inflate.total_out() == out_before
                        && out.len() < out.capacity() =>
                {
                    return Ok(None);
                }
                Ok(_) => {}
            }
        }
    })
}

/// What an agent said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `PROLOG`, `INVENTORY`, `DOWNLOAD`, `NOTIFY`, ... (upper case).
    pub query: String,
    pub device_id: String,
    /// `ID` of a DOWNLOAD result.
    pub id: Option<String>,
    /// `ERR` of a DOWNLOAD result, verbatim.
    pub err: Option<String>,
    /// What an INVENTORY carries that Tessera uses.
    pub inventory: Option<Inventory>,
}

/// The parts of an inventory Tessera keeps as facts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub name: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    /// Values of ACCOUNTINFO rows whose KEYNAME is TAG.
    pub tags: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// Package ids the agent reports as installed (DOWNLOAD/HISTORY/PACKAGE/@ID).
    pub history: Vec<String>,
}

/// Reads a request, leniently: fields as attributes or child elements, any order, UTF-8 or
/// (failing that) Latin-1 text.
pub fn parse_request(xml: &[u8]) -> Result<Request, CodecError> {
    let text = match std::str::from_utf8(xml) {
        Ok(text) => text.to_owned(),
        Err(_) => xml.iter().map(|&b| char::from(b)).collect(),
    };
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut reading = Reading::default();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| CodecError::Xml(e.to_string()))?;
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                let name = element.local_name().as_ref().to_ascii_uppercase();
                if reading.path.is_empty() && name != "REQUEST" {
                    return Err(CodecError::NotARequest(name));
                }
                reading.path.push(name);
                reading.value.clear();
                let at = reading.path.join("/");
                for attribute in element.attributes().flatten() {
                    let key = attribute.key.local_name().as_ref().to_ascii_uppercase();
                    let value = attribute
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map(|v| v.into_owned())
                        .unwrap_or_default();
                    match (at.as_str(), key.as_str()) {
                        ("REQUEST", field) => set_field(&mut reading.request, field, value),
                        ("REQUEST/CONTENT/DOWNLOAD/HISTORY/PACKAGE", "ID") => {
                            reading.inventory.history.push(value)
                        }
                        _ => {}
                    }
                }
                if at == "REQUEST/CONTENT" {
                    reading.is_inventory = true;
                }
                if matches!(event, Event::Empty(_)) {
                    reading.finish();
                }
            }
            Event::Text(text) => reading.value.push_str(&text.xml10_content()),
            Event::CData(data) => reading.value.push_str(&data.into_inner()),
            Event::GeneralRef(reference) => match reference.resolve_char_ref() {
                Ok(Some(c)) => reading.value.push(c),
                _ => reading.value.push_str(match &*reference {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                }),
            },
            Event::End(_) => reading.finish(),
            Event::Eof => break,
            _ => {}
        }
    }
    let Reading {
        mut request,
        inventory,
        is_inventory,
        ..
    } = reading;
    if request.query.is_empty() {
        return Err(CodecError::Missing("QUERY"));
    }
    if request.device_id.is_empty() {
        return Err(CodecError::Missing("DEVICEID"));
    }
    if !is_device_id(&request.device_id) {
        return Err(CodecError::BadDeviceId(request.device_id));
    }
    if is_inventory && request.query == "INVENTORY" {
        request.inventory = Some(inventory);
    }
    Ok(request)
}

/// Where the reader is in a request, and what it has found so far.
#[derive(Default)]
struct Reading {
    /// Element names from the root, upper case.
    path: Vec<String>,
    /// Text of the element being read.
    value: String,
    request: Request,
    inventory: Inventory,
    is_inventory: bool,
    /// The KEYNAME and KEYVALUE of the ACCOUNTINFO row being read.
    account_key: Option<String>,
    account_value: Option<String>,
}

impl Reading {
    /// Closes the element on top of `path`, filing its text where it belongs.
    fn finish(&mut self) {
        let at = self.path.join("/");
        let text = std::mem::take(&mut self.value).trim().to_owned();
        let inventory = &mut self.inventory;
        match at.as_str() {
            "REQUEST/QUERY" | "REQUEST/DEVICEID" | "REQUEST/ID" | "REQUEST/ERR" => {
                let field = at.rsplit('/').next().unwrap_or_default().to_owned();
                set_field(&mut self.request, &field, text);
            }
            "REQUEST/CONTENT/HARDWARE/NAME" => inventory.name = Some(text),
            "REQUEST/CONTENT/HARDWARE/OSNAME" => inventory.os_name = Some(text),
            "REQUEST/CONTENT/HARDWARE/OSVERSION" => inventory.os_version = Some(text),
            "REQUEST/CONTENT/HARDWARE/IPADDR" | "REQUEST/CONTENT/NETWORKS/IPADDRESS" => {
                for ip in text.split(['/', ',', ' ']).filter(|s| !s.is_empty()) {
                    if !inventory.ip_addresses.iter().any(|known| known == ip) {
                        inventory.ip_addresses.push(ip.to_owned());
                    }
                }
            }
            "REQUEST/CONTENT/ACCOUNTINFO/KEYNAME" => self.account_key = Some(text),
            "REQUEST/CONTENT/ACCOUNTINFO/KEYVALUE" => self.account_value = Some(text),
            "REQUEST/CONTENT/ACCOUNTINFO" => {
                let key = self.account_key.take();
                let value = self.account_value.take();
                if key.is_some_and(|k| k.eq_ignore_ascii_case("TAG"))
                    && let Some(tag) = value.filter(|t| !t.is_empty())
                {
                    inventory.tags.push(tag);
                }
            }
            "REQUEST/CONTENT/DOWNLOAD/HISTORY/PACKAGE/ID" => inventory.history.push(text),
            _ => {}
        }
        self.path.pop();
    }
}

fn set_field(request: &mut Request, field: &str, value: String) {
    match field {
        "QUERY" => request.query = value.to_ascii_uppercase(),
        "DEVICEID" => request.device_id = value,
        "ID" => request.id = Some(value),
        "ERR" => request.err = Some(value),
        _ => {}
    }
}

/// Whether `id` has the shape `name-YYYY-MM-DD-HH-MM-SS`.
pub fn is_device_id(id: &str) -> bool {
    let parts: Vec<&str> = id.rsplitn(7, '-').collect();
    parts.len() == 7
        && !parts[6].is_empty()
        && parts[5].len() == 4
        && parts[..5].iter().all(|p| p.len() == 2)
        && parts[..6]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
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

/// Escapes text for an XML attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIX_PROLOG: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <DEVICEID>build-07-2025-01-14-09-03-55</DEVICEID>\n  <QUERY>PROLOG</QUERY>\n</REQUEST>\n";

    #[test]
    fn bodies_decode_from_zlib_gzip_or_plain_and_replies_match() {
        for encoding in [Encoding::Zlib, Encoding::Gzip, Encoding::Plain] {
            let body = encode_body(UNIX_PROLOG, encoding);
            let (xml, found) = decode_body(&body).unwrap();
            assert_eq!(found, encoding);
            assert_eq!(xml, UNIX_PROLOG.as_bytes());
        }
        assert_eq!(
            &encode_body("x", Encoding::Zlib)[..2],
            &[0x78, 0x9c],
            "zlib header as agents expect"
        );
        assert_eq!(
            decode_body(b"\x00\x01garbage"),
            Err(CodecError::Undecodable)
        );
    }

    #[test]
    fn a_zlib_bomb_and_an_oversized_body_are_refused() {
        let bomb = encode_body(&"A".repeat(MAX_INFLATED + 10), Encoding::Zlib);
        assert!(bomb.len() < 100_000, "small on the wire: {}", bomb.len());
        assert_eq!(decode_body(&bomb), Err(CodecError::InflatesTooFar));
        assert_eq!(
            decode_body(&vec![b'<'; MAX_BODY + 1]),
            Err(CodecError::TooLarge(MAX_BODY + 1))
        );
    }

    #[test]
    fn requests_read_fields_from_children_or_attributes_in_any_order() {
        let unix = parse_request(UNIX_PROLOG.as_bytes()).unwrap();
        assert_eq!(
            (unix.query.as_str(), unix.device_id.as_str()),
            ("PROLOG", "build-07-2025-01-14-09-03-55")
        );
        let unix_result = parse_request(b"<REQUEST DEVICEID=\"build-07-2025-01-14-09-03-55\" ERR=\"SUCCESS\" ID=\"1736849000\" QUERY=\"DOWNLOAD\" />").unwrap();
        assert_eq!(unix_result.query, "DOWNLOAD");
        assert_eq!(unix_result.id.as_deref(), Some("1736849000"));
        assert_eq!(unix_result.err.as_deref(), Some("SUCCESS"));
        let windows = parse_request(b"<REQUEST ID=\"1736849000\" ERR=\"EXIT_CODE_1603\"><DEVICEID>PC-ACCT-12-2024-11-02-08-15-00</DEVICEID><CONTENT/><QUERY>DOWNLOAD</QUERY></REQUEST>").unwrap();
        assert_eq!(windows.err.as_deref(), Some("EXIT_CODE_1603"));
        assert_eq!(windows.device_id, "PC-ACCT-12-2024-11-02-08-15-00");
    }

    #[test]
    fn an_inventory_yields_name_os_tags_addresses_and_history() {
        let xml = "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>LAB &amp; OPS</KEYVALUE></ACCOUNTINFO><HARDWARE><NAME>build-07</NAME><OSNAME>Debian GNU/Linux 12</OSNAME><OSVERSION>12</OSVERSION><IPADDR>10.0.0.7/127.0.0.1</IPADDR></HARDWARE><NETWORKS><IPADDRESS>10.0.0.7</IPADDRESS></NETWORKS><NETWORKS><IPADDRESS>192.168.1.4</IPADDRESS></NETWORKS><DOWNLOAD><HISTORY><PACKAGE ID=\"1736849000\"/><PACKAGE ID=\"1736850111\"/></HISTORY></DOWNLOAD></CONTENT><DEVICEID>build-07-2025-01-14-09-03-55</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>";
        let inventory = parse_request(xml.as_bytes()).unwrap().inventory.unwrap();
        assert_eq!(inventory.name.as_deref(), Some("build-07"));
        assert_eq!(inventory.os_name.as_deref(), Some("Debian GNU/Linux 12"));
        assert_eq!(inventory.tags, vec!["LAB & OPS"]);
        assert_eq!(
            inventory.ip_addresses,
            vec!["10.0.0.7", "127.0.0.1", "192.168.1.4"]
        );
        assert_eq!(inventory.history, vec!["1736849000", "1736850111"]);
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        assert!(matches!(
            parse_request(b"<REQUEST><QUERY>PROLOG</QUERY>"),
            Err(CodecError::Xml(_)) | Err(CodecError::Missing(_))
        ));
        assert_eq!(
            parse_request(b"<REPLY/>"),
            Err(CodecError::NotARequest("REPLY".into()))
        );
        assert_eq!(
            parse_request(b"<REQUEST><QUERY>PROLOG</QUERY></REQUEST>"),
            Err(CodecError::Missing("DEVICEID"))
        );
        assert!(matches!(
            parse_request(b"<REQUEST><QUERY>PROLOG</QUERY><DEVICEID>nodate</DEVICEID></REQUEST>"),
            Err(CodecError::BadDeviceId(_))
        ));
        // Latin-1 text from an old Windows agent is read, not refused.
        let latin1 = b"<REQUEST><QUERY>PROLOG</QUERY><DEVICEID>caf\xe9-2024-11-02-08-15-00</DEVICEID></REQUEST>";
        assert_eq!(
            parse_request(latin1).unwrap().device_id,
            "caf\u{e9}-2024-11-02-08-15-00"
        );
    }

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
