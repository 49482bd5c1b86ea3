//! The TLS ClientHello a passthrough or tunnel connection opens with: its server name
//! (SNI), read with a size limit and never trusting a length field the bytes give.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::RelayError;

/// A ClientHello larger than this is refused (real ones are well under 2 KiB; post-quantum
/// key shares bring them near 1.5 KiB more).
pub const MAX_CLIENT_HELLO: usize = 16 << 10;

/// Why a ClientHello could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("the ClientHello is malformed")]
    Malformed,
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
}

/// What the start of a connection says about its ClientHello so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not all of it is in yet: read more.
    NeedMore,
    /// Complete, naming this server (lowercase).
    Name(String),
    /// Complete, without a server name (a client that dialled an IP address, say).
    NoName,
}

/// The server name of the ClientHello at the start of `bytes`.
pub fn server_name(bytes: &[u8]) -> Result<Hello, HelloError> {
    // Handshake bytes gathered across TLS records.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + 5) else {
            return Ok(Hello::NeedMore);
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            return Err(HelloError::NotTls);
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length > MAX_CLIENT_HELLO {
            return Err(HelloError::TooLarge);
        }
        let Some(fragment) = bytes.get(at + 5..at + 5 + length) else {
            return if at + 5 + length > MAX_CLIENT_HELLO + 5 {
                Err(HelloError::TooLarge)
            } else {
                Ok(Hello::NeedMore)
            };
        };
        handshake.extend_from_slice(fragment);
        at += 5 + length;
        if handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return Err(HelloError::Malformed);
            }
            let body = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if body > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            if handshake.len() >= 4 + body {
                return parse_hello(&handshake[4..4 + body]);
            }
        }
        if at > MAX_CLIENT_HELLO + 5 {
            return Err(HelloError::TooLarge);
        }
    }
}

/// The `server_name` extension of a ClientHello body.
fn parse_hello(body: &[u8]) -> Result<Hello, HelloError> {
    let mut reader = Reader(body);
    reader.skip(2 + 32)?; // version, random
    let session = reader.u8()?;
    reader.skip(usize::from(session))?;
    let suites = reader.u16()?;
    reader.skip(usize::from(suites))?;
    let compression = reader.u8()?;
    reader.skip(usize::from(compression))?;
    if reader.0.is_empty() {
        return Ok(Hello::NoName);
    }
    let extensions = reader.u16()?;
    let mut extensions = Reader(reader.take(usize::from(extensions))?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let data = extensions.take(usize::from(length))?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let length = list.u16()?;
        let mut names = Reader(list.take(usize::from(length))?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let length = names.u16()?;
            let name = names.take(usize::from(length))?;
            if kind == 0 {
                let name = std::str::from_utf8(name).map_err(|_| HelloError::Malformed)?;
                return Ok(Hello::Name(name.to_ascii_lowercase()));
            }
        }
    }
    Ok(Hello::NoName)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn skip(&mut self, n: usize) -> Result<(), HelloError> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HelloError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }
}

/// A ClientHello read off a connection: its bytes (sent on to the backend as they are)
/// and server name.
pub(super) struct ClientHello {
    pub(super) bytes: Vec<u8>,
    pub(super) name: Option<String>,
}

/// Reads until a whole ClientHello is in, appending to what `bytes` already holds.
pub(super) async fn read(
    client: &mut (impl AsyncRead + Unpin),
    mut bytes: Vec<u8>,
) -> Result<ClientHello, RelayError> {
    /// Read size: a whole ClientHello usually comes in one read.
    const READ: usize = 4096;
    let mut buffer = [0u8; READ];
    loop {
        match server_name(&bytes)? {
            Hello::Name(name) => {
                let name = Some(name);
                return Ok(ClientHello { bytes, name });
            }
            Hello::NoName => return Ok(ClientHello { bytes, name: None }),
            Hello::NeedMore => {}
        }
        match client.read(&mut buffer).await {
            Ok(0) => return Err(RelayError::ClosedInHello),
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(error) => return Err(RelayError::Read(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls writes it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut connection =
            rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        connection.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_real_client_hello_in_any_number_of_pieces() {
        let hello = client_hello("Tessera.Example.org");
        assert_eq!(
            server_name(&hello),
            Ok(Hello::Name("tessera.example.org".into()))
        );
        for cut in [0, 3, 5, 40, hello.len() - 1] {
            assert_eq!(
                server_name(&hello[..cut]),
                Ok(Hello::NeedMore),
                "cut at {cut}"
            );
        }
        // An IP address is sent without a server name.
        assert_eq!(server_name(&client_hello("127.0.0.1")), Ok(Hello::NoName));
    }

    #[test]
    fn what_is_not_a_client_hello_is_refused() {
        assert_eq!(
            server_name(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HelloError::NotTls)
        );
        let mut broken = client_hello("a.example");
        broken[5] = 0x02; // a ServerHello
        assert_eq!(server_name(&broken), Err(HelloError::Malformed));
        let huge = [0x16, 0x03, 0x01, 0xff, 0xff];
        let mut bytes = huge.to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 70_000));
        assert_eq!(server_name(&bytes), Err(HelloError::TooLarge));
    }

    #[tokio::test]
    async fn a_client_hello_is_read_off_the_connection_whole_or_refused() {
        let hello = client_hello("a.example");
        let read = read(&mut &hello[..], Vec::new()).await.unwrap();
        assert_eq!(
            (read.bytes, read.name.as_deref()),
            (hello.clone(), Some("a.example"))
        );
        let cut = &hello[..hello.len() - 1];
        assert!(matches!(
            super::read(&mut &cut[..], Vec::new()).await,
            Err(RelayError::ClosedInHello)
        ));
        assert!(matches!(
            super::read(&mut &b"GET / HTTP/1.1\r\n\r\n"[..], Vec::new()).await,
            Err(RelayError::Hello(HelloError::NotTls))
        ));
    }
}
