//! Package content from a URL: redirects resolved as RFC 3986 says against a local
//! redirecting server, and downloads through a proxy (forward for `http://`, CONNECT for
//! `https://`) with percent-decoded credentials, or directly for the hosts of `NO_PROXY`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sha2::Digest;
use tessera::reconcile::fetch::{FetchError, Proxies, fetch_through};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The content every test downloads.
const CONTENT: &[u8] = b"the archive's bytes";

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Reads an HTTP head (through the blank line), at most 8 KiB.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || stream.read_exact(&mut byte).await.is_err() {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A web server on loopback: `/rel/a` redirects to `../b` (that is `/b`), `/net` to
/// `//127.0.0.1:<its port>/b` (a network-path reference), `/b` is the content, and every
/// path it was asked for is recorded.
async fn redirecting_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                seen.lock().unwrap().push(path.clone());
                let redirect = |to: &str| {
                    format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .into_bytes()
                };
                let answer = match path.as_str() {
                    "/rel/a" => redirect("../b"),
                    "/net" => redirect(&format!("//127.0.0.1:{}/b", address.port())),
                    "/b" => {
                        let mut ok = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            CONTENT.len()
                        )
                        .into_bytes();
                        ok.extend_from_slice(CONTENT);
                        ok
                    }
                    _ => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (address, asked)
}

/// An HTTP proxy on loopback, as a corporate one behaves: CONNECT tunnels, and forward
/// requests in absolute form (`GET http://host:port/path`), relayed in origin form. Every
/// head it was sent is recorded.
async fn proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                seen.lock().unwrap().push(head.clone());
                let mut line = head.lines().next().unwrap_or_default().split(' ');
                let (method, target) = (line.next().unwrap_or_default(), line.next());
                if method == "CONNECT" {
                    let Ok(mut server) = TcpStream::connect(target.unwrap_or_default()).await
                    else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let Some((authority, path)) = target
                    .and_then(|t| t.strip_prefix("http://"))
                    .and_then(|t| t.split_once('/'))
                else {
                    let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    return;
                };
                let Ok(mut server) = TcpStream::connect(authority).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = server
                    .write_all(
                        format!("{method} /{path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (address, heads)
}

/// `fetch_through` on a blocking thread (it runs its own runtime), into a fresh cache.
async fn download(url: String, proxies: Proxies) -> Result<std::path::PathBuf, FetchError> {
    let cache = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        let kept = fetch_through(
            &url,
            &sha256(CONTENT),
            cache.path(),
            &proxies,
            &mut |_, _| {},
        );
        kept.inspect(|path| assert_eq!(std::fs::read(path).unwrap(), CONTENT))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_a_network_path_and_to_dot_segments_reach_the_content() {
    let (server, asked) = redirecting_server().await;
    download(format!("http://{server}/net"), Proxies::none())
        .await
        .expect("`//127.0.0.1:PORT/b` is that host's /b");
    download(format!("http://{server}/rel/a"), Proxies::none())
        .await
        .expect("`../b` from /rel/a is /b");
    assert_eq!(*asked.lock().unwrap(), ["/net", "/b", "/rel/a", "/b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_go_through_the_proxy_with_its_credentials_unless_no_proxy_names_the_host() {
    let (server, asked) = redirecting_server().await;
    let (proxy, heads) = proxy().await;
    let through = |no: &str| {
        Proxies::new(
            &format!("http://fetcher:p%40ss%3Aw0rd@{proxy}"),
            &format!("http://fetcher:p%40ss%3Aw0rd@{proxy}"),
            no,
        )
    };
    use base64::Engine;
    let credentials = format!(
        "proxy-authorization: basic {}",
        base64::engine::general_purpose::STANDARD.encode("fetcher:p@ss:w0rd")
    )
    .to_ascii_lowercase();

    // http://: a forward-proxy request in absolute form, the credentials decoded; the
    // redirect is followed through the proxy too.
    download(format!("http://{server}/rel/a"), through(""))
        .await
        .expect("through the proxy");
    let seen: Vec<String> = heads.lock().unwrap().drain(..).collect();
    let lines: Vec<&str> = seen.iter().filter_map(|h| h.lines().next()).collect();
    assert_eq!(
        lines,
        [
            format!("GET http://{server}/rel/a HTTP/1.1"),
            format!("GET http://{server}/b HTTP/1.1")
        ],
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|h| h.to_ascii_lowercase().contains(&credentials)),
        "{seen:?}"
    );

    // https://: a CONNECT tunnel with the same credentials. The server behind it closes
    // at once, so TLS fails, but after the tunnel was open: the proxy was used.
    let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secure = closing.local_addr().unwrap();
    tokio::spawn(async move { while closing.accept().await.is_ok() {} });
    let error = download(format!("https://{secure}/b"), through(""))
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Request { .. }), "{error:?}");
    let seen: Vec<String> = heads.lock().unwrap().drain(..).collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with(&format!("CONNECT {secure} HTTP/1.1\r\n")),
        "{seen:?}"
    );
    assert!(
        seen[0].to_ascii_lowercase().contains(&credentials),
        "{seen:?}"
    );

    // NO_PROXY naming the host: straight to the server.
    asked.lock().unwrap().clear();
    download(format!("http://{server}/b"), through("localhost,127.0.0.1"))
        .await
        .expect("directly");
    assert!(heads.lock().unwrap().is_empty(), "the proxy was used");
    assert_eq!(*asked.lock().unwrap(), ["/b"]);
}

/// `tessera export` builds a Package whose content is at a URL, with `HTTP_PROXY` and
/// `NO_PROXY` in its environment as a user sets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_builds_url_content_through_the_proxy_of_its_environment() {
    let (server, _) = redirecting_server().await;
    let (proxy, heads) = proxy().await;
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("p.yaml"),
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: app\nspec:\n  os: linux\n  content:\n    url: http://{server}/b\n    sha256: {}\n  action:\n    store:\n      path: /opt/app\n",
            sha256(CONTENT)
        ),
    )
    .unwrap();
    let export = |no_proxy: Option<&'static str>| {
        let config = config.path().to_owned();
        let state = tempfile::tempdir().unwrap();
        let proxy = format!("http://builder:s%20cret@{proxy}");
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"));
            command
                .args(["export", "--config"])
                .arg(&config)
                .arg("--output")
                .arg(state.path().join("out"))
                .arg("--state")
                .arg(state.path())
                .env("HTTP_PROXY", &proxy);
            for name in [
                "NO_PROXY",
                "no_proxy",
                "http_proxy",
                "ALL_PROXY",
                "all_proxy",
            ] {
                command.env_remove(name);
            }
            if let Some(no_proxy) = no_proxy {
                command.env("NO_PROXY", no_proxy);
            }
            let output = command.output().unwrap();
            let cached = state.path().join("cache/urls").join(sha256(CONTENT));
            (cached.is_file(), output)
        })
    };
    let (built, output) = export(None).await.unwrap();
    assert!(built, "{output:?}");
    let seen: Vec<String> = heads.lock().unwrap().drain(..).collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with(&format!("GET http://{server}/b HTTP/1.1\r\n")),
        "{seen:?}"
    );
    use base64::Engine;
    let credentials = base64::engine::general_purpose::STANDARD.encode("builder:s cret");
    assert!(seen.iter().all(|h| h.contains(&credentials)), "{seen:?}");

    let (built, output) = export(Some("127.0.0.1")).await.unwrap();
    assert!(built, "{output:?}");
    assert!(
        heads.lock().unwrap().is_empty(),
        "NO_PROXY=127.0.0.1 still used the proxy"
    );
}
