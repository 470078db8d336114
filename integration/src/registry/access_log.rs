//! docker-registry's access log: gorilla's combined log format, one line per request on stdout,
//! written after the response has been sent. Example:
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:04:18:00 +0000] "GET /v2/test/blobs/sha256:ab.. HTTP/1.1" 200 3145728 "" "containerd/1.6.20~ds1"
//! ```

/// One request from the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// The request URI as logged (path and query).
    pub uri: String,
    /// The path without the query.
    pub path: String,
    /// The query, if any.
    pub query: Option<String>,
    pub status: u16,
    /// Response body bytes as logged (`None` for `-`).
    pub bytes: Option<u64>,
    /// The User-Agent, if logged.
    pub user_agent: Option<String>,
}

impl AccessLogEntry {
    /// True for 2xx statuses.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Every access-log line in `log` (other lines, e.g. logrus's, are skipped).
pub fn parse_access_log(log: &str) -> Vec<AccessLogEntry> {
    log.lines().filter_map(parse_access_log_line).collect()
}

/// One combined-log-format line, or `None` if the line is not one.
pub fn parse_access_log_line(line: &str) -> Option<AccessLogEntry> {
    // host ident user [time] "request" status bytes "referer" "user-agent"
    let (_, after_time) = line.split_once("] \"")?;
    let (request, rest) = after_time.split_once('"')?;
    let mut req = request.split(' ');
    let method = req.next()?;
    let uri = req.next()?;
    let proto = req.next()?;
    if !proto.starts_with("HTTP/") || req.next().is_some() {
        return None;
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut fields = rest.trim_start().splitn(3, ' ');
    let status_text = fields.next()?;
    if status_text.len() != 3 {
        return None;
    }
    let status: u16 = status_text.parse().ok()?;
    let bytes = fields.next().and_then(|b| b.parse().ok());
    let user_agent = fields
        .next()
        .and_then(last_quoted)
        .filter(|ua| !ua.is_empty());
    // A proxy-form request logs an absolute URI; keep only its path and query.
    let local = match uri.split_once("://") {
        Some((_, after_scheme)) => after_scheme.find('/').map_or("/", |i| &after_scheme[i..]),
        None => uri,
    };
    let (path, query) = match local.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (local, None),
    };
    Some(AccessLogEntry {
        method: method.to_string(),
        uri: uri.to_string(),
        path: path.to_string(),
        query,
        status,
        bytes,
        user_agent,
    })
}

/// The contents of the last `"..."` in `s`.
fn last_quoted(s: &str) -> Option<String> {
    let s = s.trim_end().strip_suffix('"')?;
    let start = s.rfind('"')?;
    Some(s[start + 1..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_lines_and_skips_others() {
        let log = r#"time="2026-11-22T04:18:00Z" level=info msg="listening on 127.0.0.1:5000" go.version=go1.19.8
127.0.0.1 - - [22/Nov/2026:04:18:00 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
time="2026-11-22T04:18:01Z" level=info msg="response completed" http.request.method=GET http.request.uri="/v2/test/blobs/sha256:ab"
127.0.0.1 - - [22/Nov/2026:04:18:01 +0000] "GET /v2/test/blobs/sha256:abcd?ns=127.0.0.1:5000 HTTP/1.1" 200 3145728 "" "containerd/1.6.20~ds1"
127.0.0.1 - - [22/Nov/2026:04:18:02 +0000] "HEAD /v2/test/manifests/latest HTTP/1.1" 401 - "" ""
127.0.0.1 - - [22/Nov/2026:04:18:03 +0000] "GET http://127.0.0.1:5000/v2/x/blobs/sha256:ef HTTP/1.1" 307 0 "" "Go-http-client/1.1"
garbage "GET / HTTP/1.1" 200
"#;
        let entries = parse_access_log(log);
        assert_eq!(entries.len(), 4, "{entries:#?}");
        assert_eq!(entries[0].method, "GET");
        assert_eq!(entries[0].path, "/v2/");
        assert_eq!(entries[0].status, 200);
        assert_eq!(entries[0].bytes, Some(2));
        assert_eq!(entries[0].user_agent.as_deref(), Some("curl/7.88.1"));

        assert_eq!(entries[1].path, "/v2/test/blobs/sha256:abcd");
        assert_eq!(entries[1].query.as_deref(), Some("ns=127.0.0.1:5000"));
        assert_eq!(entries[1].bytes, Some(3_145_728));
        assert!(entries[1].is_success());

        assert_eq!(entries[2].method, "HEAD");
        assert_eq!(entries[2].status, 401);
        assert_eq!(entries[2].bytes, None);
        assert_eq!(entries[2].user_agent, None);
        assert!(!entries[2].is_success());

        assert_eq!(entries[3].path, "/v2/x/blobs/sha256:ef");
        assert_eq!(entries[3].status, 307);
    }

    #[test]
    fn rejects_near_misses() {
        assert!(parse_access_log_line(r#"x [t] "GET /v2/" 200 1 "" """#).is_none());
        assert!(parse_access_log_line(r#"x [t] "get /v2/ HTTP/1.1" 200 1 "" """#).is_none());
        assert!(parse_access_log_line(r#"x [t] "GET /v2/ HTTP/1.1" 2000 1 "" """#).is_none());
        assert!(parse_access_log_line(r#"x [t] "GET /v2/ HTTP/1.1""#).is_none());
        assert!(parse_access_log_line("").is_none());
    }
}
