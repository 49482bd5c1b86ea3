//! Multi-document YAML into typed objects, with the file, line and field path of every
//! problem.
//!
//! A file is first walked as a stream of parser events: that splits it into documents and
//! records the line of every field (`spec.dnsNames[1]` → 14), so that problems found later,
//! by validation or cross-reference checks, can still point at a line. Each document is then
//! read twice with serde: once for its header (`apiVersion`, `kind`, `metadata`, and no
//! unknown top-level field), once for its `spec` as the kind's type, which refuses unknown
//! fields. One broken document never hides the others in the same file.

use std::collections::{BTreeMap, HashMap};

use kube::api::ObjectMeta;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_saphyr::granit_parser::{Event, Parser};

use super::meta::{API_VERSION, DEFAULT_NAMESPACE, GROUP, Kind, ObjectKey};
use super::problem::Problem;
use super::{
    Activation, Affectation, Certificate, Gateway, Issuer, Package, Resource, Server, validate,
};

/// Documents larger than this are refused: configuration, not data.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// What one file held.
#[derive(Debug, Default)]
pub struct FileParse {
    /// The documents that parsed and validated, in file order.
    pub objects: Vec<SourcedObject>,
    /// Everything wrong, in file order. A problem whose `object` is set belongs to a document
    /// that was identified (kind and name known) but refused.
    pub problems: Vec<Problem>,
    /// False when a YAML syntax error stopped the reading part-way: the documents after it
    /// are unknown, so objects last seen in this file must not be taken as deleted.
    pub complete: bool,
}

/// An object and where it was read.
#[derive(Clone, Debug)]
pub struct SourcedObject {
    pub resource: Resource,
    pub origin: Origin,
    /// The line of each field, to place problems found after parsing.
    pub lines: FieldLines,
}

/// The file and line of a document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Origin {
    /// Path relative to the configuration root, with `/` separators.
    pub file: String,
    /// Line of the document's first field, from 1.
    pub line: u32,
}

/// The line of each field path of one document (`spec.targets.tags[0]`).
#[derive(Clone, Debug, Default)]
pub struct FieldLines(HashMap<String, u32>);

impl FieldLines {
    /// The line of `path`, or of its nearest ancestor that has one (a field left out has no
    /// line of its own; its parent does).
    pub fn line(&self, path: &str) -> Option<u32> {
        let mut path = path;
        loop {
            if let Some(line) = self.0.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// Reads every document of `text`, the content of `file`.
pub fn parse_file(file: &str, text: &str) -> FileParse {
    let mut result = FileParse {
        complete: true,
        ..FileParse::default()
    };
    let (documents, syntax_error) = split_documents(text);
    for document in documents {
        match document.root {
            RootKind::Null => {}
            RootKind::Other => result.problems.push(Problem::at(
                file,
                document.first_line,
                "a document must be a mapping with apiVersion, kind, metadata and spec",
            )),
            RootKind::Mapping => match parse_document(file, &document) {
                Ok(object) => {
                    let problems = validate::object(&object);
                    if problems.is_empty() {
                        result.objects.push(object);
                    } else {
                        result.problems.extend(problems);
                    }
                }
                Err(problems) => result.problems.extend(problems),
            },
        }
    }
    if let Some((line, message)) = syntax_error {
        result.complete = false;
        result.problems.push(Problem::at(
            file,
            line,
            format!("YAML syntax error: {message}; the rest of the file was not read"),
        ));
    }
    result
}

/// The start of a document, before its kind is known.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<HeaderMetadata>,
    #[serde(default)]
    #[allow(dead_code)]
    spec: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

/// The metadata fields a document may carry. Fields that Kubernetes fills in (`uid`,
/// `resourceVersion`, ...) are accepted and ignored, so `kubectl get -o yaml` output reads back.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderMetadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    generation: Option<i64>,
    /// Kept: a Kubernetes object's uid names it in the ownerReferences of its Secrets.
    uid: Option<String>,
    #[allow(dead_code)]
    resource_version: Option<IgnoredAny>,
    #[allow(dead_code)]
    creation_timestamp: Option<IgnoredAny>,
    #[allow(dead_code)]
    managed_fields: Option<IgnoredAny>,
    #[allow(dead_code)]
    finalizers: Option<IgnoredAny>,
    #[allow(dead_code)]
    owner_references: Option<IgnoredAny>,
}

/// Only the spec of a document, as the kind's type.
#[derive(Deserialize)]
#[serde(bound = "S: DeserializeOwned")]
struct SpecOnly<S> {
    spec: Option<S>,
}

/// The object of one document, or every problem found in it.
fn parse_document(file: &str, document: &RawDocument<'_>) -> Result<SourcedObject, Vec<Problem>> {
    parse_header(file, document).map_err(|problem| vec![*problem])?
}

/// The object of one document; `Err` for a header that cannot be read (nothing further can
/// be said then), `Ok(Err)` with every problem of a spec that does not read.
fn parse_header(
    file: &str,
    document: &RawDocument<'_>,
) -> Result<Result<SourcedObject, Vec<Problem>>, Box<Problem>> {
    let origin = Origin {
        file: file.to_owned(),
        line: document.first_line,
    };
    let problem = |object: Option<ObjectKey>, field: &str, message: String| {
        let line = document.lines.line(field).unwrap_or(document.first_line);
        Box::new(Problem {
            file: Some(file.to_owned()),
            line: Some(line),
            object,
            field: (!field.is_empty()).then(|| field.to_owned()),
            message,
        })
    };
    if document.text.len() > MAX_DOCUMENT_BYTES {
        return Err(problem(
            None,
            "",
            format!(
                "document is {} bytes, more than the {MAX_DOCUMENT_BYTES} allowed",
                document.text.len()
            ),
        ));
    }

    let header: Header = deserialize(document).map_err(|e| e.into_problem(&origin, None))?;
    let metadata = header
        .metadata
        .ok_or_else(|| problem(None, "metadata", "metadata.name is required".into()))?;
    let name = metadata
        .name
        .ok_or_else(|| problem(None, "metadata", "metadata.name is required".into()))?;
    let namespace = metadata
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let kind_name = header
        .kind
        .ok_or_else(|| problem(None, "", "kind is required".into()))?;
    let api_version = header
        .api_version
        .ok_or_else(|| problem(None, "", "apiVersion is required".into()))?;
    let kind = Kind::from_name(&kind_name).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        problem(
            None,
            "kind",
            format!(
                "unknown kind `{kind_name}` (Tessera knows {})",
                known.join(", ")
            ),
        )
    })?;
    let key = ObjectKey::new(kind, &namespace, &name);
    // Problems of the header refuse the object, but its spec is still read and checked, so
    // they do not hide its other mistakes.
    let refused: Vec<Problem> = [
        (api_version != API_VERSION).then(|| {
            let hint = if api_version.starts_with(&format!("{GROUP}/")) {
                format!("this version of Tessera reads {API_VERSION}")
            } else {
                format!("Tessera's kinds are {API_VERSION}")
            };
            (
                "apiVersion",
                format!("unknown apiVersion `{api_version}` for kind {kind_name}: {hint}"),
            )
        }),
        validate::object_name(&name).map(|reason| ("metadata.name", reason)),
        validate::object_name(&namespace).map(|reason| ("metadata.namespace", reason)),
    ]
    .into_iter()
    .flatten()
    .map(|(field, reason)| *problem(Some(key.clone()), field, reason))
    .collect();

    let meta = ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: (!metadata.labels.is_empty()).then_some(metadata.labels),
        annotations: (!metadata.annotations.is_empty()).then_some(metadata.annotations),
        generation: metadata.generation,
        uid: metadata.uid,
        ..ObjectMeta::default()
    };
    Ok(read_object(kind, &meta, document, origin, &key, refused))
}

/// The object of `document` once its header is read, or every problem of it: those of the
/// header (`refused`), then those of its spec.
fn read_object(
    kind: Kind,
    meta: &ObjectMeta,
    document: &RawDocument<'_>,
    origin: Origin,
    key: &ObjectKey,
    mut refused: Vec<Problem>,
) -> Result<SourcedObject, Vec<Problem>> {
    let resource = match read_resource(kind, meta.clone(), document) {
        Ok(resource) => resource,
        Err(first) => {
            refused.push(*first.clone().into_problem(&origin, Some(key.clone())));
            refused.extend(further_problems(kind, meta, document, &first, &origin));
            for problem in &mut refused {
                problem.object = Some(key.clone());
            }
            return Err(refused);
        }
    };
    let object = SourcedObject {
        resource,
        origin,
        lines: document.lines.clone(),
    };
    if refused.is_empty() {
        Ok(object)
    } else {
        refused.extend(validate::object(&object));
        Err(refused)
    }
}

/// How many more problems of one spec are looked for after the first: enough for any
/// real document, and a bound on re-reading a hostile one.
const MAX_FURTHER_PROBLEMS: usize = 32;

/// The problems of a spec after its `first`: the field at fault is left out and the spec
/// read again, until it reads; then the object's own checks run on what is left. So one
/// typo does not hide the object's other mistakes. A missing field, or one inside a list,
/// ends the search (leaving it out would only move the problem).
fn further_problems(
    kind: Kind,
    metadata: &ObjectMeta,
    document: &RawDocument<'_>,
    first: &ParseError,
    origin: &Origin,
) -> Vec<Problem> {
    let mut found = Vec::new();
    let Ok(mut value) = serde_saphyr::from_str::<serde_json::Value>(document.text) else {
        return found;
    };
    let mut error = first.clone();
    for _ in 0..MAX_FURTHER_PROBLEMS {
        if error.message.starts_with("missing field") || !remove_field(&mut value, &error.path) {
            break;
        }
        let read = ValueDocument {
            value: &value,
            lines: &document.lines,
            first_line: document.first_line,
        };
        match read_resource(kind, metadata.clone(), &read) {
            Ok(resource) => {
                let object = SourcedObject {
                    resource,
                    origin: origin.clone(),
                    lines: document.lines.clone(),
                };
                found.extend(validate::object(&object));
                break;
            }
            Err(next) => {
                found.push(*next.clone().into_problem(origin, None));
                error = next;
            }
        }
    }
    found
}

/// Removes the field at `path` (`spec.action.lauch`) from `value`; false when there is no
/// such field, or the path ends inside a list.
fn remove_field(value: &mut serde_json::Value, path: &str) -> bool {
    let Some((parents, last)) = path.rsplit_once('.') else {
        return false;
    };
    if last.contains('[') || last.is_empty() {
        return false;
    }
    let mut at = value;
    for segment in parents.split('.') {
        let (name, indexes) = match segment.find('[') {
            Some(cut) => (&segment[..cut], &segment[cut..]),
            None => (segment, ""),
        };
        let Some(next) = at.get_mut(name) else {
            return false;
        };
        at = next;
        for index in indexes.split(['[', ']']).filter(|i| !i.is_empty()) {
            let Some(next) = index.parse::<usize>().ok().and_then(|i| at.get_mut(i)) else {
                return false;
            };
            at = next;
        }
    }
    at.as_object_mut().and_then(|o| o.remove(last)).is_some()
}

/// The document's spec as `kind`'s type, with the metadata already read.
fn read_resource(
    kind: Kind,
    metadata: ObjectMeta,
    document: &impl ReadSpec,
) -> Result<Resource, ParseError> {
    Ok(match kind {
        Kind::Issuer => Resource::Issuer(Issuer {
            metadata,
            spec: document.spec()?,
            status: None,
        }),
        Kind::Certificate => Resource::Certificate(Certificate {
            metadata,
            spec: document.spec()?,
            status: None,
        }),
        Kind::Server => Resource::Server(Server {
            metadata,
            spec: document.spec()?,
            status: None,
        }),
        Kind::Gateway => Resource::Gateway(Gateway {
            metadata,
            spec: document.spec()?,
            status: None,
        }),
        Kind::Package => Resource::Package(Package {
            metadata,
            spec: document.spec()?,
            status: None,
        }),
        Kind::Activation => Resource::Activation(Activation {
            metadata,
            spec: document.spec()?,
            status: None,
        }),
        Kind::Affectation => Resource::Affectation(Affectation {
            metadata,
            spec: document.spec()?,
            status: None,
        }),
    })
}

/// A document whose spec can be read as a kind's type.
trait ReadSpec {
    /// The spec as `S`; a document with no spec is refused.
    fn spec<S: DeserializeOwned>(&self) -> Result<S, ParseError>;
}

impl ReadSpec for RawDocument<'_> {
    fn spec<S: DeserializeOwned>(&self) -> Result<S, ParseError> {
        let only: SpecOnly<S> = deserialize(self)?;
        only.spec.ok_or(ParseError {
            path: "spec".into(),
            line: self.lines.line("spec").unwrap_or(self.first_line),
            message: "spec is required".into(),
        })
    }
}

/// A document already read as a value, with fields left out ([`further_problems`]).
struct ValueDocument<'a> {
    value: &'a serde_json::Value,
    lines: &'a FieldLines,
    first_line: u32,
}

impl ReadSpec for ValueDocument<'_> {
    fn spec<S: DeserializeOwned>(&self) -> Result<S, ParseError> {
        let spec = self.value.get("spec").ok_or(ParseError {
            path: "spec".into(),
            line: self.lines.line("spec").unwrap_or(self.first_line),
            message: "spec is required".into(),
        })?;
        serde_path_to_error::deserialize(spec).map_err(|error| {
            let path = format!("spec.{}", error.path());
            ParseError {
                line: self.lines.line(&path).unwrap_or(self.first_line),
                message: same_words(&plain_message(&error.into_inner().to_string())),
                path,
            }
        })
    }
}

/// A serde error with its place in the file.
#[derive(Clone, Debug)]
pub struct ParseError {
    path: String,
    line: u32,
    message: String,
}

impl ParseError {
    fn into_problem(self, origin: &Origin, object: Option<ObjectKey>) -> Box<Problem> {
        Box::new(Problem {
            file: Some(origin.file.clone()),
            line: Some(self.line),
            object,
            field: (!self.path.is_empty() && self.path != "?").then_some(self.path),
            message: self.message,
        })
    }
}

fn deserialize<T: DeserializeOwned>(document: &RawDocument<'_>) -> Result<T, ParseError> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(document.text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|error| {
        let line = error
            .location()
            .and_then(|l| u32::try_from(l.line()).ok())
            .map(|l| l + document.first_line - 1)
            .or_else(|| document.lines.line(&path))
            .unwrap_or(document.first_line);
        ParseError {
            path,
            line,
            message: plain_message(&error.without_snippet().to_string()),
        }
    })
}

/// serde-saphyr ends messages with " at line L, column C"; the problem carries the line
/// already, and the line within a document slice would be wrong for the file anyway.
fn plain_message(message: &str) -> String {
    let trimmed = match message.rfind(" at line ") {
        Some(cut) if message[cut..].contains(", column ") => &message[..cut],
        _ => message,
    };
    trimmed
        .replace("unknown variant", "unknown value")
        .replace("expected one of ", "expected one of: ")
        .replace("invalid i64", "expected a whole number")
        .replace("invalid u32", "expected a whole number")
}

/// A message of serde's own words (`expected one of: \`a\`, \`b\``) as serde-saphyr words
/// it (`expected one of: a, b`), so a document's problems read alike whichever found them.
fn same_words(message: &str) -> String {
    match message.split_once("expected one of: ") {
        Some((head, list)) => format!("{head}expected one of: {}", list.replace('`', "")),
        None => message.to_owned(),
    }
}

/// One document of a file: its text (whole lines), where it starts and what its root is.
struct RawDocument<'a> {
    text: &'a str,
    first_line: u32,
    root: RootKind,
    lines: FieldLines,
}

enum RootKind {
    /// An empty document (only comments, or a bare `---`).
    Null,
    Mapping,
    Other,
}

/// Where we are in the tree while walking events.
enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

/// Splits `text` into documents, and returns the line and message of a syntax error, if any.
fn split_documents(text: &str) -> (Vec<RawDocument<'_>>, Option<(u32, String)>) {
    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut current: Option<(usize, u32, RootKind, HashMap<String, u32>)> = None;
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, span) = match parser.next() {
            None => break,
            Some(Ok(item)) => item,
            Some(Err(error)) => {
                let line = u32::try_from(error.marker().line()).unwrap_or(u32::MAX);
                return (documents, Some((line, error.info())));
            }
        };
        let line = u32::try_from(span.start.line()).unwrap_or(u32::MAX);
        let starts_node = matches!(
            event,
            Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(_)
        );
        if starts_node {
            let path = match stack.last_mut() {
                None => {
                    // The document's root node: the document's text starts at its line.
                    let byte = span.start.byte_offset().unwrap_or(0);
                    let line_start = text[..byte].rfind('\n').map_or(0, |i| i + 1);
                    let root = root_kind(&event);
                    current = Some((line_start, line, root, HashMap::new()));
                    Some(String::new())
                }
                Some(Frame::Mapping { path, key }) => match key.take() {
                    None => {
                        // A key. Only scalar keys name fields; a complex key is walked under `?`.
                        let name = match &event {
                            Event::Scalar(value, ..) => value.to_string(),
                            _ => "?".to_owned(),
                        };
                        let field = join(path, &name);
                        if let Some((_, _, _, lines)) = current.as_mut() {
                            lines.entry(field).or_insert(line);
                        }
                        *key = Some(name);
                        None
                    }
                    Some(name) => Some(join(path, &name)),
                },
                Some(Frame::Sequence { path, index }) => {
                    let item = format!("{path}[{index}]");
                    *index += 1;
                    if let Some((_, _, _, lines)) = current.as_mut() {
                        lines.entry(item.clone()).or_insert(line);
                    }
                    Some(item)
                }
            };
            // A key that is itself a mapping or sequence still needs a frame to walk through.
            let path = path.unwrap_or_else(|| "?".to_owned());
            match event {
                Event::MappingStart(..) => stack.push(Frame::Mapping { path, key: None }),
                Event::SequenceStart(..) => stack.push(Frame::Sequence { path, index: 0 }),
                _ => {}
            }
            continue;
        }
        match event {
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            Event::DocumentEnd => {
                if let Some((start, first_line, root, lines)) = current.take() {
                    let end = span.start.byte_offset().unwrap_or(text.len()).max(start);
                    documents.push(RawDocument {
                        text: &text[start..end],
                        first_line,
                        root,
                        lines: FieldLines(lines),
                    });
                }
                stack.clear();
            }
            _ => {}
        }
    }
    (documents, None)
}

/// What a document's root node is, from its first event.
fn root_kind(event: &Event<'_>) -> RootKind {
    match event {
        Event::MappingStart(..) => RootKind::Mapping,
        Event::Scalar(value, style, ..)
            if value.is_empty()
                && matches!(style, serde_saphyr::granit_parser::ScalarStyle::Plain) =>
        {
            RootKind::Null
        }
        Event::Scalar(value, ..) if value == "~" || value == "null" => RootKind::Null,
        _ => RootKind::Other,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lines_cover_nested_keys_and_sequence_items() {
        let text = "apiVersion: x\nspec:\n  names:\n    - a\n    - b\n  inner:\n    key: 1\n";
        let (documents, error) = split_documents(text);
        assert!(error.is_none());
        let lines = &documents[0].lines;
        assert_eq!(lines.line("spec"), Some(2));
        assert_eq!(lines.line("spec.names[1]"), Some(5));
        assert_eq!(lines.line("spec.inner.key"), Some(7));
        // A field that is absent falls back to its parent's line.
        assert_eq!(lines.line("spec.inner.missing"), Some(6));
    }

    #[test]
    fn documents_carry_their_first_line_in_the_file() {
        let text = "# leading comment\na: 1\n---\n\nb: 2\n---\n# only a comment\n---\nc: 3\n";
        let (documents, error) = split_documents(text);
        assert!(error.is_none());
        assert_eq!(documents.len(), 4);
        assert!(matches!(documents[2].root, RootKind::Null));
        let firsts: Vec<u32> = documents
            .iter()
            .filter(|d| !matches!(d.root, RootKind::Null))
            .map(|d| d.first_line)
            .collect();
        assert_eq!(firsts, vec![2, 5, 9]);
        assert_eq!(documents[1].text.trim(), "b: 2");
    }

    #[test]
    fn a_syntax_error_keeps_the_documents_before_it() {
        let text = "a: 1\n---\nb: [1, 2\n";
        let (documents, error) = split_documents(text);
        assert_eq!(documents.len(), 1);
        let (line, _) = error.expect("syntax error");
        assert!(line >= 3, "error line {line}");
    }

    #[test]
    fn indented_documents_keep_their_indentation() {
        let text = "---\n  a: 1\n  b:\n    c: 2\n";
        let (documents, _) = split_documents(text);
        assert_eq!(documents[0].text, "  a: 1\n  b:\n    c: 2\n");
        assert_eq!(documents[0].lines.line("b.c"), Some(4));
    }

    #[test]
    fn plain_message_drops_the_location_suffix() {
        assert_eq!(
            plain_message("unknown field `b`, expected one of a, u at line 2, column 1"),
            "unknown field `b`, expected one of: a, u"
        );
        assert_eq!(plain_message("no location here"), "no location here");
    }
}
