//! The committed `crds/` are exactly `tessera crds`, and every schema is structural
//! (Kubernetes refuses a CRD whose schema is not).

use std::path::Path;

use serde_json::Value;
use tessera::resources::crd;

#[test]
fn committed_crds_match_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected: Vec<String> = Vec::new();
    for definition in crd::all() {
        let name = crd::file_name(&definition);
        expected.push(name.clone());
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|_| {
            panic!("crds/{name} is missing: run `cargo run -- crds --output-dir crds`")
        });
        assert!(
            committed == crd::to_yaml(&definition),
            "crds/{name} differs from `tessera crds`: run `cargo run -- crds --output-dir crds` and commit"
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(
        present, expected,
        "crds/ holds files that `tessera crds` does not make"
    );
}

#[test]
fn crd_stream_parses_back_as_seven_documents() {
    let stream = crd::all_yaml();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&stream).expect("valid YAML");
    assert_eq!(documents.len(), 7);
    for document in &documents {
        assert_eq!(document["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(document["spec"]["group"], "tessera.dev");
        assert_eq!(document["spec"]["scope"], "Namespaced");
        let version = &document["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(
            version["subresources"]["status"].is_object(),
            "status subresource"
        );
    }
}

#[test]
fn every_schema_is_structural() {
    for definition in crd::all() {
        let json = serde_json::to_value(&definition).unwrap();
        let name = json["metadata"]["name"].as_str().unwrap().to_owned();
        let schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        check_structural(schema, &name, false, &mut problems);
        assert!(
            problems.is_empty(),
            "non-structural schema:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn every_spec_field_has_a_description() {
    for definition in crd::all() {
        let json = serde_json::to_value(&definition).unwrap();
        let name = json["metadata"]["name"].as_str().unwrap().to_owned();
        let spec = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut missing = Vec::new();
        check_descriptions(spec, &format!("{name}.spec"), &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description (kubectl explain shows nothing):\n{}",
            missing.join("\n")
        );
    }
}

/// The rules of Kubernetes' structural schemas
/// (kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema).
fn check_structural(schema: &Value, path: &str, in_junctor: bool, problems: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("$ref") || map.contains_key("definitions") || map.contains_key("$defs") {
        problems.push(format!("{path}: $ref or definitions are not allowed"));
    }
    if in_junctor {
        for forbidden in [
            "description",
            "type",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if map.contains_key(forbidden) {
                problems.push(format!(
                    "{path}: `{forbidden}` inside anyOf/allOf/oneOf/not"
                ));
            }
        }
    } else if !map.contains_key("type") && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            check_structural(child, &format!("{path}.{name}"), in_junctor, problems);
        }
    }
    if let Some(items) = map.get("items") {
        check_structural(items, &format!("{path}[]"), in_junctor, problems);
    }
    if let Some(additional) = map.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(additional, &format!("{path}{{}}"), in_junctor, problems);
    }
    for junctor in ["anyOf", "allOf", "oneOf"] {
        if let Some(branches) = map.get(junctor).and_then(Value::as_array) {
            if int_or_string && junctor == "anyOf" {
                continue; // The one allowed pattern: anyOf [integer, string].
            }
            for (i, branch) in branches.iter().enumerate() {
                check_structural(branch, &format!("{path}.{junctor}[{i}]"), true, problems);
            }
        }
    }
}

fn check_descriptions(schema: &Value, path: &str, missing: &mut Vec<String>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            let here = format!("{path}.{name}");
            if child
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                missing.push(here.clone());
            }
            check_descriptions(child, &here, missing);
        }
    }
    if let Some(items) = schema.get("items") {
        check_descriptions(items, &format!("{path}[]"), missing);
    }
}

#[test]
fn the_structural_check_refuses_what_kubernetes_refuses() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "size": { "anyOf": [{}, {}], "nullable": true },
            "mode": { "anyOf": [{ "type": "string", "description": "x" }], "type": "string" },
            "ref": { "$ref": "#/definitions/X" },
        }
    });
    let mut problems = Vec::new();
    check_structural(&bad, "bad", false, &mut problems);
    assert!(
        problems.iter().any(|p| p == "bad.size: no type"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("bad.mode.anyOf[0]: `type`")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("bad.ref: $ref")),
        "{problems:?}"
    );
}

#[test]
fn the_chart_installs_the_same_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let top = list(&root.join("crds"));
    let chart = list(&root.join("charts/tessera/crds"));
    assert_eq!(
        chart, top,
        "charts/tessera/crds must hold the same files as crds/: cp crds/*.yaml charts/tessera/crds/"
    );
    for name in &top {
        let a = std::fs::read(root.join("crds").join(name)).unwrap();
        let b = std::fs::read(root.join("charts/tessera/crds").join(name)).unwrap();
        assert!(
            a == b,
            "charts/tessera/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/tessera/crds/"
        );
    }
}

/// Every status field reconcile reports is in its kind's CRD status schema: Kubernetes
/// prunes unknown fields from a structural schema without a word, so a field missing there
/// would simply never show in `kubectl get -o yaml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_field_reconcile_reports_is_in_the_crd_schema() {
    let dir = crate::support::quickstart_copy();
    // A rollout too, for its status.
    let affectations = dir.path().join("affectations.yaml");
    let text = std::fs::read_to_string(&affectations).unwrap();
    std::fs::write(
        &affectations,
        text.replacen(
            "  redeploy: \"1\"\n",
            "  redeploy: \"1\"\n  rollout:\n    stages:\n      - percent: 10\n        after: 1h\n      - percent: 100\n        after: 1h\n    maxErrors: 3\n",
            1,
        ),
    )
    .unwrap();
    let running = crate::support::start(dir.path()).await;
    let (objects, _) = crate::support::eventually("every object reconciled", async || {
        let (status, body) = crate::support::get(running.admin_address, "/api/v1/objects").await;
        if status != 200 {
            return None;
        }
        let report: Value = serde_json::from_str(&body).unwrap();
        let list = report["objects"].as_array()?.clone();
        let with_facts = |kind: &str, field: &str| {
            list.iter()
                .any(|o| o["kind"] == kind && !o["details"][field].is_null())
        };
        (with_facts("Package", "packageId")
            && with_facts("Certificate", "renewalTime")
            && with_facts("Issuer", "crlNumber")
            && with_facts("Affectation", "rollout")
            && with_facts("Server", "addresses"))
        .then_some(list)
    })
    .await;
    let schemas: std::collections::HashMap<String, Value> = crd::all()
        .into_iter()
        .map(|definition| {
            let value = serde_json::to_value(&definition).unwrap();
            let kind = value["spec"]["names"]["kind"].as_str().unwrap().to_owned();
            let status =
                value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
                    .clone();
            (kind, status)
        })
        .collect();
    let mut checked = 0;
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let status = &schemas[kind];
        for (field, value) in object["details"].as_object().unwrap() {
            let schema = &status["properties"][field];
            assert!(
                !schema.is_null(),
                "{kind}.status.{field} is reported but not in the CRD: Kubernetes would drop it"
            );
            // One level down, for objects (counts, rollout).
            if let (Some(inner), Some(properties)) =
                (value.as_object(), schema["properties"].as_object())
            {
                for key in inner.keys() {
                    assert!(
                        properties.contains_key(key),
                        "{kind}.status.{field}.{key} is not in the CRD"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} fields checked");
    running.stop().await.unwrap();
}
