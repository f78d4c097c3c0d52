//! Selectors evaluated once each over a fixed universe of label sets, as Cilium's SelectorCache
//! does. Matching every selector against every label set is rules × identities label lookups
//! (10,000 × 5,000 in `lab bench policy`); an inverted index from labels to the members carrying
//! them instead answers each requirement with a sorted member list, so a selector costs about as
//! much as its smallest positive requirement selects. Results are exactly [`Selector::matches`].

use std::collections::HashMap;

use crate::identity::Labels;

use super::selector::{Operator, Selector, Source};

/// A member of the universe: its position in the label sets given to [`SelectorCache::new`].
pub(crate) type Member = usize;

/// The members that have one key, in ascending order, all of them and by value.
#[derive(Debug, Default)]
struct Column<'a> {
    members: Vec<Member>,
    by_value: HashMap<&'a str, Vec<Member>>,
}

impl<'a> Column<'a> {
    fn add(&mut self, member: Member, value: &'a str) {
        self.members.push(member);
        self.by_value.entry(value).or_default().push(member);
    }
}

#[derive(Debug)]
pub(crate) struct SelectorCache<'a> {
    universe: usize,
    /// By selector key. A `k8s:` or `reserved:` key has the labels of that source; an `any:` key,
    /// of each member, the first label with that key in sorted order across sources, which is
    /// the one [`super::selector::LabelKey::value`] reads.
    columns: HashMap<(Source, &'a str), Column<'a>>,
    selections: HashMap<Selector, Vec<Member>>,
}

impl<'a> SelectorCache<'a> {
    pub fn new(universe: impl IntoIterator<Item = &'a Labels>) -> SelectorCache<'a> {
        let mut columns: HashMap<(Source, &'a str), Column<'a>> = HashMap::new();
        let mut size = 0;
        for (member, labels) in universe.into_iter().enumerate() {
            size = member + 1;
            for (label, value) in &labels.0 {
                let (source, key) = match label.split_once(':') {
                    Some(("k8s", key)) => (Some(Source::K8s), key),
                    Some(("reserved", key)) => (Some(Source::Reserved), key),
                    Some((_, key)) => (None, key),
                    None => (None, label.as_str()),
                };
                if let Some(source) = source {
                    columns.entry((source, key)).or_default().add(member, value);
                }
                let any = columns.entry((Source::Any, key)).or_default();
                if any.members.last() != Some(&member) {
                    any.add(member, value);
                }
            }
        }
        SelectorCache { universe: size, columns, selections: HashMap::new() }
    }

    /// The members `selector` matches, in ascending order.
    pub fn select(&mut self, selector: &Selector) -> &[Member] {
        if !self.selections.contains_key(selector) {
            let selected = self.evaluate(selector);
            self.selections.insert(selector.clone(), selected);
        }
        &self.selections[selector]
    }

    fn evaluate(&self, selector: &Selector) -> Vec<Member> {
        // Per requirement, the members its key and values pick, as disjoint sorted lists (a
        // member has one value per key): `In` and `Exists` must hold each match among them,
        // `NotIn` and `DoesNotExist` must not, which is how they match members without the key.
        let mut required: Vec<Vec<&[Member]>> = Vec::new();
        let mut excluded: Vec<Vec<&[Member]>> = Vec::new();
        for requirement in &selector.requirements {
            let column = self.columns.get(&(requirement.key.source, requirement.key.key.as_str()));
            let picked: Vec<&[Member]> = match (column, requirement.operator) {
                (None, _) => Vec::new(),
                (Some(column), Operator::Exists | Operator::DoesNotExist) => vec![&column.members],
                (Some(column), Operator::In | Operator::NotIn) => requirement
                    .values
                    .iter()
                    .filter_map(|v| column.by_value.get(v.as_str()))
                    .map(Vec::as_slice)
                    .collect(),
            };
            match requirement.operator {
                Operator::In | Operator::Exists => required.push(picked),
                Operator::NotIn | Operator::DoesNotExist => excluded.push(picked),
            }
        }
        let size = |lists: &Vec<&[Member]>| lists.iter().map(|list| list.len()).sum::<usize>();
        required.sort_by_key(size);
        let mut selected: Vec<Member> = match required.first() {
            None => (0..self.universe).collect(),
            Some(lists) => {
                let mut members = lists.concat();
                members.sort_unstable();
                members
            }
        };
        let picks = |lists: &[&[Member]], member: &Member| lists.iter().any(|list| list.binary_search(member).is_ok());
        for lists in required.iter().skip(1) {
            selected.retain(|member| picks(lists, member));
        }
        for lists in &excluded {
            selected.retain(|member| !picks(lists, member));
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::selector::{LabelKey, Requirement};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// Label sets covering what selectors distinguish: one key under several sources (where the
    /// first in sorted order decides `any:`), labels of sources selectors cannot name, labels
    /// without a source, empty values, missing keys, and an empty set.
    fn universe() -> Vec<Labels> {
        vec![
            labels(&[]),
            labels(&[("k8s:app", "web")]),
            labels(&[("k8s:app", "db")]),
            labels(&[("k8s:app", "web"), ("k8s:tier", "front")]),
            labels(&[("k8s:app", "db"), ("k8s:tier", "back"), ("reserved:app", "web")]),
            labels(&[("reserved:app", "web")]),
            labels(&[("reserved:app", "db"), ("reserved:host", "")]),
            labels(&[("reserved:host", ""), ("reserved:world", "")]),
            labels(&[("cidr:app", "web"), ("k8s:app", "db")]),
            labels(&[("cidr:10.0.0.0/8", ""), ("reserved:world", "")]),
            labels(&[("any:app", "cache"), ("k8s:tier", "front")]),
            labels(&[("app", "web"), ("unspec:tier", "back")]),
            labels(&[("k8s:app", ""), ("k8s:tier", "")]),
            labels(&[("container:app", "db"), ("k8s:app", "web"), ("k8s:tier", "back")]),
            labels(&[("k8s:io.kubernetes.pod.namespace", "a"), ("k8s:app", "web")]),
            labels(&[("k8s:io.kubernetes.pod.namespace", "b"), ("k8s:app", "db"), ("reserved:host", "")]),
        ]
    }

    /// Every requirement over a grid of keys, operators and value sets.
    fn requirements() -> Vec<Requirement> {
        let keys = [
            (Source::Any, "app"),
            (Source::K8s, "app"),
            (Source::Reserved, "app"),
            (Source::Any, "tier"),
            (Source::K8s, "tier"),
            (Source::Reserved, "host"),
            (Source::Any, "world"),
            (Source::Any, "10.0.0.0/8"),
            (Source::K8s, "io.kubernetes.pod.namespace"),
            (Source::Any, "missing"),
        ];
        let value_sets: [&[&str]; 6] = [&["web"], &["db"], &[""], &["web", "db"], &["cache", "front", "back"], &["x"]];
        let mut requirements = Vec::new();
        for (source, key) in keys {
            let key = LabelKey::new(source, key);
            for operator in [Operator::Exists, Operator::DoesNotExist] {
                requirements.push(Requirement { key: key.clone(), operator, values: BTreeSet::new() });
            }
            for operator in [Operator::In, Operator::NotIn] {
                for values in value_sets {
                    let values = values.iter().map(|v| v.to_string()).collect();
                    requirements.push(Requirement { key: key.clone(), operator, values });
                }
            }
        }
        requirements
    }

    fn brute_force(selector: &Selector, universe: &[Labels]) -> Vec<Member> {
        (0..universe.len()).filter(|&m| selector.matches(&universe[m])).collect()
    }

    #[test]
    fn selections_are_those_of_matching_every_member() {
        let universe = universe();
        let mut cache = SelectorCache::new(&universe);
        let requirements = requirements();
        let mut selectors = vec![Selector::default()];
        // Every requirement alone and every pair (which covers the order requirements come in
        // and two on one key), and some triples.
        for (i, first) in requirements.iter().enumerate() {
            selectors.push(Selector::default().with(first.clone()));
            for (j, second) in requirements.iter().enumerate() {
                let pair = Selector::default().with(first.clone()).with(second.clone());
                if (i + j) % 7 == 0 {
                    selectors.push(pair.clone().with(requirements[(i * 31 + j) % requirements.len()].clone()));
                }
                selectors.push(pair);
            }
        }
        let mut seen = BTreeSet::new();
        for selector in &selectors {
            let expected = brute_force(selector, &universe);
            assert_eq!(cache.select(selector), expected.as_slice(), "{selector}");
            seen.insert(expected);
        }
        // Twice: the second answer comes from the cache.
        for selector in selectors.iter().step_by(97) {
            assert_eq!(cache.select(selector), brute_force(selector, &universe).as_slice(), "{selector}");
        }
        assert!(seen.len() > 100, "the grid distinguishes the members: {} distinct selections", seen.len());
    }

    #[test]
    fn an_empty_universe_selects_nothing() {
        let mut cache = SelectorCache::new(&[]);
        assert!(cache.select(&Selector::default()).is_empty());
        let absent = Requirement {
            key: LabelKey::new(Source::Any, "app"),
            operator: Operator::DoesNotExist,
            values: BTreeSet::new(),
        };
        assert!(cache.select(&Selector::default().with(absent)).is_empty());
    }
}
