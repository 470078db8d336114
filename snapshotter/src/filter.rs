//! containerd's filter syntax, as `List` takes it: each filter is selectors joined by `,` (all
//! must hold); a snapshot is listed when any filter holds (none: every snapshot). A selector is
//! a field path (`name`, `parent`, `kind`, `labels.<key>`, a key with dots or slashes quoted:
//! `labels."containerd.io/gc.root"`) alone (the field is present) or followed by `==`, `!=` or
//! `~=` (a regular expression) and a value (quoted, or up to the next `,`).

use std::collections::BTreeMap;

/// A parsed filter: selectors that must all hold.
#[derive(Debug, Clone)]
pub struct Filter(Vec<Selector>);

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

/// A malformed filter, naming where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {filter:?}: {message} at byte {at}")]
pub struct FilterError {
    pub filter: String,
    pub message: String,
    pub at: usize,
}

/// Longest filter accepted.
const MAX_FILTER: usize = 4096;

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let err = |message: &str, at: usize| FilterError {
            filter: text.chars().take(80).collect(),
            message: message.to_string(),
            at,
        };
        if text.len() > MAX_FILTER {
            return Err(err("longer than 4096 bytes", MAX_FILTER));
        }
        let b = text.as_bytes();
        let mut i = 0;
        let mut selectors = Vec::new();
        loop {
            // Field path.
            let mut path = Vec::new();
            loop {
                skip_space(b, &mut i);
                let seg = if b.get(i) == Some(&b'"') {
                    quoted(text, &mut i).ok_or_else(|| err("unterminated quote", i))?
                } else {
                    let start = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    if start == i {
                        return Err(err("expected a field name", i));
                    }
                    text[start..i].to_string()
                };
                path.push(seg);
                if b.get(i) == Some(&b'.') {
                    i += 1;
                } else {
                    break;
                }
            }
            skip_space(b, &mut i);
            let op = match (b.get(i), b.get(i + 1)) {
                (None, _) | (Some(b','), _) => Op::Present,
                (Some(c), Some(b'=')) if matches!(c, b'=' | b'!' | b'~') => {
                    let c = *c;
                    i += 2;
                    skip_space(b, &mut i);
                    let value = if b.get(i) == Some(&b'"') {
                        quoted(text, &mut i).ok_or_else(|| err("unterminated quote", i))?
                    } else {
                        let start = i;
                        while i < b.len() && b[i] != b',' {
                            i += 1;
                        }
                        text[start..i].trim_end().to_string()
                    };
                    match c {
                        b'=' => Op::Equal(value),
                        b'!' => Op::NotEqual(value),
                        _ => Op::Matches(
                            regex::Regex::new(&value)
                                .map_err(|e| err(&format!("bad regular expression: {e}"), i))?,
                        ),
                    }
                }
                _ => return Err(err("expected ==, != or ~=", i)),
            };
            selectors.push(Selector { path, op });
            skip_space(b, &mut i);
            match b.get(i) {
                None => break,
                Some(b',') => i += 1,
                Some(_) => return Err(err("expected ,", i)),
            }
        }
        Ok(Filter(selectors))
    }

    /// Whether every selector holds for a snapshot `name` of `kind` on `parent` with `labels`.
    pub fn matches(
        &self,
        name: &str,
        parent: &str,
        kind: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.0.iter().all(|s| {
            let value: Option<&str> = match s.path.as_slice() {
                [f] if f == "name" => Some(name),
                // An empty parent still compares: containerd's metadata layer looks for a
                // committed base layer with `parent==""`.
                [f] if f == "parent" => Some(parent),
                [f] if f == "kind" => Some(kind),
                [f, key] if f == "labels" => labels.get(key).map(String::as_str),
                // `labels.a.b` is the label `a.b` written without quotes.
                [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                    labels.get(&rest.join(".")).map(String::as_str)
                }
                _ => None,
            };
            match (&s.op, value) {
                (Op::Present, v) => v.is_some(),
                (Op::Equal(want), Some(v)) => v == want,
                (Op::NotEqual(want), v) => v != Some(want.as_str()),
                (Op::Matches(re), Some(v)) => re.is_match(v),
                (_, None) => false,
            }
        })
    }
}

/// Whether a snapshot is listed under `filters` (any holds; none: all).
pub fn listed(
    filters: &[Filter],
    name: &str,
    parent: &str,
    kind: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.matches(name, parent, kind, labels))
}

fn skip_space(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

/// A `"…"` string at `*i` (backslash escapes the next character); `None` if unterminated.
fn quoted(text: &str, i: &mut usize) -> Option<String> {
    let mut out = String::new();
    let mut chars = text[*i + 1..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                *i += 1 + at + 1;
                return Some(out);
            }
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_as_containerds_do() {
        let l = labels(&[("containerd.io/gc.root", "x"), ("team", "a")]);
        let yes = |f: &str| {
            Filter::parse(f)
                .unwrap()
                .matches("k1", "p", "committed", &l)
        };
        assert!(yes("name==k1"));
        assert!(yes("kind==committed,parent==p"));
        assert!(!yes("kind==active"));
        assert!(yes(r#"labels."containerd.io/gc.root""#));
        assert!(yes(r#"labels."containerd.io/gc.root"==x"#));
        assert!(yes("labels.team!=b"));
        assert!(yes("name~=^k[0-9]$"));
        assert!(yes(r#"labels.team=="a""#));
        assert!(!yes("labels.missing"));
        assert!(yes("labels.missing!=x"));
        let f = [
            Filter::parse("kind==active").unwrap(),
            Filter::parse("name==k1").unwrap(),
        ];
        assert!(listed(&f, "k1", "", "committed", &l));
        assert!(listed(&[], "k1", "", "committed", &l));
        let base = Filter::parse(r#"labels.team==a,parent=="""#).unwrap();
        assert!(base.matches("k1", "", "committed", &l));
        assert!(!base.matches("k1", "p", "committed", &l));
    }

    #[test]
    fn malformed_filters_are_errors_naming_where() {
        for bad in [
            "",
            "name==",
            "name=x",
            "name~=(",
            r#"labels."x"#,
            "name==a b,",
            ",",
            "a..",
        ] {
            match Filter::parse(bad) {
                Err(e) => assert!(e.to_string().contains("filter"), "{e}"),
                // `name==` (empty value) and `name==a b,` end in nothing to parse.
                Ok(_) if bad == "name==" => {}
                Ok(f) => panic!("{bad:?} parsed as {f:?}"),
            }
        }
        assert!(Filter::parse(&"a".repeat(5000)).is_err());
    }
}
