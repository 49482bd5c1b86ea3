//! `tessera events`: what happened, through a running server's admin API and, once it has
//! stopped, from its state directory; filtered by object; followed with `-w` across a
//! configuration edit.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::support::{Reaped, eventually, free_port, quickstart_copy, serve_child, wait_for_port};

/// `tessera events ARGS`, from no environment that could name another server.
fn events_command(args: &[&str]) -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("tessera"));
    command
        .arg("events")
        .args(args)
        .env_remove("TESSERA_ADMIN")
        .env_remove("TESSERA_STATE")
        .env_remove("TESSERA_CONFIG")
        .env_remove("TESSERA_DATABASE");
    command
}

/// What `tessera events ARGS` prints, and whether it succeeded.
async fn events(args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::from(events_command(args))
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The events of `tessera events -o json ARGS`.
async fn json_events(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (ok, out, err) = events(&all).await;
    assert!(ok, "tessera events {all:?}: {err}");
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    list["events"].as_array().expect("an events list").clone()
}

fn is_built(event: &Value, name: &str) -> bool {
    event["kind"] == "Package" && event["name"] == name && event["reason"] == "Built"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_builds_through_the_api_and_the_state_directory_and_follow_edits() {
    let dir = quickstart_copy();
    let port = free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let mut server = serve_child(dir.path(), port);
    tokio::task::block_in_place(|| wait_for_port(port, "tessera serve"));
    let api = ["--admin", admin.as_str()];

    // Through the admin API: the quickstart's packages built, newest last.
    let found = eventually("Package/hello built, as an event", || {
        server.assert_running("the first build");
        async {
            let found = json_events(&api).await;
            found.iter().any(|e| is_built(e, "hello")).then_some(found)
        }
    })
    .await
    .0;
    let built = found.iter().find(|e| is_built(e, "hello")).unwrap();
    assert_eq!(built["type"], "Normal");
    assert_eq!(built["namespace"], "default");
    assert!(
        built["message"]
            .as_str()
            .unwrap()
            .starts_with("package id "),
        "{built}"
    );
    assert!(
        built["at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok()
    );
    let times: Vec<&str> = found.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(times.is_sorted(), "newest last: {times:?}");
    assert!(
        found
            .iter()
            .any(|e| e["kind"] == "Certificate" && e["reason"] == "Issued"),
        "the server's certificate issued: {found:?}"
    );

    let mut for_args = api.to_vec();
    for_args.extend(["--for", "Package/hello"]);
    let hello = json_events(&for_args).await;
    assert!(!hello.is_empty());
    assert!(
        hello
            .iter()
            .all(|e| e["kind"] == "Package" && e["name"] == "hello"),
        "{hello:?}"
    );

    let (ok, table, err) = events(&api).await;
    assert!(ok, "{err}");
    let header = table.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(
        table.lines().any(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            cells.get(1..4) == Some(&["Normal", "Built", "Package/hello"][..])
        }),
        "{table}"
    );

    // Followed: an edit of the package's content is a new build, printed as it happens.
    let mut watch = events_command(&["-w", "--for", "Package/hello", "--admin", &admin]);
    let mut follower = Reaped(watch.stdout(Stdio::piped()).spawn().unwrap());
    let printed = Arc::new(Mutex::new(String::new()));
    let reader = std::io::BufReader::new(follower.0.stdout.take().unwrap());
    let into = printed.clone();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            let mut printed = into.lock().unwrap();
            printed.push_str(&line);
            printed.push('\n');
        }
    });
    eventually("the follower's first table", || async {
        printed
            .lock()
            .unwrap()
            .contains("Package/hello")
            .then_some(())
    })
    .await;
    let before = printed.lock().unwrap().lines().count();
    let script = dir.path().join("packages/hello/hello.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("# edited\n");
    std::fs::write(&script, text).unwrap();
    let rebuilt = eventually("the new build printed by -w", || {
        follower.assert_running("the new build");
        let printed = printed.lock().unwrap();
        let new: Vec<&str> = printed.lines().skip(before).collect();
        let found = new
            .iter()
            .find(|line| line.contains("Built") && line.contains("Package/hello"))
            .map(|line| (*line).to_owned());
        async { found }
    })
    .await
    .0;
    let hello = json_events(&for_args).await;
    let last = hello.last().unwrap();
    assert!(is_built(last, "hello"), "{hello:?}");
    assert!(
        rebuilt.contains(last["message"].as_str().unwrap()),
        "{rebuilt} is the newest build: {last}"
    );
    assert!(
        hello.iter().filter(|e| is_built(e, "hello")).count() >= 2,
        "{hello:?}"
    );
    drop(follower);

    // The server stopped: the same story from its state directory.
    let through_api = json_events(&api).await;
    drop(server);
    let config = dir.path().to_str().unwrap();
    let (ok, _, err) = events(&["--admin", &admin]).await;
    assert!(!ok, "an explicit --admin that answers nothing is an error");
    assert!(err.contains(&port.to_string()), "{err}");
    let from_state = json_events(&["--config", config]).await;
    for event in &through_api {
        assert!(
            from_state.contains(event),
            "{event} missing from {from_state:?}"
        );
    }
    let hello_state = json_events(&["--config", config, "--for", "Package/hello"]).await;
    assert_eq!(
        hello_state.iter().filter(|e| is_built(e, "hello")).count(),
        hello.iter().filter(|e| is_built(e, "hello")).count()
    );
    assert!(hello_state.iter().all(|e| e["name"] == "hello"));
    let (ok, table, err) = events(&["--config", config]).await;
    assert!(ok, "{err}");
    assert!(table.contains("Package/hello"), "{table}");

    // A closed pipe ends quietly.
    let mut head = events_command(&["--config", config, "-w"]);
    let mut head = Reaped(
        head.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop(head.0.stdout.take());
    let status = eventually("events -w ending on a closed pipe", || {
        let ended = head.0.try_wait().unwrap();
        async move { ended }
    })
    .await
    .0;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut head.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Refusals are events of the computer refused: an enrollment with a token the server does
/// not know, and an OCS agent calling over plain HTTP where the Server wants HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_agents_are_events() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
    let (_, http) = crate::support::addresses(&running).await;
    let server_ca = crate::support::server_ca(dir.path());
    eventually("the server's CA certificate written", || async {
        server_ca.exists().then_some(())
    })
    .await;
    let body = serde_json::json!({
        "token": tessera::pki::token::Token::generate().reveal(),
        "csr": "unused",
        "hostname": "lab-07",
    })
    .to_string();
    let (status, answer) = tokio::task::block_in_place(|| {
        crate::enroll::curl(&https, &server_ca, "/v1/enroll", Some(&body), None)
    });
    assert_eq!(status, 403, "{answer}");

    let mut stream = tokio::net::TcpStream::connect(&http).await.unwrap();
    let request = format!(
        "POST /ocsinventory HTTP/1.1\r\nHost: {http}\r\nContent-Length: 7\r\nConnection: close\r\n\r\nnot OCS"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    let refusals = |name: &'static str| {
        let admin = running.admin_address;
        move || async move {
            let list =
                crate::support::get_json(admin, &format!("/api/v1/events?for=Computer/{name}"))
                    .await;
            let found = list["events"].as_array()?.first()?.clone();
            Some(found)
        }
    };
    let enrollment = eventually("the refused enrollment recorded", refusals("lab-07"))
        .await
        .0;
    assert_eq!(
        (
            &enrollment["type"],
            &enrollment["reason"],
            &enrollment["computer"]
        ),
        (&json!("Warning"), &json!("Refused"), &json!("lab-07"))
    );
    assert!(
        enrollment["message"].as_str().unwrap().contains("unknown"),
        "{enrollment}"
    );
    let plain = eventually("the plain-HTTP refusal recorded", refusals("127.0.0.1"))
        .await
        .0;
    assert_eq!(plain["reason"], "Refused");
    assert!(
        plain["message"].as_str().unwrap().contains("plain HTTP"),
        "{plain}"
    );
    assert!(plain.get("namespace").is_none(), "{plain}");
    running.stop().await.unwrap();
}

/// A certificate issued again is a `Renewed` event naming its revision and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_certificate_is_renewed_with_its_revision_and_reason() {
    let dir = quickstart_copy();
    let running = crate::support::start(dir.path()).await;
    let certificate = |reason: &'static str| {
        let admin = running.admin_address;
        move || async move {
            let list =
                crate::support::get_json(admin, "/api/v1/events?for=Certificate/tessera-server")
                    .await;
            list["events"]
                .as_array()?
                .iter()
                .find(|e| e["reason"] == reason)
                .cloned()
        }
    };
    let issued = eventually("the server's certificate issued", certificate("Issued"))
        .await
        .0;
    assert!(
        issued["message"]
            .as_str()
            .unwrap()
            .starts_with("revision 1, serial "),
        "{issued}"
    );
    let pki = dir.path().join("pki.yaml");
    let text = std::fs::read_to_string(&pki).unwrap();
    assert!(text.contains("    - tessera.local\n"));
    std::fs::write(
        &pki,
        text.replace(
            "    - tessera.local\n",
            "    - tessera.local\n    - tessera.example\n",
        ),
    )
    .unwrap();
    let renewed = eventually("the certificate issued again", certificate("Renewed"))
        .await
        .0;
    let message = renewed["message"].as_str().unwrap();
    assert!(message.starts_with("revision 2, serial "), "{message}");
    assert!(
        message.contains("(issued because the spec changed"),
        "{message}"
    );
    running.stop().await.unwrap();
}
