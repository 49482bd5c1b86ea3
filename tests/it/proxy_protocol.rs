//! PROXY protocol version 1 from a real relay: nginx's stream proxy with
//! `proxy_protocol on;` in front of `tessera serve`, whose Server trusts it. The client's
//! own address, not the relay's, is what Tessera records.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{addresses, free_port, quickstart_copy, start, wait_for_port};

/// Where Debian puts nginx (root's PATH has /usr/sbin; a user's may not).
fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Debian builds the stream module as a dynamic module (package libnginx-mod-stream); other
/// builds link it in. `None` when this nginx has no stream proxy at all.
fn stream_module(binary: &Path) -> Option<String> {
    let dynamic = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    if dynamic.is_file() {
        return Some(format!("load_module {};\n", dynamic.display()));
    }
    let version = Command::new(binary).arg("-V").output().ok()?;
    let built = String::from_utf8_lossy(&version.stderr).contains("--with-stream ");
    built.then(String::new)
}

/// nginx in the foreground, one process (no workers to outlive it), killed when dropped.
struct Nginx {
    child: std::process::Child,
    dir: PathBuf,
}

impl Nginx {
    /// A TCP relay on 127.0.0.1:`port` to `backend`, prefixing each connection with a
    /// PROXY protocol v1 header.
    fn relay(binary: &Path, module: &str, dir: &Path, port: u16, backend: &str) -> Self {
        let d = dir.display();
        let config = format!(
            "{module}daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             stream {{\n  server {{\n    listen 127.0.0.1:{port};\n    proxy_pass {backend};\n    proxy_protocol on;\n  }}\n}}\n"
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Self {
            child,
            dir: dir.to_owned(),
        };
        wait_for_port(port, "nginx");
        nginx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sending_proxy_protocol_v1_names_the_clients_real_address() {
    let Some(binary) = nginx_binary() else {
        eprintln!("skipped: nginx is not installed (scripts/setup.sh installs it)");
        return;
    };
    let Some(module) = stream_module(&binary) else {
        eprintln!("skipped: this nginx has no stream module (Debian: libnginx-mod-stream)");
        return;
    };
    let dir = quickstart_copy();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(
        &server,
        format!("{text}  trustedProxies: [\"127.0.0.1\"]\n"),
    )
    .unwrap();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let nginx = Nginx::relay(&binary, &module, work.path(), port, &https);

    // An OCS inventory sent by curl from 127.0.0.5 to nginx (TLS end to end: nginx relays
    // bytes); nginx connects to Tessera from 127.0.0.1, the trusted relay.
    let device = "behind-nginx-2026-01-01-00-00-00";
    let xml = format!(
        "<REQUEST><CONTENT><HARDWARE><NAME>behind-nginx</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    );
    let body = work.path().join("inventory.zlib");
    std::fs::write(
        &body,
        tessera::protocol::ocs::encode_body(&xml, tessera::protocol::ocs::Encoding::Zlib),
    )
    .unwrap();
    let ca = crate::support::server_ca(dir.path());
    let curl = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--interface", "127.0.0.5"])
            .arg("--cacert")
            .arg(&ca)
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", "Content-Type: application/x-compressed"])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("https://127.0.0.1:{port}/ocsinventory"))
            .output()
            .expect("curl is installed by scripts/setup.sh")
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "200",
        "{curl:?}\nnginx: {}",
        nginx.log()
    );
    let db = tessera::store::db::Database::open(&dir.path().join(".tessera/state.db")).unwrap();
    assert_eq!(
        db.address(device).unwrap().as_deref(),
        Some("127.0.0.5"),
        "the client's address from nginx's PROXY v1 header, not the relay's 127.0.0.1"
    );
    drop(nginx);
    running.stop().await.unwrap();
}
