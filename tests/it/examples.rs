//! Every example configuration validates with no problem, `kubectl apply` reads every
//! manifest of the examples, and examples/kubernetes is the quickstart with the `url`
//! content it serves itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use tessera::resources::{Kind, Resource};
use tessera::sources::inputs;

#[test]
fn every_example_validates_without_problems() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        seen += 1;
        let state = tessera::cli::evaluate_dir(&entry.path()).unwrap();
        assert!(
            state.problems.is_empty(),
            "{}:\n{}",
            entry.path().display(),
            state
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            !state.entries.is_empty(),
            "{} declares nothing",
            entry.path().display()
        );
    }
    assert!(seen >= 1, "no example directories found");
}

#[test]
fn the_quickstart_declares_what_the_readme_promises() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    let state = tessera::cli::evaluate_dir(&dir).unwrap();
    assert_eq!(state.count(Kind::Issuer), 1);
    assert_eq!(state.count(Kind::Certificate), 1);
    assert_eq!(state.count(Kind::Server), 1);
    // Every package kind the OCS agents run: launch, execute with and without content,
    // store; one of them priority 0.
    assert_eq!(state.count(Kind::Package), 4);
    assert_eq!(state.count(Kind::Activation), 4);
    assert_eq!(state.count(Kind::Affectation), 4);
    // The binary agrees, as a pre-commit hook would run it.
    Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(&dir)
        .assert()
        .success();
}

/// The examples' files as `kubectl apply -R -f` reads them: every `.yaml`, `.yml` and `.json`
/// file below `dir` (Tessera's state directory aside), with its documents.
fn manifests(dir: &Path) -> Vec<(PathBuf, Vec<Value>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name() != Some(".tessera".as_ref()) {
                    pending.push(path);
                }
                continue;
            }
            let extension = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            if !["yaml", "yml", "json"].contains(&extension) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found.push((
                path,
                documents.into_iter().filter(|d| !d.is_null()).collect(),
            ));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// What `kubectl apply` needs of every document: apiVersion, kind and metadata.name.
fn assert_applicable(path: &Path, document: &Value) {
    for field in ["/apiVersion", "/kind", "/metadata/name"] {
        assert!(
            document.pointer(field).and_then(Value::as_str).is_some(),
            "{}: a document without {field}, which kubectl apply refuses: {document}",
            path.display()
        );
    }
}

#[test]
fn kubectl_apply_recursive_reads_only_manifests_in_the_examples() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        // An example applied with `kubectl apply -k` is checked below.
        if !entry.path().is_dir() || entry.path().join("kustomization.yaml").exists() {
            continue;
        }
        for (path, documents) in manifests(&entry.path()) {
            for document in &documents {
                assert_applicable(&path, document);
            }
        }
    }
}

/// examples/kubernetes, read file by file: (kind, namespace, name) -> document.
fn kubernetes_example(dir: &Path) -> BTreeMap<(String, String, String), Value> {
    let mut objects = BTreeMap::new();
    for (path, documents) in manifests(dir) {
        if path.ends_with("kustomization.yaml") {
            continue;
        }
        for document in documents {
            assert_applicable(&path, &document);
            let text = |field: &str| {
                document
                    .pointer(field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let key = (
                text("/kind"),
                text("/metadata/namespace"),
                text("/metadata/name"),
            );
            assert!(
                objects.insert(key.clone(), document).is_none(),
                "{key:?} twice"
            );
        }
    }
    objects
}

#[test]
fn the_kubernetes_example_is_the_quickstart_with_url_content_it_serves() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");

    // `kubectl apply -k` applies every manifest of the directory.
    let kustomization: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    assert_eq!(kustomization["kind"], "Kustomization");
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut files: Vec<String> = manifests(&dir)
        .into_iter()
        .map(|(path, _)| {
            path.strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| p != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");

    // Every object is in a namespace the example creates (kubectl would put it in
    // `default` otherwise), and the Tessera kinds are read by Tessera's own reader.
    let objects = kubernetes_example(&dir);
    let namespaces: BTreeSet<&str> = objects
        .keys()
        .filter(|(kind, _, _)| kind == "Namespace")
        .map(|(_, _, name)| name.as_str())
        .collect();
    assert_eq!(namespaces.len(), 2, "{namespaces:?}");
    for (kind, namespace, name) in objects.keys() {
        assert!(
            kind == "Namespace" || namespaces.contains(namespace.as_str()),
            "{kind}/{name} in namespace {namespace:?}"
        );
    }
    let state = tessera::cli::evaluate_dir(&dir).unwrap();
    assert!(state.problems.is_empty(), "{:?}", state.problems);
    let original = tessera::cli::evaluate_dir(&quickstart).unwrap();
    for kind in Kind::ALL {
        assert_eq!(state.count(kind), original.count(kind), "{kind:?}");
    }
    for key in state.entries.keys() {
        assert!(namespaces.contains(key.namespace.as_str()), "{key}");
    }
    Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(&dir)
        .assert()
        .success();

    // The content server: a Service in front of the Deployment that mounts the ConfigMap.
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|((k, _, n), _)| k == kind && n == name)
            .map(|((_, namespace, _), document)| (namespace.clone(), document))
            .unwrap_or_else(|| panic!("{kind}/{name}"))
    };
    let (content_namespace, configmap) = find("ConfigMap", "quickstart-content");
    let (_, deployment) = find("Deployment", "quickstart-content");
    let (_, service) = find("Service", "quickstart-content");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v.pointer("/configMap/name"))
            .unwrap(),
        "quickstart-content"
    );
    for (label, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][label], value, "{label}");
    }
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    let base = format!("http://quickstart-content.{content_namespace}.svc.cluster.local/");

    // Each Package is the quickstart's, with its content as a `url` to an archive of the
    // ConfigMap whose digest it names, holding exactly the quickstart's files.
    let scratch = tempfile::tempdir().unwrap();
    let mut archives = 0;
    for (key, resource) in state.actionable() {
        let Resource::Package(package) = resource else {
            continue;
        };
        let same = original
            .actionable()
            .find_map(|(k, r)| match r {
                Resource::Package(p) if k.name == key.name => Some(p),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{key} is not a quickstart package"));
        assert_eq!(package.spec.action, same.spec.action, "{key}");
        assert_eq!(
            (package.spec.os, package.spec.priority),
            (same.spec.os, same.spec.priority),
            "{key}"
        );
        let Some(content) = &package.spec.content else {
            assert!(same.spec.content.is_none(), "{key} lost its content");
            continue;
        };
        let url = content.url.as_deref().expect("url content");
        let name = url
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{key}: {url} is not served by {base}"));
        use base64::Engine;
        let encoded: String = configmap["binaryData"][name]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: no {name} in the ConfigMap"))
            .split_whitespace()
            .collect();
        let archive = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        use sha2::Digest;
        assert_eq!(
            content.sha256.as_deref(),
            Some(hex::encode(sha2::Sha256::digest(&archive)).as_str()),
            "{key}: the digest of {name} (run examples/kubernetes/content.py)"
        );
        let path = scratch.path().join(name);
        std::fs::write(&path, &archive).unwrap();
        let problems =
            inputs::archive_problems(&package.spec, &path, "spec.content.url", url).unwrap();
        assert!(problems.is_empty(), "{key}: {problems:?}");
        // The quickstart's content directory, file for file.
        let directory = quickstart.join("packages").join(
            same.spec
                .content
                .as_ref()
                .unwrap()
                .directory
                .as_ref()
                .unwrap(),
        );
        let mut unpacked = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
        let mut held = BTreeMap::new();
        for entry in unpacked.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            held.insert(name, bytes);
        }
        let expected: BTreeMap<String, Vec<u8>> = inputs::walk(&directory)
            .unwrap()
            .into_iter()
            .filter(|e| !e.directory)
            .map(|e| (e.name, std::fs::read(&e.path).unwrap()))
            .collect();
        assert_eq!(
            held,
            expected,
            "{key}: {name} is not {} (run examples/kubernetes/content.py)",
            directory.display()
        );
        archives += 1;
    }
    assert_eq!(archives, 3);
}

/// What `kubectl kustomize` (the first half of `kubectl apply -k`, run without a cluster)
/// makes of examples/kubernetes: every object of its files, once.
#[test]
fn kustomize_builds_the_kubernetes_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let Ok(output) = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
    else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let mut built: Vec<(String, String, String)> = documents
        .iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            let text = |field: &str| d.pointer(field).and_then(Value::as_str).unwrap().to_owned();
            (
                text("/kind"),
                d.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                text("/metadata/name"),
            )
        })
        .collect();
    built.sort();
    let declared: Vec<(String, String, String)> = kubernetes_example(&dir).into_keys().collect();
    assert_eq!(built, declared);
}

/// The Tessera objects of examples/kubernetes as `serve --kube` reconciles them (Kubernetes
/// mode: no files beside the objects), their content downloaded from the archives of the
/// ConfigMap served on loopback: every object is Ready but the Server, which has no
/// listeners to run here.
#[test]
fn the_kubernetes_example_builds_in_kubernetes_mode_from_its_content() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let objects = kubernetes_example(&dir);
    let (_, configmap) = objects
        .iter()
        .find(|((kind, _, _), _)| kind == "ConfigMap")
        .unwrap();
    let site = tempfile::tempdir().unwrap();
    for (name, encoded) in configmap["binaryData"].as_object().unwrap() {
        use base64::Engine;
        let encoded: String = encoded.as_str().unwrap().split_whitespace().collect();
        let archive = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        std::fs::write(site.path().join(name), archive).unwrap();
    }
    let server = crate::support::StaticServer::start(site.path());
    let files = [
        "pki.yaml",
        "server.yaml",
        "packages.yaml",
        "affectations.yaml",
    ]
    .iter()
    .map(|name| tessera::resources::SourceFile {
        path: format!("tessera/{name}"),
        text: std::fs::read_to_string(dir.join("tessera").join(name))
            .unwrap()
            .replace(
                "http://quickstart-content.tessera-quickstart.svc.cluster.local/",
                &format!("http://127.0.0.1:{}/", server.port),
            ),
    })
    .collect();
    let snapshot = tessera::resources::Snapshot {
        revision: "1".into(),
        files,
        problems: Vec::new(),
        root: None,
    };
    let state = tempfile::tempdir().unwrap();
    let mut reconciler = tessera::reconcile::Reconciler::new(tessera::reconcile::Config {
        state_dir: state.path().to_path_buf(),
        config_dir: state.path().to_path_buf(),
        options: tessera::desired::Options::default(),
        environment: Default::default(),
        clock: Default::default(),
        runtime: None,
        gateway: None,
        secrets: Some(std::sync::Arc::new(crate::url_content::NoSecrets)),
        leadership: tessera::leader::Leadership::always(),
        shared_database: false,
    });
    let now = jiff::Timestamp::now();
    // The Certificate follows its Issuer's first pass.
    reconciler.pass(&snapshot, now).unwrap();
    let report = reconciler.pass(&snapshot, now).unwrap().report;
    use tessera::server::admin::{ConditionStatus, ConditionType, ObjectKind};
    assert_eq!(report.objects.len(), 15);
    for object in &report.objects {
        if object.kind == ObjectKind::Server {
            continue;
        }
        let ready = object
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready)
            .unwrap();
        assert_eq!(
            ready.status,
            ConditionStatus::True,
            "{:?}/{}: {ready:?}",
            object.kind,
            object.name
        );
    }
}
