//! Docker registry authentication challenges (`WWW-Authenticate` of a `401`), parsed the same
//! way wherever a service answers them (dfdaemon's lazy runtime, the manager's preheat).

use std::collections::BTreeMap;

/// Longest challenge header read.
pub const MAX_CHALLENGE: usize = 4096;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: `Basic realm="…"` or `Bearer realm="…",service="…",
/// scope="…"` (parameters in any order, quoted or not, with `\` escapes in quoted values).
pub fn parse_challenge(h: &str) -> Result<Challenge, String> {
    if h.len() > MAX_CHALLENGE {
        return Err(format!(
            "challenge of {} bytes (limit {MAX_CHALLENGE})",
            h.len()
        ));
    }
    let h = h.trim();
    let (scheme, rest) = match h.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&h[..i], &h[i..]),
        None => (h, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(format!("unsupported authentication scheme {scheme:?}"));
    }
    let params = parse_params(rest)?;
    let realm = params
        .get("realm")
        .cloned()
        .ok_or("the Bearer challenge has no realm")?;
    let u = url::Url::parse(&realm).map_err(|e| format!("realm {realm:?}: {e}"))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(format!("realm {realm:?} is not an http(s) URL"));
    }
    Ok(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key=value` and `key="quoted value"` pairs separated by commas; keys lower-cased.
fn parse_params(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars
            .next_if(|c| c.is_ascii_whitespace() || *c == ',')
            .is_some()
        {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        let key = key.trim().to_ascii_lowercase();
        if chars.next() != Some('=') || key.is_empty() {
            return Err(format!("malformed challenge parameter {key:?}"));
        }
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value of {key:?}")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
}
