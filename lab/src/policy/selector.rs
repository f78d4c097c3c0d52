//! Label selectors as Cilium evaluates them: Kubernetes `matchLabels` / `matchExpressions` whose
//! keys carry a label source (`k8s:app`, `reserved:host`, `any:app`, or a bare `app`, which means
//! any source), matched against Cilium-style labels (`k8s:app` → `web`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::identity::Labels;

/// The namespace label every pod carries (without its source).
pub const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";

/// The source part of a selector key. `Any` matches labels of every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Any,
    K8s,
    Reserved,
}

impl Source {
    fn prefix(self) -> &'static str {
        match self {
            Source::Any => "any",
            Source::K8s => "k8s",
            Source::Reserved => "reserved",
        }
    }
}

/// A selector key: a source and a label key (`k8s` + `app`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelKey {
    pub source: Source,
    pub key: String,
}

impl LabelKey {
    pub fn new(source: Source, key: &str) -> LabelKey {
        LabelKey { source, key: key.to_string() }
    }

    /// `app`, `any:app`, `k8s:app` or `reserved:host`, split at the first `:` as Cilium does.
    pub fn parse(text: &str) -> Result<LabelKey, String> {
        let (source, key) = match text.split_once(':') {
            None => (Source::Any, text),
            Some(("any", key)) => (Source::Any, key),
            Some(("k8s", key)) => (Source::K8s, key),
            Some(("reserved", key)) => (Source::Reserved, key),
            Some((source, _)) => {
                return Err(format!(
                    "label source `{source}` in key `{text}` is not supported; use `k8s:`, `any:`, `reserved:` or no source"
                ));
            }
        };
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == ':') {
            return Err(format!("`{text}` is not a valid label key"));
        }
        Ok(LabelKey { source, key: key.to_string() })
    }

    /// Whether this is the pod-namespace key of a source that pod labels can have.
    pub fn is_namespace(&self) -> bool {
        self.key == NAMESPACE_KEY && matches!(self.source, Source::Any | Source::K8s)
    }

    /// The value of this key in `labels` (Cilium `source:key` labels); for `any`, the first label
    /// with this key of any source, in sorted order.
    pub fn value<'a>(&self, labels: &'a Labels) -> Option<&'a str> {
        match self.source {
            Source::Any => labels
                .0
                .iter()
                .find(|(label, _)| label.split_once(':').map_or(label.as_str(), |(_, key)| key) == self.key)
                .map(|(_, value)| value.as_str()),
            source => labels.get(&format!("{}:{}", source.prefix(), self.key)),
        }
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source.prefix(), self.key)
    }
}

/// A `matchExpressions` operator (`matchLabels` entries are `In` with one value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: LabelKey,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn equals(key: LabelKey, value: &str) -> Requirement {
        Requirement { key, operator: Operator::In, values: BTreeSet::from([value.to_string()]) }
    }

    pub fn exists(key: LabelKey) -> Requirement {
        Requirement { key, operator: Operator::Exists, values: BTreeSet::new() }
    }

    /// Kubernetes semantics: `NotIn` and `DoesNotExist` match labels without the key.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = self.key.value(labels);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = || self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.operator {
            Operator::In if self.values.len() == 1 => write!(f, "{}={}", self.key, values()),
            Operator::In => write!(f, "{} in ({})", self.key, values()),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, values()),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A conjunction of requirements; no requirements selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether any requirement is on the pod namespace (`k8s:` or any source).
    pub fn mentions_namespace(&self) -> bool {
        self.requirements.iter().any(|r| r.key.is_namespace())
    }

    pub fn with(mut self, requirement: Requirement) -> Selector {
        self.requirements.push(requirement);
        self
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

/// A selector as written: Kubernetes `LabelSelector` with Cilium label keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SelectorSpec {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<ExpressionSpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpressionSpec {
    pub key: String,
    pub operator: String,
    pub values: Option<Vec<String>>,
}

impl SelectorSpec {
    /// Checks and converts the selector; an error is `(field relative to the selector, message)`.
    pub fn to_selector(&self) -> Result<Selector, (String, String)> {
        self.convert(LabelKey::parse)
    }

    /// A Kubernetes selector (NetworkPolicy): keys are plain label keys of source `k8s`, each
    /// prefixed with `prefix` (`io.cilium.k8s.namespace.labels.` for a namespace selector).
    pub fn to_k8s_selector(&self, prefix: &str) -> Result<Selector, (String, String)> {
        self.convert(|key| {
            if is_label_key(key) {
                Ok(LabelKey::new(Source::K8s, &format!("{prefix}{key}")))
            } else {
                Err(format!("`{key}` is not a valid Kubernetes label key"))
            }
        })
    }

    fn convert(&self, parse_key: impl Fn(&str) -> Result<LabelKey, String>) -> Result<Selector, (String, String)> {
        let mut requirements = Vec::new();
        for (key, value) in self.match_labels.iter().flatten() {
            let field = format!("matchLabels.{key}");
            let key = parse_key(key).map_err(|m| (field, m))?;
            requirements.push(Requirement::equals(key, value));
        }
        for (i, expression) in self.match_expressions.iter().flatten().enumerate() {
            let field = |name: &str| format!("matchExpressions[{i}].{name}");
            let key = parse_key(&expression.key).map_err(|m| (field("key"), m))?;
            let operator = match expression.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err((
                        field("operator"),
                        format!("unknown operator `{other}`, expected In, NotIn, Exists or DoesNotExist"),
                    ));
                }
            };
            let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err((
                        field("values"),
                        format!("operator {} needs at least one value", expression.operator),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err((field("values"), format!("operator {} takes no values", expression.operator)));
                }
                _ => {}
            }
            requirements.push(Requirement { key, operator, values });
        }
        Ok(Selector { requirements })
    }
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let alnum_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let name_ok = (1..=63).contains(&name.len())
        && alnum_ends(name)
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        (1..=253).contains(&p.len())
            && p.split('.').all(|part| {
                alnum_ends(part) && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn selector(yaml: &str) -> Result<Selector, (String, String)> {
        serde_yaml::from_str::<SelectorSpec>(yaml).unwrap().to_selector()
    }

    #[test]
    fn keys_without_a_source_match_any_source() {
        let pod = labels(&[("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "x")]);
        for key in ["app", "any:app", "k8s:app"] {
            assert!(selector(&format!("matchLabels: {{'{key}': web}}")).unwrap().matches(&pod), "{key}");
        }
        assert!(!selector("matchLabels: {'reserved:app': web}").unwrap().matches(&pod));
        assert!(!selector("matchLabels: {app: db}").unwrap().matches(&pod));
        assert!(selector("{}").unwrap().matches(&pod));
        let host = labels(&[("reserved:host", "")]);
        assert!(selector("matchLabels: {'reserved:host': ''}").unwrap().matches(&host));
    }

    #[test]
    fn match_expressions_follow_kubernetes() {
        let pod = labels(&[("k8s:app", "web"), ("k8s:tier", "front")]);
        let matches = |yaml: &str| selector(yaml).unwrap().matches(&pod);
        assert!(matches("matchExpressions: [{key: app, operator: In, values: [db, web]}]"));
        assert!(!matches("matchExpressions: [{key: app, operator: In, values: [db]}]"));
        assert!(matches("matchExpressions: [{key: app, operator: NotIn, values: [db]}]"));
        assert!(!matches("matchExpressions: [{key: app, operator: NotIn, values: [web]}]"));
        assert!(matches("matchExpressions: [{key: version, operator: NotIn, values: [v1]}]"), "absent key");
        assert!(matches("matchExpressions: [{key: 'k8s:tier', operator: Exists}]"));
        assert!(!matches("matchExpressions: [{key: version, operator: Exists}]"));
        assert!(matches("matchExpressions: [{key: version, operator: DoesNotExist}]"));
        assert!(!matches("matchExpressions: [{key: app, operator: DoesNotExist}]"));
        assert!(!matches("{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [back]}]}"));
    }

    #[test]
    fn bad_selectors_name_their_field() {
        let err = selector("matchExpressions: [{key: app, operator: Equals, values: [a]}]").unwrap_err();
        assert_eq!(err.0, "matchExpressions[0].operator");
        assert!(err.1.contains("Equals"));
        assert_eq!(
            selector("matchExpressions: [{key: app, operator: In}]").unwrap_err().0,
            "matchExpressions[0].values"
        );
        assert_eq!(
            selector("matchExpressions: [{key: app, operator: Exists, values: [a]}]").unwrap_err().0,
            "matchExpressions[0].values"
        );
        assert_eq!(selector("matchLabels: {'cidr:app': a}").unwrap_err().0, "matchLabels.cidr:app");
    }

    #[test]
    fn kubernetes_selectors_have_k8s_keys_with_a_prefix() {
        let spec: SelectorSpec =
            serde_yaml::from_str("{matchLabels: {team: red}, matchExpressions: [{key: env, operator: Exists}]}")
                .unwrap();
        let s = spec.to_k8s_selector("io.cilium.k8s.namespace.labels.").unwrap();
        assert_eq!(
            s.to_string(),
            "k8s:io.cilium.k8s.namespace.labels.team=red, k8s:io.cilium.k8s.namespace.labels.env"
        );
        let ns = labels(&[
            ("k8s:io.cilium.k8s.namespace.labels.team", "red"),
            ("k8s:io.cilium.k8s.namespace.labels.env", ""),
        ]);
        assert!(s.matches(&ns));
        let bad: SelectorSpec = serde_yaml::from_str("matchLabels: {'k8s:app': a}").unwrap();
        assert_eq!(bad.to_k8s_selector("").unwrap_err().0, "matchLabels.k8s:app");
        assert!(is_label_key("app") && is_label_key("app.kubernetes.io/name") && is_label_key("a_b.c-d"));
        assert!(!is_label_key("") && !is_label_key("-a") && !is_label_key("a b") && !is_label_key("Foo.com/a"));
        assert!(!is_label_key(&"a".repeat(64)) && !is_label_key("/a"));
    }
}
