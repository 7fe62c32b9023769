//! The byte-level pieces of a decision: splitting `Access-Control-Request-Headers` and checking
//! RFC 9110 tokens. Both run on every preflight, so they scan bytes and never allocate.

/// The names in `Access-Control-Request-Headers` field lines: comma-separated, optional
/// whitespace around each, empty elements ignored.
pub(crate) fn request_header_names<'a>(lines: &'a [&'a str]) -> HeaderNames<'a> {
    HeaderNames { lines, rest: "" }
}

/// Iterator behind [`request_header_names`]; a byte scanner, as this runs on every preflight.
#[derive(Debug, Clone)]
pub(crate) struct HeaderNames<'a> {
    lines: &'a [&'a str],
    /// What is left of the line being read.
    rest: &'a str,
}

impl<'a> Iterator for HeaderNames<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let bytes = self.rest.as_bytes();
            let start = bytes
                .iter()
                .position(|&b| !matches!(b, b' ' | b'\t' | b','));
            let Some(start) = start else {
                let (first, others) = self.lines.split_first()?;
                self.rest = first;
                self.lines = others;
                continue;
            };
            let mut end = start;
            let mut name_end = start;
            while let Some(&b) = bytes.get(end) {
                if b == b',' {
                    break;
                }
                end += 1;
                if !matches!(b, b' ' | b'\t') {
                    name_end = end;
                }
            }
            // `start`, `name_end` and `end` sit next to ASCII bytes, so all are char boundaries.
            let name = &self.rest[start..name_end];
            self.rest = &self.rest[end..];
            return Some(name);
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
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| TCHAR[usize::from(b)])
}

/// `lower` (already lowercase) equals `name` ignoring ASCII case.
pub(crate) fn eq_lowercase(lower: &str, name: &str) -> bool {
    lower.len() == name.len()
        && lower
            .bytes()
            .zip(name.bytes())
            .all(|(l, n)| l == n.to_ascii_lowercase())
}
