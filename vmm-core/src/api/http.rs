//! Just enough HTTP/1.1 for the control API: one request per connection
//! (the reply closes it), a request line, headers, and a body sized by
//! Content-Length. Everything else is refused with 400 or 413 rather than
//! guessed at. Pure functions over byte buffers, for tests.

/// Largest request head plus body accepted.
pub const MAX_REQUEST: usize = 16 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Keep reading.
    Incomplete,
    Request(Request),
    /// Answer with this status and close.
    Bad(u16, &'static str),
}

/// Parses a request from the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST {
            Parsed::Bad(413, "request head too large")
        } else {
            Parsed::Incomplete
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Parsed::Bad(400, "request head is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad(400, "malformed request line");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !path.starts_with('/') {
        return Parsed::Bad(400, "malformed request line");
    }
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Bad(400, "malformed header");
        };
        if name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<usize>() {
                Ok(n) => length = n,
                Err(_) => return Parsed::Bad(400, "bad Content-Length"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad(400, "chunked bodies are not supported");
        }
    }
    let body_start = head_end + 4;
    if length > MAX_REQUEST - body_start.min(MAX_REQUEST) {
        return Parsed::Bad(413, "request body too large");
    }
    let Some(body) = buf.get(body_start..body_start + length) else {
        return Parsed::Incomplete;
    };
    Parsed::Request(Request {
        method: method.to_string(),
        path: path.to_string(),
        body: body.to_vec(),
    })
}

/// A reply: status and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            body: Some(body),
        }
    }

    /// An error with `{"error": "..."}` as its body.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message }).to_string())
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            413 => "Payload Too Large",
            _ => "Internal Server Error",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", self.status);
        match &self.body {
            Some(b) => {
                out.push_str("Content-Type: application/json\r\n");
                out.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
            }
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out.into_bytes()
    }
}

/// Splits a reply into its status code and body (for the client).
pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_request_parses_and_a_partial_one_waits() {
        let raw = b"PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            parse(raw),
            Parsed::Request(Request {
                method: "PUT".into(),
                path: "/vm/pause".into(),
                body: b"{}".to_vec()
            })
        );
        assert_eq!(parse(&raw[..raw.len() - 1]), Parsed::Incomplete);
        assert_eq!(parse(b"GET /vm/info HTTP/1.1\r\n"), Parsed::Incomplete);
    }

    #[test]
    fn garbage_is_refused_not_guessed() {
        for raw in [
            &b"GET\r\n\r\n"[..],
            b"GET /x HTTP/1.1 extra\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x SPDY/3\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno-colon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse(raw), Parsed::Bad(400, _)), "{raw:?}");
        }
        let huge = b"PUT /x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n";
        assert!(matches!(parse(huge), Parsed::Bad(413, _)));
        let endless = vec![b'a'; MAX_REQUEST];
        assert!(matches!(parse(&endless), Parsed::Bad(413, _)));
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::json(200, "{\"state\":\"running\"}".into()).to_bytes();
        assert_eq!(
            parse_response(&r),
            Some((200, "{\"state\":\"running\"}".to_string()))
        );
        let r = Response::no_content().to_bytes();
        assert_eq!(parse_response(&r), Some((204, String::new())));
        let e = Response::error(409, "already paused").to_bytes();
        let (code, body) = parse_response(&e).unwrap();
        assert_eq!(code, 409);
        assert!(body.contains("already paused"));
    }
}
