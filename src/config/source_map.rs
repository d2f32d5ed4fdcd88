//! Where each key of a YAML document stands, so that a semantic error found after deserialising
//! (an unknown upstream, a bad CIDR) can still name the operator's line, as `nginx -t` does.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Maps dotted paths (`routes[1].upstream`, `server.listen[0]`) to 1-based line numbers.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    lines: HashMap<String, usize>,
    /// False when the text is not valid YAML: positions then come from the parser's error.
    pub complete: bool,
}

impl SourceMap {
    /// Builds the map; a document that does not parse gives an empty map (serde reports that error).
    pub fn build(text: &str) -> SourceMap {
        let mut walker = Walker::default();
        let complete = Parser::new_from_str(text).load(&mut walker, false).is_ok();
        SourceMap {
            lines: walker.lines,
            complete,
        }
    }

    /// The line of `path`, or of its nearest ancestor that is in the file (a missing key is reported
    /// at the section that should have held it).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<(String, Frame)>,
    lines: HashMap<String, usize>,
}

impl Walker {
    /// The path of the value about to start, and records its line; `None` for a mapping key.
    fn enter_value(&mut self, mark: &Marker) -> Option<String> {
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some((base, Frame::Seq { index })) => {
                let p = format!("{base}[{index}]");
                *index += 1;
                p
            }
            Some((_, Frame::Map { key: None })) => return None,
            Some((base, Frame::Map { key })) => {
                let k = key.take().unwrap_or_default();
                if base.is_empty() {
                    k
                } else {
                    format!("{base}.{k}")
                }
            }
        };
        self.lines.entry(path.clone()).or_insert(mark.line());
        Some(path)
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            // A scalar where a mapping key is due: remember it; its line is where it is written.
            Event::Scalar(value, ..) if self.enter_value(&mark).is_none() => {
                if let Some((base, Frame::Map { key })) = self.stack.last_mut() {
                    let p = if base.is_empty() {
                        value.clone()
                    } else {
                        format!("{base}.{value}")
                    };
                    self.lines.entry(p).or_insert(mark.line());
                    *key = Some(value);
                }
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(&mark).unwrap_or_default();
                self.stack.push((path, Frame::Seq { index: 0 }));
            }
            Event::MappingStart(..) => {
                let path = self.enter_value(&mark).unwrap_or_default();
                self.stack.push((path, Frame::Map { key: None }));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.enter_value(&mark);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_nested_keys_and_list_items() {
        let text = "server:\n  listen:\n    - \"0.0.0.0:80\"\n    - \"[::]:80\"\nroutes:\n  - prefix: /a\n    upstream: api\n  - { prefix: /b, upstream: web }\n";
        let map = SourceMap::build(text);
        assert_eq!(map.line_of("server"), Some(1));
        assert_eq!(map.line_of("server.listen[1]"), Some(4));
        assert_eq!(map.line_of("routes[0].upstream"), Some(7));
        assert_eq!(map.line_of("routes[1].upstream"), Some(8));
        assert_eq!(
            map.line_of("server.threads"),
            Some(1),
            "missing key falls back to its section"
        );
    }
}
