//! `tessera doctor`: connects to a TLS server as a client would, prints the chain it was
//! offered, and explains in plain words what is wrong and how to fix it.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::pki::diagnose::{self, Finding, Observed};
use crate::pki::facts::CertFacts;
use crate::pki::{PkiError, facts, tls};

/// Why `tessera doctor` could not run its check (a failed handshake is a finding, not this).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("ADDRESS must be host:port, got `{0}`")]
    Address(String),
    #[error("`{name}` is not a host name or address")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("a --crl file is not a PEM CRL with a next update")]
    Crl,
    #[error("failed to read the client key")]
    ClientKey(#[source] rustls::pki_types::pem::Error),
    #[error(transparent)]
    Certificate(#[from] PkiError),
    #[error("failed to set up the TLS client")]
    Tls(#[from] rustls::Error),
    #[error("failed to set up the verifier for --ca")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("failed to write the report")]
    Write(#[from] std::io::Error),
}

type Result<T, E = DoctorError> = std::result::Result<T, E>;

/// What to check.
#[derive(Debug)]
pub struct Options {
    pub address: String,
    pub server_name: Option<String>,
    /// PEM of the CAs the client trusts.
    pub trusted: Option<String>,
    /// PEM chain and key of a client certificate.
    pub identity: Option<(String, String)>,
    /// PEM CRLs.
    pub crls: Vec<String>,
    pub timeout: Duration,
}

/// Runs the check and prints the report; 0 when all is well, 1 on problems, 2 when no TLS
/// session could be made.
pub async fn run(options: Options) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let host = options
        .address
        .rsplit_once(':')
        .map(|(host, _)| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
        .ok_or_else(|| DoctorError::Address(options.address.clone()))?;
    let name = options.server_name.clone().unwrap_or(host);
    let server_name =
        ServerName::try_from(name.clone()).map_err(|source| DoctorError::ServerName {
            name: name.clone(),
            source,
        })?;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::new(Recorder {
        seen: seen.clone(),
        provider: tls::provider(),
    });
    let config = client_config(options.identity.as_ref(), recorder)?;

    writeln!(out, "connecting to {} as `{name}`", options.address)?;
    let connect = async {
        let stream = TcpStream::connect(&options.address).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name.clone(), stream)
            .await
    };
    let session = match tokio::time::timeout(options.timeout, connect).await {
        Err(_) => {
            writeln!(out, "PROBLEM: no answer within {:?}", options.timeout)?;
            writeln!(
                out,
                "  fix: check the address, the port and any firewall or gateway on the way"
            )?;
            return Ok(ExitCode::from(2));
        }
        Ok(Err(error)) => {
            explain_handshake_failure(&mut out, &error)?;
            return Ok(ExitCode::from(2));
        }
        Ok(Ok(session)) => session,
    };
    let connection = session.get_ref().1;
    writeln!(
        out,
        "TLS: {:?}, {:?}",
        connection
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        connection
            .negotiated_cipher_suite()
            .map(|c| c.suite())
            .unwrap_or(rustls::CipherSuite::Unknown(0))
    )?;

    let chain: Vec<CertificateDer<'static>> = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let chain_facts = write_chain(&mut out, &chain)?;

    let trusted = match &options.trusted {
        Some(pem) => facts::pem_certificates(pem)?
            .iter()
            .map(|der| facts::read(der))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let crls = options
        .crls
        .iter()
        .map(|pem| facts::read_crl(pem).ok_or(DoctorError::Crl))
        .collect::<Result<Vec<_>>>()?;
    let findings = diagnose::diagnose(&Observed {
        chain: chain_facts,
        name: name.clone(),
        trusted,
        crls,
        now: jiff::Timestamp::now(),
    });
    for finding in &findings {
        writeln!(out, "PROBLEM ({}): {}", finding.code, finding.problem)?;
        writeln!(out, "  fix: {}", finding.fix)?;
    }

    verdict(
        &mut out,
        options.trusted.as_deref(),
        &chain,
        &server_name,
        &name,
        &findings,
    )
}

/// Prints the chain the server offered, one certificate at a time, and returns what each
/// one says.
fn write_chain(out: &mut impl Write, chain: &[CertificateDer<'static>]) -> Result<Vec<CertFacts>> {
    let mut chain_facts = Vec::new();
    writeln!(
        out,
        "chain offered ({} certificate{}):",
        chain.len(),
        if chain.len() == 1 { "" } else { "s" }
    )?;
    for (i, der) in chain.iter().enumerate() {
        let f = facts::read(der)?;
        writeln!(out, "  {i}: subject {}", f.subject)?;
        writeln!(out, "     issuer  {}", f.issuer)?;
        writeln!(
            out,
            "     serial  {}  valid {} .. {}",
            f.serial, f.not_before, f.not_after
        )?;
        let names: Vec<String> = f
            .names
            .dns_names
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(f.names.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
            .chain(f.names.uris.iter().map(|u| format!("URI:{u}")))
            .collect();
        if !names.is_empty() {
            writeln!(out, "     names   {}", names.join(", "))?;
        }
        if !f.usages.is_empty() {
            let usages: Vec<String> = f.usages.iter().map(ToString::to_string).collect();
            writeln!(out, "     usages  {}", usages.join(", "))?;
        }
        chain_facts.push(f);
    }
    Ok(chain_facts)
}

/// The exit code: 1 when the diagnosis found problems or, with `trusted` CAs, when the
/// real verifier refuses the chain; 0 otherwise.
fn verdict(
    out: &mut impl Write,
    trusted: Option<&str>,
    chain: &[CertificateDer<'static>],
    server_name: &ServerName<'static>,
    name: &str,
    findings: &[Finding],
) -> Result<ExitCode> {
    // The real verifier has the last word, in case something is wrong that the diagnosis
    // does not name.
    if let Some(pem) = trusted {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in facts::pem_certificates(pem)? {
            let _ = roots.add(certificate);
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            tls::provider(),
        )
        .build()?;
        let verdict = match chain.split_first() {
            Some((leaf, intermediates)) => verifier
                .verify_server_cert(leaf, intermediates, server_name, &[], UnixTime::now())
                .map(|_| ()),
            None => Err(rustls::Error::NoCertificatesPresented),
        };
        match verdict {
            Ok(()) if findings.is_empty() => {
                writeln!(
                    out,
                    "OK: the chain verifies for `{name}` against the given CA"
                )?;
            }
            Ok(()) => {}
            Err(error) if findings.is_empty() => {
                writeln!(out, "PROBLEM (verification): {error}")?;
                return Ok(ExitCode::from(1));
            }
            Err(_) => {}
        }
    } else if findings.is_empty() {
        writeln!(
            out,
            "no problem found in the chain itself; pass --ca to check it against the CA your clients trust"
        )?;
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A client that records the chain offered instead of judging it, with the client
/// certificate if one is given.
fn client_config(
    identity: Option<&(String, String)>,
    recorder: Arc<Recorder>,
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(recorder);
    Ok(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(
            facts::pem_certificates(chain)?,
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(DoctorError::ClientKey)?,
        )?,
        None => builder.with_no_client_auth(),
    })
}

fn explain_handshake_failure(out: &mut impl Write, error: &std::io::Error) -> std::io::Result<()> {
    let text = error.to_string();
    let inner = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::PeerIncompatible(_))
        | Some(rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)) => {
            writeln!(
                out,
                "PROBLEM (tls-version): the server speaks no TLS 1.2 or 1.3 ({text})"
            )?;
            writeln!(
                out,
                "  fix: TLS 1.0 and 1.1 are broken and refused by current clients; enable TLS 1.2 or later on the server (Tessera's listeners speak only 1.2 and 1.3)"
            )
        }
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired))
        | Some(rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure))
            if text.contains("ertificate") =>
        {
            writeln!(
                out,
                "PROBLEM (client-certificate): the server requires a client certificate ({text})"
            )?;
            writeln!(
                out,
                "  fix: pass --cert and --key with a certificate from an issuer the server trusts"
            )
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            writeln!(
                out,
                "PROBLEM (refused): the server ended the handshake: {alert:?}"
            )?;
            writeln!(
                out,
                "  fix: read the server's log for the reason; with mutual TLS, check the client certificate's issuer, validity and usage"
            )
        }
        _ => {
            writeln!(out, "PROBLEM (connect): {text}")?;
            writeln!(
                out,
                "  fix: check that something listens there and speaks TLS (not plain HTTP)"
            )
        }
    }
}

/// Accepts any chain and records it: the report is built from what was sent, not from
/// whether it verified.
#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(address: &str, server_name: Option<&str>) -> Options {
        Options {
            address: address.to_owned(),
            server_name: server_name.map(str::to_owned),
            trusted: None,
            identity: None,
            crls: Vec::new(),
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn bad_input_is_named_before_any_connection() {
        let error = run(options("tessera.example", None)).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "ADDRESS must be host:port, got `tessera.example`"
        );
        let error = run(options("127.0.0.1:1", Some("not a name")))
            .await
            .unwrap_err();
        assert!(matches!(error, DoctorError::ServerName { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "`not a name` is not a host name or address"
        );
    }
}
