//! The bodies of Tessera's fuzz targets: each takes arbitrary bytes, feeds them to a reader
//! of what strangers send, and asserts properties of the result (never just that it
//! returned). Free of libFuzzer, so `tests/it/fuzz_corpus.rs` in the main crate includes
//! this file and runs every body over `fuzz/corpus/<target>/` on stable Rust.

use std::net::SocketAddr;

use tessera::gateway::{self, Hello, HelloError};
use tessera::protocol::ocs::{self, CodecError, Encoding};
use tessera::protocol::proxy::{self, FIXED, Header, MAX_BLOCK};
use tessera::resources::parse;
use tessera::resources::validate;

/// A fuzz target's body: panics when a property fails.
pub type Body = fn(&[u8]);

/// Each fuzz target's name (its directory under `corpus/`) and body.
pub const TARGETS: [(&str, Body); 4] = [
    ("ocs_request", ocs_request),
    ("proxy_header", proxy_header),
    ("client_hello", client_hello),
    ("yaml_documents", yaml_documents),
];

/// An OCS request body as the agent endpoint reads it: `decode_body`, then `parse_request`.
pub fn ocs_request(data: &[u8]) {
    let xml = match ocs::decode_body(data) {
        Ok((xml, encoding)) => {
            assert!(!xml.is_empty(), "a decoded body is never empty");
            assert!(xml.len() <= ocs::MAX_INFLATED, "inflation is bounded");
            // The codec round-trips: what a reply is encoded with decodes to the same XML.
            if let Ok(text) = std::str::from_utf8(&xml)
                && encoding != Encoding::Plain
            {
                let again = ocs::decode_body(&ocs::encode_body(text, encoding));
                assert!(
                    matches!(&again, Ok((same, e)) if *same == xml && *e == encoding),
                    "re-encoding as {encoding:?} changes the body"
                );
            }
            xml
        }
        Err(CodecError::TooLarge(_)) => {
            assert!(
                data.len() > ocs::MAX_BODY,
                "refused as too large only when it is"
            );
            return;
        }
        Err(_) => data.to_vec(), // the parser must cope with whatever reaches it, too
    };
    let parsed = ocs::parse_request(&xml);
    // The same bytes give the same answer: no hidden state between requests.
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", ocs::parse_request(&xml)),
        "parse_request is deterministic"
    );
    let Ok(request) = parsed else {
        return;
    };
    assert!(!request.query.is_empty(), "a request has a QUERY");
    assert_eq!(request.query, request.query.to_ascii_uppercase());
    assert!(
        ocs::is_device_id(&request.device_id),
        "DEVICEID {:?} was accepted without its shape",
        request.device_id
    );
    // Nothing is amplified: each value comes from the input (Latin-1 at most doubles it), and
    // no list has more entries than the input has bytes.
    let most = 2 * xml.len();
    let mut values: Vec<&str> = vec![&request.query, &request.device_id];
    values.extend(request.id.as_deref());
    values.extend(request.err.as_deref());
    if let Some(inventory) = &request.inventory {
        assert_eq!(request.query, "INVENTORY", "only an INVENTORY carries one");
        values.extend(inventory.name.as_deref());
        values.extend(inventory.os_name.as_deref());
        values.extend(inventory.os_version.as_deref());
        for list in [&inventory.tags, &inventory.ip_addresses, &inventory.history] {
            assert!(list.len() <= xml.len(), "{} entries", list.len());
            values.extend(list.iter().map(String::as_str));
        }
    }
    for value in values {
        assert!(value.len() <= most, "a value of {} bytes", value.len());
    }
}

/// A PROXY protocol v2 header as the agent listener reads it: the fixed part, then the
/// address block of the length it gives (and the same bytes as a v1 line).
pub fn proxy_header(data: &[u8]) {
    // The same bytes as a version 1 line: refused or read, never a panic.
    let _ = proxy::decode_v1(data);
    let Some((fixed, rest)) = data.split_first_chunk::<FIXED>() else {
        return;
    };
    let Ok(length) = proxy::block_length(fixed) else {
        // The listener stops here; decode must refuse the same header.
        assert!(
            proxy::decode(fixed, rest).is_err(),
            "decode accepts what block_length refuses"
        );
        return;
    };
    assert!(length <= MAX_BLOCK, "block of {length} bytes accepted");
    // The listener reads exactly `length` bytes; a shorter block is a truncated header.
    let block = &rest[..length.min(rest.len())];
    match proxy::decode(fixed, block) {
        Ok(Header::Proxied {
            source,
            destination,
        }) => {
            assert_eq!(fixed[12], 0x21, "only the PROXY command carries addresses");
            let encoded = proxy::encode(source, destination);
            // What the relay writes for these addresses reads back the same.
            let (again_fixed, again_block) = encoded
                .split_first_chunk::<FIXED>()
                .expect("an encoded header has its fixed part");
            assert_eq!(
                proxy::decode(again_fixed, again_block).ok(),
                Some(Header::Proxied {
                    source,
                    destination
                }),
                "encode then decode"
            );
            // And a header in the form the encoder writes re-encodes to the same bytes.
            let both_v4 = matches!(
                (source, destination),
                (SocketAddr::V4(_), SocketAddr::V4(_))
            );
            let canonical = (fixed[13] == 0x11 && length == 12 && block.len() == 12)
                || (fixed[13] == 0x21 && length == 36 && block.len() == 36 && !both_v4);
            if canonical {
                assert_eq!(
                    &encoded[..],
                    &data[..FIXED + length],
                    "re-encoding changes the header"
                );
            }
        }
        Ok(Header::Local) => {}
        Err(error) => assert!(
            matches!(error, proxy::ProxyError::Short),
            "a header block_length accepts can only be too short: {error}"
        ),
    }
}

/// The ClientHello reader of the gateway, which routes passthrough connections by SNI.
pub fn client_hello(data: &[u8]) {
    let whole = gateway::server_name(data);
    if let Ok(Hello::Name(name)) = &whole {
        assert!(name.len() <= data.len(), "a name longer than the input");
        assert_eq!(name, &name.to_ascii_lowercase(), "names are lower case");
    }
    if let Err(error) = &whole {
        // Nothing is refused before a whole record header is in.
        assert!(data.len() >= 5, "{error} after {} bytes", data.len());
        if *error == HelloError::NotTls {
            assert!(
                data[0] != 0x16 || data[1] != 0x03,
                "a TLS record called not TLS"
            );
        }
    }
    // Bytes arrive in pieces: every prefix either asks for more or already gives the same
    // answer as the whole, so the gateway's read loop cannot decide differently. A handful
    // of cuts keeps the work linear.
    let step = (data.len() / 16).max(1);
    let cuts = (0..data.len())
        .step_by(step)
        .chain(data.len().checked_sub(1));
    for cut in cuts {
        let partial = gateway::server_name(&data[..cut]);
        assert!(
            partial == Ok(Hello::NeedMore) || partial == whole,
            "{cut} of {} bytes give {partial:?}, the whole {whole:?}",
            data.len()
        );
    }
    // Once decided, what follows the ClientHello (the rest of the session) changes nothing.
    if whole != Ok(Hello::NeedMore) {
        let mut more = data.to_vec();
        more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
        assert_eq!(
            gateway::server_name(&more),
            whole,
            "trailing bytes change the answer"
        );
    }
}

/// A configuration file as the directory and git sources read it (UTF-8 only, as they do).
pub fn yaml_documents(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = "fuzz/config.yaml";
    let parsed = parse::parse_file(file, text);
    // Lines are counted from 1 and never past the end of the text (plus one for a last
    // line without a newline, or an error at the end).
    let last_line = u32::try_from(text.lines().count() + 1).unwrap_or(u32::MAX);
    for object in &parsed.objects {
        assert_eq!(object.origin.file, file);
        assert!(
            (1..=last_line).contains(&object.origin.line),
            "{:?}",
            object.origin
        );
        // What parsing accepts, validation accepts: the source never serves a refused object.
        assert!(
            validate::object(object).is_empty(),
            "a parsed object has problems: {:?}",
            validate::object(object)
        );
    }
    for problem in &parsed.problems {
        assert_eq!(problem.file.as_deref(), Some(file), "{problem:?}");
        if let Some(line) = problem.line {
            assert!((1..=last_line).contains(&line), "{problem:?}");
        }
        assert!(!problem.message.is_empty(), "a problem says what is wrong");
    }
    if !parsed.complete {
        assert!(
            !parsed.problems.is_empty(),
            "an incomplete read is reported"
        );
    }
    // Parsing is deterministic.
    let again = parse::parse_file(file, text);
    assert_eq!(again.objects.len(), parsed.objects.len());
    assert_eq!(again.problems, parsed.problems);
}
