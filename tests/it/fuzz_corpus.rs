//! The fuzz targets' bodies (`fuzz/src/bodies.rs`) over every seed of `fuzz/corpus/`, on
//! stable Rust: the targets keep compiling and the corpus keeps passing without nightly.

use std::path::Path;

// Public for the fuzz crate, whose targets call them; unreachable from this test crate.
#[allow(unreachable_pub)]
#[path = "../../fuzz/src/bodies.rs"]
mod bodies;

#[test]
fn every_fuzz_body_passes_on_every_seed_of_its_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, body) in bodies::TARGETS {
        let dir = corpus.join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|entry| entry.path())
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 3, "{target}: only {} seeds", seeds.len());
        for seed in seeds {
            let data = std::fs::read(&seed).unwrap();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", seed.display());
        }
    }
}

#[test]
fn every_fuzz_target_has_a_body_and_a_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (target, _) in bodies::TARGETS {
        let source = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{target}.rs: {e}"));
        assert!(
            source.contains(&format!("tessera_fuzz::{target}(data)")),
            "fuzz_targets/{target}.rs calls its body"
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml declares {target}"
        );
    }
}

/// A ClientHello as rustls writes it for `name`.
fn rustls_client_hello(name: &str) -> Vec<u8> {
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
fn a_fresh_rustls_client_hello_passes_the_body_and_names_its_server() {
    // The committed seed ages with rustls; a fresh one checks today's.
    let hello = rustls_client_hello("Agents.Example.org");
    bodies::client_hello(&hello);
    assert_eq!(
        tessera::gateway::server_name(&hello),
        Ok(tessera::gateway::Hello::Name(
            "agents.example.org".to_owned()
        ))
    );
    let address = rustls_client_hello("192.0.2.1");
    bodies::client_hello(&address);
    assert_eq!(
        tessera::gateway::server_name(&address),
        Ok(tessera::gateway::Hello::NoName)
    );
}
