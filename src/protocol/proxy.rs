//! The PROXY protocol, versions 1 (text) and 2 (binary): a relay tells the server who the
//! client really is, in a header before the relayed bytes. nginx's `proxy_protocol on;` and
//! many load balancers send version 1, HAProxy and Tessera's gateway version 2; a server
//! reads either ([`read_header`]). Only TCP over IPv4 and IPv6 are carried; `LOCAL` (health
//! checks) and `UNKNOWN` have no address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The first 12 bytes of every version 2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family, length.
pub const FIXED: usize = 16;
/// Longest address block accepted (TLVs beyond the addresses are skipped).
pub const MAX_BLOCK: usize = 512;
/// The first 6 bytes of every version 1 header.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest version 1 header, CRLF included: the specification's worst case,
/// `PROXY UNKNOWN ` with two 39-character IPv6 addresses and two 5-digit ports (107 bytes).
pub const V1_MAX: usize = 107;
/// The bytes read before the version is known: as long as the v1 prefix, and shorter than
/// the shortest v1 header (`PROXY UNKNOWN\r\n`, 15 bytes), so nothing past a header is read.
const PEEK: usize = 6;

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol signature (v1 or v2)")]
    NoSignature,
    #[error("PROXY protocol version or command {0:#04x} is not v2 PROXY/LOCAL")]
    Version(u8),
    #[error("PROXY protocol address block of {0} bytes is too long")]
    TooLong(usize),
    #[error("PROXY protocol address block is too short for its family")]
    Short,
    #[error("PROXY protocol v1 header has no CRLF within {V1_MAX} bytes")]
    V1TooLong,
    /// A version 1 line that does not follow the grammar; `reason` names the part.
    #[error("PROXY protocol v1 header is malformed: {reason}")]
    V1Malformed { reason: &'static str },
    #[error("failed to read the PROXY protocol header")]
    Read(#[source] std::io::Error),
}

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The relay's own connection (a health check, v1 `UNKNOWN`), or an address family not
    /// carried.
    Local,
}

/// Reads a version 1 or version 2 header from the start of `stream`, and not one byte
/// more: what follows (a TLS handshake) is the caller's. A version 1 line is read byte by
/// byte for that reason; it is at most [`V1_MAX`] bytes, from a trusted relay only.
pub async fn read_header<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Header, ProxyError> {
    let mut start = [0u8; PEEK];
    stream
        .read_exact(&mut start)
        .await
        .map_err(ProxyError::Read)?;
    if &start == V1_PREFIX {
        let mut line = start.to_vec();
        while !line.ends_with(b"\n") {
            if line.len() == V1_MAX {
                return Err(ProxyError::V1TooLong);
            }
            line.push(stream.read_u8().await.map_err(ProxyError::Read)?);
        }
        return decode_v1(&line);
    }
    if start != SIGNATURE[..PEEK] {
        return Err(ProxyError::NoSignature);
    }
    let mut fixed = [0u8; FIXED];
    fixed[..PEEK].copy_from_slice(&start);
    stream
        .read_exact(&mut fixed[PEEK..])
        .await
        .map_err(ProxyError::Read)?;
    let mut block = vec![0u8; block_length(&fixed)?];
    stream
        .read_exact(&mut block)
        .await
        .map_err(ProxyError::Read)?;
    decode(&fixed, &block)
}

/// Reads a whole version 1 line, `PROXY TCP4|TCP6 source destination sport dport\r\n` or
/// `PROXY UNKNOWN[ anything]\r\n`: single spaces, addresses of the family named, decimal
/// ports without sign or leading zero.
pub fn decode_v1(line: &[u8]) -> Result<Header, ProxyError> {
    let malformed = |reason| ProxyError::V1Malformed { reason };
    if line.len() > V1_MAX {
        return Err(ProxyError::V1TooLong);
    }
    let rest = line
        .strip_prefix(V1_PREFIX)
        .ok_or(ProxyError::NoSignature)?;
    let rest = rest
        .strip_suffix(b"\r\n")
        .ok_or_else(|| malformed("it does not end with CRLF"))?;
    // UNKNOWN may carry anything up to the CRLF (a receiver must ignore it).
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(Header::Local);
    }
    let text = std::str::from_utf8(rest).map_err(|_| malformed("it is not ASCII"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    let [family, source, destination, source_port, destination_port] = fields[..] else {
        return Err(malformed(
            "it does not have five single-space-separated fields",
        ));
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyError> {
        match family {
            "TCP4" => text
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| malformed("an address is not IPv4")),
            "TCP6" => text
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| malformed("an address is not IPv6")),
            _ => Err(malformed("the protocol is not TCP4, TCP6 or UNKNOWN")),
        }
    };
    let port = |text: &str| -> Result<u16, ProxyError> {
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !digits || (text.len() > 1 && text.starts_with('0')) {
            return Err(malformed("a port is not a decimal number"));
        }
        text.parse().map_err(|_| malformed("a port is above 65535"))
    };
    let unmapped = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(unmapped(ip(source)?), port(source_port)?),
        destination: SocketAddr::new(unmapped(ip(destination)?), port(destination_port)?),
    })
}

/// The header for a connection from `source` to `destination` (mixed families are sent
/// as IPv6).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let six = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&six(s).octets());
            out.extend_from_slice(&six(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// The length of the address block that follows the fixed part `fixed`.
pub fn block_length(fixed: &[u8; FIXED]) -> Result<usize, ProxyError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyError::NoSignature);
    }
    if fixed[12] != 0x21 && fixed[12] != 0x20 {
        return Err(ProxyError::Version(fixed[12]));
    }
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > MAX_BLOCK {
        return Err(ProxyError::TooLong(length));
    }
    Ok(length)
}

/// Reads a header from its fixed part and its address block.
pub fn decode(fixed: &[u8; FIXED], block: &[u8]) -> Result<Header, ProxyError> {
    block_length(fixed)?;
    if fixed[12] == 0x20 {
        return Ok(Header::Local);
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match fixed[13] {
        0x11 => {
            if block.len() < 12 {
                return Err(ProxyError::Short);
            }
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0).into(), port(8)),
                destination: SocketAddr::new(ip(4).into(), port(10)),
            })
        }
        0x21 => {
            if block.len() < 36 {
                return Err(ProxyError::Short);
            }
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                let v6 = Ipv6Addr::from(octets);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        _ => Ok(Header::Local),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) -> Header {
        let fixed: [u8; FIXED] = bytes[..FIXED].try_into().unwrap();
        let length = block_length(&fixed).unwrap();
        assert_eq!(bytes.len(), FIXED + length);
        decode(&fixed, &bytes[FIXED..]).unwrap()
    }

    #[test]
    fn addresses_round_trip_in_both_families() {
        let source: SocketAddr = "203.0.113.7:51234".parse().unwrap();
        let destination: SocketAddr = "10.0.0.5:8443".parse().unwrap();
        assert_eq!(
            round_trip(&encode(source, destination)),
            Header::Proxied {
                source,
                destination
            }
        );
        let source: SocketAddr = "[2001:db8::7]:51234".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::1]:8443".parse().unwrap();
        assert_eq!(
            round_trip(&encode(source, destination)),
            Header::Proxied {
                source,
                destination
            }
        );
    }

    #[test]
    fn what_is_not_a_v2_header_is_refused() {
        let mut fixed = [0u8; FIXED];
        fixed[..5].copy_from_slice(b"\x16\x03\x01\x02\x00");
        assert!(matches!(block_length(&fixed), Err(ProxyError::NoSignature)));
        fixed[..12].copy_from_slice(&SIGNATURE);
        fixed[12] = 0x11;
        assert!(matches!(
            block_length(&fixed),
            Err(ProxyError::Version(0x11))
        ));
        fixed[12] = 0x21;
        fixed[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert!(matches!(
            block_length(&fixed),
            Err(ProxyError::TooLong(4000))
        ));
    }

    fn v1(line: &str) -> Result<Header, ProxyError> {
        decode_v1(line.as_bytes())
    }

    #[test]
    fn v1_headers_of_both_families_and_unknown_are_read() {
        assert_eq!(
            v1("PROXY TCP4 203.0.113.7 10.0.0.5 51234 8443\r\n").unwrap(),
            Header::Proxied {
                source: "203.0.113.7:51234".parse().unwrap(),
                destination: "10.0.0.5:8443".parse().unwrap(),
            }
        );
        assert_eq!(
            v1("PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n").unwrap(),
            Header::Proxied {
                source: "[2001:db8::7]:65535".parse().unwrap(),
                destination: "[2001:db8::1]:0".parse().unwrap(),
            }
        );
        // A dual-stack relay names IPv4 clients as mapped IPv6 addresses.
        assert_eq!(
            v1("PROXY TCP6 ::ffff:203.0.113.7 ::1 51234 443\r\n").unwrap(),
            Header::Proxied {
                source: "203.0.113.7:51234".parse().unwrap(),
                destination: "[::1]:443".parse().unwrap(),
            }
        );
        assert_eq!(v1("PROXY UNKNOWN\r\n").unwrap(), Header::Local);
        assert_eq!(
            v1("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap(),
            Header::Local
        );
        // The specification's longest header is exactly the limit.
        let longest = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(v1(&longest).unwrap(), Header::Local);
        let tcp6 = longest.replace("UNKNOWN", "TCP6");
        assert!(v1(&tcp6).is_ok(), "{tcp6}");
    }

    #[test]
    fn malformed_v1_headers_are_refused() {
        for line in [
            "PROXY TCP4 203.0.113.7 10.0.0.5 51234 8443\n",
            "PROXY TCP4 203.0.113.7 10.0.0.5 51234\r\n",
            "PROXY TCP4 203.0.113.7  10.0.0.5 51234 8443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.5 51234 8443 1\r\n",
            "PROXY TCP4 2001:db8::7 10.0.0.5 51234 8443\r\n",
            "PROXY TCP6 203.0.113.7 2001:db8::1 51234 8443\r\n",
            "PROXY UDP4 203.0.113.7 10.0.0.5 51234 8443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.5 65536 8443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.5 +5123 8443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.5 08443 8443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.5 -1 8443\r\n",
            "PROXY tcp4 203.0.113.7 10.0.0.5 51234 8443\r\n",
            "PROXY \r\n",
        ] {
            assert!(
                matches!(v1(line), Err(ProxyError::V1Malformed { .. })),
                "{line:?}: {:?}",
                v1(line)
            );
        }
        let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX));
        assert!(matches!(v1(&too_long), Err(ProxyError::V1TooLong)));
    }

    #[tokio::test]
    async fn a_header_of_either_version_is_read_and_not_one_byte_more() {
        let source: SocketAddr = "203.0.113.7:51234".parse().unwrap();
        let destination: SocketAddr = "10.0.0.5:8443".parse().unwrap();
        let expected = Header::Proxied {
            source,
            destination,
        };
        let mut v2 = encode(source, destination);
        v2.extend_from_slice(b"\x16\x03\x01");
        let mut stream = &v2[..];
        assert_eq!(read_header(&mut stream).await.unwrap(), expected);
        assert_eq!(stream, b"\x16\x03\x01");

        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8443\r\n\x16\x03\x01";
        let mut stream = &v1[..];
        assert_eq!(read_header(&mut stream).await.unwrap(), expected);
        assert_eq!(stream, b"\x16\x03\x01");

        let mut stream = &b"PROXY UNKNOWN\r\n\x16"[..];
        assert_eq!(read_header(&mut stream).await.unwrap(), Header::Local);
        assert_eq!(stream, b"\x16");
    }

    #[tokio::test]
    async fn an_endless_v1_line_or_no_header_is_refused() {
        let endless = format!("PROXY UNKNOWN {}", "x".repeat(4096));
        let mut stream = endless.as_bytes();
        assert!(matches!(
            read_header(&mut stream).await,
            Err(ProxyError::V1TooLong)
        ));
        assert_eq!(
            stream.len(),
            endless.len() - V1_MAX,
            "no byte read past the limit"
        );
        let mut stream = &b"\x16\x03\x01\x02\x00\x01\x01"[..];
        assert!(matches!(
            read_header(&mut stream).await,
            Err(ProxyError::NoSignature)
        ));
        let mut stream = &b"PROXY TCP4 1.2"[..];
        assert!(matches!(
            read_header(&mut stream).await,
            Err(ProxyError::Read(_))
        ));
    }
}
