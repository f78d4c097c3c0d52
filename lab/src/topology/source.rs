//! Where each value of a YAML document stands in its file.
//!
//! serde gives locations for syntax and type errors but not for values that are well-formed yet
//! wrong (a pod on a node that does not exist). The validator names such a value by its path
//! (`pods[3].node`, the same spelling serde uses) and this map turns the path into a line and
//! column.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The locations of every value of one YAML document, by path.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    locations: HashMap<String, Location>,
}

impl SourceMap {
    /// Maps every document of `text`. A text that does not parse yields what was read before the
    /// error; serde reports the error itself, with its location.
    pub fn documents(text: &str) -> Vec<SourceMap> {
        let mut recorder = Recorder::default();
        let _ = Parser::new_from_str(text).load(&mut recorder, true);
        recorder.finish()
    }

    /// Maps the first document of `text`.
    pub fn parse(text: &str) -> SourceMap {
        Self::documents(text).into_iter().next().unwrap_or_default()
    }

    /// The location of the value at `path`, or of its nearest ancestor that is written down (a
    /// defaulted field has no location of its own).
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.locations.get(path) {
                return Some(*location);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Moves every location by `lines` and `columns`, for a document embedded in a block scalar.
    pub fn shifted(mut self, lines: usize, columns: usize) -> SourceMap {
        for location in self.locations.values_mut() {
            location.line += lines;
            location.column += columns;
        }
        self
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    current: SourceMap,
    documents: Vec<SourceMap>,
}

impl Recorder {
    fn finish(mut self) -> Vec<SourceMap> {
        if !self.current.locations.is_empty() {
            self.documents.push(std::mem::take(&mut self.current));
        }
        self.documents
    }

    /// The path of the node that starts now, or `None` if that node is a mapping key.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { key: None, .. }) => None,
            Some(Frame::Mapping { path, key }) => {
                let key = key.take().expect("matched Some above");
                Some(if path.is_empty() { key } else { format!("{path}.{key}") })
            }
            Some(Frame::Sequence { path, index }) => {
                *index += 1;
                Some(format!("{path}[{}]", *index - 1))
            }
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        let location = Location { line: mark.line(), column: mark.col() + 1 };
        self.current.locations.entry(path.to_string()).or_insert(location);
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => self.stack.clear(),
            Event::DocumentEnd => self.documents.push(std::mem::take(&mut self.current)),
            Event::Scalar(value, ..) => match self.next_path() {
                Some(path) => self.record(&path, mark),
                None => {
                    if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(path) = self.next_path() {
                    self.record(&path, mark);
                } else if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                    *key = Some("<alias>".into());
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a mapping key has no path of its own; its contents are
                // recorded under a name no validator asks for.
                let path = self.next_path().unwrap_or_else(|| "<complex key>".into());
                self.record(&path, mark);
                self.stack.push(match event {
                    Event::MappingStart(..) => Frame::Mapping { path, key: None },
                    _ => Frame::Sequence { path, index: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut()
                    && key.as_deref() == Some("<complex key>")
                {
                    *key = None;
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
name: demo
nodes:
  - name: a
  - name: b
    sysctls:
      net.ipv4.ip_forward: 1
pods:
  - {name: p, node: x}
";

    #[test]
    fn values_are_located_by_path() {
        let map = SourceMap::parse(TEXT);
        assert_eq!(map.locate("name"), Some(Location { line: 1, column: 7 }));
        assert_eq!(map.locate("nodes[1].name"), Some(Location { line: 4, column: 11 }));
        assert_eq!(map.locate("nodes[1].sysctls.net.ipv4.ip_forward"), Some(Location { line: 6, column: 28 }));
        assert_eq!(map.locate("pods[0].node"), Some(Location { line: 8, column: 21 }));
    }

    #[test]
    fn a_missing_value_falls_back_to_its_parent() {
        let map = SourceMap::parse(TEXT);
        assert_eq!(map.locate("pods[0].namespace"), map.locate("pods[0]"));
        assert_eq!(map.locate("cluster.mtu"), None);
    }

    #[test]
    fn documents_are_mapped_separately() {
        let maps = SourceMap::documents("kind: A\n---\nkind: B\nmetadata: {name: x}\n");
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[1].locate("metadata.name"), Some(Location { line: 4, column: 18 }));
    }
}
