//! The web console in a real browser: `tessera serve` on the quickstart, the real OCS agent
//! deploying to one computer and a hostile inventory making another, then headless Chromium
//! driven over the DevTools protocol (a websocket on loopback): the Fleet finds both, a
//! computer shows its packages and result codes, Certificates the server certificate's
//! expiry, an Activation is suspended and resumed with the buttons, a change made elsewhere
//! appears without a reload, and `<script>alert(1)</script>` stays text (no dialog ever
//! opens). A screenshot of each page is written to `CONSOLE_SCREENSHOTS` (default
//! `<target>/console-screenshots/`).
//!
//! The DevTools protocol rather than `--dump-dom`: clicks, the script's polling and
//! `Page.javascriptDialogOpening` need a live page, and it is Chromium's own interface (no
//! driver binary to install).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tessera::protocol::ocs::{self, Encoding};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ocs_agent::{self, OcsAgent};
use crate::support::{addresses, get_json, quickstart_copy, start};

/// The hostile computer's name and tag: markup if the console failed to escape them.
const SCRIPT_NAME: &str = "<script>alert(1)</script>";
const IMG_TAG: &str = "\"><img src=x onerror=alert(2)>";

/// How long the browser may take to start and to load a page on a busy 2-core machine.
const BROWSER_PATIENCE: Duration = Duration::from_secs(60);

/// Headless Chromium, killed with its whole process group on drop (even on panic).
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ocs_agent::kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser binary, if installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(|name| {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            found
                .status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()))
        })
}

impl Browser {
    /// Starts Chromium headless with DevTools on a free loopback port.
    async fn start(binary: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(binary)
            .args([
                "--headless",
                // Root in a container: Chromium's sandbox cannot start there.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let mut browser = Self {
            child,
            _profile: profile,
            port: 0,
        };
        // Chromium writes the port it chose into the profile once DevTools listens.
        let active = browser._profile.path().join("DevToolsActivePort");
        let started = std::time::Instant::now();
        browser.port = loop {
            if let Some(port) = std::fs::read_to_string(&active)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(
                started.elapsed() < BROWSER_PATIENCE,
                "chromium did not open DevTools"
            );
            assert!(
                browser.child.try_wait().unwrap().is_none(),
                "chromium exited"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        browser
    }

    /// A DevTools session on the browser's page: the browser's own endpoint (named in
    /// `DevToolsActivePort`) lists the targets, then the page's endpoint is opened.
    async fn page(&self) -> Cdp {
        let active = std::fs::read_to_string(self._profile.path().join("DevToolsActivePort"))
            .expect("DevToolsActivePort");
        let browser_path = active
            .lines()
            .nth(1)
            .expect("the browser's endpoint")
            .trim();
        let mut browser =
            Cdp::connect(&format!("ws://127.0.0.1:{}{browser_path}", self.port)).await;
        let targets = browser.call("Target.getTargets", json!({})).await;
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .expect("a page target")
            .to_owned();
        drop(browser);
        let mut cdp = Cdp::connect(&format!(
            "ws://127.0.0.1:{}/devtools/page/{page}",
            self.port
        ))
        .await;
        cdp.call("Page.enable", json!({})).await;
        cdp.call("Runtime.enable", json!({})).await;
        cdp
    }
}

/// A DevTools protocol session: calls by id, events kept for the test to read.
struct Cdp {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Self {
        let (socket, _) =
            tokio::time::timeout(BROWSER_PATIENCE, tokio_tungstenite::connect_async(url))
                .await
                .expect("DevTools answers")
                .expect("DevTools websocket");
        Self {
            socket,
            next: 0,
            events: Vec::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await
            .expect("DevTools send");
        let answer = tokio::time::timeout(BROWSER_PATIENCE, async {
            loop {
                let message = self.socket.next().await.expect("DevTools open").unwrap();
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    break value;
                }
                self.events.push(value);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer"));
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page (promises awaited), its value as JSON.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Opens `url` and waits until it has loaded.
    async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.until(
            &format!("{url} loaded"),
            &format!(
                "document.readyState === 'complete' && location.href === {}",
                json!(url)
            ),
        )
        .await;
    }

    /// Waits until `expression` is true in the page.
    async fn until(&mut self, what: &str, expression: &str) {
        let started = std::time::Instant::now();
        loop {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            assert!(
                started.elapsed() < BROWSER_PATIENCE,
                "timed out waiting for: {what}\n{}",
                self.eval("document.body ? document.body.innerText : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the page's live region.
    async fn text(&mut self) -> String {
        self.eval("document.getElementById('live').innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Writes the whole page as a PNG to `dir/name`.
    async fn screenshot(&mut self, dir: &Path, name: &str) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    /// Whether the page ever opened an alert, confirm or prompt dialog.
    fn dialogs(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Page.javascriptDialogOpening")
            .collect()
    }
}

/// Where the screenshots go.
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("CONSOLE_SCREENSHOTS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `text` escaped for an XML element.
fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An OCS inventory naming the computer `<script>alert(1)</script>`, tagged `lab` and with
/// a tag that would close an attribute.
fn hostile_inventory(device: &str) -> Vec<u8> {
    ocs::encode_body(
        &format!(
            "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>{}</KEYVALUE></ACCOUNTINFO><HARDWARE><NAME>{}</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>",
            xml_text(IMG_TAG),
            xml_text(SCRIPT_NAME),
        ),
        Encoding::Zlib,
    )
}

fn installed(what: &str, found: bool) -> bool {
    if !found {
        eprintln!("skipped: {what} is not installed (scripts/setup.sh installs it)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_fleet_steers_an_activation_and_keeps_hostile_names_text() {
    let Some(binary) = chromium() else {
        installed("chromium", false);
        return;
    };
    let agent_found = Command::new("sh")
        .args(["-c", "command -v ocsinventory-agent"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed("ocsinventory-agent", agent_found) {
        return;
    }
    let shots = screenshots();
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let ca = crate::support::server_ca(dir.path());

    // The real agent: an inventory, then a contact that installs the quickstart's packages.
    let agent = OcsAgent::new(
        &format!("https://{https}/ocsinventory"),
        &ca,
        &ocs_agent::device_id(18).unwrap(),
    )
    .unwrap();
    let device = agent.device_id().to_owned();
    for _ in 0..2 {
        let run = tokio::task::block_in_place(|| agent.run()).expect("the agent runs");
        assert!(run.completed(), "the agent did not finish: {run:?}");
    }
    // Tessera's own agent, enrolled with a token as an operator makes one.
    let created = crate::operating::run_tessera(&[
        "token".as_ref(),
        "create".as_ref(),
        "--state".as_ref(),
        dir.path().join(".tessera").as_os_str(),
    ]);
    assert!(created.success, "{}", created.stderr);
    let native_state = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        crate::operating::native_pass(&https, native_state.path(), &ca, created.stdout.trim());
    }
    let identity: Value = serde_json::from_slice(
        &std::fs::read(native_state.path().join("identity/agent.json")).unwrap(),
    )
    .unwrap();
    let native = identity["agentId"].as_str().unwrap().to_owned();
    // The hostile one, through the OCS endpoint as any agent would send it.
    let hostile = "evil-2026-01-01-00-00-00";
    let (status, body, _) =
        crate::hostile_ocs::post(https.parse().unwrap(), &ca, &hostile_inventory(hostile)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let browser = Browser::start(&binary).await;
    let mut page = browser.page().await;
    let base = format!("http://{}", running.admin_address);

    // Fleet: both computers; the hostile name is a text node, not an element.
    page.open(&format!("{base}/ui/")).await;
    page.until(
        "the OCS computer, Tessera's agent's and the hostile one listed",
        &format!(
            "[{}, {}, {}].every(t => document.getElementById('live').innerHTML.includes(t) || document.getElementById('live').innerText.includes(t))",
            json!(device),
            json!(native),
            json!(SCRIPT_NAME)
        ),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#live script, #live img').length")
            .await,
        json!(0)
    );
    assert_eq!(
        page.eval(&format!(
            "[...document.querySelectorAll('#live td a')].some(a => a.textContent === {})",
            json!(SCRIPT_NAME)
        ))
        .await,
        json!(true)
    );
    assert_eq!(
        page.eval(&format!(
            "[...document.querySelectorAll('#live .tag')].some(t => t.textContent === {})",
            json!(IMG_TAG)
        ))
        .await,
        json!(true)
    );
    page.screenshot(&shots, "fleet.png").await;

    // A computer: its packages and result codes, reached by its link.
    page.eval(&format!(
        "[...document.querySelectorAll('#live td a')].find(a => a.href.includes({})).click()",
        json!(device)
    ))
    .await;
    page.until(
        "the computer's page",
        "location.pathname === '/ui/computer' && document.readyState === 'complete'",
    )
    .await;
    let text = page.text().await;
    for expected in ["default/hello", "default/lab-tools", "success", "SUCCESS"] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }
    page.screenshot(&shots, "computer.png").await;
    // The hostile computer's page too, and its raw inventory, as text.
    page.open(&format!("{base}/ui/computer?id={hostile}")).await;
    assert!(page.text().await.contains(SCRIPT_NAME));
    page.open(&format!("{base}/ui/inventory?id={hostile}"))
        .await;
    assert!(page.text().await.contains("<NAME>&lt;script&gt;"));
    assert_eq!(
        page.eval("document.querySelectorAll('#live *').length")
            .await,
        json!(1),
        "the inventory is one <pre> of text"
    );

    // Certificates: the server certificate's expiry as the API reports it.
    let certificate = get_json(
        running.admin_address,
        "/api/v1/objects/Certificate/tessera-server",
    )
    .await;
    let not_after = certificate["details"]["notAfter"].as_str().unwrap();
    page.open(&format!("{base}/ui/certificates")).await;
    let text = page.text().await;
    assert!(text.contains(not_after), "{not_after} in:\n{text}");
    assert_eq!(
        page.eval("document.querySelector('#live tr.expiry-ok') !== null")
            .await,
        json!(true)
    );
    page.screenshot(&shots, "certificates.png").await;

    // Deployments: suspend and resume Activation/hello with its buttons, on one page load.
    page.open(&format!("{base}/ui/deployments")).await;
    page.eval("window.__sameLoad = true").await;
    let suspend = "button[data-post='/api/v1/objects/Activation/hello/suspend?namespace=default']";
    let resume = "button[data-post='/api/v1/objects/Activation/hello/resume?namespace=default']";
    page.eval(&format!(
        "document.querySelector({}).click()",
        json!(suspend)
    ))
    .await;
    page.until(
        "hello shown suspended",
        &format!("document.querySelector({}) !== null", json!(resume)),
    )
    .await;
    let hello = get_json(running.admin_address, "/api/v1/objects/Activation/hello").await;
    assert_eq!(hello["details"]["suspended"], "operator", "{hello}");
    page.screenshot(&shots, "deployments.png").await;
    page.eval(&format!(
        "document.querySelector({}).click()",
        json!(resume)
    ))
    .await;
    page.until(
        "hello shown active again",
        &format!("document.querySelector({}) !== null", json!(suspend)),
    )
    .await;
    // A change made elsewhere (the CLI's call) appears by itself, without a reload.
    let (status, body) = post(
        running.admin_address,
        "/api/v1/objects/Activation/baseline/suspend",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    page.until(
        "baseline's suspension appearing by itself",
        "document.querySelector(\"button[data-post^='/api/v1/objects/Activation/baseline/resume']\") !== null",
    )
    .await;
    assert_eq!(page.eval("window.__sameLoad === true").await, json!(true));
    let (status, body) = post(
        running.admin_address,
        "/api/v1/objects/Activation/baseline/resume",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Health and Events: the operator's actions are there.
    page.open(&format!("{base}/ui/health")).await;
    assert!(page.text().await.contains("this replica"));
    page.screenshot(&shots, "health.png").await;
    page.open(&format!("{base}/ui/events")).await;
    page.until(
        "the suspension in the events",
        "document.getElementById('live').innerText.includes('Suspended')",
    )
    .await;
    page.screenshot(&shots, "events.png").await;

    // The Fleet once more: a page that ran the console's script all along opened no dialog.
    page.open(&format!("{base}/ui/?name=*script*")).await;
    assert!(page.text().await.contains(SCRIPT_NAME));
    page.eval("new Promise(done => setTimeout(done, 2500))")
        .await;
    assert!(page.dialogs().is_empty(), "{:?}", page.dialogs());
    drop(page);
    drop(browser);
    running.stop().await.unwrap();
}

/// Issue 18 with authentication on (`--admin-auth token`): the console sends a browser
/// without a session to its sign-in page, a viewer's token shows the fleet but its Suspend
/// is refused (the API's 403 shown on the page, nothing suspended), an operator's token
/// suspends, and the event names the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_with_a_token_and_only_an_operator_steers() {
    let Some(binary) = chromium() else {
        installed("chromium", false);
        return;
    };
    let dir = quickstart_copy();
    let mut args = tessera::cli::ServeArgs::for_config(dir.path());
    args.admin.auth = tessera::cli::AdminAuthMode::Token;
    let running = tessera::cli::start(args)
        .await
        .expect("tessera serve starts");
    let viewer = crate::admin_auth::create_token(dir.path(), "viewer", "vera");
    let operator = crate::admin_auth::create_token(dir.path(), "operator", "otto");
    let base = format!("http://{}", running.admin_address);
    // Without a session every console page and API path is refused.
    for path in ["/ui/", "/ui/deployments", "/api/v1/objects"] {
        let (status, _) = crate::support::get(running.admin_address, path).await;
        assert!(matches!(status, 401 | 303), "{path}: {status}");
    }

    let browser = Browser::start(&binary).await;
    let mut page = browser.page().await;
    let suspend = "button[data-post='/api/v1/objects/Activation/hello/suspend?namespace=default']";
    for (token, may_steer) in [(&viewer, false), (&operator, true)] {
        // Not `open`: the page asked for is not the page reached.
        page.call(
            "Page.navigate",
            json!({ "url": format!("{base}/ui/deployments") }),
        )
        .await;
        page.until(
            "the sign-in page",
            "location.pathname === '/ui/login' && document.readyState === 'complete'",
        )
        .await;
        page.eval(&format!(
            "document.querySelector('input[name=token]').value = {}; document.querySelector('form').submit()",
            json!(token)
        ))
        .await;
        page.until(
            "signed in",
            "location.pathname.startsWith('/ui/') && location.pathname !== '/ui/login' && document.readyState === 'complete'",
        )
        .await;
        page.open(&format!("{base}/ui/deployments")).await;
        page.until(
            "the Suspend button",
            &format!("document.querySelector({}) !== null", json!(suspend)),
        )
        .await;
        page.eval(&format!(
            "document.querySelector({}).click()",
            json!(suspend)
        ))
        .await;
        if may_steer {
            crate::support::eventually("hello suspended by the operator", async || {
                let hello = get_json_with(
                    running.admin_address,
                    "/api/v1/objects/Activation/hello",
                    &operator,
                )
                .await;
                (hello["details"]["suspended"] == "operator").then_some(())
            })
            .await;
        } else {
            page.until(
                "the refusal shown",
                "(document.getElementById('flash') || {}).textContent?.startsWith('403')",
            )
            .await;
            let hello = get_json_with(
                running.admin_address,
                "/api/v1/objects/Activation/hello",
                &viewer,
            )
            .await;
            assert!(hello["details"]["suspended"].is_null(), "{hello}");
        }
        // Signed out for the next token.
        page.eval(
            "fetch('/ui/logout', {method: 'POST', credentials: 'same-origin'}).then(r => r.status)",
        )
        .await;
        page.until(
            "signed out",
            "fetch('/api/v1/objects', {credentials: 'same-origin'}).then(r => r.status === 401)",
        )
        .await;
    }
    assert!(page.dialogs().is_empty(), "a dialog opened");
    let events = get_json_with(
        running.admin_address,
        "/api/v1/events?for=Activation/hello",
        &operator,
    )
    .await;
    assert!(
        events.to_string().contains("suspended by operator otto"),
        "{events}"
    );
    running.stop().await.unwrap();
}

/// `GET path` as JSON with `token` as a bearer.
async fn get_json_with(address: std::net::SocketAddr, path: &str, token: &str) -> Value {
    let (status, body) = crate::admin_auth::call(address.port(), "GET", path, Some(token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A minimal HTTP/1.1 POST without a body to the admin API: (status, body).
async fn post(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
