//! The request reader: fields as attributes or child elements of `REQUEST` in any order,
//! the inventory facts Tessera keeps, and the limits that bound what a request may hold.

use quick_xml::events::{BytesStart, Event};

use super::CodecError;

// Limits on what a request may hold. A request that breaks a structural limit (depth,
// element count, text length, unclosed elements) or a field that identifies something
// (QUERY, DEVICEID, ID, ERR) out of bounds is refused (400): no real agent sends one, and
// a refused DOWNLOAD result costs an agent nothing it could otherwise get. Inventory facts
// describe a real machine, so they are kept within bounds rather than refused: names are
// truncated, and entries past a count limit (or too long to mean anything) are dropped.

/// Deepest element nesting read. OCS inventories are shallow (the deepest path the agents
/// write, `REQUEST/CONTENT/DOWNLOAD/HISTORY/PACKAGE`, is 5 levels); 32 leaves room for
/// agent extensions while a hostile document of 100,000 levels stops at the 33rd.
pub const MAX_DEPTH: usize = 32;
/// Most elements in one request. A large Windows inventory (thousands of software and
/// registry rows of about 15 elements each) has some tens of thousands; this is 10 times
/// that, and bounds the work a document of tiny elements within `MAX_INFLATED` can cost.
pub const MAX_ELEMENTS: usize = 500_000;
/// Longest text, CDATA or start tag (name and attributes) anywhere in a request: 64 KiB,
/// what a `TEXT` column of the OCS server's own MySQL schema holds.
pub const MAX_TEXT: usize = 64 << 10;
/// Longest `QUERY` (refused beyond): the longest known one, `INVENTORY`, is 9 bytes.
pub const MAX_QUERY: usize = 32;
/// Longest `DEVICEID` (refused beyond): a host name (at most 253 bytes in DNS, 15 as a
/// NetBIOS name) and the 20-byte date make real ones short; 255 is the OCS schema's
/// `VARCHAR(255)`.
pub const MAX_DEVICE_ID: usize = 255;
/// Longest package `ID` (refused beyond, and digits only): Tessera's ids and the OCS
/// server's (Unix timestamps) are 10 digits; 20 is the longest `u64`.
pub const MAX_PACKAGE_ID: usize = 20;
/// Longest result code `ERR` (refused beyond, and printable ASCII only): the agents' codes
/// (`SUCCESS_<n>`, `EXIT_CODE_<n>`, `ERR_DOWNLOAD_INFO`, …) are under 32 bytes.
pub const MAX_RESULT_CODE: usize = 64;
/// Longest inventory name, OS name and OS version kept (truncated beyond): the OCS
/// schema's `VARCHAR(255)`.
pub const MAX_FACT: usize = 255;
/// Most tags kept from one inventory (the rest are dropped): a computer has a handful.
pub const MAX_TAGS: usize = 64;
/// Longest tag kept (longer ones are dropped: a truncated tag would be another tag).
pub const MAX_TAG: usize = 255;
/// Most IP addresses kept from one inventory (the rest are dropped): enough for a host
/// with many interfaces and aliases.
pub const MAX_IP_ADDRESSES: usize = 64;
/// Longest IP address kept (longer entries are dropped): an IPv6 address with an embedded
/// IPv4 one is 45 characters (`INET6_ADDRSTRLEN` less its NUL).
pub const MAX_IP_ADDRESS: usize = 45;
/// Most package ids kept from an agent's history (the rest are dropped; so are entries that
/// are not package ids): years of deployments are a few hundred.
pub const MAX_HISTORY: usize = 4096;

/// What an agent said, within the limits above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `PROLOG`, `INVENTORY`, `DOWNLOAD`, `NOTIFY`, ... (upper case, at most `MAX_QUERY`).
    pub query: String,
    /// At most `MAX_DEVICE_ID` bytes, of the shape `name-YYYY-MM-DD-HH-MM-SS`.
    pub device_id: String,
    /// `ID` of a DOWNLOAD result: digits, at most `MAX_PACKAGE_ID`.
    pub id: Option<String>,
    /// `ERR` of a DOWNLOAD result, verbatim: printable ASCII, at most `MAX_RESULT_CODE`.
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
/// (failing that) Latin-1 text. The work is linear in the document's size: the reader
/// keeps the path as a stack of known places (at most `MAX_DEPTH`), never as text.
pub fn parse_request(xml: &[u8]) -> Result<Request, CodecError> {
    let text = match std::str::from_utf8(xml) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => std::borrow::Cow::Owned(xml.iter().map(|&b| char::from(b)).collect()),
    };
    let mut reader = quick_xml::Reader::from_str(&text);
    // Mismatched end tags are refused (the default, made explicit: the path relies on it).
    reader.config_mut().check_end_names = true;
    let mut reading = Reading::default();
    loop {
        let event = reader.read_event().map_err(|_| CodecError::Xml {
            position: reader.error_position(),
        })?;
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                reading.open(element)?;
                if matches!(event, Event::Empty(_)) {
                    reading.finish();
                }
            }
            Event::Text(text) => {
                if text.len() > MAX_TEXT {
                    return Err(CodecError::TooLong);
                }
                if reading.keeps_text() {
                    reading.value.push_str(&text.xml10_content());
                }
            }
            Event::CData(data) => {
                if data.len() > MAX_TEXT {
                    return Err(CodecError::TooLong);
                }
                if reading.keeps_text() {
                    reading.value.push_str(&data.into_inner());
                }
            }
            Event::GeneralRef(reference) if reading.keeps_text() => reading.reference(&reference),
            Event::End(_) => reading.finish(),
            Event::Eof => break,
            _ => {}
        }
        if reading.value.len() > MAX_TEXT {
            return Err(CodecError::TooLong);
        }
    }
    if !reading.path.is_empty() {
        return Err(CodecError::Unclosed);
    }
    let Reading {
        mut request,
        inventory,
        is_inventory,
        ..
    } = reading;
    check(&request)?;
    if is_inventory && request.query == "INVENTORY" {
        request.inventory = Some(inventory);
    }
    Ok(request)
}

/// Refuses a request whose identifying fields are missing or out of bounds.
fn check(request: &Request) -> Result<(), CodecError> {
    if request.query.is_empty() {
        return Err(CodecError::Missing("QUERY"));
    }
    if request.query.len() > MAX_QUERY {
        return Err(CodecError::FieldTooLong("QUERY", MAX_QUERY));
    }
    if request.device_id.is_empty() {
        return Err(CodecError::Missing("DEVICEID"));
    }
    if request.device_id.len() > MAX_DEVICE_ID {
        return Err(CodecError::FieldTooLong("DEVICEID", MAX_DEVICE_ID));
    }
    if !is_device_id(&request.device_id) {
        return Err(CodecError::BadDeviceId);
    }
    if let Some(id) = &request.id {
        if id.len() > MAX_PACKAGE_ID {
            return Err(CodecError::FieldTooLong("ID", MAX_PACKAGE_ID));
        }
        if !is_package_id(id) {
            return Err(CodecError::BadField("ID", "a package id (digits)"));
        }
    }
    if let Some(code) = &request.err {
        if code.len() > MAX_RESULT_CODE {
            return Err(CodecError::FieldTooLong("ERR", MAX_RESULT_CODE));
        }
        if !code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CodecError::BadField(
                "ERR",
                "a result code (printable ASCII, no spaces)",
            ));
        }
    }
    Ok(())
}

/// A place in a request the reader knows; everything else is `Other`, and so is all below
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Request,
    /// `REQUEST/QUERY`, `DEVICEID`, `ID`, `ERR`.
    Field(Field),
    Content,
    Hardware,
    /// `HARDWARE/NAME`, `OSNAME`, `OSVERSION`.
    Fact(Fact),
    /// `HARDWARE/IPADDR` and `NETWORKS/IPADDRESS`.
    Addresses,
    Networks,
    AccountInfo,
    KeyName,
    KeyValue,
    Download,
    History,
    Package,
    PackageId,
    Other,
}

/// A field of `REQUEST`, as an attribute or a child element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Query,
    DeviceId,
    Id,
    Err,
}

impl Field {
    fn named(name: &str) -> Option<Self> {
        [
            ("QUERY", Self::Query),
            ("DEVICEID", Self::DeviceId),
            ("ID", Self::Id),
            ("ERR", Self::Err),
        ]
        .into_iter()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
        .map(|(_, field)| field)
    }
}

/// An inventory fact under `HARDWARE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fact {
    Name,
    OsName,
    OsVersion,
}

impl Node {
    /// The node of a child element `name` (any case).
    fn child(self, name: &str) -> Self {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        match self {
            Self::Request if is("CONTENT") => Self::Content,
            Self::Request => Field::named(name).map_or(Self::Other, Node::Field),
            Self::Content if is("HARDWARE") => Self::Hardware,
            Self::Content if is("NETWORKS") => Self::Networks,
            Self::Content if is("ACCOUNTINFO") => Self::AccountInfo,
            Self::Content if is("DOWNLOAD") => Self::Download,
            Self::Hardware if is("NAME") => Self::Fact(Fact::Name),
            Self::Hardware if is("OSNAME") => Self::Fact(Fact::OsName),
            Self::Hardware if is("OSVERSION") => Self::Fact(Fact::OsVersion),
            Self::Hardware if is("IPADDR") => Self::Addresses,
            Self::Networks if is("IPADDRESS") => Self::Addresses,
            Self::AccountInfo if is("KEYNAME") => Self::KeyName,
            Self::AccountInfo if is("KEYVALUE") => Self::KeyValue,
            Self::Download if is("HISTORY") => Self::History,
            Self::History if is("PACKAGE") => Self::Package,
            Self::Package if is("ID") => Self::PackageId,
            _ => Self::Other,
        }
    }

    /// Whether the text of this element is used.
    fn keeps_text(self) -> bool {
        matches!(
            self,
            Self::Field(_)
                | Self::Fact(_)
                | Self::Addresses
                | Self::KeyName
                | Self::KeyValue
                | Self::PackageId
        )
    }
}

/// Where the reader is in a request, and what it has found so far.
#[derive(Default)]
struct Reading {
    /// The open elements from the root; at most `MAX_DEPTH`.
    path: Vec<Node>,
    /// Elements read so far.
    elements: usize,
    /// Text of the element being read, when it is one whose text is used.
    value: String,
    request: Request,
    inventory: Inventory,
    is_inventory: bool,
    /// The KEYNAME and KEYVALUE of the ACCOUNTINFO row being read.
    account_key: Option<String>,
    account_value: Option<String>,
}

impl Reading {
    /// Opens the element `element` starts, within the structural limits; reads the fields
    /// `REQUEST` and `PACKAGE` carry as attributes.
    fn open(&mut self, element: &BytesStart<'_>) -> Result<(), CodecError> {
        if element.len() > MAX_TEXT {
            return Err(CodecError::TooLong);
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(CodecError::TooManyElements);
        }
        if self.path.len() >= MAX_DEPTH {
            return Err(CodecError::TooDeep);
        }
        let name = element.local_name();
        let name = name.as_ref();
        let node = match self.path.last() {
            None if name.eq_ignore_ascii_case("REQUEST") => Node::Request,
            None => return Err(CodecError::NotARequest),
            Some(parent) => parent.child(name),
        };
        self.path.push(node);
        self.value.clear();
        if matches!(node, Node::Request | Node::Package) {
            for attribute in element.attributes().flatten() {
                let key = attribute.key.local_name();
                let value = || {
                    attribute
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map(|v| v.into_owned())
                        .unwrap_or_default()
                };
                match (node, Field::named(key.as_ref())) {
                    (Node::Request, Some(field)) => self.set(field, value()),
                    (Node::Package, Some(Field::Id)) => self.history(value()),
                    _ => {}
                }
            }
        }
        if node == Node::Content {
            self.is_inventory = true;
        }
        Ok(())
    }

    /// Appends the character an entity or character reference stands for (unknown
    /// entities stand for nothing).
    fn reference(&mut self, reference: &quick_xml::events::BytesRef<'_>) {
        match reference.resolve_char_ref() {
            Ok(Some(c)) => self.value.push(c),
            _ => self.value.push_str(match &**reference {
                "amp" => "&",
                "lt" => "<",
                "gt" => ">",
                "quot" => "\"",
                "apos" => "'",
                _ => "",
            }),
        }
    }

    fn keeps_text(&self) -> bool {
        self.path.last().is_some_and(|node| node.keeps_text())
    }

    /// Closes the element on top of `path`, filing its text where it belongs.
    fn finish(&mut self) {
        let Some(node) = self.path.pop() else {
            return;
        };
        if !node.keeps_text() && node != Node::AccountInfo {
            return;
        }
        let text = std::mem::take(&mut self.value).trim().to_owned();
        let inventory = &mut self.inventory;
        match node {
            Node::Field(field) => self.set(field, text),
            Node::Fact(fact) => {
                let text = Some(truncated(text, MAX_FACT));
                match fact {
                    Fact::Name => inventory.name = text,
                    Fact::OsName => inventory.os_name = text,
                    Fact::OsVersion => inventory.os_version = text,
                }
            }
            Node::Addresses => {
                for ip in text.split(['/', ',', ' ']).filter(|s| !s.is_empty()) {
                    if inventory.ip_addresses.len() < MAX_IP_ADDRESSES
                        && ip.len() <= MAX_IP_ADDRESS
                        && !inventory.ip_addresses.iter().any(|known| known == ip)
                    {
                        inventory.ip_addresses.push(ip.to_owned());
                    }
                }
            }
            Node::KeyName => self.account_key = Some(text),
            Node::KeyValue => self.account_value = Some(text),
            Node::AccountInfo => {
                let key = self.account_key.take();
                let value = self.account_value.take();
                if key.is_some_and(|k| k.eq_ignore_ascii_case("TAG"))
                    && let Some(tag) = value.filter(|t| !t.is_empty() && t.len() <= MAX_TAG)
                    && inventory.tags.len() < MAX_TAGS
                {
                    inventory.tags.push(tag);
                }
            }
            Node::PackageId => self.history(text),
            _ => {}
        }
    }

    fn set(&mut self, field: Field, value: String) {
        let request = &mut self.request;
        match field {
            Field::Query => request.query = value.to_ascii_uppercase(),
            Field::DeviceId => request.device_id = value,
            Field::Id => request.id = Some(value),
            Field::Err => request.err = Some(value),
        }
    }

    fn history(&mut self, id: String) {
        let history = &mut self.inventory.history;
        if history.len() < MAX_HISTORY && is_package_id(&id) {
            history.push(id);
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Whether `id` can be a package id: 1 to `MAX_PACKAGE_ID` ASCII digits.
pub fn is_package_id(id: &str) -> bool {
    (1..=MAX_PACKAGE_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `id` has the shape `name-YYYY-MM-DD-HH-MM-SS`, within `MAX_DEVICE_ID` bytes and
/// without control characters (which have no place in a host name).
pub fn is_device_id(id: &str) -> bool {
    if id.len() > MAX_DEVICE_ID || id.chars().any(char::is_control) {
        return false;
    }
    let parts: Vec<&str> = id.rsplitn(7, '-').collect();
    parts.len() == 7
        && !parts[6].is_empty()
        && parts[5].len() == 4
        && parts[..5].iter().all(|p| p.len() == 2)
        && parts[..6]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ocs::{Encoding, UNIX_PROLOG, decode_body, encode_body};

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
        assert_eq!(
            parse_request(b"<REQUEST><QUERY>PROLOG</QUERY>"),
            Err(CodecError::Unclosed)
        );
        assert_eq!(parse_request(b"<REPLY/>"), Err(CodecError::NotARequest));
        assert_eq!(
            parse_request(b"<REQUEST><QUERY>PROLOG</QUERY></REQUEST>"),
            Err(CodecError::Missing("DEVICEID"))
        );
        assert!(matches!(
            parse_request(b"<REQUEST><QUERY>PROLOG</QUERY><DEVICEID>nodate</DEVICEID></REQUEST>"),
            Err(CodecError::BadDeviceId)
        ));
        // Latin-1 text from an old Windows agent is read, not refused.
        let latin1 = b"<REQUEST><QUERY>PROLOG</QUERY><DEVICEID>caf\xe9-2024-11-02-08-15-00</DEVICEID></REQUEST>";
        assert_eq!(
            parse_request(latin1).unwrap().device_id,
            "caf\u{e9}-2024-11-02-08-15-00"
        );
    }

    /// A Unix agent's inventory as it writes it (trimmed to a few rows of each section):
    /// upper-case elements, five levels at most.
    const UNIX_INVENTORY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <CONTENT>\n    <ACCOUNTINFO>\n      <KEYNAME>TAG</KEYNAME>\n      <KEYVALUE>lab</KEYVALUE>\n    </ACCOUNTINFO>\n    <BIOS>\n      <BDATE>01/01/2011</BDATE>\n      <SMANUFACTURER>QEMU</SMANUFACTURER>\n    </BIOS>\n    <CPUS>\n      <CORES>2</CORES>\n      <TYPE>Intel(R) Xeon(R) CPU</TYPE>\n    </CPUS>\n    <DOWNLOAD>\n      <HISTORY>\n        <PACKAGE ID=\"1736849000\" />\n      </HISTORY>\n    </DOWNLOAD>\n    <HARDWARE>\n      <ARCHNAME>x86_64-linux-gnu-thread-multi</ARCHNAME>\n      <IPADDR>10.0.2.15/127.0.0.1</IPADDR>\n      <NAME>build-07</NAME>\n      <OSCOMMENTS>#1 SMP PREEMPT_DYNAMIC Debian 6.1.99-1</OSCOMMENTS>\n      <OSNAME>Debian GNU/Linux 12 (bookworm)</OSNAME>\n      <OSVERSION>6.1.0-23-amd64</OSVERSION>\n    </HARDWARE>\n    <NETWORKS>\n      <DESCRIPTION>eth0</DESCRIPTION>\n      <IPADDRESS>10.0.2.15</IPADDRESS>\n    </NETWORKS>\n    <SOFTWARES>\n      <COMMENTS>GNU C Library: Shared libraries</COMMENTS>\n      <NAME>libc6</NAME>\n      <VERSION>2.36-9+deb12u7</VERSION>\n    </SOFTWARES>\n  </CONTENT>\n  <DEVICEID>build-07-2025-01-14-09-03-55</DEVICEID>\n  <QUERY>INVENTORY</QUERY>\n</REQUEST>\n";

    #[test]
    fn a_real_agents_inventory_is_still_read_in_full() {
        let request = parse_request(UNIX_INVENTORY.as_bytes()).unwrap();
        let inventory = request.inventory.unwrap();
        assert_eq!(inventory.name.as_deref(), Some("build-07"));
        assert_eq!(
            inventory.os_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(inventory.os_version.as_deref(), Some("6.1.0-23-amd64"));
        assert_eq!(inventory.tags, ["lab"]);
        assert_eq!(inventory.ip_addresses, ["10.0.2.15", "127.0.0.1"]);
        assert_eq!(inventory.history, ["1736849000"]);
        // Element names in any case, as the reader always took them.
        let lower = UNIX_INVENTORY.replace("<NAME>build-07</NAME>", "<name>build-07</name>");
        let found = parse_request(lower.as_bytes()).unwrap().inventory.unwrap();
        assert_eq!(found.name.as_deref(), Some("build-07"));
    }

    /// `<REQUEST>` then `depth - 1` nested elements, each closed.
    fn nested(depth: usize) -> String {
        let mut xml = String::from(
            "<REQUEST><DEVICEID>x-2025-01-14-09-03-55</DEVICEID><QUERY>PROLOG</QUERY>",
        );
        xml.push_str(&"<a>".repeat(depth - 1));
        xml.push_str(&"</a>".repeat(depth - 1));
        xml.push_str("</REQUEST>");
        xml
    }

    #[test]
    fn deep_nesting_is_refused_at_once_and_the_limit_itself_is_read() {
        let started = std::time::Instant::now();
        let deep = nested(100_000);
        let body = encode_body(&deep, Encoding::Zlib);
        assert!(body.len() < 2000, "small on the wire: {}", body.len());
        let (xml, _) = decode_body(&body).unwrap();
        assert_eq!(parse_request(&xml), Err(CodecError::TooDeep));
        // It took 127 s when the path was joined for every element; a generous bound.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(parse_request(nested(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse_request(nested(MAX_DEPTH + 1).as_bytes()),
            Err(CodecError::TooDeep)
        );
    }

    #[test]
    fn unclosed_elements_and_mismatched_end_tags_are_refused() {
        let fields = "<DEVICEID>x-2025-01-14-09-03-55</DEVICEID><QUERY>PROLOG</QUERY>";
        assert_eq!(
            parse_request(format!("<REQUEST>{fields}").as_bytes()),
            Err(CodecError::Unclosed)
        );
        assert_eq!(
            parse_request(format!("<REQUEST>{fields}<CONTENT><a>").as_bytes()),
            Err(CodecError::Unclosed)
        );
        assert!(matches!(
            parse_request(format!("<REQUEST>{fields}<a></b></REQUEST>").as_bytes()),
            Err(CodecError::Xml { .. })
        ));
    }

    #[test]
    fn too_many_elements_and_too_long_texts_are_refused() {
        let fields = "<DEVICEID>x-2025-01-14-09-03-55</DEVICEID><QUERY>PROLOG</QUERY>";
        let flat = format!("<REQUEST>{fields}{}</REQUEST>", "<a/>".repeat(MAX_ELEMENTS));
        assert_eq!(
            parse_request(flat.as_bytes()),
            Err(CodecError::TooManyElements)
        );
        let long_text = format!(
            "<REQUEST>{fields}<a>{}</a></REQUEST>",
            "x".repeat(MAX_TEXT + 1)
        );
        assert_eq!(
            parse_request(long_text.as_bytes()),
            Err(CodecError::TooLong)
        );
        let long_attribute = format!(
            "<REQUEST {fields_attr} X=\"{}\"/>",
            "x".repeat(MAX_TEXT),
            fields_attr = "DEVICEID=\"x-2025-01-14-09-03-55\" QUERY=\"PROLOG\""
        );
        assert_eq!(
            parse_request(long_attribute.as_bytes()),
            Err(CodecError::TooLong)
        );
        // A kept field made of many entity references is bounded too.
        let refs = format!(
            "<REQUEST>{fields}<ERR>{}</ERR></REQUEST>",
            "&amp;".repeat(MAX_TEXT + 1)
        );
        assert_eq!(parse_request(refs.as_bytes()), Err(CodecError::TooLong));
    }

    #[test]
    fn identifying_fields_out_of_bounds_are_refused_without_echoing_them() {
        let result = |device: &str, id: &str, err: &str| {
            format!(
                "<REQUEST DEVICEID=\"{device}\" ID=\"{id}\" ERR=\"{err}\" QUERY=\"DOWNLOAD\" />"
            )
        };
        let device = "pc-2025-01-14-09-03-55";
        let long_code = "E".repeat(8 << 20);
        for (xml, refused) in [
            (
                result(device, "1736849000", &long_code[..MAX_RESULT_CODE + 1]),
                CodecError::FieldTooLong("ERR", MAX_RESULT_CODE),
            ),
            (
                result(device, "1736849000", "ERR&#10;INFO forged"),
                CodecError::BadField("ERR", "a result code (printable ASCII, no spaces)"),
            ),
            (
                result(device, "17368490001736849000123", "SUCCESS"),
                CodecError::FieldTooLong("ID", MAX_PACKAGE_ID),
            ),
            (
                result(device, "../1", "SUCCESS"),
                CodecError::BadField("ID", "a package id (digits)"),
            ),
            (
                result(&format!("{}{device}", "p".repeat(300)), "1", "SUCCESS"),
                CodecError::FieldTooLong("DEVICEID", MAX_DEVICE_ID),
            ),
            (
                result("pc&#10;INFO x-2025-01-14-09-03-55", "1", "SUCCESS"),
                CodecError::BadDeviceId,
            ),
            (
                format!(
                    "<REQUEST DEVICEID=\"{device}\" QUERY=\"{}\" />",
                    "Q".repeat(100)
                ),
                CodecError::FieldTooLong("QUERY", MAX_QUERY),
            ),
        ] {
            let refusal = parse_request(xml.as_bytes()).unwrap_err();
            assert_eq!(refusal, refused);
            assert!(refusal.to_string().len() < 100, "{refusal}");
        }
        // The 8 MiB code of the report: refused, and quickly.
        let started = std::time::Instant::now();
        let xml = result(device, "1736849000", &long_code);
        assert!(matches!(
            parse_request(xml.as_bytes()),
            Err(CodecError::TooLong)
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let fine = parse_request(result(device, "1736849000", "EXIT_CODE_1603").as_bytes());
        assert_eq!(fine.unwrap().err.as_deref(), Some("EXIT_CODE_1603"));
    }

    #[test]
    fn inventory_facts_are_truncated_or_dropped_within_their_limits() {
        let tags: String = (0..MAX_TAGS + 10)
            .map(|n| {
                format!(
                    "<ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>t{n}</KEYVALUE></ACCOUNTINFO>"
                )
            })
            .collect();
        let long_tag = format!(
            "<ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>{}</KEYVALUE></ACCOUNTINFO>",
            "t".repeat(MAX_TAG + 1)
        );
        let addresses: String = (0..MAX_IP_ADDRESSES + 10)
            .map(|n| {
                format!(
                    "<NETWORKS><IPADDRESS>10.0.{}.{}</IPADDRESS></NETWORKS>",
                    n / 256,
                    n % 256
                )
            })
            .collect();
        let history: String = (0..MAX_HISTORY + 10)
            .map(|n| format!("<PACKAGE ID=\"{}\"/>", 1_000_000_000 + n))
            .collect();
        let xml = format!(
            "<REQUEST><CONTENT>{long_tag}{tags}<HARDWARE><NAME>{name}</NAME><OSNAME>{os}</OSNAME><IPADDR>{long_ip}</IPADDR></HARDWARE>{addresses}<DOWNLOAD><HISTORY><PACKAGE ID=\"not-an-id\"/>{history}</HISTORY></DOWNLOAD></CONTENT><DEVICEID>pc-2025-01-14-09-03-55</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>",
            name = "n".repeat(10_000),
            os = "\u{e9}".repeat(MAX_FACT),
            long_ip = "1".repeat(MAX_IP_ADDRESS + 1),
        );
        let inventory = parse_request(xml.as_bytes()).unwrap().inventory.unwrap();
        assert_eq!(inventory.name.unwrap().len(), MAX_FACT);
        let os = inventory.os_name.unwrap();
        assert!(
            os.len() <= MAX_FACT && os.chars().all(|c| c == '\u{e9}'),
            "cut on a character"
        );
        assert_eq!(inventory.tags.len(), MAX_TAGS);
        assert_eq!(inventory.tags[0], "t0", "the over-long tag is dropped");
        assert_eq!(inventory.ip_addresses.len(), MAX_IP_ADDRESSES);
        assert_eq!(
            inventory.ip_addresses[0], "10.0.0.0",
            "the over-long address is dropped"
        );
        assert_eq!(inventory.history.len(), MAX_HISTORY);
        assert_eq!(
            inventory.history[0], "1000000000",
            "what is not an id is dropped"
        );
    }
}
