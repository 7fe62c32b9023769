//! The byte-level pieces of a decision: splitting `Access-Control-Request-Headers` and checking
//! RFC 9110 tokens. Both run on every preflight, so they scan bytes and never allocate.

/// The names in `Access-Control-Request-Headers` field lines: comma-separated, optional
/// whitespace around each, empty elements ignored.
pub(crate) fn request_header_names<'a>(lines: &'a [&'a str]) -> HeaderNames<'a> {
    HeaderNames { lines, rest: "" }
}

/// Iterator behind [`request_header_names`]; it runs on every preflight.
#[derive(Debug, Clone)]
pub(crate) struct HeaderNames<'a> {
    lines: &'a [&'a str],
    /// What is left of the line being read.
    rest: &'a str,
}

impl<'a> Iterator for HeaderNames<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let is_ows = |b: u8| b == b' ' || b == b'\t';
        loop {
            if self.rest.is_empty() {
                let (first, others) = self.lines.split_first()?;
                self.rest = first;
                self.lines = others;
            }
            let bytes = self.rest.as_bytes();
            let (mut start, mut end, next) = match bytes.iter().position(|&b| b == b',') {
                Some(comma) => (0, comma, comma + 1),
                None => (0, bytes.len(), bytes.len()),
            };
            while start < end && is_ows(bytes[start]) {
                start += 1;
            }
            while end > start && is_ows(bytes[end - 1]) {
                end -= 1;
            }
            // `start`, `end` and `next` sit next to ASCII bytes (or at an end), so all are char
            // boundaries.
            let name = &self.rest[start..end];
            self.rest = &self.rest[next..];
            if !name.is_empty() {
                return Some(name);
            }
        }
    }
}

/// RFC 9110 `tchar`, indexed by byte.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    table
};

/// An RFC 9110 token: what a method or a header name must be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| TCHAR[usize::from(b)])
}

/// `lower` (already lowercase) equals `name` ignoring ASCII case.
pub(crate) fn eq_lowercase(lower: &str, name: &str) -> bool {
    // Browsers send names lowercase, so a plain comparison settles most of them.
    lower.len() == name.len() && (lower == name || lower.eq_ignore_ascii_case(name))
}
