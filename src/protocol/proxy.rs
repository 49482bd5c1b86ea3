//! The PROXY protocol, version 2 (binary): a relay tells the server who the client really
//! is, in a header before the relayed bytes. Only TCP over IPv4 and IPv6 are carried;
//! `LOCAL` (health checks) has no address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first 12 bytes of every version 2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family, length.
pub const FIXED: usize = 16;
/// Longest address block accepted (TLVs beyond the addresses are skipped).
pub const MAX_BLOCK: usize = 512;

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol v2 signature")]
    NoSignature,
    #[error("PROXY protocol version or command {0:#04x} is not v2 PROXY/LOCAL")]
    Version(u8),
    #[error("PROXY protocol address block of {0} bytes is too long")]
    TooLong(usize),
    #[error("PROXY protocol address block is too short for its family")]
    Short,
}

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The relay's own connection (a health check), or an address family not carried.
    Local,
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
        assert_eq!(block_length(&fixed), Err(ProxyError::NoSignature));
        fixed[..12].copy_from_slice(&SIGNATURE);
        fixed[12] = 0x11;
        assert_eq!(block_length(&fixed), Err(ProxyError::Version(0x11)));
        fixed[12] = 0x21;
        fixed[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(block_length(&fixed), Err(ProxyError::TooLong(4000)));
    }
}
