//! The Helm chart, without helm (not installed here): its templates rendered by a small
//! renderer of the Go-template constructs the chart uses (`define`/`include`/`template`,
//! `if`/`else if`/`else`, pipelines with parentheses and the sprig functions listed in
//! [`call`]; it panics on any other, so a new construct cannot slip by unrendered), parsed as
//! YAML and inspected with the rules `helm lint` and the API server would apply that can be
//! checked offline (labels, names, selectors, security contexts, Chart.yaml); its values
//! checked against `values.schema.json` by a small validator of the keywords the schema uses.
//!
//! Not checked here: helm's own rendering and `helm lint`, the API server's validation of
//! the objects, and the image (building it needs network to docker.io and crates.io); the
//! Dockerfile is only read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser as _;
use serde_json::{Value, json};

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/tessera")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(chart_dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn default_values() -> Value {
    serde_saphyr::from_str(&read("values.yaml")).expect("values.yaml is YAML")
}

/// What templates see: `.Values`, `.Release`, `.Chart`.
fn context(values: Value) -> Value {
    let chart: Value = serde_saphyr::from_str(&read("Chart.yaml")).unwrap();
    json!({
        "Values": values,
        "Release": {"Name": "tessera", "Namespace": "tessera-system", "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    })
}

/// Every manifest template rendered and parsed: (file, documents). Named-template files
/// (`_*.tpl`) and NOTES.txt render no objects, as with helm.
fn render_all(values: Value) -> Vec<(String, Vec<Value>)> {
    let context = context(values);
    let mut rendered = Vec::new();
    for name in template_files() {
        if !name.ends_with(".yaml") {
            continue;
        }
        let text = render(&read(&format!("templates/{name}")), &context);
        assert!(!text.contains("{{"), "{name}: unrendered action:\n{text}");
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{name} does not render to YAML: {e}\n{text}"));
        let documents = documents.into_iter().filter(|d| !d.is_null()).collect();
        rendered.push((name, documents));
    }
    rendered
}

fn objects(values: Value) -> Vec<Value> {
    render_all(values)
        .into_iter()
        .flat_map(|(_, documents)| documents)
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Whether a label selector (`matchLabels` or a Service's `selector`) picks `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn templates_render_to_a_deployment_that_runs_serve_kube() {
    let objects = objects(default_values());
    let kinds: BTreeSet<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    let expected = [
        "Certificate",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Issuer",
        "PersistentVolumeClaim",
        "Pod",
        "Role",
        "RoleBinding",
        "Server",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, BTreeSet::from(expected));

    let deployment = find(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/tessera-dev/tessera:0.1.0");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    // The arguments are ones `tessera` accepts.
    let mut argv = vec!["tessera".to_owned()];
    argv.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    assert!(argv.contains(&"--kube".to_owned()));
    tessera::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["TESSERA_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(container["resources"]["limits"]["memory"], "768Mi");

    // Names line up: service account, volume claim, service target ports.
    let account = find(&objects, "ServiceAccount")[0];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    let claim = find(&objects, "PersistentVolumeClaim")[0];
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/var/lib/tessera"
    );
    let service = named(&objects, "Service", "tessera");
    let port_names: BTreeSet<&str> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for port in service["spec"]["ports"].as_array().unwrap() {
        assert_eq!(port["protocol"], "TCP", "TLS passes through");
        assert!(port_names.contains(port["targetPort"].as_str().unwrap()));
        assert_ne!(
            port["targetPort"], "admin",
            "the admin API stays off the Service"
        );
    }
    assert!(selects(
        &service["spec"]["selector"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
}

#[test]
fn with_a_database_secret_replicas_share_postgresql_and_keep_no_volume() {
    let mut values = default_values();
    values["database"]["secretName"] = json!("tessera-db");
    values["replicas"] = json!(3);
    let rendered = objects(values);
    assert!(
        find(&rendered, "PersistentVolumeClaim").is_empty(),
        "no shared volume: each replica's state directory is a cache"
    );
    let deployment = find(&rendered, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let database = env
        .iter()
        .find(|e| e["name"] == "TESSERA_DATABASE")
        .expect("TESSERA_DATABASE");
    assert_eq!(database["valueFrom"]["secretKeyRef"]["name"], "tessera-db");
    assert_eq!(database["valueFrom"]["secretKeyRef"]["key"], "url");
    let state = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert!(state.get("emptyDir").is_some(), "{state}");
    // And the variable is the one `tessera serve --database` reads.
    use clap::CommandFactory;
    let cli = tessera::cli::Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    assert!(serve.get_arguments().any(|a| a.get_id() == "database"
        && a.get_env() == Some(std::ffi::OsStr::new("TESSERA_DATABASE"))));
    // Without it: the volume, and no database variable.
    let rendered = objects(default_values());
    assert_eq!(find(&rendered, "PersistentVolumeClaim").len(), 1);
    let deployment = find(&rendered, "Deployment")[0];
    assert!(
        !deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "TESSERA_DATABASE")
    );
}

#[test]
fn the_server_resources_are_valid_tessera_documents() {
    let mut values = default_values();
    values["server"]["clientAuth"] = json!("Required");
    values["server"]["ipAddresses"] = json!(["10.0.0.10"]);
    let text = render(&read("templates/server.yaml"), &context(values));
    let parsed = tessera::resources::parse_file("server.yaml", &text);
    assert!(parsed.problems.is_empty(), "{:?}\n{text}", parsed.problems);
    assert_eq!(parsed.objects.len(), 3);
    assert!(text.contains("trustedIssuers"), "{text}");
    assert!(
        text.contains("- tessera.tessera-system.svc\n    - tessera.example.com"),
        "{text}"
    );

    let mut values = default_values();
    values["watchNamespace"] = json!("fleet");
    let text = render(&read("templates/server.yaml"), &context(values));
    let parsed = tessera::resources::parse_file("server.yaml", &text);
    assert!(
        parsed
            .objects
            .iter()
            .all(|o| o.resource.key().namespace == "fleet"),
        "the Server resources go where Tessera watches"
    );

    let mut values = default_values();
    values["server"]["create"] = json!(false);
    let text = render(&read("templates/server.yaml"), &context(values));
    assert!(text.trim().is_empty(), "{text}");
}

/// (apiGroup, resource) → verbs, from every rule of the rendered roles.
fn grants(objects: &[Value], kind: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut found: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for role in find(objects, kind) {
        for rule in role["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    let verbs = rule["verbs"].as_array().unwrap().iter();
                    found
                        .entry((
                            group.as_str().unwrap().into(),
                            resource.as_str().unwrap().into(),
                        ))
                        .or_default()
                        .extend(verbs.map(|v| v.as_str().unwrap().to_owned()));
                }
            }
        }
    }
    found
}

fn verbs(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|v| (*v).to_owned()).collect()
}

#[test]
fn rbac_grants_only_what_tessera_uses() {
    let plurals = [
        "issuers",
        "certificates",
        "servers",
        "gateways",
        "packages",
        "activations",
        "affectations",
    ];
    let mut expected = BTreeMap::new();
    for plural in plurals {
        expected.insert(
            ("tessera.dev".into(), plural.into()),
            verbs(&["get", "list", "watch"]),
        );
        expected.insert(
            ("tessera.dev".into(), format!("{plural}/status")),
            verbs(&["patch"]),
        );
    }
    expected.insert(
        ("events.k8s.io".into(), "events".into()),
        verbs(&["create", "patch"]),
    );
    expected.insert(
        ("".into(), "secrets".into()),
        verbs(&["create", "get", "list", "patch", "update", "watch"]),
    );

    let cluster = objects(default_values());
    assert_eq!(grants(&cluster, "ClusterRole"), expected);
    let leases = BTreeMap::from([(
        ("coordination.k8s.io".to_owned(), "leases".to_owned()),
        verbs(&["create", "get", "update"]),
    )]);
    assert_eq!(grants(&cluster, "Role"), leases);

    // One namespace watched: a Role there instead of a ClusterRole.
    let mut values = default_values();
    values["watchNamespace"] = json!("fleet");
    let namespaced = objects(values);
    assert!(find(&namespaced, "ClusterRole").is_empty());
    let roles = find(&namespaced, "Role");
    let fleet = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == "fleet")
        .unwrap();
    assert_eq!(grants(&[(*fleet).clone()], "Role"), expected);
    let binding = find(&namespaced, "RoleBinding")
        .into_iter()
        .find(|b| b["metadata"]["namespace"] == "fleet")
        .unwrap();
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], fleet["metadata"]["name"]);
    let deployment = find(&namespaced, "Deployment")[0];
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--namespace=fleet")),
        "{args}"
    );
}

#[test]
fn notes_tell_how_to_reach_the_server_and_get_the_ca() {
    let text = render(&read("templates/NOTES.txt"), &context(default_values()));
    assert!(!text.contains("{{"), "{text}");
    assert!(text.contains("get service tessera"), "{text}");
    assert!(text.contains("get secret tessera-server"), "{text}");
    assert!(text.contains("ca\\.crt"), "{text}");
}

/// The chart's server arguments with `values`.
fn server_args(values: Value) -> Vec<String> {
    let objects: Vec<Value> = render_all(values)
        .into_iter()
        .flat_map(|(_, docs)| docs)
        .collect();
    let deployment = find(&objects, "Deployment")[0];
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_admin_api_needs_a_token_by_default_and_the_notes_say_how_to_make_and_use_one() {
    let args = server_args(default_values());
    assert!(args.contains(&"--admin-auth=token".to_owned()), "{args:?}");
    assert!(
        args.contains(&"--admin-public-metrics".to_owned()),
        "{args:?}"
    );
    assert!(!args.contains(&"--admin-insecure".to_owned()), "{args:?}");
    let text = render(&read("templates/NOTES.txt"), &context(default_values()));
    assert!(!text.contains("{{"), "{text}");
    // The command the notes give is one `tessera` accepts, and the token is then used.
    let create = text
        .lines()
        .find(|line| line.contains("admin-token create"))
        .expect("the notes say how to make a token");
    let command = create
        .split(" -- ")
        .nth(1)
        .unwrap()
        .split(" >")
        .next()
        .unwrap();
    let argv: Vec<&str> = command.split_whitespace().collect();
    tessera::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(text.contains("port-forward"), "{text}");
    assert!(text.contains("--token-file tessera-admin.token"), "{text}");

    let mut values = default_values();
    values["admin"] = json!({"auth": "none", "insecure": true, "publicMetrics": false});
    assert_eq!(schema_problems(&values), Vec::<String>::new());
    let args = server_args(values.clone());
    assert!(args.contains(&"--admin-auth=none".to_owned()), "{args:?}");
    assert!(args.contains(&"--admin-insecure".to_owned()), "{args:?}");
    assert!(
        !args.contains(&"--admin-public-metrics".to_owned()),
        "{args:?}"
    );
    let mut argv = vec!["tessera".to_owned()];
    argv.extend(args);
    tessera::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let text = render(&read("templates/NOTES.txt"), &context(values));
    assert!(text.contains("WITHOUT authentication"), "{text}");
    values = default_values();
    values["admin"]["auth"] = json!("open");
    assert!(!schema_problems(&values).is_empty());
}

#[test]
fn default_values_match_the_schema_and_mistakes_do_not() {
    let schema: Value = serde_json::from_str(&read("values.schema.json")).unwrap();
    let values = default_values();
    let mut problems = Vec::new();
    validate(&schema, &values, "", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    // The standard extension points are accepted, with their types.
    let mut values = all_options();
    values["global"] = json!({"imageRegistry": "registry.example.com"});
    values["nameOverride"] = json!("ocs");
    values["fullnameOverride"] = json!("deploy");
    assert_eq!(schema_problems(&values), Vec::<String>::new());

    for (path, wrong) in [
        ("/server/clientAuth", json!("Sometimes")),
        ("/replicas", json!("two")),
        ("/ports/https", json!(70000)),
        // Unknown top-level keys (here a misspelt imagePullSecrets) are still refused.
        ("/imagePullSecret", json!("x")),
        ("/imagePullSecrets", json!(["regcred"])),
        ("/imagePullSecrets", json!([{"nom": "regcred"}])),
        ("/podAnnotations", json!({"a": 1})),
        ("/podLabels", json!(["team"])),
        ("/affinity", json!([])),
        ("/tolerations", json!({})),
        ("/nodeSelector", json!({"os": true})),
        ("/podSecurityContext", json!("nonroot")),
        ("/securityContext", json!(true)),
        ("/nameOverride", json!(1)),
        ("/fullnameOverride", json!(false)),
        ("/global", json!("x")),
        ("/metrics/enabled", json!("yes")),
        ("/metrics/serviceMonitor/enabled", json!(1)),
        ("/metrics/serviceMonitor/labels", json!({"release": 2})),
        ("/metrics/serviceMonitor/interval", json!(30)),
        ("/metrics/scrape", json!(true)),
        ("/networkPolicy/enabled", json!("true")),
        ("/networkPolicy/adminFrom", json!({"namespaceSelector": {}})),
        ("/networkPolicy/agentsFrom", json!(["10.0.0.0/8"])),
        ("/networkPolicy/allowAll", json!(true)),
    ] {
        let mut values = default_values();
        let (parent, key) = path.rsplit_once('/').unwrap();
        values
            .pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()[key] = wrong;
        let mut problems = Vec::new();
        validate(&schema, &values, "", &mut problems);
        assert!(!problems.is_empty(), "{path} should be refused");
    }
}

/// The JSON Schema keywords `values.schema.json` uses: type, properties, required,
/// additionalProperties, items, enum, minimum, maximum, minLength.
fn validate(schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let known = [
        "$schema",
        "title",
        "description",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "minimum",
        "maximum",
        "minLength",
    ];
    for keyword in schema.as_object().unwrap().keys() {
        assert!(
            known.contains(&keyword.as_str()),
            "validator does not know {keyword}"
        );
    }
    if let Some(expected) = schema["type"].as_str() {
        let ok = match expected {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => panic!("unknown type {other}"),
        };
        if !ok {
            problems.push(format!("{at}: not {expected}"));
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        problems.push(format!("{at}: {value} not in {options:?}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        problems.push(format!("{at}: below {min}"));
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), value.as_f64())
        && n > max
    {
        problems.push(format!("{at}: above {max}"));
    }
    if let (Some(min), Some(s)) = (schema["minLength"].as_u64(), value.as_str())
        && (s.len() as u64) < min
    {
        problems.push(format!("{at}: shorter than {min}"));
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            if !object.contains_key(required.as_str().unwrap()) {
                problems.push(format!("{at}: {required} is required"));
            }
        }
        for (key, item) in object {
            let path = format!("{at}/{key}");
            match (
                schema["properties"].get(key),
                &schema["additionalProperties"],
            ) {
                (Some(property), _) => validate(property, item, &path, problems),
                (None, Value::Bool(false)) => problems.push(format!("{path}: unknown")),
                (None, Value::Object(_)) => {
                    validate(&schema["additionalProperties"], item, &path, problems)
                }
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(items, item, &format!("{at}/{i}"), problems);
        }
    }
}

/// Values with every optional feature of the chart turned on.
fn all_options() -> Value {
    let mut values = default_values();
    let set = |values: &mut Value, pointer: &str, value: Value| {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        values.pointer_mut(parent).unwrap()[key] = value;
    };
    for (pointer, value) in [
        ("/imagePullSecrets", json!([{"name": "regcred"}])),
        ("/podAnnotations", json!({"example.com/scrape": "yes"})),
        ("/podLabels", json!({"team": "endpoints"})),
        (
            "/affinity",
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}),
        ),
        ("/nodeSelector", json!({"kubernetes.io/os": "linux"})),
        (
            "/tolerations",
            json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]),
        ),
        ("/metrics/serviceMonitor/enabled", json!(true)),
        (
            "/metrics/serviceMonitor/labels",
            json!({"release": "prometheus"}),
        ),
        ("/metrics/serviceMonitor/interval", json!("30s")),
        ("/metrics/serviceMonitor/scrapeTimeout", json!("10s")),
        ("/networkPolicy/enabled", json!(true)),
        (
            "/networkPolicy/agentsFrom",
            json!([{"ipBlock": {"cidr": "10.0.0.0/8"}}]),
        ),
        (
            "/networkPolicy/adminFrom",
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
        ),
        (
            "/service/annotations",
            json!({"example.com/lb": "internal"}),
        ),
        ("/persistence/storageClassName", json!("fast")),
        ("/server/ipAddresses", json!(["10.0.0.10"])),
    ] {
        set(&mut values, pointer, value);
    }
    values
}

fn schema_problems(values: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(&read("values.schema.json")).unwrap();
    let mut problems = Vec::new();
    validate(&schema, values, "", &mut problems);
    problems
}

#[test]
fn every_option_renders_and_reaches_the_objects() {
    let values = all_options();
    assert_eq!(schema_problems(&values), Vec::<String>::new());
    let objects = objects(values);
    let kinds: BTreeSet<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    for kind in ["ServiceMonitor", "NetworkPolicy", "Pod", "Deployment"] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    let deployment = find(&objects, "Deployment")[0];
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(
        template["metadata"]["annotations"]["example.com/scrape"],
        "yes"
    );
    assert_eq!(template["metadata"]["labels"]["team"], "endpoints");
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "kubernetes.io/arch"
    );
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    let test_pod = find(&objects, "Pod")[0];
    assert_eq!(
        test_pod["spec"]["imagePullSecrets"],
        pod["imagePullSecrets"]
    );

    let monitor = find(&objects, "ServiceMonitor")[0];
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "30s");
    assert_eq!(monitor["spec"]["endpoints"][0]["scrapeTimeout"], "10s");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    // It finds the metrics Service, by its labels and port name, and no other Service.
    let services = find(&objects, "Service");
    let scraped: Vec<&&Value> = services
        .iter()
        .filter(|s| {
            selects(
                &monitor["spec"]["selector"]["matchLabels"],
                &s["metadata"]["labels"],
            )
        })
        .collect();
    assert_eq!(scraped.len(), 1, "{scraped:?}");
    let metrics = scraped[0];
    assert_eq!(metrics["metadata"]["name"], "tessera-metrics");
    assert_eq!(metrics["spec"]["type"], "ClusterIP");
    assert_eq!(
        metrics["spec"]["ports"][0]["name"],
        monitor["spec"]["endpoints"][0]["port"]
    );
    assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!(["tessera-system"])
    );

    // The NetworkPolicy: agents to the agent ports from agentsFrom, the admin port only from
    // adminFrom and the test pod.
    let policy = find(&objects, "NetworkPolicy")[0];
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &template["metadata"]["labels"]
    ));
    assert!(!selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &test_pod["metadata"]["labels"]
    ));
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let ports_of = |rule: &Value| -> BTreeSet<String> {
        rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_str().unwrap().to_owned())
            .collect()
    };
    let agents = rules
        .iter()
        .find(|r| ports_of(r).contains("https"))
        .unwrap();
    assert_eq!(ports_of(agents), verbs(&["http", "https"]));
    assert_eq!(agents["from"], json!([{"ipBlock": {"cidr": "10.0.0.0/8"}}]));
    let admin = rules
        .iter()
        .find(|r| ports_of(r).contains("admin"))
        .unwrap();
    assert_eq!(ports_of(admin), verbs(&["admin"]));
    let from = admin["from"].as_array().unwrap();
    assert_eq!(from.len(), 2, "{from:?}");
    assert!(selects(
        &from[0]["podSelector"]["matchLabels"],
        &test_pod["metadata"]["labels"]
    ));
    assert!(!selects(
        &from[0]["podSelector"]["matchLabels"],
        &template["metadata"]["labels"]
    ));
    assert_eq!(
        from[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    // Every port the policy names is a port of the container.
    let container_ports: BTreeSet<String> = pod["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    for rule in rules {
        assert!(ports_of(rule).is_subset(&container_ports));
    }

    // Without agentsFrom the agent ports are open to all (a rule without `from`).
    let mut values = all_options();
    values["networkPolicy"]["agentsFrom"] = json!([]);
    let objects = self::objects(values);
    let policy = find(&objects, "NetworkPolicy")[0];
    let agents = &policy["spec"]["ingress"][0];
    assert!(ports_of(agents).contains("https"));
    assert!(agents.get("from").is_none(), "{agents}");

    // Off by default; and without metrics, neither the Service nor the test.
    let objects = self::objects(default_values());
    assert!(find(&objects, "ServiceMonitor").is_empty());
    assert!(find(&objects, "NetworkPolicy").is_empty());
    let mut values = default_values();
    values["metrics"]["enabled"] = json!(false);
    values["metrics"]["serviceMonitor"]["enabled"] = json!(true);
    let objects = self::objects(values);
    assert_eq!(find(&objects, "Service").len(), 1);
    assert!(find(&objects, "Pod").is_empty());
    assert!(find(&objects, "ServiceMonitor").is_empty());
}

/// `labels` of an object, as a map.
fn labels(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .unwrap_or_else(|| panic!("no labels: {object}"))
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("label values are strings").to_owned(),
            )
        })
        .collect()
}

/// A label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn valid_label_value(value: &str) -> bool {
    value.len() <= 63
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))))
}

/// A DNS-1123 label (`max` 63) or subdomain (`max` 253): lowercase alphanumerics, `-`, and
/// for subdomains `.`, starting and ending alphanumeric.
fn valid_dns_name(name: &str, max: usize) -> bool {
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (max > 63 && c == '.')
    };
    !name.is_empty()
        && name.len() <= max
        && name.chars().all(allowed)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[test]
fn every_object_has_the_standard_labels_and_names_follow_the_overrides() {
    let long_release = "r".repeat(53); // helm's limit for release names
    // 53 + "-tessera" = 61 characters, within 63.
    let long_fullname = format!("{long_release}-tessera");
    // A 83-character override cut to 63, then its trailing "-" removed.
    let cut = "a".repeat(62);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        // (what, values, release name, expected fullname)
        ("defaults", default_values(), "tessera", "tessera"),
        ("all options", all_options(), "tessera", "tessera"),
        ("another release", all_options(), "fleet", "fleet-tessera"),
        (
            "release holding the name",
            default_values(),
            "my-tessera",
            "my-tessera",
        ),
        (
            "fullnameOverride",
            {
                let mut v = all_options();
                v["fullnameOverride"] = json!("deploy");
                v
            },
            "fleet",
            "deploy",
        ),
        (
            "nameOverride",
            {
                let mut v = default_values();
                v["nameOverride"] = json!("ocs");
                v
            },
            "fleet",
            "fleet-ocs",
        ),
        (
            "a long fullnameOverride is cut",
            {
                let mut v = all_options();
                v["fullnameOverride"] = json!(format!("{}-{}", "a".repeat(62), "b".repeat(20)));
                v
            },
            "fleet",
            &cut,
        ),
        (
            "a long release name",
            all_options(),
            &long_release,
            &long_fullname,
        ),
    ];
    for (what, values, release, fullname) in cases {
        let mut context = context(values.clone());
        context["Release"]["Name"] = json!(release);
        let mut objects = Vec::new();
        for name in template_files().iter().filter(|n| n.ends_with(".yaml")) {
            let text = render(&read(&format!("templates/{name}")), &context);
            let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{what}: {name}: {e}\n{text}"));
            objects.extend(documents.into_iter().filter(|d| !d.is_null()));
        }
        let mut seen = BTreeSet::new();
        for object in &objects {
            let key = ["kind", "namespace", "name"]
                .map(|k| object.get(k).unwrap_or(&object["metadata"][k]).to_string());
            assert!(
                seen.insert(key.clone()),
                "{what}: two objects named {key:?}"
            );
        }
        let app_name = values["nameOverride"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("tessera");
        for object in &objects {
            let kind = object["kind"].as_str().unwrap();
            let name = object["metadata"]["name"].as_str().unwrap();
            let labels = labels(object);
            let at = format!("{what}: {kind} {name}");
            assert_eq!(labels["helm.sh/chart"], "tessera-0.3.0", "{at}");
            assert_eq!(labels["app.kubernetes.io/name"], app_name, "{at}");
            assert_eq!(labels["app.kubernetes.io/instance"], release, "{at}");
            assert_eq!(labels["app.kubernetes.io/version"], "0.1.0", "{at}");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{at}");
            for (key, value) in &labels {
                assert!(valid_label_value(value), "{at}: label {key}={value}");
            }
            // Names: derived from the full name; Services' (and the test pod's, its host
            // name) are DNS labels, the others DNS subdomains.
            // Suffixed names cut the full name to leave room for their suffix (to 49
            // characters at least, the test pod's).
            let stem = fullname[..fullname.len().min(49)].trim_end_matches('-');
            assert!(name.starts_with(stem), "{at}: not named after {fullname}");
            let max = if ["Service", "Pod"].contains(&kind) {
                63
            } else {
                253
            };
            assert!(
                valid_dns_name(name, max),
                "{at}: invalid name ({} chars)",
                name.len()
            );
            assert!(valid_dns_name(fullname, 63), "{at}");
        }
        // References between objects follow the names.
        let deployment = find(&objects, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], json!(fullname), "{what}");
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let lease = env.iter().find(|e| e["name"] == "TESSERA_LEASE").unwrap();
        assert_eq!(lease["value"], json!(fullname), "{what}");
        let service = named(&objects, "Service", fullname);
        assert!(selects(
            &service["spec"]["selector"],
            &deployment["spec"]["template"]["metadata"]["labels"]
        ));
        for binding in find(&objects, "RoleBinding")
            .into_iter()
            .chain(find(&objects, "ClusterRoleBinding"))
        {
            assert_eq!(binding["subjects"][0]["name"], json!(fullname), "{what}");
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
            named(
                &objects,
                role_kind,
                binding["roleRef"]["name"].as_str().unwrap(),
            );
        }
        if let Some(certificate) = find(&objects, "Certificate").first() {
            let dns = certificate["spec"]["dnsNames"][0].as_str().unwrap();
            assert_eq!(dns, format!("{fullname}.tessera-system.svc"), "{what}");
            let server = find(&objects, "Server")[0];
            assert_eq!(
                server["spec"]["certificateRef"]["name"],
                certificate["metadata"]["name"]
            );
        }
        if let Some(test_pod) = find(&objects, "Pod").first() {
            let script = test_pod["spec"]["containers"][0]["command"][2]
                .as_str()
                .unwrap();
            let metrics = find(&objects, "Service")
                .into_iter()
                .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics")
                .unwrap();
            let metrics_name = metrics["metadata"]["name"].as_str().unwrap();
            assert!(
                script.contains(&format!("/dev/tcp/{metrics_name}/9090")),
                "{what}: {script}"
            );
        }
    }
}

#[test]
fn the_pods_run_hardened_with_probes_and_resources() {
    for values in [default_values(), all_options()] {
        let objects = objects(values);
        let deployment = find(&objects, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &pod["containers"][0];
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
        }
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        // Every mounted volume exists; the state volume and /tmp are the writable places.
        let volumes: BTreeSet<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let mounts: BTreeMap<&str, &str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap(),
                    m["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            BTreeMap::from([("/tmp", "tmp"), ("/var/lib/tessera", "state")])
        );
        assert!(mounts.values().all(|m| volumes.contains(m)));
        // Every container, the test pod's included.
        let test_pod = find(&objects, "Pod")[0];
        assert_eq!(test_pod["spec"]["securityContext"], pod["securityContext"]);
        assert_eq!(test_pod["spec"]["restartPolicy"], "Never");
        for container in [container, &test_pod["spec"]["containers"][0]] {
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{container}");
            assert_eq!(security["allowPrivilegeEscalation"], false);
            assert_eq!(security["runAsNonRoot"], true);
            assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
            assert!(security["capabilities"].get("add").is_none());
            assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
            assert!(container["resources"]["requests"]["memory"].is_string());
            assert!(container["resources"]["requests"]["cpu"].is_string());
            assert!(container["resources"]["limits"]["memory"].is_string());
            assert_eq!(container["image"], "ghcr.io/tessera-dev/tessera:0.1.0");
        }
    }
}

#[test]
fn helm_test_asks_healthz_through_the_metrics_service() {
    let objects = objects(default_values());
    let test_pod = find(&objects, "Pod")[0];
    let annotations = &test_pod["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/hook"], "test");
    let metrics = named(&objects, "Service", "tessera-metrics");
    // The test pod is not behind any Service (its component is "test").
    for service in find(&objects, "Service") {
        assert!(!selects(
            &service["spec"]["selector"],
            &test_pod["metadata"]["labels"]
        ));
    }
    let container = &test_pod["spec"]["containers"][0];
    assert_eq!(container["command"][0], "/bin/bash");
    let script = container["command"][2].as_str().unwrap();
    let port = metrics["spec"]["ports"][0]["port"].as_i64().unwrap();
    assert!(
        script.contains(&format!("/dev/tcp/tessera-metrics/{port}")),
        "{script}"
    );
    assert!(script.contains("GET /healthz HTTP/1.1"), "{script}");
    // /healthz is the route the admin API answers whatever the Host (the Service's name is
    // not one of its accepted names).
    let host_check = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/admin/host.rs"),
    )
    .unwrap();
    assert!(host_check.contains("path == \"/healthz\""));
}

/// The test pod's script, run by bash here against a real admin API on loopback in place
/// of the metrics Service: it passes on /healthz, and fails on a status other than 200.
#[tokio::test]
async fn the_helm_test_script_passes_against_the_admin_api() {
    let Some(bash) = ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("skipped: no bash here");
        return;
    };
    let dir = crate::support::quickstart_copy();
    let running = crate::support::start(dir.path()).await;
    let objects = objects(default_values());
    let script = find(&objects, "Pod")[0]["spec"]["containers"][0]["command"][2]
        .as_str()
        .unwrap()
        .to_owned();
    let port = running.admin_address.port();
    let local = script.replace(
        "/dev/tcp/tessera-metrics/9090",
        &format!("/dev/tcp/127.0.0.1/{port}"),
    );
    assert_ne!(local, script);
    let run = |script: String| {
        let bash = bash.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bash)
                .args(["-c", &script])
                .output()
                .unwrap()
        })
    };
    let passed = run(local.clone()).await.unwrap();
    assert!(passed.status.success(), "{passed:?}");
    assert!(String::from_utf8_lossy(&passed.stdout).starts_with("HTTP/1.1 200"));
    let failed = run(local.replace("GET /healthz", "GET /no-such-page"))
        .await
        .unwrap();
    assert!(!failed.status.success(), "{failed:?}");
}

#[test]
fn chart_yaml_has_what_helm_lint_and_artifact_hubs_want() {
    let chart: Value = serde_saphyr::from_str(&read("Chart.yaml")).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "tessera", "the chart's directory name");
    assert_eq!(chart["type"], "application");
    let semver = |v: &str| {
        let core = v.split(['-', '+']).next().unwrap();
        let parts: Vec<&str> = core.split('.').collect();
        parts.len() == 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars().all(|c| c.is_ascii_digit())
                    && (p.len() == 1 || !p.starts_with('0'))
            })
    };
    let version = chart["version"].as_str().unwrap();
    assert!(semver(version), "{version}");
    let app_version = chart["appVersion"].as_str().unwrap();
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "the image runs this release"
    );
    assert!(!chart["description"].as_str().unwrap().is_empty());
    let kube_version = chart["kubeVersion"].as_str().unwrap();
    assert!(kube_version.starts_with(">="), "{kube_version}");
    assert!(
        semver(kube_version.trim_start_matches(">=")),
        "{kube_version}"
    );
    for field in ["home", "icon"] {
        assert!(
            chart[field].as_str().unwrap().starts_with("https://"),
            "{field}"
        );
    }
    assert!(!chart["sources"].as_array().unwrap().is_empty());
    assert!(!chart["keywords"].as_array().unwrap().is_empty());
    let maintainers = chart["maintainers"].as_array().unwrap();
    assert!(maintainers.iter().all(|m| m["name"].is_string()));
    assert!(!maintainers.is_empty());
    // The icon it points to is the one in the chart.
    let icon = chart["icon"].as_str().unwrap();
    assert!(icon.ends_with("/charts/tessera/icon.svg"), "{icon}");
    assert!(read("icon.svg").contains("<svg"));
    // Every file under templates/ is one helm reads.
    for name in template_files() {
        assert!(
            name.ends_with(".yaml") || name.ends_with(".tpl") || name == "NOTES.txt",
            "{name}"
        );
    }
    // Every object is well formed and namespaced where it should be.
    for object in objects(all_options()) {
        assert!(
            object["apiVersion"].is_string() && object["kind"].is_string(),
            "{object}"
        );
        let kind = object["kind"].as_str().unwrap();
        let cluster_scoped = ["ClusterRole", "ClusterRoleBinding"].contains(&kind);
        assert_eq!(
            object["metadata"].get("namespace").is_none(),
            cluster_scoped,
            "{object}"
        );
    }
}

#[test]
fn the_image_has_git_and_runs_as_non_root() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    let runtime = stages.last().unwrap();
    for package in ["git", "ca-certificates", "openssh-client"] {
        assert!(
            runtime.split_whitespace().any(|w| w == package),
            "the runtime stage installs {package}"
        );
    }
    assert!(runtime.contains("USER 65532:65532"), "{runtime}");
    assert!(runtime.contains("COPY --from=build"), "{runtime}");
    // The chart runs it as that user.
    let values = default_values();
    assert_eq!(values["podSecurityContext"]["runAsUser"], 65532);
    assert_eq!(values["podSecurityContext"]["runAsGroup"], 65532);
    // What the image is built from is in its context.
    let ignored =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for source in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            let top = source.trim_start_matches("./").split('/').next().unwrap();
            assert!(
                !ignored.lines().any(|l| l.trim() == top),
                "{top} is in .dockerignore"
            );
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(top).exists(),
                "{top}"
            );
        }
    }
}

#[test]
fn the_renderer_handles_what_the_chart_uses() {
    let context = json!({
        "Values": {"a": {"b": "x"}, "n": 3, "list": ["p", "q"], "off": false, "empty": "",
                   "map": {}, "long": "abcdef-ghij"},
        "Release": {"Name": "rel"},
    });
    let render = |t: &str| render_alone(t, &context);
    assert_eq!(render("v: {{ .Values.a.b }}"), "v: x");
    assert_eq!(render("v: {{ .Values.a.b | quote }}"), "v: \"x\"");
    assert_eq!(render("v: {{ .Values.n | quote }}"), "v: \"3\"");
    assert_eq!(
        render("v: {{ .Values.missing }}"),
        "v: ",
        "missing keys print nothing"
    );
    assert_eq!(
        render("v: {{ .Values.empty | default .Values.a.b }}"),
        "v: x"
    );
    assert_eq!(render("v: {{ default \"d\" .Values.empty }}"), "v: d");
    assert_eq!(render("v: {{ default \"d\" .Values.a.b }}"), "v: x");
    assert_eq!(
        render("a:\n  {{- toYaml .Values.list | nindent 2 }}"),
        "a:\n  - p\n  - q"
    );
    assert_eq!(render("a: {{ toYaml .Values.map }}"), "a: {}");
    assert_eq!(
        render("a:\n{{ toYaml .Values.list | indent 2 }}"),
        "a:\n  - p\n  - q"
    );
    assert_eq!(
        render("a\n{{- if .Values.off }}\nyes\n{{- else }}\nno\n{{- end }}\n"),
        "a\nno\n"
    );
    assert_eq!(render("{{- if ne .Values.a.b \"x\" }}yes{{ end }}"), "");
    assert_eq!(render("{{- if eq .Values.a.b \"x\" }}yes{{ end }}"), "yes");
    assert_eq!(
        render("{{ if .Values.map }}1{{ else if .Values.list }}2{{ else }}3{{ end }}"),
        "2"
    );
    assert_eq!(
        render("{{ if .Values.off }}1{{ else if .Values.empty }}2{{ end }}"),
        ""
    );
    assert_eq!(
        render("{{ if and .Values.n .Values.off }}1{{ else }}0{{ end }}"),
        "0"
    );
    assert_eq!(
        render("{{ if or .Values.off .Values.n }}1{{ else }}0{{ end }}"),
        "1"
    );
    assert_eq!(render("{{ or .Values.empty .Values.a.b }}"), "x");
    assert_eq!(render("{{ not .Values.off }}"), "true");
    assert_eq!(render("{{ .Values.n }}"), "3");
    assert_eq!(
        render("{{ .Values.long | trunc 6 | trimSuffix \"-\" }}"),
        "abcdef"
    );
    assert_eq!(
        render("{{ .Values.long | trunc 7 | trimSuffix \"-\" }}"),
        "abcdef"
    );
    assert_eq!(render("{{ .Values.long | trunc 99 }}"), "abcdef-ghij");
    assert_eq!(
        render("{{ replace \"-\" \"_\" .Values.long }}"),
        "abcdef_ghij"
    );
    assert_eq!(render("{{ contains \"def\" .Values.long }}"), "true");
    assert_eq!(render("{{ contains \"xyz\" .Values.long }}"), "false");
    assert_eq!(
        render("{{ printf \"%s-%s:%d\" .Release.Name .Values.a.b .Values.n }}"),
        "rel-x:3"
    );
    assert_eq!(
        render("{{ printf \"%s-%s\" .Release.Name (.Values.long | trunc 3) | quote }}"),
        "\"rel-abc\""
    );
    assert_eq!(render("{{/* a comment */}}x"), "x");
    // Named templates: defined anywhere, rendered with the dot they are given.
    let helpers = "{{- define \"t.name\" -}}\n{{ .Release.Name }}-{{ .Values.a.b }}\n{{- end }}\n\
        {{- define \"t.labels\" -}}\nname: {{ include \"t.name\" . }}\nn: {{ .Values.n | quote }}\n{{- end }}";
    assert_eq!(
        render(&format!(
            "{helpers}metadata:\n  labels:\n    {{{{- include \"t.labels\" . | nindent 4 }}}}\n"
        )),
        "metadata:\n  labels:\n    name: rel-x\n    n: \"3\"\n"
    );
    assert_eq!(
        render(&format!("{helpers}{{{{ template \"t.name\" . }}}}")),
        "rel-x"
    );
    assert_eq!(
        render(&format!(
            "{helpers}{{{{ include \"t.name\" . | trunc 4 }}}}"
        )),
        "rel-"
    );
    assert_eq!(
        render(&format!(
            "{helpers}{{{{ if contains \"rel\" (include \"t.name\" .) }}}}yes{{{{ end }}}}"
        )),
        "yes"
    );
    // What it does not implement, it refuses rather than mis-renders.
    for unknown in [
        "{{ range .Values.list }}{{ . }}{{ end }}",
        "{{ with .Values.a }}{{ .b }}{{ end }}",
        "{{ $x := 1 }}",
        "{{ upper .Values.a.b }}",
        "{{ include \"nothing\" . }}",
        "{{ printf \"%q\" .Values.a.b }}",
    ] {
        let rendered = std::panic::catch_unwind(|| render(unknown));
        assert!(rendered.is_err(), "{unknown} should be refused");
    }
}

// The renderer.

/// A parsed template: text, actions, `if`/`else if`/`else` chains. `define` blocks are taken
/// out into [`Defines`] while parsing, as Go's text/template does.
enum Node {
    Text(String),
    Action(String),
    /// (condition, body) for `if` and each `else if`; then the `else` body.
    If(Vec<(String, Vec<Self>)>, Vec<Self>),
}

/// Named templates from `{{ define }}`, shared by every file of the chart (as helm loads
/// them all, `_helpers.tpl` included, before rendering any).
type Defines = BTreeMap<String, Vec<Node>>;

/// Renders `template` with `context` (`.Values`, `.Release`, `.Chart`) and the chart's
/// named templates (every `.tpl` file under `templates/`).
fn render(template: &str, context: &Value) -> String {
    let mut defines = Defines::new();
    for path in template_files() {
        if path.ends_with(".tpl") {
            let _ = parse_template(&read(&format!("templates/{path}")), &mut defines);
        }
    }
    let nodes = parse_template(template, &mut defines);
    let mut out = String::new();
    emit(&nodes, context, &defines, &mut out);
    out
}

/// Renders `template` with only the named templates it defines itself.
fn render_alone(template: &str, context: &Value) -> String {
    let mut defines = Defines::new();
    let nodes = parse_template(template, &mut defines);
    let mut out = String::new();
    emit(&nodes, context, &defines, &mut out);
    out
}

/// Every file under `templates/`, relative to it, sorted.
fn template_files() -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{name}/"), found);
            } else {
                found.push(name);
            }
        }
    }
    let mut found = Vec::new();
    walk(&chart_dir().join("templates"), "", &mut found);
    found.sort();
    found
}

fn parse_template(template: &str, defines: &mut Defines) -> Vec<Node> {
    let tokens = tokenize(template);
    let mut position = 0;
    let (nodes, end) = parse(&tokens, &mut position, defines);
    assert!(end.is_none(), "unmatched {end:?}");
    nodes
}

enum Token {
    Text(String),
    Action(String),
}

/// Splits text and `{{ }}` actions, applying `{{-` and `-}}` whitespace trimming.
fn tokenize(template: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = template;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let end = start + rest[start..].find("}}").expect("unclosed action");
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let mut action = &rest[start + 2..end];
        // `{{-` trims only when followed by a space (`{{-3}}` is a number).
        if let Some(stripped) = action.strip_prefix("- ") {
            text = text.trim_end();
            action = stripped;
        }
        trim_next = false;
        if let Some(stripped) = action.strip_suffix(" -") {
            trim_next = true;
            action = stripped;
        }
        tokens.push(Token::Text(text.to_owned()));
        tokens.push(Token::Action(action.trim().to_owned()));
        rest = &rest[end + 2..];
    }
    tokens.push(Token::Text(
        if trim_next { rest.trim_start() } else { rest }.to_owned(),
    ));
    tokens
}

/// Nodes up to an `else`, `else if …` or `end` (returned) or the end of input.
fn parse(
    tokens: &[Token],
    position: &mut usize,
    defines: &mut Defines,
) -> (Vec<Node>, Option<String>) {
    let mut nodes = Vec::new();
    while *position < tokens.len() {
        let token = &tokens[*position];
        *position += 1;
        let action = match token {
            Token::Text(text) => {
                nodes.push(Node::Text(text.clone()));
                continue;
            }
            Token::Action(action) => action,
        };
        if action == "end" || action == "else" || action.starts_with("else if ") {
            return (nodes, Some(action.clone()));
        }
        if action.starts_with("/*") {
            assert!(action.ends_with("*/"), "unclosed comment {action}");
        } else if let Some(name) = action.strip_prefix("define ") {
            let name = string_literal(name.trim()).expect("define needs a quoted name");
            let (body, end) = parse(tokens, position, defines);
            assert_eq!(end.as_deref(), Some("end"), "define {name} without end");
            assert!(
                defines.insert(name.clone(), body).is_none(),
                "{name} defined twice"
            );
        } else if let Some(condition) = action.strip_prefix("if ") {
            let mut branches = Vec::new();
            let mut condition = condition.to_owned();
            let otherwise = loop {
                let (body, end) = parse(tokens, position, defines);
                branches.push((condition, body));
                match end.as_deref() {
                    Some("end") => break Vec::new(),
                    Some("else") => {
                        let (otherwise, end) = parse(tokens, position, defines);
                        assert_eq!(end.as_deref(), Some("end"), "if without end");
                        break otherwise;
                    }
                    Some(other) => {
                        condition = other.strip_prefix("else if ").unwrap().to_owned();
                    }
                    None => panic!("if without end"),
                }
            };
            nodes.push(Node::If(branches, otherwise));
        } else {
            let keyword = action.split_whitespace().next().unwrap_or("");
            assert!(
                !["range", "with", "block"].contains(&keyword),
                "the test renderer does not know `{keyword}`"
            );
            nodes.push(Node::Action(action.clone()));
        }
    }
    (nodes, None)
}

fn emit(nodes: &[Node], dot: &Value, defines: &Defines, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Action(action) => out.push_str(&text(&evaluate(action, dot, defines))),
            Node::If(branches, otherwise) => {
                let branch = branches
                    .iter()
                    .find(|(condition, _)| truthy(&evaluate(condition, dot, defines)))
                    .map_or(otherwise, |(_, body)| body);
                emit(branch, dot, defines, out);
            }
        }
    }
}

/// The pieces of an action: literals, `.Field.Paths`, function names, `(`, `)`, `|`.
#[derive(Clone, Debug, PartialEq)]
enum Lexeme {
    String(String),
    Number(i64),
    Path(String),
    Identifier(String),
    Open,
    Close,
    Pipe,
}

fn lex(action: &str) -> Vec<Lexeme> {
    let mut lexemes = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '|' => {
                chars.next();
                lexemes.push(match c {
                    '(' => Lexeme::Open,
                    ')' => Lexeme::Close,
                    _ => Lexeme::Pipe,
                });
            }
            '"' => {
                chars.next();
                let mut literal = String::new();
                loop {
                    match chars.next().expect("unclosed string") {
                        '"' => break,
                        '\\' => literal.push(match chars.next().expect("lone backslash") {
                            'n' => '\n',
                            other => other,
                        }),
                        other => literal.push(other),
                    }
                }
                lexemes.push(Lexeme::String(literal));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "()|\"".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                lexemes.push(if word.starts_with('.') {
                    Lexeme::Path(word)
                } else if let Ok(n) = word.parse() {
                    Lexeme::Number(n)
                } else {
                    assert!(
                        word.chars().all(|c| c.is_ascii_alphanumeric()),
                        "the test renderer does not know `{word}` (variables, `$`)"
                    );
                    Lexeme::Identifier(word)
                });
            }
        }
    }
    lexemes
}

fn string_literal(word: &str) -> Option<String> {
    match lex(word).as_slice() {
        [Lexeme::String(s)] => Some(s.clone()),
        _ => None,
    }
}

/// Evaluates a pipeline: `command | function args | ...`, each stage's value passed as
/// the last argument of the next, as Go templates do.
fn evaluate(action: &str, dot: &Value, defines: &Defines) -> Value {
    let lexemes = lex(action);
    let mut position = 0;
    let value = pipeline(&lexemes, &mut position, dot, defines);
    assert_eq!(
        position,
        lexemes.len(),
        "trailing {:?}",
        &lexemes[position..]
    );
    value
}

fn pipeline(lexemes: &[Lexeme], position: &mut usize, dot: &Value, defines: &Defines) -> Value {
    let mut piped = None;
    loop {
        let value = command(lexemes, position, piped.take(), dot, defines);
        if lexemes.get(*position) == Some(&Lexeme::Pipe) {
            *position += 1;
            piped = Some(value);
        } else {
            return value;
        }
    }
}

/// A function call with its arguments (and the piped value last), or a single operand.
fn command(
    lexemes: &[Lexeme],
    position: &mut usize,
    piped: Option<Value>,
    dot: &Value,
    defines: &Defines,
) -> Value {
    let function = match lexemes.get(*position) {
        Some(Lexeme::Identifier(name)) if name != "true" && name != "false" => {
            *position += 1;
            Some(name.clone())
        }
        _ => None,
    };
    // helm's `.Files.Get "path"`: the text of a file of the chart.
    if function.is_none() && lexemes.get(*position) == Some(&Lexeme::Path(".Files.Get".into())) {
        let Some(Lexeme::String(path)) = lexemes.get(*position + 1) else {
            panic!(".Files.Get takes a path");
        };
        *position += 2;
        assert!(piped.is_none(), "nothing is piped into .Files.Get");
        return Value::String(read(path));
    }
    let mut arguments = Vec::new();
    while let Some(lexeme) = lexemes.get(*position) {
        *position += 1;
        arguments.push(match lexeme {
            Lexeme::Pipe | Lexeme::Close => {
                *position -= 1;
                break;
            }
            Lexeme::Open => {
                let value = pipeline(lexemes, position, dot, defines);
                assert_eq!(lexemes.get(*position), Some(&Lexeme::Close), "unclosed (");
                *position += 1;
                value
            }
            Lexeme::String(s) => Value::String(s.clone()),
            Lexeme::Number(n) => json!(n),
            Lexeme::Identifier(word) if word == "true" || word == "false" => {
                Value::Bool(word == "true")
            }
            Lexeme::Identifier(word) => panic!("`{word}` as an argument (call it in parentheses)"),
            Lexeme::Path(path) => path
                .split('.')
                .filter(|p| !p.is_empty())
                .fold(dot.clone(), |value, key| {
                    value.get(key).cloned().unwrap_or(Value::Null)
                }),
        });
    }
    arguments.extend(piped);
    match function {
        Some(name) => call(&name, arguments, defines),
        None => {
            assert_eq!(
                arguments.len(),
                1,
                "a value is not a function: {arguments:?}"
            );
            arguments.pop().unwrap()
        }
    }
}

/// The functions the chart uses, with Go's and sprig's semantics for the values the chart
/// passes them; any other panics.
fn call(name: &str, arguments: Vec<Value>, defines: &Defines) -> Value {
    let string = |v: &Value| text(v);
    let int = |v: &Value| {
        v.as_i64()
            .unwrap_or_else(|| panic!("{name}: {v} is not a number"))
    };
    match (name, arguments.as_slice()) {
        ("quote", [v]) => Value::String(format!("{:?}", text(v))),
        ("default", [fallback, v]) => {
            if truthy(v) {
                v.clone()
            } else {
                fallback.clone()
            }
        }
        ("nindent" | "indent", [n, v]) => {
            let pad = " ".repeat(int(n) as usize);
            let lines: Vec<String> = text(v).lines().map(|l| format!("{pad}{l}")).collect();
            let body = lines.join("\n");
            Value::String(if name == "nindent" {
                format!("\n{body}")
            } else {
                body
            })
        }
        ("toYaml", [v]) => Value::String(match v {
            // helm prints empty collections inline.
            Value::Object(o) if o.is_empty() => "{}".to_owned(),
            Value::Array(a) if a.is_empty() => "[]".to_owned(),
            v => serde_saphyr::to_string(v).unwrap().trim_end().to_owned(),
        }),
        ("eq", [a, b]) => Value::Bool(a == b),
        ("ne", [a, b]) => Value::Bool(a != b),
        ("not", [a]) => Value::Bool(!truthy(a)),
        // Go's `and`/`or` return the deciding operand, not a boolean.
        ("and", [first, ..]) => arguments
            .iter()
            .find(|a| !truthy(a))
            .unwrap_or_else(|| arguments.last().unwrap_or(first))
            .clone(),
        ("or", [first, ..]) => arguments
            .iter()
            .find(|a| truthy(a))
            .unwrap_or_else(|| arguments.last().unwrap_or(first))
            .clone(),
        ("trunc", [n, v]) => Value::String(string(v).chars().take(int(n) as usize).collect()),
        ("trimSuffix", [suffix, v]) => {
            let v = string(v);
            Value::String(v.strip_suffix(&string(suffix)).unwrap_or(&v).to_owned())
        }
        ("contains", [needle, v]) => Value::Bool(string(v).contains(&string(needle))),
        ("replace", [old, new, v]) => Value::String(string(v).replace(&string(old), &string(new))),
        ("printf", [format, rest @ ..]) => {
            let format = string(format);
            let mut out = String::new();
            let mut rest = rest.iter();
            let mut pieces = format.split('%');
            out.push_str(pieces.next().unwrap());
            for piece in pieces {
                let verb = piece.chars().next().expect("lone % in printf");
                assert!("sdv".contains(verb), "printf: %{verb} is not supported");
                out.push_str(&text(rest.next().expect("printf: missing argument")));
                out.push_str(&piece[1..]);
            }
            assert!(rest.next().is_none(), "printf: extra arguments");
            Value::String(out)
        }
        ("include" | "template", [template, dot]) => {
            let template = string(template);
            let body = defines
                .get(&template)
                .unwrap_or_else(|| panic!("no template named {template}"));
            let mut out = String::new();
            emit(body, dot, defines, &mut out);
            Value::String(out)
        }
        (name, arguments) => {
            panic!("the test renderer does not know `{name}` with {arguments:?}")
        }
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => panic!("cannot print {other} in a template"),
    }
}

/// The metric names in a PromQL expression (`tessera_*` and `process_*`), each as its
/// family is exported: a histogram's `_bucket`, `_sum` and `_count` series name the family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !(word.starts_with("tessera_") || word.starts_with("process_")) {
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let stem = word.strip_suffix(suffix)?;
                tessera::server::metrics::EXPORTED
                    .contains(&stem)
                    .then_some(stem)
            })
            .unwrap_or(word);
        names.insert(family.to_owned());
    }
    names
}

/// Names that `/metrics` does not export (tessera::server::metrics::EXPORTED, which a unit
/// test holds to a rendered page).
fn unexported(names: &BTreeSet<String>) -> Vec<&String> {
    names
        .iter()
        .filter(|n| !tessera::server::metrics::EXPORTED.contains(&n.as_str()))
        .collect()
}

#[test]
fn alerting_rules_and_the_dashboard_render_only_when_enabled_on_exported_metrics() {
    let defaults = objects(default_values());
    assert!(find(&defaults, "PrometheusRule").is_empty());
    assert!(find(&defaults, "ConfigMap").is_empty());

    let mut values = default_values();
    values["metrics"]["prometheusRule"]["enabled"] = json!(true);
    values["metrics"]["prometheusRule"]["labels"] = json!({"release": "prometheus"});
    values["metrics"]["prometheusRule"]["rolloutErrorRatio"] = json!(0.25);
    values["metrics"]["dashboard"]["enabled"] = json!(true);
    values["metrics"]["dashboard"]["namespace"] = json!("monitoring");
    assert_eq!(schema_problems(&values), Vec::<String>::new());
    // The dashboard's legends hold Grafana's own `{{label}}`, which helm passes through
    // from `.Files.Get` untouched but render_all's check for unrendered actions would
    // flag: it is rendered alone below, and compared with the file byte for byte.
    let dashboard_text = render(&read("templates/dashboard.yaml"), &context(values.clone()));
    values["metrics"]["dashboard"]["enabled"] = json!(false);
    let objects = objects(values.clone());

    let rule = named(&objects, "PrometheusRule", "tessera");
    assert_eq!(rule["metadata"]["namespace"], "tessera-system");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        alerts,
        BTreeSet::from([
            "TesseraCertificateExpiringNotRenewing",
            "TesseraLeaderMissing",
            "TesseraRolloutFailing"
        ])
    );
    for rule in rules {
        let expr = rule["expr"].as_str().unwrap();
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}");
        assert_eq!(unexported(&names), Vec::<&String>::new(), "{expr}");
        assert!(expr.contains("namespace=\"tessera-system\""), "{expr}");
    }
    assert!(
        rules
            .iter()
            .any(|r| r["expr"].as_str().unwrap().contains("> 0.25")),
        "the ratio reaches the rule"
    );
    promtool_checks_rules(&rule["spec"]);

    let dashboards: Vec<Value> = serde_saphyr::from_multiple(&dashboard_text).unwrap();
    let dashboards: Vec<Value> = dashboards.into_iter().filter(|d| !d.is_null()).collect();
    let dashboard = named(&dashboards, "ConfigMap", "tessera-dashboard");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let embedded: Value =
        serde_json::from_str(dashboard["data"]["tessera.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(&read("dashboards/tessera.json")).unwrap();
    assert_eq!(embedded, file, "the ConfigMap carries the file as it is");
    assert_eq!(
        dashboard["data"]["tessera.json"].as_str().unwrap(),
        read("dashboards/tessera.json").trim_end()
    );
    let panels = file["panels"].as_array().unwrap();
    let mut used = BTreeSet::new();
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        used.extend(metric_names(target["expr"].as_str().unwrap()));
    }
    assert!(used.len() > 15, "{used:?}");
    assert_eq!(unexported(&used), Vec::<&String>::new());
    // Usable outside the chart: the data source is a variable, not a fixed uid.
    assert_eq!(file["templating"]["list"][0]["type"], "datasource");
}

/// `promtool check rules` accepts the groups (a PrometheusRule's spec is a rules file);
/// skipped, saying so, without promtool.
fn promtool_checks_rules(spec: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, serde_json::to_string(spec).unwrap()).unwrap();
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            println!("SKIPPED promtool check rules: promtool not runnable ({error})");
        }
    }
}
