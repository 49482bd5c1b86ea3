//! The OCS Inventory NG wire format (see `reference/ocs-protocol.md`): bodies (zlib, gzip
//! or plain), requests read leniently (each field an attribute or a child element of
//! `REQUEST`, in any order, as XML::Simple made agents write them), replies in exactly the
//! shape the strict Windows agent reads, and the package `info` file.
//!
//! One file per part: `body` (the codec), `request` (the reader and its limits), `reply`
//! and `info`.

mod body;
mod info;
mod reply;
mod request;

pub use body::{
    Encoding, MAX_BODY, MAX_INFLATED, STORED_UP_TO, decode_body, decode_body_within, encode_body,
};
pub use info::{Action, Info, Notify, Proto};
pub use reply::{DownloadConf, Pack, PrologReply, inventory_reply};
pub use request::{
    Inventory, MAX_DEPTH, MAX_DEVICE_ID, MAX_ELEMENTS, MAX_FACT, MAX_HISTORY, MAX_IP_ADDRESS,
    MAX_IP_ADDRESSES, MAX_PACKAGE_ID, MAX_QUERY, MAX_RESULT_CODE, MAX_TAG, MAX_TAGS, MAX_TEXT,
    Request, is_device_id, is_package_id, parse_request,
};

/// Why a request was refused (each is a 400 for the agent, with a log line). No message
/// carries anything of the request itself: the answer and the log never echo input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("the body is {0} bytes, more than the {MAX_BODY} accepted")]
    TooLarge(usize),
    #[error("the body inflates to more than {MAX_INFLATED} bytes")]
    InflatesTooFar,
    #[error("the body is neither zlib, gzip nor XML")]
    Undecodable,
    #[error("malformed XML at byte {position}")]
    Xml { position: u64 },
    #[error("the request nests elements deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the request has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("the request has a text, CDATA or tag longer than {MAX_TEXT} bytes")]
    TooLong,
    #[error("the request ends inside an element")]
    Unclosed,
    #[error("the root element is not REQUEST")]
    NotARequest,
    #[error("the request has no {0}")]
    Missing(&'static str),
    #[error("{0} is longer than {1} bytes")]
    FieldTooLong(&'static str, usize),
    #[error("{0} is not {1}")]
    BadField(&'static str, &'static str),
    #[error("DEVICEID is not an OCS device id (name-YYYY-MM-DD-HH-MM-SS)")]
    BadDeviceId,
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

/// A Unix agent's PROLOG as it writes it, for the tests of the parts.
#[cfg(test)]
const UNIX_PROLOG: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <DEVICEID>build-07-2025-01-14-09-03-55</DEVICEID>\n  <QUERY>PROLOG</QUERY>\n</REQUEST>\n";
