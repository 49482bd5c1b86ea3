//! The Helm chart, without helm (not installed here): its templates rendered by a tiny
//! renderer of the Go-template constructs the chart uses (it panics on any other, so a new
//! construct cannot slip by unrendered), parsed as YAML and inspected; its values checked
//! against `values.schema.json` by a small validator of the keywords the schema uses.
//!
//! Not checked here: helm's own rendering and `helm lint`, the API server's validation of
//! the objects, and the image (docker cannot pull here).

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

/// Every template rendered and parsed: (file, documents).
fn render_all(values: Value) -> Vec<(String, Vec<Value>)> {
    let context = context(values);
    let mut rendered = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(chart_dir().join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    for name in names {
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
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
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
    let service = find(&objects, "Service")[0];
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
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
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

#[test]
fn default_values_match_the_schema_and_mistakes_do_not() {
    let schema: Value = serde_json::from_str(&read("values.schema.json")).unwrap();
    let values = default_values();
    let mut problems = Vec::new();
    validate(&schema, &values, "", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");

    for (path, wrong) in [
        ("/server/clientAuth", json!("Sometimes")),
        ("/replicas", json!("two")),
        ("/ports/https", json!(70000)),
        ("/imagePullSecret", json!("x")),
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

#[test]
fn the_renderer_handles_what_the_chart_uses() {
    let context =
        json!({"Values": {"a": {"b": "x"}, "n": 3, "list": ["p", "q"], "off": false, "empty": ""}});
    let render = |t: &str| render(t, &context);
    assert_eq!(render("v: {{ .Values.a.b }}"), "v: x");
    assert_eq!(render("v: {{ .Values.a.b | quote }}"), "v: \"x\"");
    assert_eq!(
        render("v: {{ .Values.empty | default .Values.a.b }}"),
        "v: x"
    );
    assert_eq!(
        render("a:\n  {{- toYaml .Values.list | nindent 2 }}"),
        "a:\n  - p\n  - q"
    );
    assert_eq!(
        render("a\n{{- if .Values.off }}\nyes\n{{- else }}\nno\n{{- end }}\n"),
        "a\nno\n"
    );
    assert_eq!(render("{{- if ne .Values.a.b \"x\" }}yes{{ end }}"), "");
    assert_eq!(render("{{ .Values.n }}"), "3");
}

// The renderer.

enum Node {
    Text(String),
    Action(String),
    If(String, Vec<Self>, Vec<Self>),
}

/// Renders `template` with `context` (`.Values`, `.Release`, `.Chart`).
fn render(template: &str, context: &Value) -> String {
    let tokens = tokenize(template);
    let mut position = 0;
    let (nodes, end) = parse(&tokens, &mut position);
    assert!(end.is_none(), "unmatched {end:?}");
    let mut out = String::new();
    emit(&nodes, context, &mut out);
    out
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
        if let Some(stripped) = action.strip_prefix('-') {
            text = text.trim_end();
            action = stripped;
        }
        trim_next = false;
        if let Some(stripped) = action.strip_suffix('-') {
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

/// Nodes up to an `else` or `end` (returned) or the end of input.
fn parse(tokens: &[Token], position: &mut usize) -> (Vec<Node>, Option<String>) {
    let mut nodes = Vec::new();
    while *position < tokens.len() {
        let token = &tokens[*position];
        *position += 1;
        match token {
            Token::Text(text) => nodes.push(Node::Text(text.clone())),
            Token::Action(action) if action == "end" || action == "else" => {
                return (nodes, Some(action.clone()));
            }
            Token::Action(action) if action.starts_with("/*") => {}
            Token::Action(action) => match action.strip_prefix("if ") {
                Some(condition) => {
                    let (then, end) = parse(tokens, position);
                    let otherwise = match end.as_deref() {
                        Some("else") => {
                            let (otherwise, end) = parse(tokens, position);
                            assert_eq!(end.as_deref(), Some("end"), "if without end");
                            otherwise
                        }
                        Some("end") => Vec::new(),
                        _ => panic!("if without end"),
                    };
                    nodes.push(Node::If(condition.to_owned(), then, otherwise));
                }
                None => nodes.push(Node::Action(action.clone())),
            },
        }
    }
    (nodes, None)
}

fn emit(nodes: &[Node], context: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Action(action) => out.push_str(&text(&pipeline(action, context))),
            Node::If(condition, then, otherwise) => {
                let branch = if truthy(&pipeline(condition, context)) {
                    then
                } else {
                    otherwise
                };
                emit(branch, context, out);
            }
        }
    }
}

/// `command | function args | ...`.
fn pipeline(action: &str, context: &Value) -> Value {
    let mut stages = action.split('|').map(str::trim);
    let mut value = command(stages.next().unwrap(), context);
    for stage in stages {
        let words: Vec<&str> = stage.split_whitespace().collect();
        value = match words.as_slice() {
            ["quote"] => Value::String(format!("\"{}\"", text(&value))),
            ["default", fallback] => {
                if truthy(&value) {
                    value
                } else {
                    argument(fallback, context)
                }
            }
            ["nindent", n] => {
                let pad = " ".repeat(n.parse().unwrap());
                let lines: Vec<String> =
                    text(&value).lines().map(|l| format!("{pad}{l}")).collect();
                Value::String(format!("\n{}", lines.join("\n")))
            }
            other => panic!("the test renderer does not know `{other:?}`"),
        };
    }
    value
}

fn command(command: &str, context: &Value) -> Value {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        [single] => argument(single, context),
        ["toYaml", path] => {
            let value = argument(path, context);
            Value::String(
                serde_saphyr::to_string(&value)
                    .unwrap()
                    .trim_end()
                    .to_owned(),
            )
        }
        ["ne", a, b] => Value::Bool(argument(a, context) != argument(b, context)),
        ["not", a] => Value::Bool(!truthy(&argument(a, context))),
        other => panic!("the test renderer does not know `{other:?}`"),
    }
}

fn argument(word: &str, context: &Value) -> Value {
    if let Some(literal) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        return Value::String(literal.to_owned());
    }
    let path = word
        .strip_prefix('.')
        .unwrap_or_else(|| panic!("unknown argument `{word}`"));
    path.split('.')
        .filter(|p| !p.is_empty())
        .fold(context.clone(), |value, key| {
            value.get(key).cloned().unwrap_or(Value::Null)
        })
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
